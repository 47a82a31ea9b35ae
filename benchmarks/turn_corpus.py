"""The turn-taking benchmark's callers: utterances whose true end is known to the sample.

Four kinds of item, as a caller on a telephone line says them:

- ``complete``: a whole question or statement (bakery orders and general talk);
- ``continued``: an incomplete phrase ("My name is"), a pause of 0.5-1.2 s, then its
  continuation ("John Smith"): one utterance the bot must not answer in the pause;
- ``hesitation``: a sentence with "um" / "uh" in the middle, pauses around the filler;
- ``short``: a short answer ("yes", "no", a number).

Each part is a clip of :func:`benchmarks.speech_corpus.speech` (trimmed to its audible
part, so padding it with exact silence gives exact bounds), spoken by one of the
corpus's voices (Piper joe at three speeds, three espeak-ng voices), at 8 kHz; the
telephone line (μ-law) is the transport's own. :func:`render` lays the parts out and
records where each one starts and ends, in samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from benchmarks.speech_corpus import VOICES, Voice, silence, speech

__all__ = [
    "KINDS",
    "LEAD_S",
    "TAIL_S",
    "RenderedItem",
    "TurnItem",
    "corpus",
    "render",
]

Kind = Literal["complete", "continued", "hesitation", "short"]
KINDS: tuple[Kind, ...] = ("complete", "continued", "hesitation", "short")
LEAD_S = 0.3  # silence before the caller speaks: the VAD learns the line's floor
TAIL_S = 0.2  # silence after; the emulator goes on sending silence while the call lasts
RATE = 8000

COMPLETE = (
    "What time do you open on Saturday?",
    "How much does a loaf of sourdough cost?",
    "Do you have any gluten free bread today?",
    "I would like to order a birthday cake for Sunday.",
    "Can I pick up my order after five?",
    "Do you deliver to the north side of town?",
    "What is the weather going to be like tomorrow?",
    "Could you tell me how long the drive to the airport takes?",
    "I need to change the delivery address on my order.",
    "Is the shop open on public holidays?",
    "Thank you, that is all I needed.",
    "Where can I park near the bakery?",
    "Do you sell coffee as well?",
    "My flight was cancelled and I need a new booking.",
)
# (the incomplete phrase, its continuation)
CONTINUED = (
    ("I would like to order", "two loaves of bread for Friday."),
    ("My name is", "John Smith."),
    ("Can I get", "a dozen croissants, please?"),
    ("The address is", "twelve Oak Street."),
    ("I was wondering if", "you make vegan cakes."),
    ("Could you tell me", "when you close today?"),
    ("I need a cake for", "my daughter's birthday."),
    ("My phone number is", "five five five, one two three four."),
    ("We are having a party on", "Saturday afternoon."),
    ("I'd like to know", "if you have rye bread."),
    ("Please put it under the name", "Maria Garcia."),
    ("Is it possible to", "pay by card when I collect?"),
    ("I will pick it up at", "half past four."),
    ("And for the filling I want", "chocolate and raspberry."),
)
CONTINUED_PAUSES_S = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2)
HESITATION = (
    ("I would like", "um", "a loaf of rye bread."),
    ("Can you", "uh", "deliver on Sunday?"),
    ("So I was thinking", "um", "maybe a carrot cake."),
    ("The order is for", "uh", "three people."),
    ("What time do you", "um", "close tonight?"),
    ("My name is", "uh", "Peter Jones."),
    ("I need", "um", "two baguettes and a lemon tart."),
    ("Could I", "uh", "change my order?"),
)
# (before the filler, after it)
HESITATION_PAUSES_S = ((0.3, 0.6), (0.4, 0.5), (0.2, 0.8), (0.5, 0.7))
SHORT = ("Yes.", "No.", "Yes, please.", "No, thanks.", "Twelve.", "Three.", "Okay.", "Friday.")
SHORT += ("Sure.", "Forty two.")


@dataclass(frozen=True, slots=True)
class TurnItem:
    """One caller utterance: its parts, the silences between them, the voice."""

    name: str
    kind: Kind
    parts: tuple[str, ...]
    pauses_s: tuple[float, ...]
    voice: Voice

    def __post_init__(self) -> None:
        if len(self.pauses_s) != len(self.parts) - 1:
            raise ValueError(f"{self.name}: need one pause between each two parts")
        if self.kind not in KINDS:
            raise ValueError(f"{self.name}: unknown kind {self.kind!r}")

    @property
    def text(self) -> str:
        return " ... ".join(self.parts)

    @property
    def continues(self) -> bool:
        """A pause inside the utterance that the bot must sit through."""
        return len(self.parts) > 1


@dataclass(frozen=True, slots=True)
class RenderedItem:
    """An item as audio: 8 kHz int16, and each part's [start, end) in samples."""

    item: TurnItem
    samples: np.ndarray
    part_bounds: tuple[tuple[int, int], ...]

    @property
    def speech_end(self) -> int:
        """Sample index just past the caller's whole utterance (the true end of turn)."""
        return self.part_bounds[-1][1]

    @property
    def first_pause_start(self) -> int | None:
        """Where the caller first stops mid-utterance (None: no pause inside)."""
        return self.part_bounds[0][1] if self.item.continues else None


def render(item: TurnItem, *, lead_s: float = LEAD_S, tail_s: float = TAIL_S) -> RenderedItem:
    """Lay ``item`` out with exact silences; the parts' bounds are exact by construction."""
    pieces = [silence(lead_s, RATE)]
    bounds: list[tuple[int, int]] = []
    position = len(pieces[0])
    for index, text in enumerate(item.parts):
        clip = speech(text, item.voice, RATE)
        if not len(clip):
            raise ValueError(f"{item.name}: the voice said nothing for {text!r}")
        pieces.append(clip)
        bounds.append((position, position + len(clip)))
        position += len(clip)
        if index < len(item.pauses_s):
            gap = silence(item.pauses_s[index], RATE)
            pieces.append(gap)
            position += len(gap)
    pieces.append(silence(tail_s, RATE))
    return RenderedItem(item, np.concatenate(pieces), tuple(bounds))


def corpus(*, quick: bool = False) -> list[TurnItem]:
    """The items, voices rotated so every kind is spoken by every voice.

    ``quick``: two of each kind, for a smoke run.
    """

    def voice(index: int) -> Voice:
        return VOICES[index % len(VOICES)]

    items: list[TurnItem] = []
    for index, text in enumerate(COMPLETE):
        items.append(TurnItem(f"complete-{index + 1}", "complete", (text,), (), voice(index)))
    for index, (first, rest) in enumerate(CONTINUED):
        pause = CONTINUED_PAUSES_S[index % len(CONTINUED_PAUSES_S)]
        items.append(
            TurnItem(f"continued-{index + 1}", "continued", (first, rest), (pause,), voice(index))
        )
    for index, parts in enumerate(HESITATION):
        pauses = HESITATION_PAUSES_S[index % len(HESITATION_PAUSES_S)]
        items.append(TurnItem(f"hesitation-{index + 1}", "hesitation", parts, pauses, voice(index)))
    for index, text in enumerate(SHORT):
        items.append(TurnItem(f"short-{index + 1}", "short", (text,), (), voice(index + 3)))
    if quick:
        items = [item for kind in KINDS for item in [i for i in items if i.kind == kind][:2]]
    return items
