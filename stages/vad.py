"""Voice activity: Silero VAD on 8 kHz audio through onnxruntime, batched across calls.

The Silero model is a small recurrent network: each 256-sample window (32 ms at
8 kHz), preceded by the last 32 samples of the previous window (its *context*), and
the previous recurrent *state* give one speech probability and the next state. It
has a batch dimension, and one inference of 64 windows costs far less than 64
inferences of one window, so the server runs ONE :class:`VadService`: every call opens
a :class:`VadStream` on it, submits windows as its audio arrives, and the service
gathers the pending windows of all streams into one batched inference, carrying each
stream's state and context separately (streams join and leave freely).

Batching delay bound: when a window arrives and the service is idle, it waits at most
``max_batch_delay`` (default 4 ms) for other streams' windows, and not at all once
every open stream has a window pending, so a single call never waits for others.
Worst case, a window waits ``max_batch_delay`` plus one batch already running, then
its own batch: at 64 streams about 4 + 2 × 3 ms on one core, under a 32 ms window.

Inference runs in ``trio.to_thread.run_sync`` under a :class:`trio.CapacityLimiter`,
so the event loop never blocks. No torch anywhere: the ONNX file is vendored under
``models/`` (see models/README.md); any compatible Silero ONNX file can be passed.
"""

from __future__ import annotations

import math
import sys
from collections import deque
from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager, AbstractContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import trio

from pipeline.runtime.errors import VadError
from pipeline.runtime.frames import Frame, PcmAudio
from pipeline.runtime.stage import Outbox, Stage

__all__ = [
    "DEFAULT_VAD_MODEL",
    "WINDOW",
    "SileroModel",
    "SileroStream",
    "VadConfig",
    "VadError",
    "VadFrame",
    "VadService",
    "VadStage",
    "VadStream",
    "VoiceActivityDetector",
    "VoiceActivityStream",
    "frames_of",
    "open_vad_service",
    "probabilities_of",
]

VAD_FILE = "silero_vad.onnx"
# A source checkout (or editable install) has models/ next to stages/; an installed wheel
# carries the file as data under <prefix>/share/voicegraph/models (see pyproject.toml).
VAD_MODEL_LOCATIONS = (
    Path(__file__).resolve().parent.parent / "models" / VAD_FILE,
    Path(sys.prefix) / "share" / "voicegraph" / "models" / VAD_FILE,
)
DEFAULT_VAD_MODEL = next((p for p in VAD_MODEL_LOCATIONS if p.is_file()), VAD_MODEL_LOCATIONS[0])

# Window and context sizes the Silero v5 model was trained with, per sample rate.
WINDOW = {8000: 256, 16000: 512}
CONTEXT = {8000: 32, 16000: 64}
STATE_SHAPE = (2, 128)  # per stream; the model's state input is (2, batch, 128)


class VoiceActivityStream(Protocol):
    """One call's view of a VAD: its own state; closed when the call ends."""

    def __enter__(self) -> VoiceActivityStream: ...

    def __exit__(self, *exc: object) -> None: ...

    async def probability(self, window: np.ndarray) -> float:
        """Speech probability (0..1) of the next ``window_size`` samples of this call."""
        ...


@runtime_checkable
class VoiceActivityDetector(Protocol):
    """What a voice bot needs from voice activity detection: one service for every call.

    :class:`VadStage` cuts a call's audio into windows of ``window_size`` samples at
    ``sample_rate`` and asks the call's stream for each one's speech probability. A
    service may batch the windows of all calls (:class:`VadService` does). Raise
    :class:`VadError` when the model cannot run.
    """

    name: str
    sample_rate: int
    window_size: int

    def serving(self) -> AbstractAsyncContextManager[None]: ...

    def open_stream(self) -> AbstractContextManager[Any]: ...


@dataclass(frozen=True, slots=True)
class VadConfig:
    """``[vad]`` of ``bot.toml``: the Silero model and how windows of calls are batched.

    ``model``: a Silero v5 ``.onnx`` ("" = the vendored file); ``max_batch_delay_s``:
    how long a batch waits for the other calls' windows.
    """

    model: str = ""
    max_batch_delay_s: float = 0.004
    max_batch: int = 512


