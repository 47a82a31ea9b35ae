"""Turn taking: does the bot wait for the caller to finish, and answer quickly once they have?

    python -m benchmarks.turn_taking_bench [--quick] [--policies hangover,semantic]

The items of :mod:`benchmarks.turn_corpus` (complete questions and statements,
incomplete phrases continued after 0.5-1.2 s, hesitations with "um"/"uh", short
answers; six voices, 8 kHz μ-law) go through the whole voice bot on a loopback
WebSocket: real Silero VAD, real faster-whisper STT, the echo LLM and real Piper TTS.
Each item is one call (no greeting), so what the bot sent back belongs to that item
alone and nothing of a previous reply is still playing.

Two end-of-turn policies in the same run, on one bot whose models load once (its
``[turns]`` is swapped between calls; the bot reads it per call), interleaved item by
item so the shared machine's noise hits both alike:

- ``hangover``: the fixed silence rule (``min_silence_ms``, 600 ms): the baseline;
- ``semantic``: ``[turns] mode = "semantic"`` (the audio turn model and the words heard,
  bounded by ``max_wait_ms``); skipped, with a message, where ``TurnConfig`` has no
  ``mode`` yet;
- ``semantic-plain`` (only with ``--policies``): the semantic policy as first built
  (fixed 750 ms unsure wait, no STT confidence, no deadline on the turn model).

Results are also given per corpus half (:attr:`benchmarks.turn_corpus.TurnItem.half`:
``tune``, ``held_out`` voices, ``fresh`` items never tuned on). The decisions alone,
free of the machine's load, are :mod:`benchmarks.turn_decision_bench`'s.

Per item the caller side records: when bot audio arrived, the ``interrupt`` events,
and (from the bot's turn records) how many replies it started. Then:

- **voice-to-voice**: the true end of the caller's whole utterance (the parts are
  trimmed clips padded with exact silence, so it is known to the sample) → the first
  bot audio received; p50/p95 on complete utterances and short answers;
- **cut-in**: bot audio received before the caller's whole utterance ended, any
  ``interrupt``, or more than one bot reply for the item (it answered the first half
  separately); the rate on continued utterances and hesitations is the target's;
- **unanswered**: no bot audio after the caller's end within ``--reply-timeout``.

JSON and PNG go to ``benchmarks/results/turn_taking.{json,png}`` (``--quick``:
``turn_taking_quick``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import trio

from benchmarks.report import RESULTS_DIR
from benchmarks.turn_corpus import HALVES, KINDS, RenderedItem, corpus, render
from pipeline.bench import (
    InstrumentedBot,
    describe_models,
    describe_run,
    distribution,
    progress,
    save_figure,
    serve_on_loopback,
    table,
    write_json,
)
from pipeline.bot import BotConfig, VoiceBot, load_config
from pipeline.caller import open_call, speech_end_offset
from stages.turns import TurnConfig

__all__ = [
    "POLICIES",
    "TARGETS",
    "ItemOutcome",
    "Observation",
    "account",
    "has_semantic_mode",
    "policy_configs",
    "run_items",
    "summarize",
]

POLICIES = ("hangover", "semantic", "semantic-plain")
# semantic-plain: the semantic policy as it was before the cues added after its first
# measurements (graded unsure wait, STT confidence, the model's deadline; a 750 ms
# unsure wait): what they buy. Not run by default (--policies to add it).
PLAIN_SEMANTIC = {
    "graded_wait": False,
    "use_confidence": False,
    "use_pitch": False,
    "unsure_wait_ms": 750.0,
    "turn_model_deadline_ms": 60_000.0,
}
RATE = 8000
CALL_END_WAIT_S = 20.0
# issue 14's targets for the new policy (the baseline is reported beside them)
TARGETS = {
    "voice_to_voice_p50_ms": 450.0,
    "voice_to_voice_p95_ms": 700.0,
    "cut_in_rate_pauses_up_to_1s": 0.05,
}
LATENCY_KINDS = ("complete", "short")
CONTINUED_KINDS = ("continued", "hesitation")  # issue 14's cut-in target: unfinished phrases


def has_semantic_mode() -> bool:
    """Whether this checkout's ``TurnConfig`` has the ``mode`` switch (issue 14)."""
    return "mode" in {field.name for field in dataclasses.fields(TurnConfig)}


