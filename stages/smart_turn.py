"""End of turn from the caller's voice: Smart Turn v3.2 (ONNX) as one shared service.

Silence alone cannot tell "What time do you open on... Saturday?" from a finished
question; Smart Turn (Daily / Pipecat, BSD-2-Clause, vendored under ``models/``) hears
grammar and prosody. It is a Whisper Tiny encoder with a linear head and a sigmoid: the
last 8 s of the turn's audio at 16 kHz, as an 80 x 800 Whisper log-mel spectrogram, give
P(the turn is complete).

Features follow Pipecat's ``LocalSmartTurnAnalyzerV3`` exactly: resample to 16 kHz
(soxr HQ, :func:`stages.resample.resample`), keep the last 8 s or pad zeros at the
*start* (the speech stays at the end of the window), normalise the whole 8 s window to
zero mean and unit variance, then Whisper's log-mel (n_fft 400, hop 160, 80 Slaney
mels, the trailing frame dropped, floor at max - 8, (x + 4) / 4). The log-mel is
faster-whisper's numpy ``FeatureExtractor`` (already a dependency: no transformers,
no torch); it agrees with Pipecat's float64 port of transformers'
``WhisperFeatureExtractor`` to within 1e-5.

The server runs ONE :class:`SmartTurnService` for every call: one session, inferences
one after another in a worker thread (so the event loop keeps serving and the model
never takes more than ``threads`` cores), requests served first come first served, a
cancelled request dropped before it costs anything. The model has a batch dimension
and a batched request gets exactly the probability it gets alone, so the service can
gather concurrent requests into one inference (``max_batch`` > 1). By default it does
not: on this CPU a batch costs its size times one inference *plus* 10-40 % (measured in
``benchmarks/smart_turn_bench.py``, one onnxruntime thread: 36-41 ms of CPU alone,
40-54 ms per request in a batch of 4, 46-59 in a batch of 16), and every request in a
batch waits for the whole batch, so one at a time answers callers sooner on average.
Raise ``max_batch`` where a batch is cheaper per request (a GPU build, a CPU with fast
int8 matrix units).

Inference runs on the service's own thread at a lower scheduling priority (Linux: nice
+10, :data:`INFERENCE_NICE`). The event loop's work is due every 20 ms (each call's
packets, the VAD, the bot's audio); a judgement is worth having but can be late (the
turn judge gives it a deadline and then decides on the words). At equal priority a
57 ms inference sharing a busy core with the loop made packets late before the core
was full (``benchmarks/frontend_capacity.py``); niced, the loop takes the core first
and the model the cycles left.
:class:`SmartTurnModel` is the synchronous model, usable without Trio.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import trio

from pipeline.runtime.errors import ServiceError
from pipeline.runtime.service import Service
from stages.resample import resample

__all__ = [
    "DEFAULT_TURN_MODEL",
    "INFERENCE_NICE",
    "MODEL_RATE",
    "WINDOW_SECONDS",
    "SmartTurnModel",
    "SmartTurnService",
    "TurnModelError",
    "turn_features",
]

TURN_FILE = "smart-turn-v3.2-cpu.onnx"
# A source checkout (or editable install) has models/ next to stages/; an installed wheel
# carries the file as data under <prefix>/share/voicegraph/models (see pyproject.toml).
TURN_MODEL_LOCATIONS = (
    Path(__file__).resolve().parent.parent / "models" / TURN_FILE,
    Path(sys.prefix) / "share" / "voicegraph" / "models" / TURN_FILE,
)
DEFAULT_TURN_MODEL = next((p for p in TURN_MODEL_LOCATIONS if p.is_file()), TURN_MODEL_LOCATIONS[0])

MODEL_RATE = 16000
WINDOW_SECONDS = 8
WINDOW_SAMPLES = MODEL_RATE * WINDOW_SECONDS
FEATURE_SHAPE = (80, 800)  # mel bins x 10 ms frames
INPUT_NAME = "input_features"
NORMALISE_EPSILON = 1e-7  # transformers' zero-mean unit-variance epsilon, as Pipecat uses
INFERENCE_NICE = 10
"""How much lower than the event loop the inference thread runs (Linux nice steps)."""


class TurnModelError(ServiceError):
    """The end-of-turn model could not be found, loaded or run."""


_extractor: Any = None


def _log_mel(window: np.ndarray) -> np.ndarray:
    global _extractor
    if _extractor is None:  # deferred: faster-whisper's import is slow and only this needs it
        from faster_whisper.feature_extractor import FeatureExtractor

        _extractor = FeatureExtractor(feature_size=FEATURE_SHAPE[0], chunk_length=WINDOW_SECONDS)
    # padding=0: the window is already exactly 8 s, so 801 frames less the dropped last one
    return _extractor(window, padding=0).astype(np.float32, copy=False)


def _as_float(samples: np.ndarray) -> np.ndarray:
    samples = np.asarray(samples)
    if samples.ndim != 1:
        raise ValueError(f"turn audio must be mono (1-D), got shape {samples.shape}")
    if samples.dtype == np.int16:
        return samples.astype(np.float32) / 32768.0
    if not np.issubdtype(samples.dtype, np.floating):
        raise ValueError(f"turn audio must be int16 or float samples, got {samples.dtype}")
    if not np.all(np.isfinite(samples)):
        raise ValueError("turn audio has NaN or infinite samples")
    return samples.astype(np.float32, copy=False)


def _last_window(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """The model's 8 s window at 16 kHz, speech at the end, zeros before it."""
    if sample_rate <= 0:
        raise ValueError(f"sample rate must be positive, got {sample_rate}")
    audio = _as_float(samples)
    # Resample only what the window keeps (plus 10 ms for the filter to settle).
    keep = math.ceil((WINDOW_SECONDS + 0.01) * sample_rate)
    audio = resample(audio[-keep:], sample_rate, MODEL_RATE)[-WINDOW_SAMPLES:]
    window = np.zeros(WINDOW_SAMPLES, dtype=np.float32)
    if len(audio):
        window[-len(audio) :] = audio
    return window


