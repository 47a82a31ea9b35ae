"""``--record DIR``: what each call said and sounded like, for review and tuning.

Per call, in ``DIR/<callId>/``:

- ``transcript.jsonl``: one line per caller turn and per bot reply (role, text,
  start/end seconds on the call's timeline, per-stage latencies, STT confidence,
  interrupted flag), written as each turn ends, so a crash loses nothing said before.
- ``caller.wav``: the caller's audio after the jitter buffer (streamed to disk).
- ``bot.wav``: the bot's speech placed where the platform played it, cut where a
  barge-in stopped it.

Everything is on one timeline: seconds since the call was registered. Both WAVs
start there, so played side by side (or mixed) they sound like the call.

A callId the platform re-dials (a second connection for the same call) gets the same
folder, never the same files: its audio goes to ``caller-2.wav`` and ``bot-2.wav`` (then
``-3``, ...) and its transcript lines carry ``"connection": 2``, so nothing of the first
connection is overwritten. The folder's name is :func:`~pipeline.server.recordings.call_folder`'s:
no two callIds share one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np
import soundfile

from pipeline.bot.playback import PlayedPiece
from pipeline.runtime.frames import TELEPHONE_RATE, PcmAudio
from pipeline.runtime.stage import Stage
from pipeline.server.recordings import call_folder
from stages import mulaw

if TYPE_CHECKING:
    from pipeline.bot.conversation import Conversation, TurnRecord

__all__ = ["CallRecorder"]


class _CallerTap(Stage[PcmAudio, PcmAudio]):
    """Passes caller audio on unchanged, writing it to ``caller.wav`` as it goes."""

    name = "recorder"

    def __init__(self, recorder: CallRecorder) -> None:
        super().__init__()
        self._recorder = recorder

    def process(self, item: PcmAudio) -> Iterable[PcmAudio]:
        self._recorder.caller_audio(item)
        return (item,)


class CallRecorder:
    """Writes one call's transcript and audio under its own folder."""

    def __init__(self, directory: Path, origin: float) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.connection = _claim_connection(directory)  # 1, or n for the n-th re-dial
        suffix = "" if self.connection == 1 else f"-{self.connection}"
        self.caller_path = directory / f"caller{suffix}.wav"
        self.bot_path = directory / f"bot{suffix}.wav"
        self._transcript: TextIO = (directory / "transcript.jsonl").open("a", encoding="utf-8")
        self._caller = soundfile.SoundFile(
            self.caller_path, "w", samplerate=TELEPHONE_RATE, channels=1, subtype="PCM_16"
        )
        self._origin = origin  # Trio time of the call's start: 0 s on the timeline
        self._caller_offset: int | None = None  # caller sample 0, in samples from the origin
        self._bot: list[tuple[bytes, PlayedPiece]] = []

    @classmethod
    def for_call(cls, root: Path, call_id: str, origin: float) -> CallRecorder:
        return cls(call_folder(root, call_id), origin)

    def caller_tap(self) -> Stage[PcmAudio, PcmAudio]:
        return _CallerTap(self)

    def attach(self, conversation: Conversation) -> None:
        conversation.observers.append(self.turn)
        conversation.bot_audio_observers.append(self.bot_audio)

    def caller_audio(self, frame: PcmAudio) -> None:
        if self._caller_offset is None:
            first_sample_at = frame.captured_at - frame.end_sample / frame.sample_rate
            self._caller_offset = max(0, round((first_sample_at - self._origin) * TELEPHONE_RATE))
            self._caller.write(np.zeros(self._caller_offset, dtype=np.int16))
        self._caller.write(frame.samples)

    def bot_audio(self, audio: bytes, piece: PlayedPiece) -> None:
        self._bot.append((audio, piece))

    def _seconds(self, at: float | None) -> float | None:
        return None if at is None else round(at - self._origin, 3)

    def _caller_seconds(self, position_s: float | None) -> float | None:
        """A position in the caller's audio (seconds from its sample 0) on the timeline."""
        if position_s is None:
            return None
        return round(position_s + (self._caller_offset or 0) / TELEPHONE_RATE, 3)

    def turn(self, record: TurnRecord) -> None:
        lines: list[dict[str, Any]] = []
        if record.caller_text:
            lines.append(
                {
                    "turn": record.index,
                    "role": "caller",
                    "text": record.caller_text,
                    "start": self._caller_seconds(record.caller_start_s),
                    "end": self._caller_seconds(record.caller_end_s),
                    "stt_confidence": record.stt_confidence,
                }
            )
        lines.append(
            {
                "turn": record.index,
                "role": "bot",
                "text": record.heard_text,
                "reply_text": record.reply_text,
                "start": self._seconds(record.bot_started_at),
                "end": self._seconds(record.bot_ended_at),
                "interrupted": record.interrupted,
                "llm_failed": record.llm_failed,
                "latency_ms": record.timings_ms,
            }
        )
        for line in lines:
            if self.connection > 1:
                line["connection"] = self.connection
            self._transcript.write(json.dumps(line) + "\n")
        self._transcript.flush()

    def close(self) -> None:
        self._caller.close()
        self._transcript.close()
        if not self._bot:
            return
        placed = []
        for audio, piece in self._bot:
            start = max(0, round((piece.starts - self._origin) * TELEPHONE_RATE))
            heard = max(0, round((piece.ends - piece.starts) * TELEPHONE_RATE))
            placed.append((start, mulaw.decode(audio)[:heard]))
        track = np.zeros(max(start + len(samples) for start, samples in placed), dtype=np.int16)
        for start, samples in placed:
            track[start : start + len(samples)] = samples
        soundfile.write(self.bot_path, track, TELEPHONE_RATE, subtype="PCM_16")


def _claim_connection(directory: Path) -> int:
    """The first free connection number in ``directory``, claimed by creating its
    ``caller*.wav`` exclusively (so two connections can never pick the same one)."""
    number = 1
    while True:
        name = "caller.wav" if number == 1 else f"caller-{number}.wav"
        try:
            os.close(os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            number += 1
            continue
        return number
