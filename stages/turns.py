"""Endpointing and barge-in: turn VAD probabilities into caller turns at exact positions.

Input is the stream of :class:`~stages.vad.VadFrame` windows of one call; output is
:class:`SpeechStarted`, :class:`SpeechSegment` (an :class:`~pipeline.runtime.frames.Utterance`
with its speech bounds) and :class:`BargeIn` events.

How a turn is found (all times in :class:`TurnConfig`):

- Hysteresis: a window at or above ``threshold`` can start speech; once in speech,
  only windows below ``release_threshold`` count as silence. Probabilities that
  wobble around one value do not flap the state.
- ``min_speech_ms`` of speech is needed before :class:`SpeechStarted`; a shorter blip
  (a click, a breath) is forgotten.
- Two modes (``mode``). ``hangover``: the turn ends after ``min_silence_ms`` of
  silence, counted from the energy-refined end of speech (below), not from the VAD's
  release, which trails the voice by a window or two. Telephone dialogue wants
  500-700 ms: shorter cuts callers off at commas, longer makes the bot feel slow; no
  single value does both, so this is the baseline. ``semantic`` (the default): the
  end of turn is decided by meaning at the first pause (``early_silence_ms``) by the
  turn manager, which has both the audio and the speculative transcript
  (:mod:`stages.end_of_turn`: ``complete_threshold``, ``incomplete_threshold``,
  ``unsure_wait_ms``, ``graded_wait``, ``turn_model``, ``turn_model_deadline_ms``,
  ``use_words``, ``use_confidence``, ``use_pitch``; ``continuation_ms`` for a caller
  who goes on after such a commit, :mod:`pipeline.bot.turn_judge`); the endpointer's own
  :class:`SpeechSegment` then comes only after ``max_wait_ms`` of silence, the bound
  on how long an unfinished-sounding turn is waited for.
- Speech bounds: the VAD puts them on its 32 ms window grid (the start at the first
  window of the run above ``release_threshold`` that led to activation, the end at
  the last window at or above ``threshold``), and Silero's probability trails the
  end of speech by one or two windows. Within ``refine_ms`` of each VAD bound the
  position is then refined on 4 ms energy blocks: the first/last block louder than
  the call's noise floor (tracked over non-speech windows) plus ``refine_margin_db``
  and than ``refine_floor_dbfs``. Without such a block (or with ``refine_ms=0``) the
  VAD bound is kept, the end less ``end_lag_ms``.
- The utterance audio adds ``preroll_ms`` before the start (so a soft first syllable
  is not cut) and ``postroll_ms`` after the end, clipped to the audio seen.
- Speculative end of turn: after ``early_silence_ms`` of silence (shorter than the
  hangover) a :class:`SpeechPaused` carries the utterance as it stands, so a bot can
  start transcribing and thinking while it waits to be sure the caller has finished.
  If the caller goes on, :class:`SpeechResumed` says to drop that work; the turn stays
  open, and the next pause's segment holds its audio from the original onset.
  Otherwise the :class:`SpeechSegment` follows at ``min_silence_ms`` (hangover) or
  ``max_wait_ms`` (semantic) and commits it. In hangover mode nothing is decided
  earlier than without it: only the work starts earlier. An ``early_silence_ms`` not
  shorter than that silence (or 0, or None) never fires; semantic mode requires it.

Barge-in: while the bot is speaking (``BotSpeech.speaking``, a flag the turn manager
sets around playback), a stricter gate applies: ``barge_in_min_speech_ms`` (default
160 ms: five 32 ms VAD windows) of continuous speech, at or above ``barge_in_threshold``
since the run rose above ``release_threshold`` (where the speech began), before a
:class:`BargeIn` is emitted, once per stretch of speech, so a click, a cough or line
noise does not stop the bot. ``barge_in_gate``, if given, is a further predicate
over the caller's audio so far: the hook for a words-based gate (e.g. "only if a
quick partial transcript has real words"); it is asked at every window until it
says yes or the speech ends.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.runtime.frames import Frame, Utterance
from pipeline.runtime.stage import Stage
from stages.vad import VadFrame

__all__ = [
    "BargeIn",
    "BargeInGate",
    "BotSpeech",
    "Endpointer",
    "SpeechPaused",
    "SpeechResumed",
    "SpeechSegment",
    "SpeechStarted",
    "TurnConfig",
    "TurnEvent",
    "TurnStage",
]

MODES = ("semantic", "hangover")

# (caller audio from the speech start so far, its start sample) -> fire barge-in?
BargeInGate = Callable[[np.ndarray, int], bool]


@dataclass(frozen=True, slots=True)
class TurnConfig:
    """Endpointing parameters; the defaults are tuned for 8 kHz telephone speech.

    ``mode`` picks the end-of-turn rule (see the module docstring); the semantic
    thresholds are those of :class:`stages.end_of_turn.EndOfTurnPolicy`."""

    threshold: float = 0.5
    release_threshold: float = 0.35
    min_speech_ms: float = 90.0
    min_silence_ms: float = 600.0
    preroll_ms: float = 200.0
    postroll_ms: float = 150.0
    end_lag_ms: float = 48.0
    refine_ms: float = 96.0
    refine_margin_db: float = 9.0
    refine_floor_dbfs: float = -48.0
    max_utterance_s: float = 30.0
    barge_in_threshold: float = 0.6
    barge_in_min_speech_ms: float = 160.0
    early_silence_ms: float | None = 160.0
    # end of turn by meaning (stages.end_of_turn; the turn manager decides)
    mode: str = "semantic"  # semantic | hangover (the fixed min_silence_ms rule)
    max_wait_ms: float = 2000.0  # semantic: the turn is committed after this silence anyway
    turn_model: str = ""  # Smart Turn ONNX path; "" = the vendored file; "none" = words only
    complete_threshold: float = 0.6  # combined P(finished) at or above it: commit now
    incomplete_threshold: float = 0.3  # below it: keep listening up to max_wait_ms
    # in between: commit after at most this silence: the longest mid-sentence pause to
    # sit through (1 s), the bot's reaction to the caller going on (min_speech_ms and a
    # 32 ms VAD window, ~120 ms) and a window's margin
    unsure_wait_ms: float = 1200.0
    # speech again within this silence after a turn committed at its pause goes on with
    # the same sentence (the reply is withdrawn); later, it is a new turn (or a barge-in)
    continuation_ms: float = 1500.0
    use_words: bool = True  # let the words heard so far count (False: the audio model alone)
    # how unsure: an unsure turn waits from early_silence_ms (P just under
    # complete_threshold) up to unsure_wait_ms (just over incomplete_threshold)
    graded_wait: bool = True
    use_confidence: bool = True  # a "finished" reading of poorly heard words counts less
    # the voice's terminal fall (finished) or held level (not); off: on the benchmark's
    # synthetic voices it did not separate held phrases from ends (README)
    use_pitch: bool = False
    # the audio model's answer is awaited this long from the pause's judgement; later,
    # the words (and pitch) judge alone
    turn_model_deadline_ms: float = 400.0
    # barge-in: only voiced sound interrupts (stages.voicing); a barge-in whose turn has no
    # words gives the bot its reply back after resume_gap_ms (pipeline.bot.resumption)
    barge_in_voicing: bool = True
    resume_false_interrupts: bool = True
    resume_gap_ms: float = 300.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.release_threshold <= self.threshold <= 1.0:
            raise ValueError("need 0 <= release_threshold <= threshold <= 1")
        for name in ("min_speech_ms", "min_silence_ms", "preroll_ms", "postroll_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.early_silence_ms is not None and self.early_silence_ms < 0:
            raise ValueError("early_silence_ms must be >= 0 (0 or None disables it)")
        if self.resume_gap_ms < 0:
            raise ValueError("resume_gap_ms must be >= 0")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if not 0.0 <= self.incomplete_threshold <= self.complete_threshold <= 1.0:
            raise ValueError("need 0 <= incomplete_threshold <= complete_threshold <= 1")
        if self.mode == "semantic":
            early = self.early_silence_ms or 0.0
            if not 0.0 < early < self.max_wait_ms:
                raise ValueError(
                    "semantic mode needs 0 < early_silence_ms < max_wait_ms: the decision "
                    "is taken at the pause"
                )
            if not early <= self.unsure_wait_ms <= self.max_wait_ms:
                raise ValueError("need early_silence_ms <= unsure_wait_ms <= max_wait_ms")
            if self.turn_model_deadline_ms <= 0:
                raise ValueError("turn_model_deadline_ms must be > 0")
            if not early <= self.continuation_ms <= self.max_wait_ms:
                raise ValueError("need early_silence_ms <= continuation_ms <= max_wait_ms")

    @property
    def semantic(self) -> bool:
        return self.mode == "semantic"

    @property
    def commit_silence_ms(self) -> float:
        """The silence after which the endpointer itself ends a turn."""
        return self.max_wait_ms if self.semantic else self.min_silence_ms


class BotSpeech:
    """Whether the bot is talking right now: set by the turn manager, read by the gate.

    A plain flag, read once per window (every 32 ms), because that is all the
    detector needs; ``with bot.speaking_scope():`` sets it for a block.
    """

    __slots__ = ("speaking",)

    def __init__(self) -> None:
        self.speaking = False

    def speaking_scope(self) -> _Speaking:
        return _Speaking(self)


class _Speaking:
    __slots__ = ("_bot",)

    def __init__(self, bot: BotSpeech) -> None:
        self._bot = bot

    def __enter__(self) -> BotSpeech:
        self._bot.speaking = True
        return self._bot

    def __exit__(self, *exc: object) -> None:
        self._bot.speaking = False


@dataclass(slots=True, kw_only=True)
class SpeechStarted(Frame):
    """The caller started speaking at ``sample`` (known ``min_speech_ms`` later)."""

    sample: int
    sample_rate: int = 8000


@dataclass(slots=True, kw_only=True)
class BargeIn(Frame):
    """The caller talks over the bot: speech from ``sample``, confirmed at ``detected_sample``."""

    sample: int
    detected_sample: int
    sample_rate: int = 8000


@dataclass(slots=True, kw_only=True)
class SpeechSegment(Utterance):
    """An utterance whose speech itself spans ``speech_start``..``speech_end`` (samples);
    ``start_sample``..``end_sample`` are the padded audio bounds."""

    speech_start: int
    speech_end: int
    decided_sample: int = 0  # end of the window whose arrival decided it (``captured_at``)
    forced: bool = False  # cut at max_utterance_s, not at a pause

    def time_of(self, sample: int) -> float:
        """Trio-clock time at which ``sample`` of the call's audio arrived (estimated from
        the deciding window, since playout after the jitter buffer runs in real time)."""
        return self.captured_at - (self.decided_sample - sample) / self.sample_rate


@dataclass(slots=True, kw_only=True)
class SpeechPaused(Frame):
    """The caller has been silent ``early_silence_ms``: ``segment`` is the turn so far,
    tentatively. A :class:`SpeechSegment` (commit) or :class:`SpeechResumed` follows."""

    segment: SpeechSegment


@dataclass(slots=True, kw_only=True)
class SpeechResumed(Frame):
    """The caller spoke again at ``sample`` after a :class:`SpeechPaused`: drop its work."""

    sample: int
    sample_rate: int = 8000


TurnEvent = SpeechStarted | SpeechPaused | SpeechResumed | SpeechSegment | BargeIn


def _blocks_db(samples: np.ndarray, block: int) -> np.ndarray:
    """RMS level (dBFS) of each whole ``block`` of int16 samples."""
    count = len(samples) // block
    blocks = samples[: count * block].astype(np.float64).reshape(count, block) / 32768.0
    return 10 * np.log10(np.mean(blocks**2, axis=1) + 1e-12)


class Endpointer:
    """The turn state machine, free of I/O: feed windows, get events back."""

    def __init__(
        self,
        config: TurnConfig | None = None,
        *,
        bot: BotSpeech | None = None,
        barge_in_gate: BargeInGate | None = None,
    ) -> None:
        self.config = config or TurnConfig()
        self.bot = bot or BotSpeech()
        self.barge_in_gate = barge_in_gate
        self._frames: deque[VadFrame] = deque()  # audio kept: pre-roll, or the whole turn
        self._run_start: int | None = None  # start of the current run >= release
        self._onset: int | None = None  # speech start of a candidate or an active turn
        self._active = False  # SpeechStarted sent
        self._last_loud_end = 0  # end of the last window >= threshold
        self._silent_since: int | None = None
        self._quiet_from = 0  # where the current silence is counted from (see _in_speech)
        self._barge_run: int | None = None  # start of continuous speech >= barge threshold
        self._barged = False
        self._noise_db: float | None = None  # running level of clearly non-speech windows
        self._paused = False  # SpeechPaused sent for the current silence
        self._resumed_at: int | None = None  # where the caller went on after a pause
        self.counts = {
            "speech_started": 0,
            "utterances": 0,
            "barge_ins": 0,
            "blips": 0,
            "pauses": 0,
            "resumed": 0,
        }

    def _ms(self, ms: float, rate: int) -> int:
        return round(ms * rate / 1000)

    def process(self, frame: VadFrame) -> list[TurnEvent]:
        config, rate, p = self.config, frame.sample_rate, frame.probability
        self._frames.append(frame)
        events: list[TurnEvent] = []
        if p < 0.15 and len(frame.samples):
            level = max(float(_blocks_db(frame.samples, len(frame.samples))[0]), -90.0)
            old = self._noise_db
            self._noise_db = level if old is None else old + 0.1 * (level - old)
        if p >= config.release_threshold:
            if self._run_start is None:
                self._run_start = frame.start_sample
        else:
            self._run_start = None
        if self._onset is None:
            if p >= config.threshold:
                self._onset = self._run_start if self._run_start is not None else frame.start_sample
                self._last_loud_end = frame.end_sample
                self._silent_since = None
            else:
                self._trim_preroll(rate)
        if self._onset is not None:
            events.extend(self._in_speech(frame))
        return events

    def _in_speech(self, frame: VadFrame) -> list[TurnEvent]:
        config, rate, p = self.config, frame.sample_rate, frame.probability
        assert self._onset is not None
        events: list[TurnEvent] = []
        if p >= config.threshold:
            self._last_loud_end = frame.end_sample
        if p < config.release_threshold:
            if self._silent_since is None:
                self._silent_since = frame.start_sample
                # Silero releases a window or two after the voice stops: count the
                # hangover from the energy-refined end of speech, never later than
                # the release itself.
                refined = (
                    self._refine(self._last_loud_end, rate, start=False)
                    if self._active
                    else self._silent_since
                )
                self._quiet_from = min(self._silent_since, max(self._onset, refined))
        else:
            self._silent_since = None
            if self._paused:
                self._paused = False
                self._resumed_at = frame.start_sample
                self.counts["resumed"] += 1
                resumed = SpeechResumed(
                    sample=frame.start_sample, sample_rate=rate, captured_at=0.0
                )
                events.append(self._timed(resumed, frame))
        if not self._active:
            if self._silent_since is not None:  # a blip: forget it, keep listening
                self.counts["blips"] += 1
                self._onset = None
                self._barge_run = None
                self._trim_preroll(rate)
                return events
            if frame.end_sample - self._onset >= self._ms(config.min_speech_ms, rate):
                self._onset = self._refine(self._onset, rate, start=True)
                self._active = True
                self.counts["speech_started"] += 1
                started = SpeechStarted(sample=self._onset, sample_rate=rate, captured_at=0.0)
                events.append(self._timed(started, frame))
        events.extend(self._barge_in(frame))
        silent_for = frame.end_sample - self._quiet_from if self._silent_since is not None else 0
        if self._active and silent_for >= self._ms(config.commit_silence_ms, rate):
            events.append(self._segment(frame, forced=False))
        elif (
            self._active
            and not self._paused
            and config.early_silence_ms
            and silent_for >= self._ms(config.early_silence_ms, rate)
        ):
            self._paused = True
            self._barged = False  # what the caller says after the pause may barge in again
            self.counts["pauses"] += 1
            paused = SpeechPaused(segment=self._build_segment(frame, forced=False), captured_at=0.0)
            events.append(self._timed(paused, frame))
        elif self._active and frame.end_sample - self._onset >= config.max_utterance_s * rate:
            events.append(self._segment(frame, forced=True))
        return events

    def _barge_in(self, frame: VadFrame) -> list[TurnEvent]:
        config, rate = self.config, frame.sample_rate
        if frame.probability < config.barge_in_threshold:
            self._barge_run = None
            return []
        if self._barge_run is None:
            # the speech began where this run rose above release_threshold, usually a
            # window before Silero is sure enough for the stricter barge-in threshold
            run = self._run_start
            self._barge_run = frame.start_sample if run is None else min(run, frame.start_sample)
        if not self.bot.speaking:
            # the bot went quiet (cut, or done): when it talks again, within this same
            # turn (a resumed reply), the caller must be able to cut it again
            self._barged = False
            return []
        if self._barged:
            return []
        if frame.end_sample - self._barge_run < self._ms(config.barge_in_min_speech_ms, rate):
            return []
        assert self._onset is not None
        if self.barge_in_gate is not None:
            # only the speech over the bot: in a turn that goes on after a pause, what
            # came before the pause (voiced, surely) says nothing about this sound
            start = self._resumed_at if self._resumed_at is not None else self._onset
            if not self.barge_in_gate(self._audio(start, frame.end_sample), start):
                return []
        self._barged = True
        self.counts["barge_ins"] += 1
        event = BargeIn(
            sample=self._onset,
            detected_sample=frame.end_sample,
            sample_rate=frame.sample_rate,
            captured_at=0.0,
        )
        return [self._timed(event, frame)]

    def _segment(self, frame: VadFrame, *, forced: bool) -> SpeechSegment:
        """The turn is over (or cut): emit it and start listening afresh."""
        segment = self._build_segment(frame, forced=forced)
        self.counts["utterances"] += 1
        self._onset = None
        self._active = False
        self._barged = False
        self._paused = False
        self._resumed_at = None
        self._barge_run = None
        self._silent_since = None
        if forced:  # the caller is still talking: the next turn starts right here
            self._frames.clear()
            self._run_start = None
        else:
            self._trim_preroll(frame.sample_rate)
        return segment

    def _build_segment(self, frame: VadFrame, *, forced: bool) -> SpeechSegment:
        config, rate = self.config, frame.sample_rate
        assert self._onset is not None
        onset = self._onset
        if forced:
            speech_end = frame.end_sample
        else:
            speech_end = max(onset + 1, self._refine(self._last_loud_end, rate, start=False))
        first = self._frames[0].start_sample
        start = max(first, onset - self._ms(config.preroll_ms, rate))
        stop = min(frame.end_sample, speech_end + self._ms(config.postroll_ms, rate))
        segment = SpeechSegment(
            samples=self._audio(start, stop),
            start_sample=start,
            end_sample=stop,
            sample_rate=rate,
            speech_start=onset,
            speech_end=speech_end,
            decided_sample=frame.end_sample,
            forced=forced,
            captured_at=frame.captured_at,
        )
        segment.inherit_timing(frame)
        return segment

    def _audio(self, start: int, stop: int) -> np.ndarray:
        parts = [f.samples for f in self._frames if f.end_sample > start and f.start_sample < stop]
        if not parts:
            return np.zeros(0, dtype=np.int16)
        first = next(f for f in self._frames if f.end_sample > start)
        audio = np.concatenate(parts)
        offset = start - first.start_sample
        return audio[max(0, offset) : max(0, offset) + (stop - start)]

    def _refine(self, bound: int, rate: int, *, start: bool) -> int:
        """Move a VAD bound onto the first/last loud 4 ms block within ``refine_ms``."""
        config = self.config
        reach = self._ms(config.refine_ms, rate)
        fallback = bound if start else bound - self._ms(config.end_lag_ms, rate)
        if reach == 0 or not self._frames:
            return fallback
        block = max(1, self._ms(4.0, rate))
        # Silero rises early but falls late: look wider behind an end than ahead of it.
        back, ahead = (reach, reach) if start else (2 * reach, reach // 2)
        lo = max(self._frames[0].start_sample, bound - back)
        hi = min(self._frames[-1].end_sample, bound + ahead)
        lo = hi - (hi - lo) // block * block  # whole blocks, aligned on the far side
        if hi - lo < block:
            return fallback
        levels = _blocks_db(self._audio(lo, hi), block)
        noise = self._noise_db if self._noise_db is not None else -90.0
        threshold = max(noise + config.refine_margin_db, config.refine_floor_dbfs)
        loud = np.flatnonzero(levels >= threshold)
        if len(loud) == 0:
            return fallback
        return lo + int(loud[0]) * block if start else lo + (int(loud[-1]) + 1) * block

    def _trim_preroll(self, rate: int) -> None:
        keep = self._ms(self.config.preroll_ms, rate)
        newest_end = self._frames[-1].end_sample if self._frames else 0
        horizon = newest_end - keep
        if self._run_start is not None:
            horizon = min(horizon, self._run_start - keep)
        while self._frames and self._frames[0].end_sample <= horizon:
            self._frames.popleft()

    def _timed(self, event: Any, frame: VadFrame) -> Any:
        event.inherit_timing(frame)  # charged from the capture of the deciding window
        return event

    def finish(self) -> list[TurnEvent]:
        """End of the call: a turn still open is emitted as it stands."""
        if self._active and self._frames:
            return [self._segment(self._frames[-1], forced=False)]
        return []


class TurnStage(Stage[VadFrame, TurnEvent]):
    """One call's endpointer as a pipeline stage."""

    def __init__(
        self,
        config: TurnConfig | None = None,
        *,
        bot: BotSpeech | None = None,
        barge_in_gate: BargeInGate | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        self.endpointer = Endpointer(config, bot=bot, barge_in_gate=barge_in_gate)

    @property
    def bot(self) -> BotSpeech:
        return self.endpointer.bot

    def process(self, item: VadFrame) -> Iterable[TurnEvent]:
        return self.endpointer.process(item)

    def finish(self) -> Iterable[TurnEvent]:
        return self.endpointer.finish()

    def statistics(self) -> dict[str, Any]:
        return dict(self.endpointer.counts)