def policy_configs(
    base: BotConfig, policies: Sequence[str], semantic: dict[str, Any] | None = None
) -> dict[str, BotConfig]:
    """One bot configuration per policy: ``base`` with its ``[turns]`` set to the policy.

    Raises ValueError for an unknown policy, or ``semantic`` where ``TurnConfig`` has no
    ``mode`` (the caller decides whether to skip it).
    """
    configs = {}
    for policy in policies:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; choose from {', '.join(POLICIES)}")
        if not has_semantic_mode():
            if policy != "hangover":
                raise ValueError("TurnConfig has no 'mode' yet: the semantic policy is not here")
            configs[policy] = base  # today's only behaviour is the hangover
            continue
        extra = dict(semantic or {}) if policy != "hangover" else {}
        if policy == "semantic-plain":
            extra.update(PLAIN_SEMANTIC)
        mode = "hangover" if policy == "hangover" else "semantic"
        turns = dataclasses.replace(base.turns, mode=mode, **extra)
        configs[policy] = dataclasses.replace(base, turns=turns)
    return configs


@dataclasses.dataclass(slots=True)
class Observation:
    """What one call showed, on the Trio clock: enough to account for the item."""

    started_at: float  # the item's first sample went out
    speech_end_at: float  # the caller's whole utterance ended (true end)
    media_at: list[float]  # each bot speech message received
    interrupts: list[float]  # each interrupt received
    replies: list[str]  # what the bot heard, one entry per reply it spoke (sent audio of)
    commits: list[str] = dataclasses.field(default_factory=list)  # each turn's end_of_turn
    judgements: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # each pause's


@dataclasses.dataclass(slots=True)
class ItemOutcome:
    """One item under one policy, as the benchmark scores it."""

    policy: str
    item: str
    kind: str
    voice: str
    text: str
    pauses_s: list[float]
    answered: bool
    voice_to_voice_ms: float | None
    cut_in: bool
    cut_in_reasons: list[str]
    bot_messages: int
    interrupts: int
    replies: int
    heard: list[str]
    commits: list[str]
    half: str = "tune"
    judgements: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    # the caller went on after a pause: from the start of their next part to the bot's
    # first interrupt after it (None: no interrupt then)
    stopped_after_ms: float | None = None


def account(rendered: RenderedItem, policy: str, seen: Observation) -> ItemOutcome:
    """Score one call: answered?, voice-to-voice, cut in (and why)."""
    before_end = [t for t in seen.media_at if seen.started_at <= t < seen.speech_end_at]
    after_end = [t for t in seen.media_at if t >= seen.speech_end_at]
    reasons = []
    if before_end:
        reasons.append("spoke_before_end")
    if seen.interrupts:
        reasons.append("interrupt")
    if len(seen.replies) > 1:
        reasons.append("split")
    cut_in = bool(reasons)
    answered = bool(after_end)
    v2v = None
    if answered and not cut_in:  # after a cut-in the first audio after the end is not an answer
        v2v = round((after_end[0] - seen.speech_end_at) * 1000, 1)
    item = rendered.item
    stopped_after_ms = None
    if item.continues:
        went_on_at = seen.speech_end_at - (rendered.speech_end - rendered.part_bounds[1][0]) / RATE
        later = [t for t in seen.interrupts if t >= went_on_at]
        if later:
            stopped_after_ms = round((later[0] - went_on_at) * 1000, 1)
    return ItemOutcome(
        policy=policy,
        item=item.name,
        kind=item.kind,
        voice=item.voice.label,
        text=item.text,
        pauses_s=list(item.pauses_s),
        answered=answered,
        voice_to_voice_ms=v2v,
        cut_in=cut_in,
        cut_in_reasons=reasons,
        bot_messages=len(seen.media_at),
        interrupts=len(seen.interrupts),
        replies=len(seen.replies),
        heard=list(seen.replies),
        commits=list(seen.commits),
        half=item.half,
        judgements=list(seen.judgements),
        stopped_after_ms=stopped_after_ms,
    )


