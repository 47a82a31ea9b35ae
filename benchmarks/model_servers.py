"""Real OpenAI-compatible model servers for tests and benchmarks, started offline on loopback.

- STT: ``faster-whisper-server`` (PyPI) on the bundled Whisper tiny.en directory;
- LLM: llama-cpp-python's server (``python -m llama_cpp.server``, its ``[server]`` extra)
  on the bundled SmolLM2 GGUF;
- TTS: ``local-tts-studio`` (PyPI), a Piper server with an OpenAI ``/v1/audio/speech``,
  on the bundled en_US-joe-medium voice (linked into a private data directory).

Each runs as a subprocess with one thread for its model and no hub access
(``HF_HUB_OFFLINE``); :func:`start` polls its readiness URL and :meth:`ModelServer.stop`
ends it. :class:`FaultyProxy` sits in front of a real server to make it misbehave on
demand (HTTP 500, wrong JSON, a body that is not audio, a slow answer) while counting
what reaches it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO

from stages.llm_local import bundled_model_path as bundled_llm
from stages.stt import bundled_model_path as bundled_whisper
from stages.tts import bundled_voice_path

__all__ = [
    "FaultyProxy",
    "ModelServer",
    "free_port",
    "llm_command",
    "speech_command",
    "start",
    "whisper_command",
]

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def free_port() -> int:
    """A loopback port nobody listens on (right now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ModelServer:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: IO[bytes]

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def start(
    name: str,
    argv: list[str],
    port: int,
    ready_path: str,
    log_dir: Path,
    *,
    env: dict[str, str] | None = None,
) -> ModelServer:
    """Start a server and return once ``ready_path`` answers 200 (or fail with its log)."""
    log = open(log_dir / f"{name}.log", "w+b")  # noqa: SIM115 (closed by stop())
    process = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **OFFLINE_ENV, **(env or {})}
    )
    server = ModelServer(name, f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            with urllib.request.urlopen(server.url + ready_path, timeout=2) as answer:
                if answer.status == 200:
                    return server
        except (OSError, urllib.error.URLError):
            time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"{name} did not start:\n{server.output()}")


def whisper_command(port: int) -> list[str]:
    return [
        sys.executable, "-m", "faster_whisper_server", str(bundled_whisper()),
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip


def llm_command(port: int) -> list[str]:
    return [
        sys.executable, "-m", "llama_cpp.server", "--model", str(bundled_llm()),
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "1024", "--n_threads", "1",
        "--n_threads_batch", "1", "--verbose", "False",
    ]  # fmt: skip


def speech_command(port: int, data_dir: Path) -> tuple[list[str], dict[str, str]]:
    """local-tts-studio serving the bundled Piper voice as its API's default voice."""
    voices = data_dir / "voices"
    voices.mkdir(parents=True, exist_ok=True)
    model = bundled_voice_path()
    for source in (model, model.with_name(model.name + ".json")):
        target = voices / source.name
        if not target.exists():
            target.symlink_to(source)
    settings = {
        "voices_dir": str(voices),
        "device": "cpu",
        "api_default_voice": model.name.removesuffix(".onnx"),
    }
    (data_dir / "settings.json").write_text(json.dumps(settings))
    local_tts = shutil.which("local-tts") or "local-tts"
    command = [local_tts, "--host", "127.0.0.1", "--port", str(port)]
    return command, {"LOCAL_TTS_DATA_DIR": str(data_dir)}


@dataclass
class FaultyProxy:
    """A real HTTP server in front of ``upstream`` that forwards every request, or, as
    ``mode`` says, answers ``500``, ``bad-json`` (200 with JSON of the wrong shape),
    ``not-audio`` (200 with an HTML page), or ``slow`` (forwards after ``delay_s``).
    ``seen`` counts the requests that reached it."""

    upstream: str
    mode: str = "pass"
    delay_s: float = 2.0
    seen: int = 0
    _server: ThreadingHTTPServer | None = field(default=None, repr=False)
    _closed: threading.Event = field(default_factory=threading.Event, repr=False)

    def set(self, mode: str) -> None:
        self.mode = mode

    def heal(self) -> None:
        self.mode = "pass"

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FaultyProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                proxy.seen += 1
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if proxy.mode == "500":
                    return self._answer(500, "application/json", b'{"error": "overloaded"}')
                if proxy.mode == "bad-json":
                    return self._answer(200, "application/json", b'{"transcript": 42}')
                if proxy.mode == "not-audio":
                    return self._answer(200, "audio/wav", b"<html><body>Oops</body></html>")
                if proxy.mode == "slow" and proxy._closed.wait(proxy.delay_s):
                    return None  # closed while "thinking": the client is long gone
                headers = {"Content-Type": self.headers.get("Content-Type", "")}
                request = urllib.request.Request(proxy.upstream + self.path, body, headers)
                try:
                    with urllib.request.urlopen(request, timeout=60) as answer:
                        kind = answer.headers.get("Content-Type", "")
                        return self._answer(answer.status, kind, answer.read())
                except urllib.error.HTTPError as error:
                    return self._answer(error.code, "application/json", error.read())
                except OSError:  # the client gave up (slow mode) or upstream went away
                    return None

            def _answer(self, status: int, kind: str, body: bytes) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", kind)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client timed out and closed its end

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._closed.set()
        self._server.shutdown()
        self._server.server_close()
