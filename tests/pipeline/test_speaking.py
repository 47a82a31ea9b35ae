"""The playout estimate: what the caller has heard of the bot."""

from pipeline.bot.playback import Playout


def test_pieces_play_back_to_back_from_when_they_are_sent():
    playout = Playout()
    first = playout.sent("one two", 2.0, now=10.0)
    second = playout.sent("three four", 2.0, now=10.5)  # queued behind the first
    assert (first.starts, first.ends) == (10.0, 12.0)
    assert (second.starts, second.ends) == (12.0, 14.0)
    assert playout.speaking(13.9)
    assert not playout.speaking(14.0)


def test_an_interrupt_keeps_only_the_words_heard_so_far():
    playout = Playout()
    pieces = [
        playout.sent("one two three four", 4.0, now=0.0),
        playout.sent("five six", 2.0, now=0),
    ]
    playout.interrupt(2.0)  # halfway through the first piece
    assert playout.heard_text(pieces, 2.0) == "one two"
    assert pieces[0].ends == 2.0  # it stopped playing there
    assert pieces[1].ends == pieces[1].starts  # the second never played
    assert not playout.speaking(2.0)


def test_without_an_interrupt_everything_played_is_heard():
    playout = Playout()
    pieces = [playout.sent("one two", 1.0, now=0.0), playout.sent("three", 1.0, now=0.0)]
    assert playout.heard_text(pieces, 5.0) == "one two three"