async def call_item(
    url: str, bot: InstrumentedBot, rendered: RenderedItem, *, reply_timeout: float, grace: float
) -> Observation:
    """One call: say the item, wait for the answer (and ``grace`` more for a second
    reply), hang up, and collect the bot's records once it has finished with the call."""
    samples = rendered.samples
    async with open_call(url) as call:
        spoken = await call.speak(samples)
        # the emulator places its speech end at -45 dBFS on 20 ms blocks; the true end
        # is the last part's last sample, the same distance from it on the packet clock
        shift = (rendered.speech_end - speech_end_offset(samples)) / RATE
        speech_end_at = spoken.speech_end_at + shift
        with trio.move_on_at(speech_end_at + reply_timeout):
            await call.wait_for_bot_audio(speech_end_at)
            await trio.sleep(grace)
        media_at = [audio.received_at for audio in call.received if audio.kind == "media"]
        interrupts = list(call.interrupts)
    with trio.fail_after(CALL_END_WAIT_S):
        await bot.wait_ended(call.call_id)
    records = [
        record
        for record in bot.turn_records(call.call_id)
        if record.index > 0 and getattr(record, "source", "caller") == "caller"
    ]
    # a reply counts once the caller heard some of it; a withdrawn one that sent
    # nothing (the bot thought, then the caller went on) was never a reply to them
    replies = [record.caller_text for record in records if record.bot_started_at is not None]
    commits = [str(getattr(record, "end_of_turn", "") or "") for record in records]
    judged = [j for record in records for j in getattr(record, "turn_judgements", ())]
    return Observation(
        spoken.started_at, speech_end_at, media_at, interrupts, replies, commits, judged
    )


async def run_items(
    bot: VoiceBot,
    configs: dict[str, BotConfig],
    items: Sequence[RenderedItem],
    *,
    reply_timeout: float,
    grace: float,
    warm_up: bool = True,
    on_item: Callable[[int, RenderedItem, list[ItemOutcome]], None] | None = None,
) -> list[ItemOutcome]:
    """Serve ``bot`` once and call it with every item under every policy, interleaved
    (the order of the policies alternates from item to item)."""
    instrumented = InstrumentedBot(bot)
    policies = list(configs)
    outcomes: list[ItemOutcome] = []
    async with serve_on_loopback(instrumented) as (_, url):
        if warm_up and items:
            progress("warm-up calls, one per policy (not counted)")
            for policy in policies:
                bot.config = configs[policy]
                await call_item(url, instrumented, items[0], reply_timeout=reply_timeout, grace=0)
        for index, rendered in enumerate(items):
            order = policies if index % 2 == 0 else policies[::-1]
            row = []
            for policy in order:
                bot.config = configs[policy]
                seen = await call_item(
                    url, instrumented, rendered, reply_timeout=reply_timeout, grace=grace
                )
                row.append(account(rendered, policy, seen))
            row.sort(key=lambda outcome: policies.index(outcome.policy))
            outcomes += row
            if on_item is not None:
                on_item(index, rendered, row)
    return outcomes


def _rate(outcomes: Sequence[ItemOutcome]) -> dict[str, Any]:
    cut = sum(outcome.cut_in for outcome in outcomes)
    return {
        "items": len(outcomes),
        "cut_ins": cut,
        "rate": round(cut / len(outcomes), 3) if outcomes else None,
    }


def _answered_whole(outcome: ItemOutcome) -> bool:
    """Answered after the caller's end, by a reply that heard more than the first part
    (Whisper's words differ from the text: the word count is the test)."""
    if not outcome.answered or not outcome.heard:
        return False
    first_part = outcome.text.split(" ... ")[0]
    return len(outcome.heard[-1].split()) > len(first_part.split())


