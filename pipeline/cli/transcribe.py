"""Transcribe audio files through the same speech path a call uses (VAD, endpointing, STT).

    voicegraph transcribe FILE [FILE ...] [--telephony] [--json] [--model M]

Each file (any format and rate libsndfile reads) is mixed to mono and resampled to
the line rate, 8 kHz; with ``--telephony`` it also goes through G.711 μ-law and
back, as on a phone line. Then it is fed, 20 ms frame by frame and as fast as the
stages go, through the per-call chain ``VadStage → TurnStage → SttStage`` on shared
model services, exactly as a call's audio would be; the transcripts of its turns
are joined. ``--whole`` skips VAD and endpointing and transcribes the file as one
utterance. ``ms`` is the processing time of the file, models already loaded.

Output: one line per file, ``FILE: TEXT (N ms)``; with ``--json`` one JSON object
per line, ``{"file", "text", "ms"}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import trio

from pipeline.caller.audiofile import AudioFileError, load_audio
from pipeline.runtime.errors import VoicegraphError
from pipeline.runtime.frames import TELEPHONE_RATE, PcmAudio
from pipeline.runtime.graph import open_chain

__all__ = ["configure", "main", "mulaw_line", "transcribe_file"]

FRAME = 160  # 20 ms, as RTP delivers it


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="audio files to transcribe")
    parser.add_argument(
        "--telephony", action="store_true", help="pass the audio through 8 kHz μ-law first"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument(
        "--model", default=None, help="faster-whisper model name or directory (default tiny.en)"
    )
    parser.add_argument("--vad-model", default=None, help="Silero VAD ONNX file")
    parser.add_argument(
        "--whole", action="store_true", help="one utterance per file: no VAD or endpointing"
    )


def mulaw_line(samples: np.ndarray) -> np.ndarray:
    """int16 8 kHz audio after a G.711 μ-law phone line (encode, then decode)."""
    from stages import mulaw

    return np.asarray(mulaw.decode(mulaw.encode(samples)), dtype=np.int16)


async def transcribe_file(
    samples: np.ndarray, stt: Any, vad: Any | None, *, sample_rate: int = TELEPHONE_RATE
) -> str:
    """The text of 8 kHz int16 ``samples``: through VAD + turns + STT, or STT alone."""
    if vad is None:
        return (await stt.transcribe(samples, sample_rate)).text
    from stages.stt import SttStage
    from stages.turns import TurnConfig, TurnStage
    from stages.vad import VadStage

    texts: list[str] = []
    # inbound capacity covers the whole file: a file, unlike a phone, can wait
    capacity = len(samples) // FRAME + 2
    async with open_chain(
        # a file has no one waiting for an answer: cut it at the plain silence rule
        VadStage(vad),
        TurnStage(TurnConfig(mode="hangover")),
        SttStage(stt),
        inbound_capacity=capacity,
    ) as chain:
        for start in range(0, len(samples), FRAME):
            frame = PcmAudio(
                samples=samples[start : start + FRAME],
                start_sample=start,
                sample_rate=sample_rate,
                captured_at=trio.current_time(),
            )
            chain.inbound.send_nowait(frame)
        await chain.inbound.aclose()
        async for transcript in chain.outputs:
            if transcript.text:
                texts.append(transcript.text)
    return " ".join(texts)


async def _run(args: argparse.Namespace) -> int:
    from stages.stt import SttConfig, open_stt_service
    from stages.vad import open_vad_service

    status = 0
    async with (
        open_stt_service(SttConfig(model=args.model)) as stt,
        open_vad_service(args.vad_model) as vad,
    ):
        for name in args.files:
            try:
                samples = await trio.to_thread.run_sync(load_audio, name, TELEPHONE_RATE)
            except AudioFileError as exc:
                print(f"voicegraph transcribe: {exc}", file=sys.stderr)
                status = 1
                continue
            started = time.perf_counter()
            if args.telephony:
                samples = mulaw_line(samples)
            text = await transcribe_file(samples, stt, None if args.whole else vad)
            ms = round((time.perf_counter() - started) * 1000)
            if args.json:
                print(json.dumps({"file": name, "text": text, "ms": ms}), flush=True)
            else:
                print(f"{name}: {text} ({ms} ms)", flush=True)
    return status


def main(args: argparse.Namespace) -> int:
    missing = [name for name in args.files if not Path(name).is_file()]
    for name in missing:
        print(f"voicegraph transcribe: no such file: {name}", file=sys.stderr)
    if missing:
        return 2
    try:
        return trio.run(_run, args)
    except VoicegraphError as exc:
        print(f"voicegraph transcribe: {exc}", file=sys.stderr)
        return 2
