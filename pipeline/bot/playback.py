"""What the caller is hearing: the bot's speech as the platform plays it out.

The platform plays each WAV chunk we send as soon as it arrives, after whatever it is
still playing, and stops everything on ``interrupt``. We never hear that playout, so
we model it from what we sent and when: it tells the endpointer whether the bot is
speaking (so the stricter barge-in gate applies) and, after a barge-in, which words
the caller actually heard, which is all the conversation history should keep.
Each piece keeps its audio while its reply lasts, so a reply stopped by a false
interruption can be sent again (:mod:`pipeline.bot.resumption`).
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from stages.turns import BotSpeech

__all__ = ["PlayedPiece", "Playout"]


@dataclass(slots=True)
class PlayedPiece:
    """One chunk of bot speech on the estimated playout timeline (Trio clock), with the
    μ-law audio that says it (empty where the sender did not keep it)."""

    text: str
    starts: float
    ends: float  # when it stops playing: the planned end, or earlier if interrupted
    planned_ends: float = 0.0
    audio: bytes = b""

    def __post_init__(self) -> None:
        self.planned_ends = self.planned_ends or self.ends

    def heard_fraction(self, at: float) -> float:
        """Share of the piece played by ``at``, against its full length (not the cut one)."""
        if at <= self.starts:
            return 0.0
        if at >= self.planned_ends or self.planned_ends <= self.starts:
            return 1.0
        return (at - self.starts) / (self.planned_ends - self.starts)


class Playout:
    """The estimated playout of one call's bot speech, and the ``BotSpeech`` flag it drives."""

    def __init__(self, bot: BotSpeech | None = None) -> None:
        self.bot = bot or BotSpeech()
        self.pieces: list[PlayedPiece] = []
        self.ends_at = 0.0
        self._changed = trio.Event()

    def sent(self, text: str, seconds: float, now: float, audio: bytes = b"") -> PlayedPiece:
        """A chunk of ``seconds`` of speech saying ``text`` left for the platform at ``now``."""
        starts = max(now, self.ends_at)
        piece = PlayedPiece(text, starts, starts + seconds, audio=audio)
        # only pieces still to play can be cut: the played ones (and their audio) go
        self.pieces = [earlier for earlier in self.pieces if earlier.ends > now]
        self.pieces.append(piece)
        self.ends_at = piece.ends
        self.bot.speaking = True
        self._wake()
        return piece

    def interrupt(self, now: float) -> None:
        """The platform was told to stop: nothing plays past ``now``."""
        self.ends_at = min(self.ends_at, now)
        for piece in self.pieces:
            piece.ends = min(piece.ends, max(piece.starts, now))
        self.bot.speaking = False
        self._wake()

    def speaking(self, now: float) -> bool:
        return now < self.ends_at

    def heard_text(self, pieces: list[PlayedPiece], at: float) -> str:
        """The words of ``pieces`` the caller had heard by ``at`` (a proportional estimate:
        a piece cut halfway through keeps its first half of words)."""
        words: list[str] = []
        for piece in pieces:
            fraction = piece.heard_fraction(at)
            piece_words = piece.text.split()
            keep = round(len(piece_words) * fraction)
            words.extend(piece_words[:keep])
            if keep < len(piece_words):
                break
        return " ".join(words)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def track(self) -> None:
        """Keep ``bot.speaking`` true exactly while speech is estimated to be playing."""
        while True:
            now = trio.current_time()
            self.bot.speaking = self.speaking(now)
            if self.bot.speaking:
                with trio.move_on_at(self.ends_at):
                    await self._changed.wait()
            else:
                await self._changed.wait()
