"""Jitter buffer: packets that arrive unevenly, out of order, twice or never become
exactly one 20 ms frame per tick, on a sample-exact playout timeline.

:class:`JitterBuffer` is pure: it has no clock and no Trio inside, time is passed in
as float seconds, so every behaviour can be tested with explicit times.
:class:`~stages.playout.JitterStage` drives it on the Trio clock.

Vocabulary used throughout:

- *extended timestamp*: the RTP timestamp unwrapped past 2**32, in samples. Packets are
  placed by it, so 10/20/30 ms packets (any size or offset) are re-framed exactly.
- *cursor*: extended timestamp of the next frame to play; frames start on its grid.
- *playout timeline*: ``start_sample`` of the frames we emit, counted from the first
  sample played. Tick ``due_at == first_due + start_sample / sample_rate`` always
  holds, across holds, skips, resyncs and idle periods, so a sample position is also
  a call time and never goes backwards.
- *delay*: how long after its typical arrival a frame plays: due time minus timestamp
  (in seconds) minus a slow average of transit (arrival minus timestamp). A moving
  average, not the first packet's transit, so the delay sees sender/receiver clock drift.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass
from typing import NamedTuple

from pipeline.runtime.frames import Concealment
from stages.jitter_config import JitterConfig
from stages.rtp import RtpPacket, seq_distance, timestamp_distance

__all__ = ["JitterBuffer", "JitterConfig", "JitterOutput", "JitterStatistics", "PushOutcome"]

_SILENCE_BYTE = 0xFF  # μ-law for a zero sample
_TS_MASK = 0xFFFF_FFFF
_TS_HALF = 0x8000_0000
_DUP_WINDOW = 1024  # sequence numbers remembered for duplicate detection (power of two)
_JITTER_GAIN = 1 / 16  # RFC 3550 §6.4.1
_TRANSIT_GAIN = 1 / 64  # slow: a mean (and its drift), not the spread; ~1.3 s at 50 packets/s
_EPS = 1e-6  # seconds; keeps float noise from flipping delay comparisons
_LAG_HALF_LIFE = 2.0  # seconds: how long the driver's lateness keeps the delay up
# μ-law bytes whose magnitude code (~byte & 0x7F) is in segments 0-1, below about
# -38 dBFS: a frame made only of these is quiet, so cheap to drop or stretch.
_QUIET_BYTES = bytes(b for b in range(256) if (~b) & 0x7F < 0x20)


def _is_quiet(payload: bytes) -> bool:
    return not payload.translate(None, _QUIET_BYTES)  # one C loop, ~0.4 µs per frame


class PushOutcome(enum.Enum):
    """What :meth:`JitterBuffer.push` did with a packet."""

    ACCEPTED = "accepted"  # buffered (also: the first packet, or the first after idle)
    DUPLICATE = "duplicate"  # sequence number seen recently, or its samples already held
    LATE = "late"  # its slot already played
    RESYNC = "resync"  # new SSRC or timestamp jump: buffer flushed, re-anchored on it
    STALE = "stale"  # from the SSRC we just left: a straggler, not a switch back
    EMPTY = "empty"  # no payload


class JitterOutput(NamedTuple):
    """One emitted frame. A NamedTuple, not a dataclass: one is built every 20 ms."""

    payload: bytes
    start_sample: int
    concealment: Concealment
    due_at: float  # when it was due to play: the tick time on the driver's clock
    arrival: float | None  # of the packet that carried the audio (last piece); None: concealed
    tag: object = None  # what the caller passed to push() with that packet


@dataclass(frozen=True, slots=True)
class JitterStatistics:
    """Counters since creation, plus the current delay picture (seconds).

    Per packet: received = accepted + duplicate + late + stale + empty (a packet that
    caused a resync is accepted too).
    Per frame: frames = played + partial (some samples missing, filled with silence)
    + concealed; held = concealed frames played without moving the cursor (delay grew
    by a frame), skipped = frames of audio (or of a gap) dropped to shrink it.
    underruns = ticks that found the buffer empty; flushed = frames thrown away by a
    resync; max_tick_lag = how far behind schedule the driver ever ticked.
    """

    received: int
    accepted: int
    duplicate: int
    late: int
    stale: int
    empty: int
    resyncs: int
    resumes: int
    flushed: int
    frames: int
    played: int
    partial: int
    concealed_silence: int
    concealed_repeat: int
    held: int
    skipped: int
    underruns: int
    idle_periods: int
    buffered: int
    delay: float
    target_delay: float
    jitter: float
    max_tick_lag: float

    @property
    def concealed(self) -> int:
        return self.concealed_silence + self.concealed_repeat


# every statistic but these three is kept as an attribute of the same name with a leading "_"
_STORED = tuple(
    f.name
    for f in dataclasses.fields(JitterStatistics)
    if f.name not in ("received", "buffered", "target_delay")
)


class _Partial:
    """A frame slot filled piece by piece (packets not aligned to 20 ms)."""

    __slots__ = ("arrival", "data", "full", "mask", "tag")

    def __init__(self, samples: int) -> None:
        self.data = bytearray((_SILENCE_BYTE,)) * samples
        self.mask = 0
        self.full = (1 << samples) - 1
        self.arrival = -math.inf
        self.tag: object = None

    def add(self, offset: int, piece: bytes, arrival: float, tag: object) -> bool:
        """Write ``piece`` at ``offset``; False if it brings no sample we lacked."""
        bits = ((1 << len(piece)) - 1) << offset
        if not bits & ~self.mask:
            return False
        self.data[offset : offset + len(piece)] = piece
        self.mask |= bits
        if arrival >= self.arrival:
            self.arrival = arrival
            self.tag = tag
        return True


class JitterBuffer:
    """Reorders, de-duplicates, conceals and re-times one call's RTP audio. Pure.

    Feed every packet with :meth:`push` and its arrival time; whenever the clock
    reaches :attr:`next_tick_at`, call :meth:`tick` for exactly one frame. When
    :attr:`next_tick_at` is None the buffer is idle (nothing yet, or the sender went
    quiet) and the next packet restarts it.
    """

    def __init__(self, config: JitterConfig | None = None) -> None:
        c = self.config = config or JitterConfig()
        self._n = c.frame_samples
        self._fs = c.frame_seconds
        self._inv_rate = 1.0 / c.sample_rate
        self._repeat = c.concealment == "repeat"
        self._resync_samples = round(c.resync_threshold * c.sample_rate)
        self._idle_ticks = max(1, math.ceil(c.idle_after / self._fs - _EPS))
        self._adapt_ticks = max(1, round(c.adapt_after / self._fs))
        self._silence = bytes((_SILENCE_BYTE,)) * self._n
        self._multiplier, self._min_delay = c.jitter_multiplier, c.min_delay
        self._max_delay = c.max_delay
        # the stream we follow
        self._ssrc: int | None = None
        self._retired_ssrc: int | None = None
        self._retired_until = -math.inf
        self._ext_seq = self._ext_ts = 0
        self._seen = [-1] * _DUP_WINDOW
        # playout schedule
        self._next: float | None = None
        self._origin = 0.0  # due time of tick 0 of the current schedule
        self._count = 0  # ticks since _origin
        self._last_due: float | None = None
        self._out_sample = 0
        self._cursor = 0
        self._ts0 = 0  # extended timestamp the transit average is relative to
        self._preroll = False  # anchored but nothing played yet: earlier packets may extend
        self._slots: dict[int, tuple[bytes, float, object]] = {}
        self._partials: dict[int, _Partial] = {}
        # estimates (seconds) and adaptation state
        self._jitter = self._ref = self._delay = 0.0  # RFC 3550 jitter, transit average
        self._transit: float | None = None
        self._excess = self._deficit = 0  # ticks the delay has been over / under target
        self._empty_run = self._late_run = 0  # consecutive empty ticks / late packets
        self._last_payload: bytes | None = None
        self._repeats = 0
        # counters
        self._accepted = self._duplicate = self._late = 0
        self._stale = self._empty = self._resyncs = self._resumes = self._flushed = 0
        self._frames = self._played = self._partial = 0
        self._concealed_silence = self._concealed_repeat = 0
        self._held = self._skipped = self._underruns = self._idle_periods = 0
        self._max_tick_lag = 0.0
        self._lag = 0.0  # the driver's recent lateness, a decaying maximum (seconds)
        self._lag_decay = 0.5 ** (self._fs / _LAG_HALF_LIFE)  # per tick

    # ------------------------------------------------------------------ queries

    @property
    def next_tick_at(self) -> float | None:
        """When the next frame is due (driver's clock), or None while idle."""
        return self._next

    @property
    def buffered(self) -> int:
        """Frame slots holding audio not yet played (complete or partial)."""
        return len(self._slots) + len(self._partials)

    @property
    def target_delay(self) -> float:
        wanted = max(self._multiplier * self._jitter, self._min_delay, self._lag + 2 * self._fs)
        return min(wanted, self._max_delay)

    @property
    def delay(self) -> float:
        """Current playout delay estimate, seconds (as of the last tick or anchor)."""
        return self._delay

    def statistics(self) -> JitterStatistics:
        counters = {name: getattr(self, "_" + name) for name in _STORED}
        # every packet ends in exactly one of these, so the hot path need not count it
        received = self._accepted + self._duplicate + self._late + self._stale + self._empty
        return JitterStatistics(
            **counters, received=received, buffered=self.buffered, target_delay=self.target_delay
        )

    # ------------------------------------------------------------------ push

    def push(self, packet: RtpPacket, arrival: float, tag: object = None) -> PushOutcome:
        """Take one packet that arrived at ``arrival`` (seconds, the driver's clock).

        ``tag`` travels with its audio to the :class:`JitterOutput` that plays it (the
        driver uses it to carry the frame's latency stamps)."""
        payload = packet.payload
        if not payload:
            self._empty += 1
            return PushOutcome.EMPTY
        if packet.ssrc != self._ssrc or self._next is None:
            return self._push_slow(packet, arrival, tag)
        seq = self._ext_seq + ((packet.sequence_number - self._ext_seq + 0x8000) & 0xFFFF) - 0x8000
        seen = self._seen
        if seen[seq & (_DUP_WINDOW - 1)] == seq:
            self._duplicate += 1
            return PushOutcome.DUPLICATE
        seen[seq & (_DUP_WINDOW - 1)] = seq
        if seq > self._ext_seq:
            self._ext_seq = seq
        ts = self._ext_ts + ((packet.timestamp - self._ext_ts + _TS_HALF) & _TS_MASK) - _TS_HALF
        rel = ts - self._cursor
        if rel > self._resync_samples or rel < -self._resync_samples:
            self._ext_ts = ts
            return self._anchor(payload, ts, arrival, tag, resync=True)
        if ts > self._ext_ts:
            self._ext_ts = ts
        # RFC 3550 jitter, and the slow transit average the delay is measured against
        transit = arrival - (ts - self._ts0) * self._inv_rate
        if self._transit is not None:
            self._jitter += (abs(transit - self._transit) - self._jitter) * _JITTER_GAIN
        self._transit = transit
        self._ref += (transit - self._ref) * _TRANSIT_GAIN
        n = self._n
        slots = self._slots
        if rel >= 0 and len(payload) == n and not rel % n and ts not in self._partials:
            if ts in slots:  # the same samples again under a new sequence number
                self._duplicate += 1
                return PushOutcome.DUPLICATE
            slots[ts] = (payload, arrival, tag)
            self._accepted += 1
            if self._late_run:
                self._late_run = 0
            return PushOutcome.ACCEPTED
        return self._place(payload, ts, arrival, tag)

    def _push_slow(self, packet: RtpPacket, arrival: float, tag: object) -> PushOutcome:
        """The first packet, a packet while idle, or one from another SSRC."""
        if packet.ssrc != self._ssrc:
            if self._ssrc is not None:
                if packet.ssrc == self._retired_ssrc and arrival < self._retired_until:
                    self._stale += 1
                    return PushOutcome.STALE
                self._retired_ssrc = self._ssrc
                self._retired_until = arrival + self.config.resync_threshold
            resync = self._ssrc is not None
            self._ssrc = packet.ssrc
            self._seen = [-1] * _DUP_WINDOW
            self._ext_seq = packet.sequence_number
            self._ext_ts = packet.timestamp
            self._seen[self._ext_seq & (_DUP_WINDOW - 1)] = self._ext_seq
            return self._anchor(packet.payload, packet.timestamp, arrival, tag, resync=resync)
        # same stream after idle: resume on it (a resync too if its timestamp jumped)
        seq = seq_distance(self._ext_seq & 0xFFFF, packet.sequence_number) + self._ext_seq
        if self._seen[seq & (_DUP_WINDOW - 1)] == seq:
            self._duplicate += 1
            return PushOutcome.DUPLICATE
        self._seen[seq & (_DUP_WINDOW - 1)] = seq
        self._ext_seq = max(seq, self._ext_seq)
        ts = timestamp_distance(self._ext_ts & _TS_MASK, packet.timestamp) + self._ext_ts
        self._ext_ts = max(ts, self._ext_ts)
        jumped = abs(ts - self._cursor) > self._resync_samples
        return self._anchor(packet.payload, ts, arrival, tag, resync=jumped)

    def _anchor(
        self, payload: bytes, ts: int, arrival: float, tag: object, *, resync: bool
    ) -> PushOutcome:
        """Flush, then play from extended timestamp ``ts`` (arrived at ``arrival``).

        While ticking, the schedule (so the timeline) carries on and the packet lands a
        target delay ahead; from idle, the schedule restarts on the old one's 20 ms grid,
        the idle time counted in the timeline."""
        n, fs = self._n, self._fs
        self._flushed += self.buffered
        self._slots.clear()
        self._partials.clear()
        if self._next is not None:
            ahead = math.ceil((arrival + self.target_delay - self._next) / fs - _EPS)
            self._cursor = ts - max(0, ahead) * n
        else:
            if self._last_due is None:
                self._origin = arrival + self.config.initial_delay
            else:
                if not resync:
                    self._resumes += 1
                expected = self._last_due + fs
                ahead = max(0, math.ceil((arrival + self.target_delay - expected) / fs - _EPS))
                self._origin = expected + ahead * fs
                self._out_sample += ahead * n  # the timeline keeps counting while idle
            self._count = 0
            self._next = self._origin
            self._cursor = ts
        self._ts0 = ts
        self._transit = arrival
        self._ref = arrival
        self._delay = self._next - (self._cursor - ts) * self._inv_rate - arrival
        self._preroll = True
        self._excess = self._deficit = self._empty_run = self._late_run = 0
        self._resyncs += resync
        self._place(payload, ts, arrival, tag)
        return PushOutcome.RESYNC if resync else PushOutcome.ACCEPTED

    def _place(self, payload: bytes, ts: int, arrival: float, tag: object) -> PushOutcome:
        """General placement: any size, any offset; pieces assembled per frame slot."""
        n = self._n
        end = ts + len(payload)
        if end <= self._cursor and not (self._preroll and self._extend_back(ts)):
            self._late_run += 1
            if self._late_run >= self.config.late_resync:
                return self._anchor(payload, ts, arrival, tag, resync=True)
            self._late += 1
            return PushOutcome.LATE
        cursor = self._cursor
        slots, partials = self._slots, self._partials
        added = False
        for start in range(cursor + ((ts - cursor) // n) * n, end, n):
            if start < cursor or start in slots:
                continue
            lo = max(ts, start)
            hi = min(end, start + n)
            part = partials.get(start)
            if part is None:
                if lo == start and hi == start + n:
                    slots[start] = (payload[lo - ts : hi - ts], arrival, tag)
                    added = True
                    continue
                part = partials[start] = _Partial(n)
            if part.add(lo - start, payload[lo - ts : hi - ts], arrival, tag):
                added = True
                if part.mask == part.full:
                    slots[start] = (bytes(part.data), part.arrival, part.tag)
                    del partials[start]
        if not added:
            self._duplicate += 1
            return PushOutcome.DUPLICATE
        self._accepted += 1
        self._late_run = 0
        return PushOutcome.ACCEPTED

    def _extend_back(self, ts: int) -> bool:
        """Before the first frame plays, an earlier packet moves the start back to it
        (the first packet to arrive need not be the first sent), within max_delay."""
        back = math.ceil((self._cursor - ts) / self._n)
        if self._delay + back * self._fs > self.config.max_delay + _EPS:
            return False
        self._cursor -= back * self._n
        self._delay += back * self._fs
        return True

    # ------------------------------------------------------------------ tick

    def tick(self, now: float) -> JitterOutput:
        """Emit the one frame due at :attr:`next_tick_at`: audio, or concealment.

        ``now`` is the driver's clock: a driver running behind gets the due frames in
        order, one per call, and its worst lag shows in statistics."""
        due = self._next
        if due is None:
            raise RuntimeError("the jitter buffer is idle: no frame is due until a packet comes")
        # the hot path: locals over attributes, writes only when something changes
        count = self._count = self._count + 1
        fs = self._fs
        self._next = self._origin + count * fs
        lag = now - due
        if lag > self._max_tick_lag:
            self._max_tick_lag = lag
        # A driver that ticks late (its event loop busy) plays the frames due meanwhile
        # before it has read the packets that came meanwhile: to the buffer its own lag
        # is jitter. A stall lasts up to a frame longer than the lag its first late tick
        # sees, so keep the delay two frames above the recent lag (decaying over ~2 s).
        recent_lag = self._lag * self._lag_decay
        if lag > recent_lag:
            recent_lag = lag
        self._lag = recent_lag
        start_sample = self._out_sample
        self._out_sample = start_sample + self._n
        self._last_due = due
        self._preroll = False
        self._frames += 1
        cursor = self._cursor
        delay = self._delay = due - (cursor - self._ts0) * self._inv_rate - self._ref
        target = self._jitter * self._multiplier
        if target < self._min_delay:
            target = self._min_delay
        if target < recent_lag + 2 * fs:
            target = recent_lag + 2 * fs
        if target > self._max_delay:
            target = self._max_delay
        if delay > target + fs + _EPS or delay > self._max_delay + _EPS:
            self._excess += 1
        elif self._excess:
            self._excess = 0
        if delay < target - fs / 2 - _EPS:
            self._deficit += 1
        elif self._deficit:
            self._deficit = 0
        entry = self._slots.pop(cursor, None)
        if entry is None:
            return self._tick_missing(start_sample, due, delay, target)
        if self._excess or self._deficit:
            entry = self._adapt(entry, delay)
            if entry is None:
                return self._conceal(start_sample, due)
            return self._play(entry, start_sample, due)
        self._cursor = cursor + self._n  # what _play() does, inlined
        self._empty_run = 0
        self._played += 1
        payload = self._last_payload = entry[0]
        if self._repeats:
            self._repeats = 0
        return JitterOutput(payload, start_sample, Concealment.NONE, due, entry[1], entry[2])

    def _play(
        self, entry: tuple[bytes, float, object], start_sample: int, due: float
    ) -> JitterOutput:
        """Play a received frame (tick() inlines this for the common case)."""
        self._cursor += self._n
        self._empty_run = 0
        self._played += 1
        self._last_payload = entry[0]
        self._repeats = 0
        return JitterOutput(entry[0], start_sample, Concealment.NONE, due, entry[1], entry[2])

    def _adapt(
        self, entry: tuple[bytes, float, object], delay: float
    ) -> tuple[bytes, float, object] | None:
        """Skip or stretch one frame once the delay has been off target for
        ``adapt_after``: at a quiet frame, or forced after as long again (at once above
        max_delay). Returns what to play, or None for a stretch (conceal, keep cursor)."""
        n, fs, patience = self._n, self._fs, self._adapt_ticks
        max_delay = self.config.max_delay + _EPS
        if self._excess:
            urgent = delay > max_delay
            if not urgent and self._excess < patience:
                return entry
            following = self._slots.get(self._cursor + n)
            if following is None:
                return entry
            forced = urgent or self._excess >= 2 * patience
            if _is_quiet(entry[0]):
                keep = following
            elif forced or _is_quiet(following[0]):
                keep = entry
            else:
                return entry
            del self._slots[self._cursor + n]
            self._cursor += n  # _play() advances past the second one
            self._skipped += 1
            self._excess = 0
            self._delay -= fs
            return keep
        if (
            self._deficit >= patience
            and delay + fs <= max_delay
            and (self._deficit >= 2 * patience or _is_quiet(entry[0]))
        ):
            self._slots[self._cursor] = entry
            self._held += 1
            self._deficit = 0
            self._delay += fs
            return None
        return entry

    def _tick_missing(
        self, start_sample: int, due: float, delay: float, target: float
    ) -> JitterOutput:
        """The cursor's frame is not (wholly) here: partial audio, a stretch, a free
        skip over the gap, or plain concealment; and perhaps the start of idling."""
        n, fs = self._n, self._fs
        part = self._partials.pop(self._cursor, None)
        if part is not None:
            self._cursor += n
            self._empty_run = 0
            self._partial += 1
            payload = self._last_payload = bytes(part.data)
            self._repeats = 0
            return JitterOutput(
                payload, start_sample, Concealment.SILENCE, due, part.arrival, part.tag
            )
        slots, partials = self._slots, self._partials
        empty = not slots and not partials
        if empty:
            self._underruns += 1
            self._empty_run += 1
        else:
            self._empty_run = 0
        if delay < target - _EPS and delay + fs <= self.config.max_delay + _EPS:
            # under target: hold the cursor (its packet may just be late), grow a frame
            self._held += 1
            self._delay += fs
        elif not empty and delay > target + fs + _EPS:
            # over target: drop the missing frames instead of concealing them
            cursor = self._cursor
            while delay > target + fs + _EPS and cursor not in slots and cursor not in partials:
                cursor += n
                delay -= fs
                self._skipped += 1
            self._cursor, self._delay, self._excess = cursor, delay, 0
            if cursor in slots or cursor in partials:
                entry = slots.pop(cursor, None)
                if entry is None:
                    return self._tick_missing(start_sample, due, delay, target)
                return self._play(entry, start_sample, due)
            self._cursor += n
        else:
            self._cursor += n
        if empty and self._empty_run >= self._idle_ticks:
            self._next = None
            self._idle_periods += 1
        return self._conceal(start_sample, due)

    def _conceal(self, start_sample: int, due: float) -> JitterOutput:
        last = self._last_payload
        if self._repeat and last is not None and self._repeats < self.config.max_repeat:
            self._repeats += 1
            self._concealed_repeat += 1
            return JitterOutput(last, start_sample, Concealment.REPEAT, due, None)
        self._concealed_silence += 1
        return JitterOutput(self._silence, start_sample, Concealment.SILENCE, due, None)
