"""The jitter buffer (pure, explicit times) and its Trio driver (virtual time)."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import Concealment, RawPacket, open_chain
from pipeline.runtime.timers import SLACK
from stages.jitter import JitterBuffer, JitterConfig, JitterOutput, PushOutcome
from stages.playout import JitterStage
from stages.rtp import RtpDepacketizer, RtpFrame, RtpPacket

N = 160  # samples (and μ-law bytes) per 20 ms frame
FS = 0.02
SSRC = 0x1234_5678
START = 1.0  # arrival of the first packet; first frame due START + delay
# a config whose target equals its initial delay while there is no jitter: no adaptation
STEADY = JitterConfig(min_delay=0.06, initial_delay=0.06, concealment="silence")
NONE, SILENCE, REPEAT = Concealment.NONE, Concealment.SILENCE, Concealment.REPEAT


def audio(index: int, size: int = N) -> bytes:
    """A loud payload unique to ``index`` (never taken for a quiet frame)."""
    return bytes((index * 37 + k) % 96 for k in range(size))


def stream_bytes(total: int) -> bytes:
    return bytes((k * 7 + k // 160) % 96 for k in range(total))


def packet(seq: int, ts: int, payload: bytes, ssrc: int = SSRC) -> RtpPacket:
    return RtpPacket(
        payload_type=0,
        sequence_number=seq & 0xFFFF,
        timestamp=ts & 0xFFFF_FFFF,
        ssrc=ssrc,
        payload=payload,
    )


def steady_stream(count: int, *, first: int = 0, seq0: int = 0, ts0: int = 0, t0: float = START):
    """(arrival, packet) for ``count`` 20 ms packets sent and received exactly on time."""
    return [
        (t0 + i * FS, packet(seq0 + i, ts0 + (first + i) * N, audio(first + i)))
        for i in range(count)
    ]


def tick_until(buffer: JitterBuffer, now: float, out: list[JitterOutput], *, before=False) -> None:
    """Play every frame due by ``now`` (strictly before it with ``before``), like the driver."""
    while (due := buffer.next_tick_at) is not None and (due < now if before else due <= now):
        out.append(buffer.tick(due))


def simulate(
    buffer: JitterBuffer, arrivals: Iterable[tuple[float, RtpPacket]], until: float
) -> tuple[list[JitterOutput], list[PushOutcome]]:
    """Drive ``buffer`` as the stage does: frames due before an arrival play first."""
    out: list[JitterOutput] = []
    outcomes = []
    for at, pkt in sorted(arrivals, key=lambda pair: pair[0]):
        tick_until(buffer, at, out, before=True)
        outcomes.append(buffer.push(pkt, at))
    tick_until(buffer, until, out)
    return out, outcomes


def real(out: list[JitterOutput]) -> list[JitterOutput]:
    return [frame for frame in out if frame.concealment is NONE]


def assert_timeline(out: list[JitterOutput], first_due: float) -> None:
    """start_sample is the call time of the frame: contiguous ticks, never backwards."""
    for frame in out:
        assert frame.due_at == pytest.approx(first_due + frame.start_sample / 8000, abs=1e-9)
        assert len(frame.payload) == N
    starts = [frame.start_sample for frame in out]
    assert starts == sorted(set(starts))


# ---------------------------------------------------------------- pure buffer


def test_in_order_stream_plays_every_packet_once_after_the_initial_delay():
    buffer = JitterBuffer(STEADY)
    assert buffer.next_tick_at is None
    out, outcomes = simulate(buffer, steady_stream(50), until=START + 49 * FS + 0.06)
    assert outcomes == [PushOutcome.ACCEPTED] * 50
    assert [f.payload for f in out] == [audio(i) for i in range(50)]
    assert [f.start_sample for f in out] == [i * N for i in range(50)]
    assert [f.arrival for f in out] == pytest.approx([START + i * FS for i in range(50)])
    assert out[0].due_at == pytest.approx(START + 0.06)
    assert_timeline(out, START + 0.06)
    stats = buffer.statistics()
    assert (stats.played, stats.concealed, stats.late, stats.duplicate) == (50, 0, 0, 0)
    assert stats.delay == pytest.approx(0.06)


def test_reordered_packets_within_the_delay_play_in_order():
    arrivals = steady_stream(40)
    # every odd packet overtakes the even one before it, by 30 ms
    swapped = [(at - 0.03 if i % 2 else at, pkt) for i, (at, pkt) in enumerate(arrivals)]
    buffer = JitterBuffer(STEADY)
    out, _ = simulate(buffer, swapped, until=START + 1.0)
    assert [f.payload for f in real(out)] == [audio(i) for i in range(40)]
    assert [f.start_sample for f in real(out)] == [i * N for i in range(40)]
    assert buffer.statistics().late == 0


def test_duplicates_are_dropped_and_counted_apart_from_late_packets():
    buffer = JitterBuffer(STEADY)
    out: list[JitterOutput] = []
    arrivals = steady_stream(10)
    for at, pkt in arrivals:
        tick_until(buffer, at, out, before=True)
        assert buffer.push(pkt, at) is PushOutcome.ACCEPTED
    at, pkt = arrivals[-1]
    assert buffer.push(pkt, at) is PushOutcome.DUPLICATE  # still buffered
    same_audio_new_seq = packet(500, pkt.timestamp, pkt.payload)
    assert buffer.push(same_audio_new_seq, at) is PushOutcome.DUPLICATE
    tick_until(buffer, START + 2, out)
    # a duplicate of a packet already played is a duplicate, not late
    assert buffer.push(arrivals[0][1], START + 2) is PushOutcome.DUPLICATE
    assert [f.payload for f in real(out)] == [audio(i) for i in range(10)]
    stats = buffer.statistics()
    assert (stats.duplicate, stats.late, stats.accepted, stats.received) == (3, 0, 10, 13)


def test_packet_after_its_slot_played_is_late_and_its_slot_concealed():
    arrivals = steady_stream(20)
    at, pkt = arrivals[5]
    arrivals[5] = (at + 0.1, pkt)  # 100 ms late with a 60 ms delay
    buffer = JitterBuffer(STEADY)
    out, outcomes = simulate(buffer, arrivals, until=START + 19 * FS + 0.06)
    assert outcomes.count(PushOutcome.LATE) == 1
    assert out[5].concealment is SILENCE
    assert out[5].payload == b"\xff" * N
    assert [f.payload for f in real(out)] == [audio(i) for i in range(20) if i != 5]
    stats = buffer.statistics()
    assert (stats.late, stats.duplicate, stats.concealed_silence) == (1, 0, 1)


def test_single_loss_is_concealed_by_a_repeat_of_the_last_frame():
    config = JitterConfig(min_delay=0.06, initial_delay=0.06, concealment="repeat")
    arrivals = [pair for i, pair in enumerate(steady_stream(20)) if i != 10]
    buffer = JitterBuffer(config)
    out, _ = simulate(buffer, arrivals, until=START + 19 * FS + 0.06)
    assert len(out) == 20
    assert out[10].concealment is REPEAT
    assert out[10].payload == audio(9)
    assert out[10].arrival is None
    assert out[10].start_sample == 10 * N
    assert out[11].payload == audio(11)
    assert out[11].start_sample == 11 * N
    stats = buffer.statistics()
    assert (stats.concealed_repeat, stats.concealed_silence, stats.played) == (1, 0, 19)


@pytest.mark.parametrize("mode", ["repeat", "silence"])
def test_burst_loss_repeats_at_most_max_repeat_then_silence(mode):
    config = JitterConfig(min_delay=0.06, initial_delay=0.06, concealment=mode, max_repeat=2)
    arrivals = [pair for i, pair in enumerate(steady_stream(30)) if not 10 <= i < 15]
    buffer = JitterBuffer(config)
    out, _ = simulate(buffer, arrivals, until=START + 29 * FS + 0.06)
    kinds = [f.concealment for f in out[10:15]]
    if mode == "repeat":
        assert kinds == [REPEAT, REPEAT, SILENCE, SILENCE, SILENCE]
        assert out[10].payload == out[11].payload == audio(9)
    else:
        assert kinds == [SILENCE] * 5
    assert all(f.payload == b"\xff" * N for f in out[10:15] if f.concealment is SILENCE)
    assert [f.payload for f in out[15:]] == [audio(i) for i in range(15, 30)]
    assert_timeline(out, START + 0.06)
    stats = buffer.statistics()
    assert stats.concealed == 5
    assert stats.held == 0
    assert stats.underruns >= 1


def test_long_gap_goes_idle_then_resyncs_on_a_far_timestamp():
    config = JitterConfig(min_delay=0.06, initial_delay=0.06, idle_after=0.5)
    buffer = JitterBuffer(config)
    out, _ = simulate(buffer, steady_stream(20), until=START + 10)
    assert buffer.next_tick_at is None  # idle: nothing is due
    assert len(out) == 20 + 25  # 20 played, then 0.5 s of concealment
    assert buffer.statistics().idle_periods == 1
    # 3 s later the sender resumes, its timestamps 3 s on (beyond the 1 s threshold)
    resume_at = START + 20 * FS + 3.0
    later = steady_stream(10, first=170, seq0=20, t0=resume_at)
    more, outcomes = simulate(buffer, later, until=resume_at + 1)
    assert outcomes[0] is PushOutcome.RESYNC
    assert [f.payload for f in real(more)] == [audio(i) for i in range(170, 180)]
    assert real(more)[0].due_at >= resume_at + 0.06 - 1e-9
    assert_timeline(out + more, START + 0.06)  # the idle time is counted, not squeezed out
    stats = buffer.statistics()
    assert (stats.resyncs, stats.idle_periods, stats.late) == (1, 2, 0)


def test_short_pause_resumes_without_a_resync():
    config = JitterConfig(min_delay=0.06, initial_delay=0.06, idle_after=0.2)
    buffer = JitterBuffer(config)
    first = steady_stream(20)
    resume_at = START + 20 * FS + 0.5
    second = steady_stream(10, first=45, seq0=20, t0=resume_at)
    out, outcomes = simulate(buffer, first + second, until=resume_at + 1)
    assert outcomes[20] is PushOutcome.ACCEPTED
    assert [f.payload for f in real(out)][20:] == [audio(i) for i in range(45, 55)]
    assert_timeline(out, START + 0.06)
    stats = buffer.statistics()
    assert (stats.resumes, stats.resyncs, stats.idle_periods) == (1, 0, 2)


def test_new_ssrc_flushes_resyncs_and_the_timeline_carries_on():
    other = 0x0BAD_CAFE
    first = steady_stream(20)
    switch_at = START + 20 * FS
    second = [
        (switch_at + i * FS, packet(9000 + i, 123_456 + i * N, audio(100 + i), ssrc=other))
        for i in range(20)
    ]
    straggler = (switch_at + 0.05, packet(20, 20 * N, audio(20)))  # the old stream, late
    buffer = JitterBuffer(STEADY)
    out, outcomes = simulate(buffer, [*first, *second, straggler], until=switch_at + 1)
    assert outcomes[20] is PushOutcome.RESYNC
    assert PushOutcome.STALE in outcomes
    played = [f.payload for f in real(out)]
    assert played == [audio(i) for i in range(17)] + [audio(100 + i) for i in range(20)]
    assert_timeline(out, START + 0.06)
    assert [f.start_sample for f in out] == [i * N for i in range(len(out))]  # no gap
    new_audio = real(out)[17]
    assert new_audio.due_at - switch_at >= 0.06 - 1e-9
    stats = buffer.statistics()
    assert (stats.resyncs, stats.flushed, stats.stale) == (1, 3, 1)
    assert stats.received == len(outcomes) == 41
    assert stats.accepted == outcomes.count(PushOutcome.ACCEPTED) + 1  # + the resync


def test_sequence_and_timestamp_wrap_mid_stream():
    arrivals = steady_stream(40, seq0=65_520, ts0=2**32 - 10 * N)
    buffer = JitterBuffer(STEADY)
    out, outcomes = simulate(buffer, arrivals, until=START + 39 * FS + 0.06)
    assert set(outcomes) == {PushOutcome.ACCEPTED}
    assert [f.payload for f in out] == [audio(i) for i in range(40)]
    assert_timeline(out, START + 0.06)
    stats = buffer.statistics()
    assert (stats.resyncs, stats.late, stats.duplicate, stats.concealed) == (0, 0, 0, 0)


@pytest.mark.parametrize("packet_ms", [10, 30])
def test_other_packet_sizes_are_reframed_into_exact_20ms_frames(packet_ms):
    size = packet_ms * 8
    data = stream_bytes(size * 60)
    arrivals = [
        (START + i * packet_ms / 1000, packet(i, 5000 + i * size, data[i * size : (i + 1) * size]))
        for i in range(60)
    ]
    buffer = JitterBuffer(STEADY)
    out, _ = simulate(buffer, arrivals, until=START + 5)
    played = real(out)
    assert len(played) == len(data) // N
    assert b"".join(f.payload for f in played) == data
    assert [f.start_sample for f in played] == [i * N for i in range(len(played))]
    assert buffer.statistics().partial == 0


def test_a_lost_30ms_packet_leaves_partial_frames_with_the_gap_silenced():
    size = 240
    data = stream_bytes(size * 12)
    arrivals = [
        (START + i * 0.03, packet(i, i * size, data[i * size : (i + 1) * size]))
        for i in range(12)
        if i != 3  # samples 720..960 never come
    ]
    buffer = JitterBuffer(STEADY)
    out, _ = simulate(buffer, arrivals, until=START + 2)
    assert out[4].concealment is SILENCE  # samples 640..800: half received
    assert out[4].payload == data[640:720] + b"\xff" * 80
    assert out[5].concealment is SILENCE
    assert out[5].payload == b"\xff" * N
    assert out[6].concealment is NONE
    assert out[6].payload == data[960:1120]
    assert out[3].payload == data[480:640]
    assert out[3].concealment is NONE
    played = b"".join(f.payload for f in out[: len(data) // N])
    assert played == data[:720] + b"\xff" * 240 + data[960:]
    assert buffer.statistics().partial == 1
    assert [f.concealment for f in out[: len(data) // N]].count(SILENCE) == 2


def jittery(seconds: float, spread: float, rng: random.Random, *, first: int = 0, t0=START):
    """Packets sent every 20 ms, each delayed by 40 ms ± ``spread`` (uniform)."""
    arrivals = []
    for i in range(first, first + round(seconds / FS)):
        at = t0 + (i - first) * FS + 0.04 + rng.uniform(-spread, spread)
        arrivals.append((at, packet(i, i * N, audio(i))))
    return arrivals


def delays_while(buffer: JitterBuffer, arrivals, until: float):
    """Simulate, recording (due, delay, target) after every tick."""
    trace = []
    out: list[JitterOutput] = []
    for at, pkt in sorted(arrivals, key=lambda pair: pair[0]):
        while (due := buffer.next_tick_at) is not None and due < at:
            out.append(buffer.tick(due))
            trace.append((due, buffer.delay, buffer.target_delay))
        buffer.push(pkt, at)
    while (due := buffer.next_tick_at) is not None and due <= until:
        out.append(buffer.tick(due))
        trace.append((due, buffer.delay, buffer.target_delay))
    return trace, out


def test_delay_adapts_up_to_jitter_and_back_down_when_it_stops():
    rng = random.Random(7)
    config = JitterConfig()
    buffer = JitterBuffer(config)
    noisy = jittery(20, 0.04, rng)
    t_clean = START + 20
    clean = jittery(20, 0.0, rng, first=len(noisy), t0=t_clean)
    trace, _ = delays_while(buffer, noisy + clean, until=t_clean + 20)
    # ± 40 ms uniform: RFC 3550 jitter ≈ 2/3 × 40 ms, so the target is about 80 ms
    settled = [(d, target) for due, d, target in trace if t_clean - 5 < due < t_clean]
    mean_target = sum(target for _, target in settled) / len(settled)
    assert 0.065 < mean_target < 0.11
    assert all(mean_target - 0.03 < d < mean_target + 0.03 for d, _ in settled)
    assert trace[0][1] == pytest.approx(config.initial_delay, abs=0.01)
    assert max(d for _, d, _ in trace) <= config.max_delay
    stats = buffer.statistics()
    assert stats.held > 0
    assert stats.late < 0.01 * len(noisy)
    # after 20 s without jitter: target back at the floor and the delay with it
    _, final_delay, final_target = trace[-1]
    assert final_target == pytest.approx(config.min_delay)
    assert config.min_delay - FS / 2 <= final_delay <= config.min_delay + FS + 0.005
    assert stats.skipped > 0


@pytest.mark.parametrize("seed", [1, 3, 4])
def test_a_missing_frame_under_target_holds_the_cursor_instead_of_losing_its_packet(seed):
    # proactive adaptation off: only a missing frame can make the delay grow
    config = JitterConfig(min_delay=0.04, initial_delay=0.04, adapt_after=100)
    buffer = JitterBuffer(config)
    trace, _ = delays_while(buffer, jittery(5, 0.03, random.Random(seed)), until=START + 5)
    stats = buffer.statistics()
    assert stats.held >= 1
    assert stats.late <= 1  # without holding, 25-50 of these 250 packets come too late
    assert max(d for _, d, _ in trace) <= config.max_delay


def stalled_driver(buffer: JitterBuffer, seconds: float, stall: float, every: float):
    """Packets arrive exactly on time, but the driver's event loop stalls ``stall`` s
    every ``every`` s: when it wakes it first plays the frames due meanwhile, then reads
    the packets that came meanwhile (they were still in the socket)."""
    arrivals = steady_stream(round(seconds / FS))
    out: list[JitterOutput] = []
    stalls = [START + every * (k + 1) for k in range(int(seconds / every))]
    pending = list(arrivals)
    for stalled_at in stalls:
        woke = stalled_at + stall
        while pending and pending[0][0] < stalled_at:
            at, pkt = pending.pop(0)
            tick_until(buffer, at, out, before=True)
            buffer.push(pkt, at)
        while (due := buffer.next_tick_at) is not None and due <= woke:
            out.append(buffer.tick(woke if due > stalled_at else due))
        while pending and pending[0][0] <= woke:
            at, pkt = pending.pop(0)
            buffer.push(pkt, at)
    return out


def test_the_drivers_own_lag_raises_the_delay_so_its_stalls_lose_no_packets():
    """A loop busy for 60 ms every second (a loaded server) made every stall cost ~3
    packets played as concealment; after the first stall the delay covers the lag."""
    buffer = JitterBuffer(JitterConfig())
    stalled_driver(buffer, seconds=20, stall=0.06, every=1.0)
    stats = buffer.statistics()
    # the frames are due every 20 ms from 40 ms after the first packet: the first one
    # due in a stall is played 40 ms late
    assert stats.max_tick_lag == pytest.approx(0.04, abs=0.001)
    assert stats.late <= 3  # the first stall only
    assert 0.04 + 2 * FS - 0.001 <= buffer.target_delay <= 0.3


def test_the_lag_is_forgotten_once_the_driver_keeps_time_again():
    buffer = JitterBuffer(JitterConfig())
    stalled_driver(buffer, seconds=2, stall=0.06, every=1.0)
    raised = buffer.target_delay
    _, _ = simulate(buffer, steady_stream(1000, first=100, t0=START + 2), until=START + 22)
    assert raised > 0.075
    assert buffer.target_delay == pytest.approx(JitterConfig().min_delay, abs=0.002)


def test_delay_is_capped_at_max_delay_under_huge_jitter():
    rng = random.Random(11)
    config = JitterConfig(max_delay=0.2)
    buffer = JitterBuffer(config)
    trace, _ = delays_while(buffer, jittery(30, 0.15, rng), until=START + 30)
    assert max(target for _, _, target in trace) == pytest.approx(config.max_delay)
    # holds stop at max_delay, and above it a frame is skipped at once
    assert max(d for _, d, _ in trace) <= config.max_delay + 0.005
    late_half = [d for due, d, _ in trace if due > START + 15]
    assert config.max_delay - 0.03 < sum(late_half) / len(late_half) <= config.max_delay


@pytest.mark.parametrize("ratio", [1.005, 1 / 1.005], ids=["sender-fast", "sender-slow"])
def test_clock_drift_keeps_the_buffer_depth_bounded(ratio):
    config = JitterConfig()
    buffer = JitterBuffer(config)
    interval = FS / ratio  # the sender's 20 ms on our clock
    quiet = b"\xff" * N
    payloads = [quiet if i % 10 == 0 else audio(i) for i in range(3000)]
    arrivals = [(START + i * interval, packet(i, i * N, payloads[i])) for i in range(3000)]
    depth = []
    out: list[JitterOutput] = []
    for at, pkt in arrivals:
        tick_until(buffer, at, out, before=True)
        buffer.push(pkt, at)
        depth.append(buffer.buffered)
    stats = buffer.statistics()
    # 0.5 % of 60 s is 300 ms: unchecked, the depth would drift by 15 frames
    assert max(depth) <= 6
    assert stats.late == 0
    assert config.min_delay - FS <= stats.delay <= config.initial_delay + FS
    played = [f.payload for f in real(out)]
    loud_played = [p for p in played if p != quiet]
    loud_sent = [p for p in payloads if p != quiet]
    # no loud frame was lost: skips waited for the quiet ones, stretches dropped nothing
    assert loud_played == loud_sent[: len(loud_played)]
    if ratio > 1:
        assert stats.skipped >= 10
        assert stats.held == 0
    else:
        assert stats.held >= 10
        assert stats.skipped == 0
        assert played == payloads[: len(played)]


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_arrival_order_within_the_delay_plays_the_input_stream(data):
    count = data.draw(st.integers(min_value=1, max_value=40), label="packets")
    lateness = data.draw(
        st.lists(st.floats(min_value=0, max_value=0.0599), min_size=count, max_size=count),
        label="lateness",
    )
    config = JitterConfig(min_delay=0.06, initial_delay=0.06, adapt_after=100)
    buffer = JitterBuffer(config)
    arrivals = [
        (START + i * FS + late, packet(i, i * N, audio(i))) for i, late in enumerate(lateness)
    ]
    out, outcomes = simulate(buffer, arrivals, until=START + count * FS + 2)
    assert b"".join(f.payload for f in real(out)) == b"".join(audio(i) for i in range(count))
    assert PushOutcome.LATE not in outcomes
    assert_timeline(out, out[0].due_at)


def test_tick_while_idle_is_an_error():
    with pytest.raises(RuntimeError, match="idle"):
        JitterBuffer().tick(0.0)


def test_config_rejects_inconsistent_delays():
    with pytest.raises(ValueError, match="min_delay"):
        JitterConfig(min_delay=0.1, initial_delay=0.05)
    with pytest.raises(ValueError, match="whole number"):
        JitterConfig(frame_ms=7, sample_rate=1000 * 7 + 1)


# ---------------------------------------------------------------- Trio driver


def rtp_frame(index: int, now: float, *, first: int = 0) -> RtpFrame:
    pkt = packet(first + index, (first + index) * N, audio(first + index))
    return RtpFrame(packet=pkt, captured_at=now)


@pytest.mark.timeout(30)  # a busy loop would stop virtual time and hang here
async def test_stage_turns_packets_every_20ms_into_frames_every_20ms(autojump_clock):
    stage = JitterStage(STEADY)
    sent_at = []
    async with open_chain(stage) as chain:

        async def send() -> None:
            for i in range(50):
                sent_at.append(trio.current_time())
                chain.inbound.send_nowait(rtp_frame(i, trio.current_time()))
                await trio.sleep(FS)

        frames = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            for _ in range(50):
                frame = await chain.outputs.receive()
                frames.append((trio.current_time(), frame))
    times = [at for at, _ in frames]
    # the shared timer wakes a sleeper at most SLACK late, so that nearby ones share it
    assert sent_at[0] + 0.06 <= times[0] <= sent_at[0] + 0.06 + SLACK
    assert [b - a for a, b in itertools.pairwise(times)] == pytest.approx([FS] * 49)
    assert [f.start_sample for _, f in frames] == [i * N for i in range(50)]
    assert [f.payload for _, f in frames] == [audio(i) for i in range(50)]
    assert [f.captured_at for _, f in frames] == pytest.approx(sent_at)
    assert all(f.concealment is NONE for _, f in frames)
    assert [s.stage for s in frames[0][1].stamps] == ["jitter"]
    assert 0.06 <= frames[0][1].stage_latencies()[0][1] <= 0.06 + SLACK + 1e-9


@pytest.mark.timeout(30)
async def test_stage_goes_idle_after_silence_and_resumes(autojump_clock):
    config = JitterConfig(min_delay=0.06, initial_delay=0.06, idle_after=0.2)
    stage = JitterStage(config)
    async with open_chain(stage) as chain:
        start = trio.current_time()
        for i in range(10):
            chain.inbound.send_nowait(rtp_frame(i, trio.current_time()))
            await trio.sleep(FS)
        frames = []
        with trio.move_on_after(5):  # five seconds of no input
            async for frame in chain.outputs:
                frames.append((trio.current_time(), frame))
        assert len(frames) == 10 + 10  # 10 played, 0.2 s of concealment, then nothing
        assert frames[-1][0] - start < 0.6
        assert stage.buffer.next_tick_at is None
        resumed_at = trio.current_time()
        for i in range(5):
            chain.inbound.send_nowait(rtp_frame(i, trio.current_time(), first=300))
            await trio.sleep(FS)
        more = [await chain.outputs.receive() for _ in range(5)]
    assert [f.payload for f in more] == [audio(300 + i) for i in range(5)]
    assert more[0].captured_at == pytest.approx(resumed_at)
    first_due = start + 0.06
    for frame in more:  # the timeline counted the idle seconds
        played_at = frame.stamps[-1].at  # up to SLACK after the frame was due
        assert abs(frame.start_sample - (played_at - first_due) * 8000) <= SLACK * 8000 + 1
    stats = stage.statistics()
    assert stats["idle_periods"] == 1
    assert stats["played"] == 15


async def test_stage_plays_out_the_buffer_at_end_of_input(autojump_clock):
    stage = JitterStage(STEADY)
    async with open_chain(stage) as chain:
        for i in range(5):
            chain.inbound.send_nowait(rtp_frame(i, trio.current_time()))
        await chain.inbound.aclose()
        frames = [frame async for frame in chain.outputs]
    assert [f.payload for f in frames] == [audio(i) for i in range(5)]
    assert [f.start_sample for f in frames] == [i * N for i in range(5)]


async def test_behind_the_depacketizer_frames_carry_every_stage_latency(autojump_clock):
    async with open_chain(RtpDepacketizer(), JitterStage(STEADY)) as chain:
        for i in range(5):
            wire = packet(i, i * N, audio(i)).serialize()
            chain.inbound.send_nowait(RawPacket(data=wire, captured_at=trio.current_time()))
            await trio.sleep(FS)
        frames = [await chain.outputs.receive() for _ in range(5)]
    assert [f.payload for f in frames] == [audio(i) for i in range(5)]
    for frame in frames:
        stages = [name for name, _ in frame.stage_latencies()]
        assert stages == ["rtp_depacketizer", "jitter"]
        held = frame.stage_latencies()[1][1]
        assert 0.06 <= held <= 0.06 + SLACK + 1e-9  # held for the delay