class SileroModel:
    """The Silero ONNX model behind a batch call. Loads eagerly: a bad path fails here."""

    def __init__(self, path: str | Path | None = None, *, threads: int = 1) -> None:
        path = Path(path) if path is not None else DEFAULT_VAD_MODEL
        if not path.is_file():
            looked = (
                str(path)
                if path != DEFAULT_VAD_MODEL
                else " or ".join(str(p) for p in VAD_MODEL_LOCATIONS)
            )
            raise VadError(
                f"Silero VAD model not found at {looked!r}; pass the path of a "
                "silero_vad.onnx file (see models/README.md)"
            )
        import onnxruntime  # deferred: importing it costs ~0.3 s and only the VAD needs it

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self._session = onnxruntime.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped failures
            raise VadError(f"cannot load Silero VAD model {str(path)!r}: {exc}") from exc
        names = {i.name for i in self._session.get_inputs()}
        if names != {"input", "state", "sr"}:
            raise VadError(f"{str(path)!r} is not a Silero v5 VAD model (inputs {sorted(names)})")
        self.path = path

    def run(
        self, windows: np.ndarray, states: np.ndarray, sample_rate: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(B, context+window) float32 and (2, B, 128) states -> (B,) probabilities, states."""
        probabilities, new_states = self._session.run(
            None,
            {"input": windows, "state": states, "sr": np.array(sample_rate, dtype=np.int64)},
        )
        return probabilities[:, 0], new_states


class SileroStream:
    """One stream run alone on a model, window by window: the unbatched reference."""

    def __init__(self, model: SileroModel, sample_rate: int = 8000) -> None:
        self.model = model
        self.sample_rate = sample_rate
        self.context = np.zeros(CONTEXT[sample_rate], dtype=np.float32)
        self.state = np.zeros((STATE_SHAPE[0], 1, STATE_SHAPE[1]), dtype=np.float32)

    def probability(self, window: np.ndarray) -> float:
        x = np.concatenate([self.context, _as_float(window)])[None, :]
        probability, self.state = self.model.run(x, self.state, self.sample_rate)
        self.context = x[0, -len(self.context) :]
        return float(probability[0])


def _as_float(window: np.ndarray) -> np.ndarray:
    if window.dtype == np.int16:
        return window.astype(np.float32) / 32768.0
    return window.astype(np.float32, copy=False)


class _Request:
    __slots__ = ("done", "error", "probability", "window")

    def __init__(self, window: np.ndarray) -> None:
        self.window = window
        self.done = trio.Event()
        self.probability = math.nan
        self.error: BaseException | None = None


class VadStream:
    """One call's view of the service: its own recurrent state, context and queue.

    Use as a context manager (``with service.open_stream() as stream``); closing it
    frees its state and fails whatever it still had queued.
    """

    def __init__(self, service: VadService) -> None:
        self._service = service
        self.context = np.zeros(CONTEXT[service.sample_rate], dtype=np.float32)
        self.state = np.zeros(STATE_SHAPE, dtype=np.float32)
        self.queue: deque[_Request] = deque()
        self.closed = False
        self.windows = 0

    async def probability(self, window: np.ndarray) -> float:
        """Speech probability of the next window of this stream (int16 or float32)."""
        if self.closed:
            raise trio.ClosedResourceError("VAD stream is closed")
        size = WINDOW[self._service.sample_rate]
        if len(window) != size:
            raise ValueError(f"a VAD window is {size} samples, got {len(window)}")
        request = _Request(_as_float(window))
        self.queue.append(request)
        if len(self.queue) == 1:
            self._service._ready_count += 1
        self._service._wake()
        await request.done.wait()
        if request.error is not None:
            raise VadError("VAD inference failed") from request.error
        return request.probability

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        service = self._service
        if self.queue:
            service._ready_count -= 1
        for request in self.queue:
            request.error = trio.ClosedResourceError("VAD stream closed")
            request.done.set()
        self.queue.clear()
        service._streams.pop(self, None)
        service._wake()  # the batcher may be waiting for this stream

    def __enter__(self) -> VadStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class VadService:
    """Silero, batching the windows of every open stream into one inference: the default
    :class:`VoiceActivityDetector`. Enter ``serving()`` (or :func:`open_vad_service`)."""

    name = "silero"

    def __init__(
        self,
        model: SileroModel | str | Path | None = None,
        *,
        sample_rate: int = 8000,
        max_batch_delay: float = 0.004,
        max_batch: int = 512,
        limiter: trio.CapacityLimiter | None = None,
    ) -> None:
        if sample_rate not in WINDOW:
            raise ValueError(f"Silero VAD runs at {sorted(WINDOW)} Hz, not {sample_rate}")
        self._model_or_path = model
        self.model: SileroModel | None = model if isinstance(model, SileroModel) else None
        self.sample_rate = sample_rate
        self.window_size = WINDOW[sample_rate]
        self.max_batch_delay = max_batch_delay
        self.max_batch = max_batch
        self._limiter = limiter or trio.CapacityLimiter(1)
        # insertion-ordered, so the longest-waiting streams go first when a batch is full
        self._streams: dict[VadStream, None] = {}
        self._ready_count = 0  # open streams with at least one window queued
        self._pending = trio.Event()
        self._running = False
        self.batches = 0
        self.windows = 0
        self.largest_batch = 0

    @classmethod
    def from_config(cls, config: VadConfig) -> VadService:
        """The service ``[vad]`` describes (the model loads in :meth:`serving`)."""
        return cls(
            config.model or None,
            max_batch_delay=config.max_batch_delay_s,
            max_batch=config.max_batch,
        )

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[None]:
        """Load the model (errors surface here), then batch for the block's duration."""
        if self.model is None:
            self.model = await trio.to_thread.run_sync(SileroModel, self._model_or_path)
        async with trio.open_nursery() as nursery:
            await nursery.start(self.serve)
            try:
                yield
            finally:
                nursery.cancel_scope.cancel()

    def open_stream(self) -> VadStream:
        """A new stream with fresh state; close it when the call ends."""
        if not self._running:
            raise RuntimeError("the VAD service is not running; start it with open_vad_service()")
        stream = VadStream(self)
        self._streams[stream] = None
        return stream

    def _wake(self) -> None:
        self._pending.set()

    def _all_ready(self) -> bool:
        return self._ready_count >= len(self._streams)

    async def serve(self, *, task_status: trio.TaskStatus[VadService] = trio.TASK_STATUS_IGNORED):
        """Load the model (in a thread), report started, then batch until cancelled."""
        if self.model is None:
            path = self._model_or_path
            self.model = await trio.to_thread.run_sync(SileroModel, path)
        self._running = True
        task_status.started(self)
        try:
            while True:
                await self._pending.wait()
                if not self._all_ready():
                    # Others may be a moment behind: give them a bounded chance to join.
                    with trio.move_on_after(self.max_batch_delay):
                        while not self._all_ready():
                            self._pending = trio.Event()
                            await self._pending.wait()
                self._pending = trio.Event()
                if self._ready_count:
                    await self._run_batch(self._take_batch())
                if self._ready_count:
                    self._pending.set()
        finally:
            self._running = False
            for stream in list(self._streams):
                stream.close()

    def _take_batch(self) -> list[tuple[VadStream, _Request]]:
        batch = []
        for stream in self._streams:
            if stream.queue:
                batch.append((stream, stream.queue.popleft()))
                if not stream.queue:
                    self._ready_count -= 1
                if len(batch) == self.max_batch:
                    break
        for stream, _ in batch:  # served streams go to the back of the line
            del self._streams[stream]
            self._streams[stream] = None
        return batch

    async def _run_batch(self, batch: list[tuple[VadStream, _Request]]) -> None:
        streams = [stream for stream, _ in batch]
        requests = [request for _, request in batch]
        windows = np.stack(
            [np.concatenate([s.context, r.window]) for s, r in zip(streams, requests, strict=True)]
        )
        states = np.stack([stream.state for stream in streams], axis=1)
        model = self.model
        assert model is not None
        try:
            probabilities, new_states = await trio.to_thread.run_sync(
                model.run, windows, states, self.sample_rate, limiter=self._limiter
            )
        except Exception as exc:
            for request in requests:
                request.error = exc
                request.done.set()
            return
        context = CONTEXT[self.sample_rate]
        for index, (stream, request) in enumerate(zip(streams, requests, strict=True)):
            if not stream.closed:  # a stream closed mid-batch keeps nothing
                stream.state = new_states[:, index, :].copy()
                stream.context = windows[index, -context:].copy()
                stream.windows += 1
            request.probability = float(probabilities[index])
            request.done.set()
        self.batches += 1
        self.windows += len(streams)
        self.largest_batch = max(self.largest_batch, len(streams))

    def statistics(self) -> dict[str, Any]:
        return {
            "streams": len(self._streams),
            "batches": self.batches,
            "windows": self.windows,
            "mean_batch": self.windows / self.batches if self.batches else 0.0,
            "largest_batch": self.largest_batch,
        }


@asynccontextmanager
async def open_vad_service(
    model: SileroModel | str | Path | None = None, **options: Any
) -> AsyncIterator[VadService]:
    """Run a :class:`VadService` for the duration of the block (the server's lifetime).

    The model loads first, outside any nursery, so a bad path raises a plain
    :class:`VadError` here, at start-up.
    """
    service = VadService(model, **options)
    async with service.serving():
        yield service


@dataclass(slots=True, kw_only=True)
class VadFrame(Frame):
    """One VAD window: its audio, where it sits on the call's timeline, P(speech)."""

    samples: np.ndarray
    start_sample: int
    probability: float
    sample_rate: int = 8000

    @property
    def end_sample(self) -> int:
        return self.start_sample + len(self.samples)


class VadStage(Stage[PcmAudio, VadFrame]):
    """Cuts a call's contiguous PCM into VAD windows and emits one :class:`VadFrame` each.

    The input must be gap-free (the jitter buffer conceals gaps), so window positions
    are counted from the first frame's ``start_sample``. A final partial window is
    zero-padded for the model, but its frame holds only the real samples.

    A call cannot hear its caller without the VAD, so a failing one ends the call (1011)
    and no other: its error passes through, and a window with no answer within
    ``timeout_s`` (a hung service) raises :class:`VadError` rather than leaving the
    caller talking to a bot that never answers.
    """

    def __init__(
        self, service: VoiceActivityDetector, *, timeout_s: float = 5.0, name: str | None = None
    ) -> None:
        super().__init__(name=name)
        self.service = service
        self.timeout_s = timeout_s
        self.windows = 0

    async def run(self, inbox: trio.MemoryReceiveChannel[PcmAudio], outbox: Outbox[VadFrame]):
        size = self.service.window_size
        buffer = np.zeros(0, dtype=np.int16)
        position: int | None = None
        last: PcmAudio | None = None
        with self.service.open_stream() as stream:
            async for frame in inbox:
                if frame.sample_rate != self.service.sample_rate:
                    raise ValueError(
                        f"VAD expects {self.service.sample_rate} Hz, got {frame.sample_rate} Hz"
                    )
                if position is None:
                    position = frame.start_sample
                buffer = np.concatenate([buffer, frame.samples.astype(np.int16, copy=False)])
                last = frame
                while len(buffer) >= size:
                    window, buffer = buffer[:size], buffer[size:]
                    await outbox.send(await self._frame(stream, window, window, position, frame))
                    position += size
            if len(buffer) and last is not None and position is not None:
                padded = np.concatenate([buffer, np.zeros(size - len(buffer), dtype=np.int16)])
                await outbox.send(await self._frame(stream, padded, buffer, position, last))

    async def _frame(
        self,
        stream: VoiceActivityStream,
        window: np.ndarray,
        kept: np.ndarray,
        start: int,
        source: PcmAudio,
    ) -> VadFrame:
        try:
            with trio.fail_after(self.timeout_s):
                probability = await stream.probability(window)
        except trio.TooSlowError:
            raise VadError(f"the VAD gave no answer within {self.timeout_s:g} s") from None
        self.windows += 1
        out = VadFrame(
            samples=kept,
            start_sample=start,
            probability=probability,
            sample_rate=source.sample_rate,
            captured_at=source.captured_at,
        )
        out.inherit_timing(source)
        return out

    def statistics(self) -> dict[str, Any]:
        return {"windows": self.windows}


def probabilities_of(
    model: SileroModel, samples: np.ndarray, sample_rate: int = 8000
) -> Iterable[float]:
    """Sequential probabilities of a whole clip, window by window (tests, tools)."""
    stream = SileroStream(model, sample_rate)
    size = WINDOW[sample_rate]
    for start in range(0, len(samples) - size + 1, size):
        yield stream.probability(samples[start : start + size])


def frames_of(model: SileroModel, samples: np.ndarray, sample_rate: int = 8000) -> list[VadFrame]:
    """A whole clip as the VAD stage would frame it, window by window, offline (tests,
    benchmarks: what an endpointer is fed, without a service or a clock)."""
    size = WINDOW[sample_rate]
    return [
        VadFrame(
            samples=samples[start : start + size],
            start_sample=start,
            probability=probability,
            captured_at=0.0,
        )
        for start, probability in zip(
            range(0, len(samples) - size + 1, size),
            probabilities_of(model, samples, sample_rate),
            strict=True,
        )
    ]
