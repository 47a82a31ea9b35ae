"""Fake model servers for front-end benchmarks: canned answers over the real OpenAI APIs.

:class:`FakeCannedModelServers` is a real HTTP server in a process of its own that
speaks the three endpoints a voice bot's remote services call, and answers each with
something fixed after a configurable delay:

- ``POST /v1/audio/transcriptions``: a short fixed transcript (``verbose_json`` shape,
  one confident segment), after ``stt_delay_s`` (a model server's decode time);
- ``POST /v1/chat/completions``: a short fixed reply streamed as SSE (the n-th of a
  fixed list for a call's n-th turn), the first token after ``llm_first_token_s``,
  then one word every ``llm_token_s``;
- ``POST /v1/audio/speech``: a short WAV made once at start (a 22.05 kHz syllable-shaped
  tone, Piper's rate, so the bot resamples it as it would real speech), after
  ``tts_delay_s``; ``response_format=pcm`` gets the same sound as raw 24 kHz PCM.

Why fakes: they stand in for GPU model servers, so that a capacity benchmark measures
only the bot front-end (transport, VAD, turn detection, the bus, the HTTP clients).
Real model servers (:mod:`benchmarks.model_servers`) would compete with the front-end
for the CPU and answer in seconds on this machine, which measures the models, not the
front-end. The delays emulate a model server's latency, so voice-to-voice stays
realistic. ``GET /stats`` counts the requests served per endpoint, so a benchmark can
show the front-end really used them; ``GET /health`` is the readiness probe.

    python -m benchmarks.canned_model_servers [--port 0] [--stt-delay-ms 150]
        [--llm-first-token-ms 100] [--tts-delay-ms 100]

prints one JSON line ``{"url": ...}`` once listening, and serves until terminated.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import threading
import time
import wave
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import numpy as np

__all__ = [
    "CannedAnswers",
    "FakeCannedModelServers",
    "canned_speech",
    "main",
    "serve",
]

TRANSCRIPT = "Do you have any rye bread today?"
# One reply per turn of a call, each opening differently: a bot's reply guards regenerate
# a reply that repeats an earlier one, which a single canned reply would make every turn do.
REPLIES = (
    "Yes, we have fresh rye bread today. Shall I put a loaf aside for you?",
    "We bake it every morning at six. Would you like a whole loaf or half?",
    "It costs four dollars a loaf. Can I take a name for the order?",
    "Certainly, that is noted. When would you like to pick it up?",
    "Lovely, it will be ready then. Is there anything else today?",
    "Our sourdough is popular too. Would you like to try some?",
    "No problem at all. We close at six this evening.",
    "Thanks for asking. You can also order on the phone any time.",
)
WAV_RATE = 22050  # Piper's rate: the bot resamples to 8 kHz as it would real speech
PCM_RATE = 24000  # OpenAI's raw PCM rate
SPEECH_S = 1.2
START_TIMEOUT_S = 30.0


def canned_speech(rate: int, seconds: float = SPEECH_S) -> np.ndarray:
    """int16 mono: a 180 Hz voice-like tone with harmonics, loudness rising and falling
    four times a second like syllables, faded in and out."""
    t = np.arange(int(rate * seconds)) / rate
    voice = sum(np.sin(2 * np.pi * 180 * k * t) / k for k in (1, 2, 3, 4))
    syllables = 0.55 + 0.45 * np.sin(2 * np.pi * 4 * t - np.pi / 2)
    fade = np.minimum(1.0, np.minimum(t, seconds - t) / 0.02)
    signal = voice / 2.1 * syllables * fade * 0.6 * 32767
    return np.clip(np.round(signal), -32768, 32767).astype(np.int16)


def _wav(samples: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.astype("<i2").tobytes())
    return buffer.getvalue()


@dataclass(frozen=True, slots=True)
class CannedAnswers:
    """What the fakes answer and how long they take (seconds)."""

    stt_delay_s: float = 0.150
    llm_first_token_s: float = 0.100
    llm_token_s: float = 0.010
    tts_delay_s: float = 0.100
    transcript: str = TRANSCRIPT
    replies: tuple[str, ...] = REPLIES

    def __post_init__(self) -> None:
        delays = (self.stt_delay_s, self.llm_first_token_s, self.llm_token_s, self.tts_delay_s)
        if min(delays) < 0:
            raise ValueError(f"delays must be >= 0 s, got {delays}")
        if not self.transcript.strip() or not self.replies:
            raise ValueError("the transcript and the replies must not be blank")
        if not all(reply.strip() for reply in self.replies):
            raise ValueError("the transcript and the replies must not be blank")

    def reply_to(self, messages: object) -> str:
        """The reply for a conversation: the n-th caller turn of a call gets the n-th
        reply (cycled), so a call never hears the same reply twice in a row."""
        turns = sum(isinstance(m, dict) and m.get("role") == "user" for m in messages or [])
        return self.replies[max(0, turns - 1) % len(self.replies)]

    def describe(self) -> dict[str, Any]:
        return {
            "stt_delay_ms": round(self.stt_delay_s * 1000, 1),
            "llm_first_token_ms": round(self.llm_first_token_s * 1000, 1),
            "llm_per_word_ms": round(self.llm_token_s * 1000, 1),
            "tts_delay_ms": round(self.tts_delay_s * 1000, 1),
            "transcript": self.transcript,
            "replies": list(self.replies),
            "speech_s_per_sentence": SPEECH_S,
        }


def _handler(answers: CannedAnswers, counts: Counter[str]) -> type[BaseHTTPRequestHandler]:
    wav = _wav(canned_speech(WAV_RATE), WAV_RATE)
    pcm = canned_speech(PCM_RATE).astype("<i2").tobytes()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the bot's httpx clients expect

        def log_message(self, *args: object) -> None:
            pass

        def handle(self) -> None:
            with contextlib.suppress(ConnectionError):  # a client that hung up
                super().handle()

        def _count(self, name: str) -> None:
            with lock:
                counts[name] += 1

        def _answer(self, status: int, kind: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            path = self.path.split("?")[0].rstrip("/")
            if path == "/health":
                self._answer(200, "application/json", b'{"status": "ok"}')
            elif path == "/stats":
                with lock:
                    body = json.dumps(dict(counts)).encode()
                self._answer(200, "application/json", body)
            elif path == "/v1/models":
                self._answer(200, "application/json", b'{"object": "list", "data": []}')
            else:
                self._answer(404, "application/json", b'{"error": "not found"}')

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            path = self.path.split("?")[0].rstrip("/")
            try:
                if path == "/v1/audio/transcriptions":
                    self._transcription()
                elif path == "/v1/chat/completions":
                    self._completion(json.loads(body or b"{}"))
                elif path == "/v1/audio/speech":
                    self._speech(json.loads(body or b"{}"))
                else:
                    self._count("unknown")
                    self._answer(404, "application/json", b'{"error": "not found"}')
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up (barge-in, hang-up)

        def _transcription(self) -> None:
            self._count("transcriptions")
            time.sleep(answers.stt_delay_s)
            segment = {"text": answers.transcript, "avg_logprob": -0.2, "no_speech_prob": 0.01}
            document = {"text": answers.transcript, "language": "en", "segments": [segment]}
            self._answer(200, "application/json", json.dumps(document).encode())

        def _completion(self, request: dict[str, Any]) -> None:
            self._count("chat_completions")
            time.sleep(answers.llm_first_token_s)
            reply = answers.reply_to(request.get("messages"))
            words = reply.split(" ")
            if not request.get("stream"):
                message = {"role": "assistant", "content": reply}
                document = {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
                self._answer(200, "application/json", json.dumps(document).encode())
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for index, word in enumerate(words):
                if index:
                    time.sleep(answers.llm_token_s)
                text = word if index == 0 else f" {word}"
                chunk = {"choices": [{"index": 0, "delta": {"content": text}}]}
                self._chunk(f"data: {json.dumps(chunk)}\n\n".encode())
            stop = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            self._chunk(f"data: {json.dumps(stop)}\n\ndata: [DONE]\n\n".encode())
            self._chunk(b"")  # the terminating zero-length chunk

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        def _speech(self, request: dict[str, Any]) -> None:
            self._count("speech")
            time.sleep(answers.tts_delay_s)
            if request.get("response_format") == "pcm":
                self._answer(200, "audio/pcm", pcm)
            else:
                self._answer(200, "audio/wav", wav)

    return Handler


def serve(answers: CannedAnswers, port: int = 0) -> ThreadingHTTPServer:
    """The fakes' HTTP server on loopback (not yet serving: call ``serve_forever``)."""
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler(answers, Counter()))
    server.daemon_threads = True
    return server


