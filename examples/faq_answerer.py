"""A stage between STT and the LLM: questions the bot knows are answered at once.

    python -m examples.faq_answerer          # a call to a bakery bot that knows its hours

:class:`FaqAnswerer` reads what the caller said (a :class:`CallerText`). When it
matches one of its questions, the stage answers itself with a :class:`BotText`, and
the LLM step passes that through instead of asking the model: the answer is the
configured one, word for word, in the bot's voice. Anything else goes on to the LLM.
Putting it into the default bot is one edit of the reply path::

    bot = VoiceBot(config, reply_edits=[with_faq(FAQ)])

Matching here is deliberately simple (the share of a question's content words that
the caller said), enough to show the seam; a deployment would match paraphrases and
STT errors more robustly.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import trio

from pipeline import BotConfig, BotText, CallerText, Stage, StageEdit, VoiceBot, insert_after
from pipeline.bot import ConversationConfig
from stages import Transcriber

FAQ = {
    "When are you open?": "We are open Monday to Saturday from 7 am to 6 pm.",
    "How much is a loaf of bread?": "A loaf of bread costs 4 dollars.",
}

_STOP_WORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "is",
        "are",
        "do",
        "does",
        "you",
        "your",
        "we",
        "our",
        "i",
        "me",
        "my",
        "of",
        "to",
        "for",
        "at",
        "in",
        "on",
        "it",
        "this",
        "that",
        "what",
        "when",
        "how",
        "much",
        "many",
        "can",
        "could",
        "would",
        "please",
    ]
)


def content_words(text: str) -> set[str]:
    return {word for word in re.findall(r"[a-z']+", text.lower()) if word not in _STOP_WORDS}


class FaqAnswerer(Stage[Any, Any]):
    """Answers a caller question that matches one of ``faq``'s; passes everything else."""

    name = "faq"

    def __init__(self, faq: Mapping[str, str], *, min_overlap: float = 0.6) -> None:
        super().__init__()
        self.entries = [(content_words(question), answer) for question, answer in faq.items()]
        self.min_overlap = min_overlap
        self.answered = 0

    def answer_for(self, text: str) -> str | None:
        heard = content_words(text)
        best, best_score = None, 0.0
        for words, answer in self.entries:
            score = len(words & heard) / len(words) if words else 0.0
            if score > best_score:
                best, best_score = answer, score
        return best if best_score >= self.min_overlap else None

    def process(self, item: Any) -> Iterable[Any]:
        if not isinstance(item, CallerText):
            return (item,)
        answer = self.answer_for(item.text)
        if answer is None:
            return (item,)  # the LLM answers
        self.answered += 1
        item.reply.text = answer
        item.reply.answered_by = self.name
        return (BotText(reply=item.reply, text=answer, captured_at=item.captured_at),)

    def statistics(self) -> dict[str, Any]:
        return {"answered": self.answered}


def with_faq(faq: Mapping[str, str]) -> StageEdit:
    """The reply-path edit that puts a fresh :class:`FaqAnswerer` right after STT."""
    return lambda stages: insert_after(stages, Transcriber, FaqAnswerer(faq))


def make_bot(config: BotConfig) -> VoiceBot:
    """The ``--pipeline`` factory for ``voicegraph bench``: the default bot, with the FAQ."""
    return VoiceBot(config, reply_edits=[with_faq(FAQ)])


async def call_the_bakery() -> list[tuple[str, str, str]]:
    """Dial a bakery bot with the FAQ on loopback; (caller, heard, bot) per turn."""
    from benchmarks.speech_corpus import speech
    from pipeline import ServerConfig, VoiceStreamServer, converse, open_call

    config = BotConfig(conversation=ConversationConfig(greeting=""))
    bot = make_bot(config)
    server = VoiceStreamServer(ServerConfig(port=0), bot)
    lines = ["When are you open?", "Do you sell cakes?"]
    async with trio.open_nursery() as nursery:
        listener = await nursery.start(server.serve)
        async with open_call(f"ws://127.0.0.1:{listener.port}/") as call:
            await converse(call, [(line, speech(line)) for line in lines], pause=0.3)
        server.shutdown()
    ((_, turns),) = bot.finished
    return [(line, t.caller_text, t.reply_text) for line, t in zip(lines, turns, strict=False)]


if __name__ == "__main__":
    for said, heard, answer in trio.run(call_the_bakery):
        print(f"caller: {said}\n  heard: {heard}\n  bot:   {answer}")