def turn_features(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """(80, 800) float32 log-mel of the last 8 s of a turn (int16 or float mono, any rate).

    Shorter audio (or none) is zero-padded at the start, as Smart Turn was trained.
    """
    window = _last_window(samples, sample_rate)
    window = (window - window.mean()) / np.sqrt(window.var() + NORMALISE_EPSILON)
    return _log_mel(window)


class SmartTurnModel:
    """The Smart Turn ONNX model behind a batch call. Loads eagerly: a bad path fails here."""

    def __init__(self, path: str | Path | None = None, *, threads: int = 1) -> None:
        path = Path(path) if path is not None else DEFAULT_TURN_MODEL
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        if not path.is_file():
            looked = (
                str(path)
                if path != DEFAULT_TURN_MODEL
                else " or ".join(str(p) for p in TURN_MODEL_LOCATIONS)
            )
            raise TurnModelError(
                f"Smart Turn model not found at {looked!r}; pass the path of a "
                f"{TURN_FILE} file (see models/README.md)"
            )
        import onnxruntime  # deferred: importing it costs ~0.3 s

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        try:
            self._session = onnxruntime.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped failures
            raise TurnModelError(f"cannot load Smart Turn model {str(path)!r}: {exc}") from exc
        inputs = self._session.get_inputs()
        if [i.name for i in inputs] != [INPUT_NAME] or tuple(inputs[0].shape[1:]) != FEATURE_SHAPE:
            found = [(i.name, i.shape) for i in inputs]
            raise TurnModelError(
                f"{str(path)!r} is not a Smart Turn v3 model: inputs {found}, expected "
                f"{INPUT_NAME!r} (batch, {FEATURE_SHAPE[0]}, {FEATURE_SHAPE[1]})"
            )
        self.path = path
        self.threads = threads

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """(B, 80, 800) float32 features -> (B,) P(turn complete), one inference."""
        (output,) = self._session.run(None, {INPUT_NAME: features.astype(np.float32, copy=False)})
        return np.asarray(output, dtype=np.float64).reshape(len(features))

    def completions(self, clips: Sequence[tuple[np.ndarray, int]]) -> np.ndarray:
        """P(turn complete) of each ``(samples, sample_rate)`` clip, in one inference."""
        if not clips:
            return np.zeros(0)
        return self.probabilities(np.stack([turn_features(s, rate) for s, rate in clips]))

    def completion(self, samples: np.ndarray, sample_rate: int) -> float:
        """P(the caller has finished the turn) from the turn's audio so far."""
        return float(self.completions([(samples, sample_rate)])[0])


class _Request:
    __slots__ = ("done", "error", "probability", "sample_rate", "samples", "taken")

    def __init__(self, samples: np.ndarray, sample_rate: int) -> None:
        self.samples = samples
        self.sample_rate = sample_rate
        self.done = trio.Event()
        self.probability = math.nan
        self.error: BaseException | None = None
        self.taken = False


class SmartTurnService(Service):
    """Smart Turn shared by every call: one inference at a time, or batches of concurrent
    requests when ``max_batch`` > 1 (see the module's notes for why 1 is the default).

    Enter :meth:`serving` once for the server's lifetime (the model loads there, so a
    bad path raises :class:`TurnModelError` at start-up). With ``max_batch`` > 1, a
    request that finds the service idle waits at most ``max_batch_delay`` seconds for
    others (none once ``max_batch`` are queued); requests that arrive while a batch runs
    go in the next one without further delay. A cancelled request leaves the queue.
    """

    name = "smart-turn"

    def __init__(
        self,
        model_path: SmartTurnModel | str | Path | None = None,
        *,
        threads: int = 1,
        max_batch_delay: float = 0.004,
        max_batch: int = 1,
        limiter: trio.CapacityLimiter | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_batch_delay < 0:
            raise ValueError(f"max_batch_delay must be >= 0, got {max_batch_delay}")
        self._model_path = model_path
        self.model = model_path if isinstance(model_path, SmartTurnModel) else None
        self.threads = threads
        self.max_batch_delay = max_batch_delay
        self.max_batch = max_batch
        self._limiter = limiter or trio.CapacityLimiter(1)
        self._queue: deque[_Request] = deque()
        self._arrived = trio.Event()
        self._running = False
        self.requests = 0
        self.batches = 0
        self.largest_batch = 0
        self.failures = 0
        self.cancelled = 0
        self._inference_s = 0.0
        self._features_s = 0.0
        self._executor: ThreadPoolExecutor | None = None

    async def setup(self) -> None:
        """Load the model in a thread; a missing or wrong file raises TurnModelError."""
        if self.model is None:
            load = partial(SmartTurnModel, self._model_path, threads=self.threads)
            self.model = await trio.to_thread.run_sync(load)

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[None]:
        """Load the model (errors surface here), then batch for the block's duration."""
        await self.setup()
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="smart-turn", initializer=_run_below_the_loop
        )
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self._batch_loop)
                try:
                    yield
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def completion(self, samples: np.ndarray, sample_rate: int) -> float:
        """P(the caller has finished the turn) in [0, 1] from the turn's audio so far."""
        if not self._running:
            raise RuntimeError("the Smart Turn service is not running; enter serving() first")
        if sample_rate <= 0:
            raise ValueError(f"sample rate must be positive, got {sample_rate}")
        # Only the last 8 s count: check them here, so bad audio fails its own request and
        # not a batch, and copy them, so the caller may reuse its buffer.
        keep = math.ceil((WINDOW_SECONDS + 0.01) * sample_rate)
        samples = np.asarray(samples)
        _as_float(samples[-keep:] if samples.ndim == 1 else samples)
        request = _Request(samples[-keep:].copy(), sample_rate)
        self._queue.append(request)
        self._arrived.set()
        try:
            await request.done.wait()
        except trio.Cancelled:
            if not request.taken:
                self._queue.remove(request)
                self.cancelled += 1
            raise
        if request.error is not None:
            raise TurnModelError(f"Smart Turn inference failed: {request.error}") from (
                request.error
            )
        return request.probability

    async def _batch_loop(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED):
        self._running = True
        task_status.started()
        try:
            while True:
                idle = not self._queue
                while not self._queue:
                    self._arrived = trio.Event()
                    await self._arrived.wait()
                if idle and self.max_batch_delay > 0:
                    # Others may be a moment behind: give them a bounded chance to join.
                    with trio.move_on_after(self.max_batch_delay):
                        while len(self._queue) < self.max_batch:
                            self._arrived = trio.Event()
                            await self._arrived.wait()
                size = min(len(self._queue), self.max_batch)
                batch = [self._queue.popleft() for _ in range(size)]
                for request in batch:
                    request.taken = True
                if batch:
                    await self._run_batch(batch)
        finally:
            self._running = False
            for request in self._queue:
                request.taken = True  # out of the queue: a cancelled asker must not look for it
                request.error = trio.ClosedResourceError("the Smart Turn service stopped")
                request.done.set()
            self._queue.clear()

    async def _run_batch(self, batch: list[_Request]) -> None:
        model = self.model
        assert model is not None
        clips = [(request.samples, request.sample_rate) for request in batch]
        try:
            probabilities, features_s, inference_s = await trio.to_thread.run_sync(
                self._on_inference_thread, model, clips, limiter=self._limiter
            )
        except Exception as exc:
            self.failures += len(batch)
            for request in batch:
                request.error = exc
                request.done.set()
            return
        for request, probability in zip(batch, probabilities, strict=True):
            request.probability = float(probability)
            request.done.set()
        self.requests += len(batch)
        self.batches += 1
        self.largest_batch = max(self.largest_batch, len(batch))
        self._features_s += features_s
        self._inference_s += inference_s

    def _on_inference_thread(
        self, model: SmartTurnModel, clips: Sequence[tuple[np.ndarray, int]]
    ) -> tuple[np.ndarray, float, float]:
        """Run one batch on the niced inference thread; this (Trio's) thread only waits."""
        assert self._executor is not None
        return self._executor.submit(_timed_completions, model, clips).result()

    def statistics(self) -> dict[str, Any]:
        """What the service did: requests answered, inferences run, their sizes and cost."""
        batches = self.batches
        return {
            "requests": self.requests,
            "batches": batches,
            "mean_batch": self.requests / batches if batches else 0.0,
            "largest_batch": self.largest_batch,
            "mean_inference_ms": 1000 * self._inference_s / batches if batches else 0.0,
            "mean_features_ms": 1000 * self._features_s / self.requests if self.requests else 0.0,
            "failures": self.failures,
            "cancelled": self.cancelled,
            "pending": len(self._queue),
        }


def _run_below_the_loop() -> None:
    """Lower this thread's priority (Linux threads are scheduled one by one; elsewhere
    ``setpriority`` would renice the whole process, so it is left as it is)."""
    if sys.platform == "linux":
        with suppress(OSError):  # not allowed here: run at the loop's priority
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), INFERENCE_NICE)


def _timed_completions(
    model: SmartTurnModel, clips: Sequence[tuple[np.ndarray, int]]
) -> tuple[np.ndarray, float, float]:
    """One batch in the worker thread: features, then one inference, each timed."""
    started = time.perf_counter()
    features = np.stack([turn_features(samples, rate) for samples, rate in clips])
    featured = time.perf_counter()
    probabilities = model.probabilities(features)
    return probabilities, featured - started, time.perf_counter() - featured
