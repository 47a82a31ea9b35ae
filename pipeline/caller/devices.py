"""Where a call client's audio comes from and where the bot's goes: files, generators,
the sound card.

The client asks its input for the next 20 ms every 20 ms and hands its output each
chunk of bot speech as it arrives, so inputs are *real-time streams*: a file plays on
while the caller is muted or not holding push-to-talk, exactly as a microphone does
(what is gated off is replaced by silence, never delayed). Everything is 8 kHz mono
int16, the phone line's own format.

The microphone and the speaker go through the optional ``sounddevice`` package
(``pip install 'voicegraph[softphone]'``), imported only when one is opened, so
files and generators work without it. PortAudio's callbacks run on its own thread;
they meet the Trio side through a lock-guarded buffer that is never waited on.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np
import soxr

from pipeline.caller.audiofile import load_audio, save_wav
from pipeline.runtime.errors import CallError
from pipeline.runtime.frames import TELEPHONE_RATE
from stages.resample import to_int16

__all__ = [
    "AudioInput",
    "AudioOutput",
    "DeviceError",
    "FileInput",
    "FileOutput",
    "GeneratorInput",
    "MediaDevice",
    "MicrophoneInput",
    "NullOutput",
    "SilenceInput",
    "SoftphoneUnavailable",
    "SpeakerOutput",
    "get_media_list",
    "sounddevice_module",
]


class DeviceError(CallError, RuntimeError):
    """An audio device cannot be used; the message says why."""


class SoftphoneUnavailable(DeviceError):
    """The microphone or speaker was asked for without the ``softphone`` extra."""


def sounddevice_module() -> ModuleType:
    """The ``sounddevice`` module, or :class:`SoftphoneUnavailable` saying how to get it."""
    try:
        import sounddevice  # optional and heavy (PortAudio): imported on first use
    except (ImportError, OSError) as exc:  # OSError: the PortAudio library is missing
        raise SoftphoneUnavailable(
            "microphone and speaker need the softphone extra: "
            f"pip install 'voicegraph[softphone]' (sounddevice; {exc})"
        ) from None
    return sounddevice


@dataclass(frozen=True, slots=True)
class MediaDevice:
    """A sound card endpoint, as :func:`get_media_list` lists it."""

    device_id: str
    label: str
    kind: Literal["audioinput", "audiooutput"]
    default: bool = False


def get_media_list() -> list[MediaDevice]:
    """The machine's microphones and speakers; empty without the ``softphone`` extra."""
    try:
        sd = sounddevice_module()
        devices = sd.query_devices()
        default_input, default_output = sd.default.device
    except Exception:  # no extra, no PortAudio host, no devices
        return []
    listed = []
    for index, info in enumerate(devices):
        if info.get("max_input_channels", 0) > 0:
            listed.append(
                MediaDevice(str(index), info["name"], "audioinput", index == default_input)
            )
        if info.get("max_output_channels", 0) > 0:
            listed.append(
                MediaDevice(str(index), info["name"], "audiooutput", index == default_output)
            )
    return listed


# --- inputs -------------------------------------------------------------------------


class AudioInput(ABC):
    """Caller audio. ``open``/``close`` may block (the client runs them in a thread);
    ``read`` is called on the event loop every 20 ms and must not."""

    label = "input"

    def open(self) -> None:  # noqa: B027  (optional hook)
        """Acquire the device (load the file, start the microphone)."""

    @abstractmethod
    def read(self, count: int) -> np.ndarray | None:
        """The next ``count`` samples (fewer at the end), or None for nothing (silence)."""

    def close(self) -> None:  # noqa: B027  (optional hook)
        """Release the device."""


class SilenceInput(AudioInput):
    """Nothing to say: the client still sends silence packets, as the platform does."""

    label = "silence"

    def read(self, count: int) -> np.ndarray | None:
        return None


class GeneratorInput(AudioInput):
    """Audio from Python: an iterable of 8 kHz int16 blocks of any length, pulled as
    needed (a generator that synthesizes, a list of utterances, an endless tone)."""

    def __init__(self, blocks: Iterable[np.ndarray], label: str = "generator") -> None:
        self.label = label
        self._blocks: Iterator[np.ndarray] = iter(blocks)
        self._pending = np.zeros(0, dtype=np.int16)
        self.samples_read = 0

    def read(self, count: int) -> np.ndarray | None:
        parts = [self._pending]
        have = len(self._pending)
        while have < count:
            block = next(self._blocks, None)
            if block is None:
                break
            block = to_int16(np.asarray(block).reshape(-1))
            parts.append(block)
            have += len(block)
        joined = np.concatenate(parts) if len(parts) > 1 else self._pending
        out, self._pending = joined[:count], joined[count:]
        self.samples_read += len(out)
        return out if len(out) else None


