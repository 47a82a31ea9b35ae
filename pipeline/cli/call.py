"""Dial a bot the way the platform does and report each turn (the call emulator).

With ``--mic`` it is a softphone instead: a person talks to the bot through the
microphone and hears it on the speaker (the ``softphone`` extra), until Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import signal
import ssl
import sys
from pathlib import Path

import numpy as np
import trio

from pipeline.caller.audiofile import AudioFileError, load_audio
from pipeline.caller.client import ClientEvent, open_client
from pipeline.caller.devices import (
    MicrophoneInput,
    SoftphoneUnavailable,
    SpeakerOutput,
    get_media_list,
    sounddevice_module,
)
from pipeline.caller.emulator import (
    Impairments,
    RegistrationError,
    TurnReport,
    converse,
    open_call,
    save_call,
)
from pipeline.runtime.errors import CallError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="the bot's WebSocket URL, ws:// or wss://")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--audio",
        nargs="+",
        metavar="FILE",
        help="caller audio, one file per turn (any common format and rate)",
    )
    source.add_argument(
        "--mic",
        action="store_true",
        help="talk to the bot yourself: microphone in, speaker out, Ctrl-C hangs up "
        "(needs pip install 'voicegraph[softphone]')",
    )
    source.add_argument(
        "--list-devices", action="store_true", help="list microphones and speakers, then exit"
    )
    parser.add_argument(
        "--input-device", default=None, help="--mic: microphone id or name (default: system's)"
    )
    parser.add_argument(
        "--output-device", default=None, help="--mic: speaker id or name (default: system's)"
    )
    parser.add_argument(
        "--pause",
        type=float,
        default=1.0,
        help="seconds of silence after the bot's answer (default 1.0)",
    )
    parser.add_argument(
        "--reply-timeout",
        type=float,
        default=10.0,
        help="seconds to wait for the bot's answer to a turn (default 10)",
    )
    parser.add_argument(
        "--jitter-ms", type=float, default=0.0, help="random extra delay per packet"
    )
    parser.add_argument("--loss", type=float, default=0.0, help="probability a packet is lost")
    parser.add_argument(
        "--reorder",
        type=float,
        default=0.0,
        help="probability a packet is overtaken by the next one",
    )
    parser.add_argument(
        "--duplicate", type=float, default=0.0, help="probability a packet is sent twice"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for the impairments")
    parser.add_argument(
        "--payload",
        choices=("buffer", "base64", "binary"),
        default="buffer",
        help="media payload format (default: Node Buffer object, as the platform)",
    )
    parser.add_argument("--api-key", default=None, help="sent as the x-api-key header")
    parser.add_argument("--mobile", default="9876543210", help="caller number in 'connected'")
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="wss:// without certificate verification (self-signed test certs)",
    )
    parser.add_argument(
        "--save",
        type=Path,
        default=None,
        metavar="DIR",
        help="save caller and bot audio as WAV plus report.json",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per turn")


def main(args: argparse.Namespace) -> int:
    if args.list_devices or args.mic:
        try:
            sounddevice_module()
        except SoftphoneUnavailable as exc:
            print(f"voicegraph call: {exc}", file=sys.stderr)
            return 2
    if args.list_devices:
        for device in get_media_list():
            default = " (default)" if device.default else ""
            print(f"{device.kind:11} {device.device_id:>3}  {device.label}{default}")
        return 0
    if args.mic:
        return trio.run(_softphone, args)
    try:
        turns = [(str(path), load_audio(path)) for path in args.audio]
        impairments = Impairments(
            args.jitter_ms, args.loss, args.reorder, args.duplicate, args.seed
        )
    except (AudioFileError, ValueError) as exc:
        print(f"voicegraph call: {exc}", file=sys.stderr)
        return 2
    try:
        return trio.run(_call, args, turns, impairments)
    except RegistrationError as exc:
        print(f"voicegraph call: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"voicegraph call: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1


def _ssl_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not args.url.startswith("wss://"):
        return None
    context = ssl.create_default_context()
    if args.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


async def _softphone(args: argparse.Namespace) -> int:
    """Microphone → bot → speaker until Ctrl-C, the bot hanging up, or giving up."""

    def show(event: ClientEvent) -> None:
        name = type(event).__name__
        print(f"voicegraph call: {name} {json.dumps(event.detail)}", file=sys.stderr)

    async with open_client(
        args.url,
        token=args.api_key,
        mobile_no=args.mobile,
        ssl_context=_ssl_context(args),
        audio_input=MicrophoneInput(args.input_device),
        audio_output=SpeakerOutput(args.output_device),
    ) as client:
        client.add_listener(show)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            try:
                await client.connect()
            except CallError as exc:  # not connected, or a device refused
                print(f"voicegraph call: {exc}", file=sys.stderr)
                return 1
            print(f"call {client.call_id}: talking to the bot; Ctrl-C hangs up", file=sys.stderr)
            async with trio.open_nursery() as nursery:

                async def hang_up_on_signal() -> None:
                    async for _ in signals:
                        break
                    nursery.cancel_scope.cancel()

                nursery.start_soon(hang_up_on_signal)
                await client.wait_ended()
                nursery.cancel_scope.cancel()
            await client.disconnect()
    return 0


async def _call(
    args: argparse.Namespace, turns: list[tuple[str, np.ndarray]], impairments: Impairments
) -> int:
    async with open_call(
        args.url,
        api_key=args.api_key,
        mobile_no=args.mobile,
        payload_format=args.payload,
        impairments=impairments,
        ssl_context=_ssl_context(args),
    ) as call:
        reports = await converse(call, turns, pause=args.pause, reply_timeout=args.reply_timeout)
    for report in reports:
        print(json.dumps(report.as_dict()) if args.json else _describe(report))
    summary = {
        "callId": call.call_id,
        "packets_sent": call.packets_sent,
        "packets_lost": call.packets_lost,
        "packets_reordered": call.packets_reordered,
        "packets_duplicated": call.packets_duplicated,
        "close_code": call.close_code,
    }
    print(json.dumps(summary) if args.json else f"call {call.call_id}: {summary}")
    if args.save:
        save_call(args.save, call, turns, reports)
    return 0


def _describe(report: TurnReport) -> str:
    latency = (
        f"{report.voice_to_voice_ms:.0f} ms" if report.voice_to_voice_ms is not None else "no reply"
    )
    return (
        f"turn {report.turn} ({report.source}, {report.caller_seconds:.2f} s): "
        f"bot {report.bot_audio_seconds:.2f} s in {report.bot_messages} message(s), "
        f"voice-to-voice {latency}, interrupts {report.interrupts}"
    )
