"""Soak: a server process under a long mix of calls; does anything grow per call?

    python -m benchmarks.soak                     # 30 minutes, the real models
    python -m benchmarks.soak --minutes 5 --models fake

One server process (this script with ``--serve``) hosts the voice bot on ``/voice``, a
parrot on ``/parrot`` and the conversation events on ``/events``, on loopback. The
callers, in this process, keep a mix going for ``--minutes``:

- voice calls: the greeting, two questions answered, or a barge-in over a long answer,
  and every fifth call re-dialled under the same callId while it is live (the older
  connection is replaced, 1008);
- parrot calls with and without packet loss and jitter;
- bad input: garbage and oversized messages before registration, junk media and
  unknown events after it, media for another call, a connection that never
  registers, garbage on ``/events``, garbage HTTP and webhooks.

The voice bot runs on the real models (Silero VAD, faster-whisper tiny.en, Piper, the
configured turn detector) with the echo LLM: the models' own memory and threads are
what a soak must watch, and the echo LLM keeps the replies short and the cores free for
them (a local LLM's growth would be llama.cpp's). ``--models fake`` uses the named fakes
of ``tests/fakes.py`` instead (no model loads; a quick check of our own code).

Every ``--sample-s`` the server reports its RSS, open fds, threads, Trio tasks and
Python objects (``GET /soak-stats``). After ``--warmup`` of the run, each is fitted
linearly against the number of completed calls: the slope is the growth per call.
The last sample is taken after every call has ended, to see what returns to idle.
Results: ``benchmarks/results/soak.json`` and ``soak.png``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from pipeline.bot import (
    BotConfig,
    ConversationBus,
    ConversationConfig,
    ParrotBot,
    VoiceBot,
    serve_events,
)
from pipeline.caller import Impairments, RegistrationError, converse, open_call
from pipeline.protocol import ClientProtocol
from pipeline.server import HttpResponse, ServerConfig, VoiceStreamServer, configure_logging
from stages.guards import ReplyConfig
from stages.llm import EchoLlm, LlmConfig

ECHO = "You said: {text}. Thank you for calling, let me check that for you right away."
QUESTIONS = [
    "What time do you open tomorrow morning?",
    "Can I book a table for four people tonight?",
    "Do you deliver to the city centre?",
]
INTERRUPTION = "Sorry, actually I only wanted to know about Sunday."
METRICS = ("rss_mb", "fds", "threads", "trio_tasks", "gc_objects")


# --- the server process -------------------------------------------------------------------


def count_tasks(task: Any) -> int:
    return 1 + sum(
        count_tasks(child) for nursery in task.child_nurseries for child in nursery.child_tasks
    )


def process_sample(server: VoiceStreamServer) -> dict[str, Any]:
    status = Path("/proc/self/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "rss_mb": round(int(fields["VmRSS"].split()[0]) / 1024, 2),
        "threads": int(fields["Threads"]),
        "fds": len(os.listdir("/proc/self/fd")),
        "trio_tasks": count_tasks(trio.lowlevel.current_root_task()),
        "gc_objects": len(gc.get_objects()),
        "live_calls": len(server.calls),
        "server": dict(server.counters),
        "http": dict(server.front.counters),
    }


def soak_bot(models: str, bus: ConversationBus) -> VoiceBot:
    config = BotConfig(
        conversation=ConversationConfig(greeting="Hello, you are through to the soak test."),
        llm=LlmConfig(backend="echo"),
        reply=ReplyConfig(no_repeats=False),  # the echo repeats itself on purpose
    )
    services: dict[str, Any] = {"llm": EchoLlm(ECHO)}
    if models == "fake":
        from tests.fakes import FakeEnergyVad, FakeScriptedStt, FakeToneTts

        lines = QUESTIONS * 100_000
        services |= {"vad": FakeEnergyVad(), "stt": FakeScriptedStt(lines), "tts": FakeToneTts()}
    return VoiceBot(config, messages=bus, **services)


async def serve(models: str) -> None:
    configure_logging("warning")
    bus = ConversationBus()
    config = ServerConfig(host="127.0.0.1", port=0, registration_timeout=3.0)
    server = VoiceStreamServer(
        config, bots={"/voice": soak_bot(models, bus), "/parrot": ParrotBot()}
    )
    server.add_websocket_route("/events", partial(serve_events, bus=bus, api_key=None))

    async def stats(request: Any) -> HttpResponse:
        return HttpResponse.json(200, process_sample(server))

    server.add_http_route("GET", "/soak-stats", stats)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            listening = await nursery.start(server.serve)
            print(json.dumps({"port": listening.port}), flush=True)
            async for _ in signals:
                server.shutdown()
                break


# --- the callers ----------------------------------------------------------------------------


class Soak:
    def __init__(self, base: str, http_port: int, seed: int) -> None:
        self.base = base
        self.http_port = http_port
        self.rng = random.Random(seed)
        self.completed: Counter[str] = Counter()  # by kind of call
        self.outcomes: Counter[str] = Counter()  # what each one saw
        self.samples: list[dict[str, Any]] = []
        self.started = trio.current_time()
        self.sequence = 0

    def next_id(self, kind: str) -> str:
        self.sequence += 1
        return f"soak-{kind}-{self.sequence}"

    @property
    def total(self) -> int:
        return sum(self.completed.values())

    async def stats(self) -> dict[str, Any]:
        stream = await trio.open_tcp_stream("127.0.0.1", self.http_port)
        async with stream:
            await stream.send_all(
                b"GET /soak-stats HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n"
            )
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
        return json.loads(data.split(b"\r\n\r\n", 1)[1])

    async def sample(self, phase: str) -> None:
        document = await self.stats()
        document |= {
            "t_s": round(trio.current_time() - self.started, 1),
            "completed": self.total,
            "by_kind": dict(self.completed),
            "phase": phase,
        }
        self.samples.append(document)
        shown = {key: document[key] for key in ("t_s", "phase", "completed", *METRICS)}
        print(json.dumps(shown), file=sys.stderr, flush=True)  # progress

    # voice --------------------------------------------------------------------------------

    async def voice_call(self, speech: dict[str, np.ndarray]) -> None:
        call_id = self.next_id("voice")
        number = self.completed["voice"] + self.completed["voice_failed"]
        async with open_call(self.base + "voice", call_id=call_id) as call:
            with trio.move_on_after(20):
                await call.wait_for_greeting()
            await call.listen_until_quiet(0.3)
            if number % 3 == 2:
                await self.barge_in(call, speech)
            else:
                turns = [(q, speech[q]) for q in self.rng.sample(QUESTIONS, 2)]
                reports = await converse(call, turns, pause=0.3, reply_timeout=20)
                answered = sum(report.bot_messages > 0 for report in reports)
                self.outcomes[f"voice_turns_answered_{answered}_of_2"] += 1
            if number % 5 == 4:
                await self.redial(call_id, speech)
                with trio.move_on_after(10):
                    self.outcomes[f"voice_replaced_closed_{await call.wait_closed()}"] += 1

    async def barge_in(self, call: Any, speech: dict[str, np.ndarray]) -> None:
        spoken = await call.speak(speech[QUESTIONS[0]])
        with trio.move_on_after(20):
            await call.wait_for_bot_audio(spoken.speech_end_at)
            await trio.sleep(1.0)  # the bot is talking
        before = len(call.interrupts)
        barged = await call.speak(speech[INTERRUPTION])
        with trio.move_on_after(20):
            await call.wait_for_bot_audio(barged.speech_end_at)
        await call.listen_until_quiet(0.3)
        self.outcomes[f"barge_in_interrupts_{len(call.interrupts) - before}"] += 1

    async def redial(self, call_id: str, speech: dict[str, np.ndarray]) -> None:
        async with open_call(self.base + "voice", call_id=call_id) as again:
            reports = await converse(again, [("q", speech[QUESTIONS[1]])], pause=0.3)
            self.outcomes[f"redial_answered_{reports[0].bot_messages > 0}"] += 1

    # parrot -------------------------------------------------------------------------------

    async def parrot_call(self, speech: dict[str, np.ndarray]) -> None:
        impaired = self.rng.random() < 0.5
        impairments = Impairments(loss=0.03, jitter_ms=30, seed=self.rng.randrange(1000))
        async with open_call(
            self.base + "parrot",
            call_id=self.next_id("parrot"),
            impairments=impairments if impaired else None,
        ) as call:
            spoken = await call.speak(speech[self.rng.choice(QUESTIONS)])
            with trio.move_on_after(10):
                await call.wait_for_bot_audio(spoken.speech_end_at - 1.0)
            await call.listen_until_quiet(0.3)
            self.outcomes[f"parrot_echoed_{bool(call.received)}"] += 1

    # bad input ----------------------------------------------------------------------------

    async def closed_with(self, path: str, messages: list[str | bytes], register: bool) -> str:
        async with open_websocket_url(self.base + path) as ws:
            if register:
                protocol = ClientProtocol(self.next_id("bad"), "5550100")
                await ws.send_message(protocol.connect())
                await ws.get_message()
            for message in messages:
                await ws.send_message(message)
            try:
                with trio.fail_after(5):
                    while True:
                        await ws.get_message()
            except ConnectionClosed as closed:
                return str(closed.reason.code)
            except trio.TooSlowError:
                return "still open"

    async def raw_http(self, request: bytes) -> str:
        stream = await trio.open_tcp_stream("127.0.0.1", self.http_port)
        async with stream:
            await stream.send_all(request)
            with trio.move_on_after(5):
                reply = await stream.receive_some(200)
                return reply.split(b" ", 2)[1].decode() if reply.startswith(b"HTTP") else "?"
        return "no answer"

    async def bad_input(self, kind: int) -> None:
        junk_rtp = bytes(self.rng.randrange(256) for _ in range(50))
        cases = {
            0: ("garbage_first", lambda: self.closed_with("voice", ["not json at all"], False)),
            1: ("oversized_first", lambda: self.closed_with("voice", ["x" * 40_000], False)),
            2: (
                "junk_after_registration",
                lambda: self.closed_with(
                    "voice",
                    ['{"event":', '{"event":"media","payload":"%%%"}', junk_rtp, '{"event":"x"}'],
                    True,
                ),
            ),
            3: (
                "media_for_another_call",
                lambda: self.closed_with(
                    "parrot", ['{"event":"media","callId":"other","payload":[1,2]}'], True
                ),
            ),
            4: ("never_registers", lambda: self.closed_with("voice", [], False)),
            5: (
                "events_garbage",
                lambda: self.closed_with(
                    "events", ['{"type":"subscribe","channelIds":["*"]}', "[" * 5000, "{}"], False
                ),
            ),
            6: ("http_garbage", lambda: self.raw_http(b"GARBAGE / NOPE\r\n\r\n")),
            7: (
                "webhook_junk",
                lambda: self.raw_http(
                    b"POST /callbacks HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n[[[[["
                ),
            ),
        }
        name, run = cases[kind % len(cases)]
        try:
            outcome = await run()
        except (OSError, ConnectionClosed, RegistrationError) as exc:
            outcome = type(exc).__name__
        self.outcomes[f"bad_{name}_{outcome}"] += 1

    # the mix ------------------------------------------------------------------------------

    async def worker(self, kind: str, speech: dict[str, np.ndarray]) -> None:
        round_ = 0
        while True:
            round_ += 1
            try:
                if kind == "voice":
                    await self.voice_call(speech)
                elif kind == "parrot":
                    await self.parrot_call(speech)
                else:
                    await self.bad_input(round_)
                self.completed[kind] += 1
            except (OSError, ConnectionClosed, RegistrationError, trio.TooSlowError) as exc:
                self.completed[f"{kind}_failed"] += 1
                self.outcomes[f"{kind}_error_{type(exc).__name__}"] += 1
            await trio.sleep(self.rng.uniform(0.1, 0.5))


async def drive(port: int, options: argparse.Namespace, speech: dict[str, np.ndarray]) -> Soak:
    soak = Soak(f"ws://127.0.0.1:{port}/", port, options.seed)
    warmup_s = options.minutes * 60 * options.warmup
    await soak.sample("idle")
    async with trio.open_nursery() as sampler:

        async def keep_sampling() -> None:
            while True:
                await trio.sleep(options.sample_s)
                elapsed = trio.current_time() - soak.started
                await soak.sample("warmup" if elapsed < warmup_s else "steady")

        sampler.start_soon(keep_sampling)
        with trio.move_on_after(options.minutes * 60):
            async with trio.open_nursery() as callers:
                for _ in range(options.voice):
                    callers.start_soon(soak.worker, "voice", speech)
                for _ in range(options.parrot):
                    callers.start_soon(soak.worker, "parrot", speech)
                callers.start_soon(soak.worker, "bad", speech)
        sampler.cancel_scope.cancel()
    await trio.sleep(options.settle_s)  # every call ends; see what returns to idle
    await soak.sample("after")
    return soak


# --- analysis -------------------------------------------------------------------------------


def growth(samples: list[dict[str, Any]], *, second_half: bool = False) -> dict[str, Any]:
    """Linear fit of each metric against completed calls over the steady samples (or
    their second half: the server keeps the summaries of its last 1,000 calls, a
    bounded history that grows until it is full and must not be taken for a leak)."""
    steady = [s for s in samples if s["phase"] == "steady"]
    if second_half:
        steady = steady[len(steady) // 2 :]
    if len(steady) < 4:
        return {"error": "fewer than 4 steady samples: run longer or sample more often"}
    calls = np.array([s["completed"] for s in steady], dtype=float)
    fits: dict[str, Any] = {"samples": len(steady), "calls": int(calls[-1] - calls[0])}
    for metric in METRICS:
        values = np.array([s[metric] for s in steady], dtype=float)
        (slope, _), cov = np.polyfit(calls, values, 1, cov=True)
        fits[metric] = {
            "per_call": float(slope),
            "per_call_stderr": float(np.sqrt(cov[0][0])),
            "first": float(values[0]),
            "last": float(values[-1]),
            "max": float(values.max()),
        }
    return fits


def figure(results: dict[str, Any]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = results["samples"]
    fig, axes = plt.subplots(len(METRICS), 1, figsize=(9, 2.2 * len(METRICS)), sharex=True)
    minutes = [s["t_s"] / 60 for s in samples]
    for axis, metric in zip(axes, METRICS, strict=True):
        axis.plot(minutes, [s[metric] for s in samples], marker=".")
        fit = results["growth"].get(metric)
        label = metric
        if isinstance(fit, dict):
            label += f"  ({fit['per_call']:+.4g}/call ± {fit['per_call_stderr']:.2g})"
        axis.set_ylabel(metric)
        axis.set_title(label, fontsize=9, loc="left")
        twin = axis.twinx()
        twin.plot(minutes, [s["completed"] for s in samples], color="grey", alpha=0.4)
        twin.set_ylabel("calls done", color="grey", fontsize=8)
    axes[-1].set_xlabel("minutes")
    fig.suptitle(f"soak ({results['models']} models): server process over time", fontsize=10)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--models", choices=["real", "fake"], default="real")
    parser.add_argument("--voice", type=int, default=2, help="voice callers at once")
    parser.add_argument("--parrot", type=int, default=3, help="parrot callers at once")
    parser.add_argument("--sample-s", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=0.2, help="share of the run left out")
    parser.add_argument("--settle-s", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--name", default="soak", help="results file name")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.serve:
        trio.run(serve, options.models)
        return 0
    from benchmarks.report import write_report
    from benchmarks.speech_corpus import speech as render

    speech = {text: render(text) for text in [*QUESTIONS, INTERRUPTION]}
    command = [sys.executable, "-m", "benchmarks.soak", "--serve", "--models", options.models]
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log)
        try:
            assert server.stdout is not None
            port = json.loads(server.stdout.readline())["port"]
            soak = trio.run(drive, port, options, speech)
        finally:
            server.send_signal(signal.SIGTERM)
            exit_code = server.wait(timeout=60)
        log.seek(0)
        stderr = log.read().decode(errors="replace").splitlines()
    results = {
        "models": options.models,
        "minutes": options.minutes,
        "callers": {"voice": options.voice, "parrot": options.parrot, "bad_input": 1},
        "completed": dict(soak.completed),
        "outcomes": dict(sorted(soak.outcomes.items())),
        "growth": growth(soak.samples),
        "growth_second_half": growth(soak.samples, second_half=True),
        "idle": {m: soak.samples[0][m] for m in METRICS},
        "after": {m: soak.samples[-1][m] for m in METRICS},
        "server_exit_code": exit_code,
        "server_tracebacks": sum("Traceback" in line for line in stderr),
        "server_log_lines": len(stderr),
        "server_log_tail": stderr[-5:],
        "samples": soak.samples,
    }
    write_report(options.name, results, figure(results))
    summary = {k: v for k, v in results.items() if k != "samples"}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