def summarize(outcomes: Sequence[ItemOutcome], policy: str) -> dict[str, Any]:
    """One policy's figures: voice-to-voice, cut-ins, unanswered items, interrupts."""
    mine = [outcome for outcome in outcomes if outcome.policy == policy]
    by_kind = {kind: [o for o in mine if o.kind == kind] for kind in KINDS}
    latency = [o for o in mine if o.kind in LATENCY_KINDS]
    continued = [o for o in mine if o.kind in CONTINUED_KINDS]
    up_to_1s = [o for o in continued if max(o.pauses_s) <= 1.0]
    afterthoughts = [o for o in mine if o.kind == "afterthought"]
    going_on = [o for o in mine if o.pauses_s and max(o.pauses_s) <= 1.0]
    reasons = Counter(reason for o in mine for reason in o.cut_in_reasons)
    return {
        "voice_to_voice_ms": distribution(o.voice_to_voice_ms for o in latency),
        "voice_to_voice_by_kind_ms": {
            kind: distribution(o.voice_to_voice_ms for o in rows) for kind, rows in by_kind.items()
        },
        "cut_in_continued": _rate(continued),
        "cut_in_pauses_up_to_1s": _rate(up_to_1s),
        # a whole sentence, then more: answered in the pause (expected), then stopped
        # when the caller goes on, and the whole answered
        "afterthoughts": {
            **_rate(afterthoughts),
            "answered_whole": sum(_answered_whole(o) for o in afterthoughts),
            "stopped_after_ms": distribution(
                o.stopped_after_ms for o in afterthoughts if o.cut_in and o.stopped_after_ms
            ),
        },
        "cut_in_every_pause_up_to_1s": _rate(going_on),
        "cut_in_by_kind": {kind: _rate(rows) for kind, rows in by_kind.items()},
        "cut_in_reasons": dict(reasons),
        "unanswered": sum(not o.answered for o in mine),
        "unanswered_by_kind": {
            kind: sum(not o.answered for o in rows) for kind, rows in by_kind.items()
        },
        "interrupts_sent": sum(o.interrupts for o in mine),
        "items_with_split_replies": sum(o.replies > 1 for o in mine),
        "commits": dict(Counter(commit for o in mine for commit in o.commits if commit)),
    }


def targets_of(summary: dict[str, Any]) -> dict[str, Any]:
    measured = {
        "voice_to_voice_p50_ms": summary["voice_to_voice_ms"]["p50"],
        "voice_to_voice_p95_ms": summary["voice_to_voice_ms"]["p95"],
        "cut_in_rate_pauses_up_to_1s": summary["cut_in_pauses_up_to_1s"]["rate"],
    }
    return {
        name: {
            "target": limit,
            "measured": measured[name],
            "met": measured[name] is not None and measured[name] <= limit,
        }
        for name, limit in TARGETS.items()
    }


def print_table(results: dict[str, Any]) -> None:
    rows = []
    groups = [("all", results["policies"])]
    groups += list(results.get("policies_by_half", {}).items())
    for group, policy, row in [(g, p, r) for g, rows_ in groups for p, r in rows_.items()]:
        v2v = row["voice_to_voice_ms"]
        cut = row["cut_in_continued"]
        kinds = row["cut_in_by_kind"]
        after = row.get("afterthoughts") or {"cut_ins": 0, "items": 0, "answered_whole": 0}
        rows.append(
            [
                group,
                policy,
                v2v["p50"],
                v2v["p95"],
                f"{cut['cut_ins']}/{cut['items']}",
                f"{after['cut_ins']}/{after['items']} ({after['answered_whole']} whole)",
                kinds["complete"]["cut_ins"] + kinds["short"]["cut_ins"],
                row["unanswered"],
                row["interrupts_sent"],
            ]
        )
    header = ["items", "policy", "v2v p50 ms", "v2v p95 ms", "cut-in cont.+hes."]
    header += ["afterthought cut-in", "cut-in other", "no answer", "interrupts"]
    print(table(header, rows))
    for policy, verdicts in results["targets"].items():
        for name, verdict in verdicts.items():
            met = "met" if verdict["met"] else "NOT met"
            limit = f"target <= {verdict['target']:g}"
            print(f"  {policy} {name}: {verdict['measured']} ({limit}) {met}")
    if results.get("skipped"):
        print(f"  skipped: {results['skipped']}")