class FakeCannedModelServers:
    """The fakes in a process of their own (pinned to ``cpus`` if given), for ``with``.

    ``url`` is the root every remote service of the bot is pointed at; :meth:`stats`
    is what they served."""

    def __init__(self, answers: CannedAnswers | None = None, *, cpus: set[int] | None = None):
        self.answers = answers or CannedAnswers()
        self.cpus = cpus
        self.url = ""
        self._process: subprocess.Popen[str] | None = None

    def argv(self) -> list[str]:
        a = self.answers
        return [
            sys.executable, "-m", "benchmarks.canned_model_servers", "--port", "0",
            "--stt-delay-ms", str(a.stt_delay_s * 1000),
            "--llm-first-token-ms", str(a.llm_first_token_s * 1000),
            "--llm-token-ms", str(a.llm_token_s * 1000),
            "--tts-delay-ms", str(a.tts_delay_s * 1000),
            "--transcript", a.transcript, "--replies", *a.replies,
        ]  # fmt: skip

    def __enter__(self) -> FakeCannedModelServers:
        cpus = self.cpus
        self._process = subprocess.Popen(
            self.argv(),
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
        assert self._process.stdout is not None
        line = _read_line(self._process, START_TIMEOUT_S)
        if not line:
            self.stop()
            raise RuntimeError("the fake model servers did not report their URL")
        self.url = json.loads(line)["url"]
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def stats(self) -> dict[str, int]:
        import urllib.request

        with urllib.request.urlopen(self.url + "/stats", timeout=5) as answer:
            return json.loads(answer.read())

    def stop(self) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _read_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The child's first stdout line, or "" if it exits or stays silent past ``timeout``."""
    result: list[str] = []
    reader = threading.Thread(
        target=lambda: result.append(process.stdout.readline() if process.stdout else ""),
        daemon=True,
    )
    reader.start()
    reader.join(timeout)
    return result[0] if result else ""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--stt-delay-ms", type=float, default=150.0)
    parser.add_argument("--llm-first-token-ms", type=float, default=100.0)
    parser.add_argument("--llm-token-ms", type=float, default=10.0)
    parser.add_argument("--tts-delay-ms", type=float, default=100.0)
    parser.add_argument("--transcript", default=TRANSCRIPT)
    parser.add_argument("--replies", nargs="+", default=list(REPLIES), help="cycled per turn")
    args = parser.parse_args(argv)
    try:
        answers = CannedAnswers(
            stt_delay_s=args.stt_delay_ms / 1000,
            llm_first_token_s=args.llm_first_token_ms / 1000,
            llm_token_s=args.llm_token_ms / 1000,
            tts_delay_s=args.tts_delay_ms / 1000,
            transcript=args.transcript,
            replies=tuple(args.replies),
        )
    except ValueError as exc:
        parser.error(str(exc))
    server = serve(answers, args.port)
    print(json.dumps({"url": f"http://127.0.0.1:{server.server_address[1]}"}), flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