class FileInput(AudioInput):
    """A file (any format and rate libsndfile reads) played once in real time, or in a
    loop; then silence."""

    def __init__(self, path: str | Path, *, loop: bool = False) -> None:
        self.path = Path(path)
        self.label = f"file:{self.path.name}"
        self.loop = loop
        self._samples: np.ndarray | None = None
        self.position = 0

    def open(self) -> None:
        if self._samples is None:
            self._samples = load_audio(self.path)

    def read(self, count: int) -> np.ndarray | None:
        samples = self._samples
        if samples is None:
            raise DeviceError(f"{self.label} was not opened")
        if self.position >= len(samples):
            if not self.loop:
                return None
            self.position = 0
        out = samples[self.position : self.position + count]
        self.position += len(out)
        return out


class MicrophoneInput(AudioInput):
    """A microphone through ``sounddevice``, resampled to 8 kHz as it is captured.

    The streaming resampler hands out audio in bursts (tens of ms), so reading starts
    once ``cushion_s`` is buffered and again after running dry: a steady 20 ms stream
    without gaps. At most ``max_backlog_s`` waits: if the event loop falls behind, the
    oldest audio goes (a caller minds delay more than a lost syllable).
    """

    def __init__(
        self,
        device: int | str | None = None,
        *,
        cushion_s: float = 0.06,
        max_backlog_s: float = 0.2,
    ) -> None:
        self.device = device
        self.label = f"microphone:{device if device is not None else 'default'}"
        self.cushion = int(cushion_s * TELEPHONE_RATE)
        self.max_backlog = int(max_backlog_s * TELEPHONE_RATE)
        self._lock = threading.Lock()
        self._buffer: deque[np.ndarray] = deque()
        self._buffered = 0
        self._primed = False
        self._stream: Any = None
        self.discarded = 0
        self.underruns = 0

    def open(self) -> None:
        sd = sounddevice_module()
        device = _device_index(self.device)
        try:
            info = sd.query_devices(device, "input")
            rate = int(info["default_samplerate"])
            resampler = soxr.ResampleStream(rate, TELEPHONE_RATE, 1, dtype="float32", quality="LQ")

            def captured(indata: np.ndarray, frames: int, when: Any, status: Any) -> None:
                self._push(to_int16(resampler.resample_chunk(indata[:, 0].copy())))

            self._stream = sd.InputStream(
                device=device,
                channels=1,
                samplerate=rate,
                dtype="float32",
                blocksize=rate // 50,
                callback=captured,
            )
            self._stream.start()
        except Exception as exc:
            raise DeviceError(f"cannot open {self.label}: {exc}") from exc

    def _push(self, samples: np.ndarray) -> None:
        with self._lock:
            self._buffer.append(samples)
            self._buffered += len(samples)
            while self._buffered - len(self._buffer[0]) >= self.max_backlog:
                self._buffered -= len(self._buffer[0])
                self.discarded += len(self._buffer.popleft())

    def read(self, count: int) -> np.ndarray | None:
        with self._lock:
            if not self._primed:
                if self._buffered < self.cushion:
                    return None
                self._primed = True
            if self._buffered < count:
                self._primed = False  # ran dry: what is left now, then build up again
                self.underruns += 1
            parts, have = [], 0
            while self._buffer and have < count:
                block = self._buffer.popleft()
                take = block[: count - have]
                if len(take) < len(block):
                    self._buffer.appendleft(block[len(take) :])
                parts.append(take)
                have += len(take)
            self._buffered -= have
        return np.concatenate(parts) if parts else None

    def close(self) -> None:
        if self._stream is not None:
            self._stream.stop()
            self._stream.close()
            self._stream = None


# --- outputs ------------------------------------------------------------------------


