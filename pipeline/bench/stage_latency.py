"""``bench stages``: per-stage latency of a pipeline over caller audio, on the real transport.

Two views of the same run, because a voice bot has two kinds of stages:

- the **chain** of frame stages (RTP, jitter buffer, codec, VAD, endpointing, or the
  user's own): every frame that leaves the chain carries a stamp from each stage, so
  each stage's share is read off the frames (p50/p95/p99/max per stage);
- the **turn** (endpointing wait → STT → LLM first token → first speakable clause →
  TTS first chunk → first byte sent), from each :class:`~pipeline.bot.conversation.TurnRecord`
  in ms from the end of the caller's speech. Steps overlap (STT and the LLM may start
  speculatively during the end-of-turn wait), so each step is also given as the time
  it *added* on the critical path: ``max(0, its mark - the latest mark before it)``;
  those additions sum to the first byte sent.

And what the caller felt: voice-to-voice, measured in the emulator.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pipeline.bench.instrument import InstrumentedBot, ProbedFrame
from pipeline.bench.loopback import CallerTurn, CallResult, dial, match_records, serve_on_loopback
from pipeline.bench.report import distribution, progress, table
from pipeline.runtime.metrics import LatencySummary

__all__ = [
    "CHAIN",
    "critical_path",
    "dial_all",
    "measure",
    "plot",
    "print_report",
    "summarize",
    "turn_progress",
]

CHAIN = ("endpointing", "stt", "llm_first_token", "first_clause", "tts_first_chunk", "first_send")
COLOURS = ("#9e9e9e", "#1f77b4", "#ff7f0e", "#ffbb78", "#2ca02c", "#d62728")


def critical_path(timings_ms: dict[str, float]) -> dict[str, float]:
    """Time each step of the turn added to the first byte sent (steps run in the shadow
    of an earlier one add 0)."""
    adds: dict[str, float] = {}
    reached = 0.0
    for step in CHAIN:
        if step in timings_ms:
            at = timings_ms[step]
            adds[step] = round(max(0.0, at - reached), 1)
            reached = max(reached, at)
    return adds


async def dial_all(
    url: str,
    bot: InstrumentedBot,
    turns: Sequence[tuple[str, np.ndarray]],
    *,
    per_call: int,
    pause: float,
    reply_timeout: float,
    on_turn: Callable[[CallerTurn], None] | None = None,
) -> list[CallResult]:
    """Speak ``turns`` to the bot at ``url``, ``per_call`` turns per call, one call at a time."""
    calls: list[CallResult] = []
    for start in range(0, len(turns), per_call):
        chunk = turns[start : start + per_call]
        calls.append(
            await dial(url, bot, chunk, pause=pause, reply_timeout=reply_timeout, on_turn=on_turn)
        )
    return calls


async def measure(
    bot: InstrumentedBot,
    turns: Sequence[tuple[str, np.ndarray]],
    *,
    per_call: int,
    pause: float,
    reply_timeout: float,
    on_turn: Callable[[CallerTurn], None] | None = None,
    warm_up: bool = True,
) -> list[CallResult]:
    """Serve ``bot`` on loopback and speak ``turns`` to it (after a warm-up call, not counted)."""
    async with serve_on_loopback(bot) as (_, url):
        if warm_up:
            await warm_up_call(url, bot, turns[0], reply_timeout=reply_timeout)
        return await dial_all(
            url,
            bot,
            turns,
            per_call=per_call,
            pause=pause,
            reply_timeout=reply_timeout,
            on_turn=on_turn,
        )


async def warm_up_call(
    url: str, bot: InstrumentedBot, turn: tuple[str, np.ndarray], *, reply_timeout: float
) -> None:
    """One call of one turn, forgotten: the first inference of each model is slow (lazy
    initialisation, cold caches) and a deployment pays it once, not on every call."""
    progress("warm-up call (not counted)")
    await dial(url, bot, [turn], pause=0.2, reply_timeout=reply_timeout)
    bot.frames.clear()


def turn_progress(total: int) -> Callable[[CallerTurn], None]:
    done = 0

    def report(turn: CallerTurn) -> None:
        nonlocal done
        done += 1
        v2v = turn.voice_to_voice_ms
        said = "no answer" if v2v is None else f"voice-to-voice {v2v:.0f} ms"
        progress(f"  turn {done}/{total} ({turn.source}): {said}")

    return report


def _stage_summaries(frames: Sequence[ProbedFrame]) -> dict[str, dict[str, Any]]:
    seconds: dict[str, list[float]] = {}
    for frame in frames:
        for stage, ms in frame.stages_ms.items():
            seconds.setdefault(stage, []).append(ms / 1000)
    summaries = {}
    for stage, values in seconds.items():
        summary = LatencySummary.of(values)
        summaries[stage] = {
            "count": summary.count,
            "p50_ms": round(summary.p50_ms, 3),
            "p95_ms": round(summary.p95_ms, 3),
            "p99_ms": round(summary.p99_ms, 3),
            "max_ms": round(summary.max_ms, 3),
        }
    return summaries


def _answering_frame(frames: Sequence[ProbedFrame], turn: CallerTurn) -> ProbedFrame | None:
    """The last frame that left the call's chain between the turn's start and its answer."""
    until = turn.first_audio_at if turn.first_audio_at is not None else float("inf")
    inside = [
        frame
        for frame in frames
        if frame.call_id == turn.call_id and turn.started_at <= frame.left_at <= until
    ]
    return inside[-1] if inside else None


def _turn_rows(frames: Sequence[ProbedFrame], calls: Sequence[CallResult]) -> list[dict[str, Any]]:
    rows = []
    for number, call in enumerate(calls, start=1):
        for turn, record in zip(call.turns, match_records(call.turns, call.records), strict=True):
            row: dict[str, Any] = {
                "call": number,
                "call_id": call.call_id,
                "turn": turn.turn,
                "source": turn.source,
                "caller_seconds": turn.caller_seconds,
                "voice_to_voice_ms": turn.voice_to_voice_ms,
                "bot_messages": turn.bot_messages,
                "bot_audio_s": turn.bot_audio_s,
                "interrupts": len(turn.interrupts),
            }
            frame = _answering_frame(frames, turn)
            if frame is not None:
                row.update(chain_frame=frame.kind, chain_ms=frame.stages_ms)
            if record is not None:
                timings = {
                    step: record.timings_ms[step] for step in CHAIN if step in record.timings_ms
                }
                row.update(
                    caller_text=record.caller_text,
                    reply_text=record.heard_text,
                    interrupted=record.interrupted,
                    llm_failed=record.llm_failed,
                    timings_ms=timings,
                    critical_path_ms=critical_path(timings),
                    stt_compute_ms=record.timings_ms.get("stt_compute"),
                )
                if "first_send" in timings and turn.voice_to_voice_ms is not None:
                    # transport to the caller + the server's estimate of the end of speech
                    row["caller_minus_server_ms"] = round(
                        turn.voice_to_voice_ms - timings["first_send"], 1
                    )
            rows.append(row)
    return rows


def summarize(frames: Sequence[ProbedFrame], calls: Sequence[CallResult]) -> dict[str, Any]:
    """Everything ``bench stages`` reports, as one JSON-ready dict (times in ms)."""
    turns = _turn_rows(frames, calls)
    stages = _stage_summaries(frames)
    chain: dict[str, Any] = {}
    for step in CHAIN:
        marks = [row["timings_ms"][step] for row in turns if step in row.get("timings_ms", {})]
        if marks:
            chain[step] = {
                "at_ms": distribution(marks),
                "adds_ms": distribution(
                    row["critical_path_ms"][step]
                    for row in turns
                    if step in row.get("critical_path_ms", {})
                ),
            }
    v2v = distribution(row["voice_to_voice_ms"] for row in turns)
    summary: dict[str, float | int | None] = {
        "turns": len(turns),
        "turns_answered": v2v["count"],
        "voice_to_voice_p50_ms": v2v["p50"],
        "voice_to_voice_p95_ms": v2v["p95"],
        "voice_to_voice_max_ms": v2v["max"],
    }
    for stage, row in stages.items():
        summary[f"stage.{stage}.p50_ms"] = row["p50_ms"]
        summary[f"stage.{stage}.p95_ms"] = row["p95_ms"]
    for step, row in chain.items():
        summary[f"turn.{step}.at_p50_ms"] = row["at_ms"]["p50"]
        summary[f"turn.{step}.at_p95_ms"] = row["at_ms"]["p95"]
    return {
        "summary": summary,
        "stages": stages,
        "frames_leaving_chain": dict(Counter(frame.kind for frame in frames)),
        "frame_age_ms": distribution(frame.age_ms for frame in frames),
        "chain": chain,
        "voice_to_voice_ms": v2v,
        "turns": turns,
    }


def print_report(results: dict[str, Any], title: str = "") -> None:
    """The readable tables: stages, turn steps, every turn, voice-to-voice."""
    if title:
        print(title)
    kinds = ", ".join(f"{n} {kind}" for kind, n in results["frames_leaving_chain"].items())
    print(f"\nper-stage latency, from the stamps of frames leaving the chain ({kinds or 'none'})")
    rows = [
        [stage, s["count"], s["p50_ms"], s["p95_ms"], s["p99_ms"], s["max_ms"]]
        for stage, s in results["stages"].items()
    ]
    print(table(["stage", "frames", "p50 ms", "p95 ms", "p99 ms", "max ms"], rows))
    if results["chain"]:
        print("\nturn steps, ms from the end of the caller's speech (server clock)")
        rows = [
            [
                step,
                c["at_ms"]["count"],
                c["at_ms"]["p50"],
                c["at_ms"]["p95"],
                c["at_ms"]["max"],
                c["adds_ms"]["p50"],
                c["adds_ms"]["p95"],
            ]
            for step, c in results["chain"].items()
        ]
        header = ["step", "turns", "at p50", "at p95", "at max", "adds p50", "adds p95"]
        print(table(header, rows))
    turns = results["turns"]
    if any("timings_ms" in row for row in turns):
        print("\nper turn (ms: server marks from the end of caller speech; v2v at the caller)")
        columns, source = list(CHAIN), "timings_ms"
        header = ["turn", "endpoint", "stt", "llm tok", "clause", "tts", "send", "v2v"]
    else:
        print("\nper turn (ms: chain stages of the frame that answered it; v2v at the caller)")
        columns, source = list(results["stages"]), "chain_ms"
        header = ["turn", *columns, "v2v"]
    rows = [
        [
            f"{row['call']}.{row['turn']} {row['source']}",
            *(row.get(source, {}).get(column) for column in columns),
            row["voice_to_voice_ms"],
        ]
        for row in turns
    ]
    print(table(header, rows))
    v2v = results["voice_to_voice_ms"]
    print(
        f"\nvoice-to-voice at the caller: p50 {_ms(v2v['p50'])}, p95 {_ms(v2v['p95'])}, "
        f"max {_ms(v2v['max'])} ({v2v['count']} of {len(results['turns'])} turns answered)"
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def plot(
    results: dict[str, Any],
    frames: Sequence[ProbedFrame],
    title: str,
    extra: dict[str, list[float]] | None = None,
) -> Any:
    """Per-turn stacked steps (caller's voice-to-voice as a dot) and latency distributions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (bars, steps, stages) = plt.subplots(
        1, 3, figsize=(17, 5), gridspec_kw={"width_ratios": [2.2, 1.2, 1.2]}
    )
    turns = results["turns"]
    x = np.arange(len(turns))
    bottom = np.zeros(len(turns))
    if any("critical_path_ms" in row for row in turns):
        segments = list(zip(CHAIN, COLOURS, strict=True))
        source, what = "critical_path_ms", "time each turn step added (server)"
    else:  # no turn records (not the voice bot): the chain stages of the answering frame
        palette = plt.get_cmap("tab10")
        names = list(results["stages"])
        segments = [(name, palette(i % 10)) for i, name in enumerate(names)]
        source, what = "chain_ms", "each chain stage's share of the answering frame (server)"
    for step, colour in segments:
        heights = np.array([row.get(source, {}).get(step, 0.0) for row in turns])
        if heights.any():
            bars.bar(x, heights, bottom=bottom, color=colour, label=step, width=0.8)
            bottom += heights
    v2v = [row["voice_to_voice_ms"] for row in turns]
    bars.scatter(
        x,
        [np.nan if v is None else v for v in v2v],
        color="black",
        marker="D",
        s=18,
        zorder=3,
        label="voice-to-voice (caller)",
    )
    bars.set_xticks(x, [f"{r['call']}.{r['turn']}" for r in turns], fontsize=7, rotation=90)
    bars.set_xlabel("call.turn")
    bars.set_ylabel("ms from the end of the caller's speech")
    bars.set_title(f"each turn: {what}; voice-to-voice (caller)", fontsize=9)
    top = max([*bottom, *(v for v in v2v if v is not None), 1.0])
    bars.set_ylim(0, top * 1.3)  # room for the legend above the bars
    bars.legend(fontsize=7, loc="upper center", ncol=4)
    bars.grid(True, axis="y", alpha=0.3)

    groups = {
        step: [r["critical_path_ms"][step] for r in turns if step in r.get("critical_path_ms", {})]
        for step in CHAIN
    }
    groups = {k: v for k, v in groups.items() if v}
    groups["voice-to-voice"] = [v for v in v2v if v is not None]
    groups.update(extra or {})
    _boxes(steps, groups, "turn steps (time added) and what the caller felt", "ms")

    samples: dict[str, list[float]] = {stage: [] for stage in results["stages"]}
    for frame in frames:
        for stage, ms in frame.stages_ms.items():
            samples.setdefault(stage, []).append(ms)
    _boxes(stages, samples, "chain stages (frames leaving the chain)", "ms (log)", log=True)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure


def _horizontal() -> dict[str, Any]:
    """Horizontal boxes: ``orientation`` since Matplotlib 3.10, ``vert`` before."""
    import matplotlib

    major, minor = (int(part) for part in matplotlib.__version__.split(".")[:2])
    return {"orientation": "horizontal"} if (major, minor) >= (3, 10) else {"vert": False}


def _boxes(
    axis: Any, groups: dict[str, list[float]], title: str, unit: str, *, log: bool = False
) -> None:
    names = [name for name, values in groups.items() if values]
    data = [[max(v, 1e-3) if log else v for v in groups[name]] for name in names]
    if data:
        axis.boxplot(data, whis=(5, 95), showfliers=True, **_horizontal())
        axis.set_yticks(range(1, len(names) + 1), names, fontsize=8)
        axis.invert_yaxis()
    if log:
        axis.set_xscale("log")
    axis.set_xlabel(f"{unit}; box p25-p75, whiskers p5-p95")
    axis.set_title(title, fontsize=9)
    axis.grid(True, axis="x", alpha=0.3)