def plot(results: dict[str, Any]) -> plt.Figure:
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    policies = list(results["policies"])
    series = [
        [
            o["voice_to_voice_ms"]
            for o in results["items"]
            if o["policy"] == policy and o["kind"] in LATENCY_KINDS and o["voice_to_voice_ms"]
        ]
        for policy in policies
    ]
    if any(series):
        left.boxplot([values or [float("nan")] for values in series], tick_labels=policies)
        spread = np.random.default_rng(0)
        for position, values in enumerate(series, start=1):
            offsets = spread.uniform(-0.12, 0.12, len(values))
            left.scatter(position + offsets, values, s=9, alpha=0.5, color="tab:blue")
    for key, style in (("voice_to_voice_p50_ms", "--"), ("voice_to_voice_p95_ms", ":")):
        label = f"target {key.split('_')[-2]} {TARGETS[key]:g} ms"
        left.axhline(TARGETS[key], color="tab:red", linestyle=style, linewidth=1, label=label)
    left.set_ylabel("voice-to-voice (ms), complete + short")
    left.set_title("end of the caller's speech → first bot audio")
    left.legend(fontsize="small")
    width = 0.8 / max(1, len(policies))
    for offset, policy in enumerate(policies):
        rates = results["policies"][policy]["cut_in_by_kind"]
        values = [100 * (rates[kind]["rate"] or 0.0) for kind in KINDS]
        positions = [k + offset * width for k in range(len(KINDS))]
        right.bar(positions, values, width=width, label=policy)
    right.set_xticks([k + width * (len(policies) - 1) / 2 for k in range(len(KINDS))], KINDS)
    right.axhline(
        100 * TARGETS["cut_in_rate_pauses_up_to_1s"],
        color="tab:red",
        linestyle="--",
        linewidth=1,
        label="target 5%",
    )
    right.set_ylabel("items cut in on (%)")
    right.set_ylim(0, 100)
    right.set_title("bot spoke, interrupted or split before the caller finished")
    right.legend()
    figure.suptitle("turn taking: end-of-turn policies on the same calls (echo LLM, μ-law 8 kHz)")
    figure.tight_layout()
    return figure


def base_config(path: str | None) -> BotConfig:
    """The bot under test: ``path``'s bot.toml (default: all defaults) with the echo LLM
    and no greeting (each item is a call of its own)."""
    return load_config(path).with_overrides(
        llm={"backend": "echo"}, conversation={"greeting": "", "greeting_wav": ""}
    )


def item_progress(total: int) -> Callable[[int, RenderedItem, list[ItemOutcome]], None]:
    def report(index: int, rendered: RenderedItem, row: list[ItemOutcome]) -> None:
        said = []
        for outcome in row:
            if outcome.cut_in:
                verdict = "CUT IN (" + ", ".join(outcome.cut_in_reasons) + ")"
            elif outcome.answered:
                verdict = f"{outcome.voice_to_voice_ms:.0f} ms"
            else:
                verdict = "no answer"
            judged = " ".join(
                f"{j['verdict'][:4]}:{j['probability']:.2f}" for j in outcome.judgements
            )
            said.append(f"{outcome.policy} {verdict}" + (f" [{judged}]" if judged else ""))
        item = rendered.item
        pauses = f", pauses {'/'.join(f'{p:g}' for p in item.pauses_s)} s" if item.pauses_s else ""
        where = f"{item.name} ({item.voice.label}{pauses})"
        progress(f"  [{index + 1}/{total}] {where}: " + "; ".join(said))

    return report