class AudioOutput(ABC):
    """Bot speech. ``play`` and ``interrupt`` are called on the event loop with the Trio
    time of the event and must not block; ``open``/``close`` may."""

    label = "output"

    def open(self, now: float) -> None:  # noqa: B027  (optional hook)
        """Acquire the device; ``now`` is the start of its timeline."""

    @abstractmethod
    def play(self, samples: np.ndarray, at: float) -> None:
        """A chunk of bot speech arrived at ``at``: play it after what is playing."""

    @abstractmethod
    def interrupt(self, at: float) -> None:
        """The bot was interrupted at ``at``: stop what is playing and drop what waits."""

    def close(self) -> None:  # noqa: B027  (optional hook)
        """Release the device (a file output writes its file here)."""


class NullOutput(AudioOutput):
    label = "none"

    def play(self, samples: np.ndarray, at: float) -> None:
        pass

    def interrupt(self, at: float) -> None:
        pass


class FileOutput(AudioOutput):
    """What a caller would have heard, as a WAV: each chunk placed where the platform
    plays it (after the one before, from its arrival), cut at an interrupt; silence
    between. The file is written on :meth:`close`; :meth:`samples` gives it before."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.label = f"file:{self.path.name}"
        self._origin: float | None = None
        self._placed: list[tuple[int, np.ndarray]] = []
        self._playout_end = 0  # in samples from the origin

    def open(self, now: float) -> None:
        if self._origin is None:
            self._origin = now

    def _offset(self, at: float) -> int:
        if self._origin is None:
            raise DeviceError(f"{self.label} was not opened")
        return max(0, round((at - self._origin) * TELEPHONE_RATE))

    def play(self, samples: np.ndarray, at: float) -> None:
        start = max(self._offset(at), self._playout_end)
        self._placed.append((start, to_int16(samples)))
        self._playout_end = start + len(samples)

    def interrupt(self, at: float) -> None:
        cut = self._offset(at)
        self._placed = [(start, samples[: max(0, cut - start)]) for start, samples in self._placed]
        self._playout_end = min(self._playout_end, cut)

    def samples(self) -> np.ndarray:
        end = max((start + len(samples) for start, samples in self._placed), default=0)
        track = np.zeros(end, dtype=np.int16)
        for start, samples in self._placed:
            track[start : start + len(samples)] = samples
        return track

    def close(self) -> None:
        save_wav(self.path, self.samples())


class SpeakerOutput(AudioOutput):
    """A speaker or headset through ``sounddevice``; an interrupt silences it at once."""

    def __init__(self, device: int | str | None = None) -> None:
        self.device = device
        self.label = f"speaker:{device if device is not None else 'default'}"
        self._lock = threading.Lock()
        self._queue: deque[np.ndarray] = deque()
        self._stream: Any = None
        self._rate = TELEPHONE_RATE
        self._resample: Callable[[np.ndarray], np.ndarray] = lambda samples: samples

    def open(self, now: float) -> None:
        sd = sounddevice_module()
        device = _device_index(self.device)
        try:
            info = sd.query_devices(device, "output")
            self._rate = rate = int(info["default_samplerate"])
            self._resample = lambda samples: soxr.resample(
                samples, TELEPHONE_RATE, rate, quality="HQ"
            )
            self._stream = sd.OutputStream(
                device=device,
                channels=1,
                samplerate=rate,
                dtype="float32",
                callback=self._fill,
            )
            self._stream.start()
        except Exception as exc:
            raise DeviceError(f"cannot open {self.label}: {exc}") from exc

    def _fill(self, outdata: np.ndarray, frames: int, when: Any, status: Any) -> None:
        out = outdata[:, 0]
        filled = 0
        with self._lock:
            while self._queue and filled < frames:
                block = self._queue.popleft()
                take = block[: frames - filled]
                if len(take) < len(block):
                    self._queue.appendleft(block[len(take) :])
                out[filled : filled + len(take)] = take
                filled += len(take)
        out[filled:] = 0.0

    def play(self, samples: np.ndarray, at: float) -> None:
        audio = self._resample(samples.astype(np.float32) / 32768.0).astype(np.float32)
        with self._lock:
            self._queue.append(audio)

    def interrupt(self, at: float) -> None:
        with self._lock:
            self._queue.clear()

    def close(self) -> None:
        if self._stream is not None:
            self._stream.stop()
            self._stream.close()
            self._stream = None


def _device_index(device: int | str | None) -> int | str | None:
    """``"3"`` (an id from :func:`get_media_list`) means device 3; other text is a name."""
    if isinstance(device, str) and device.isdigit():
        return int(device)
    return device