async def main(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any], BotConfig]:
    policies = [name.strip() for name in args.policies.split(",") if name.strip()]
    skipped = None
    if "semantic" in policies and not has_semantic_mode():
        skipped = (
            "semantic: stages.turns.TurnConfig has no 'mode' yet (issue 14's policy has not "
            "landed in this checkout); only the hangover baseline ran"
        )
        progress(f"note: {skipped}")
        policies.remove("semantic")
    if not policies:
        raise SystemExit("no policy to run")
    semantic = {"turn_model": args.turn_model} if args.turn_model else {}
    configs = policy_configs(base_config(args.config), policies, semantic)
    items = corpus(quick=args.quick)
    progress(f"synthesizing {len(items)} items (cached WAVs after the first run)")
    rendered = [render(item) for item in items]
    # the semantic configuration loads everything a policy needs (the turn model too)
    serving = configs.get("semantic", configs[policies[0]])
    progress(f"loading the models; policies {', '.join(policies)}, {len(items)} items each")
    load_before = os.getloadavg()
    if load_before[0] > (os.cpu_count() or 1):
        busy = f"load {load_before[0]:.1f} on {os.cpu_count()} cores"
        progress(f"note: {busy}: figures will be noisy")
    outcomes = await run_items(
        VoiceBot(serving),
        configs,
        rendered,
        reply_timeout=args.reply_timeout,
        grace=args.grace,
        on_item=item_progress(len(rendered)),
    )
    summaries = {policy: summarize(outcomes, policy) for policy in policies}
    by_half = {
        half: {
            policy: summarize([o for o in outcomes if o.half == half], policy)
            for policy in policies
        }
        for half in HALVES
    }
    results: dict[str, Any] = {
        "policies": summaries,
        "policies_by_half": by_half,
        "targets_by_half": {
            half: {policy: targets_of(row) for policy, row in rows.items()}
            for half, rows in by_half.items()
        },
        "targets": {policy: targets_of(row) for policy, row in summaries.items()},
        "skipped": skipped,
        "items": [dataclasses.asdict(outcome) for outcome in outcomes],
    }
    counts = Counter(item.kind for item in items)
    parameters = {
        "quick": args.quick,
        "items": len(items),
        "items_by_kind": dict(counts),
        "voices": sorted({item.voice.label for item in items}),
        "voices_by_half": {
            half: sorted({item.voice.label for item in items if item.half == half})
            for half in HALVES
        },
        "pauses_s": sorted({p for item in items for p in item.pauses_s}),
        "reply_timeout_s": args.reply_timeout,
        "grace_after_answer_s": args.grace,
        "llm": "echo backend (stages.llm.EchoLlm), default template",
        "path": "8 kHz μ-law over a loopback WebSocket, one call per item, no greeting",
        "turns": {policy: dataclasses.asdict(config.turns) for policy, config in configs.items()},
        "load_average_1_5_15_min": {
            "before": [round(value, 2) for value in load_before],
            "after": [round(value, 2) for value in os.getloadavg()],
        },
        "method": (
            "one bot, models loaded once; [turns] swapped between calls; policies interleaved "
            "item by item (order alternating); one warm-up call per policy not counted; shared "
            "2-core machine, figures are noisy"
        ),
    }
    return results, parameters, serving


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two items of each kind")
    parser.add_argument(
        "--policies",
        default="hangover,semantic",
        help="comma-separated, of: " + ",".join(POLICIES),
    )
    parser.add_argument("--config", default=None, help="a bot.toml to start from (echo LLM forced)")
    parser.add_argument("--turn-model", default="", help="semantic: [turns] turn_model")
    parser.add_argument("--reply-timeout", type=float, default=5.0, help="seconds after the end")
    parser.add_argument("--grace", type=float, default=0.5, help="seconds kept after the answer")
    arguments = parser.parse_args()
    results, parameters, serving = trio.run(main, arguments)
    name = "turn_taking_quick" if arguments.quick else "turn_taking"
    document = describe_run(name, results, models=describe_models(serving), parameters=parameters)
    json_path = write_json(RESULTS_DIR / f"{name}.json", document)
    png_path = save_figure(plot(results), RESULTS_DIR / f"{name}.png")
    print_table(results)
    progress(f"wrote {json_path} and {png_path}")
