"""Place an outgoing call through the platform's REST API (or the local emulator).

Exit status: 0 the platform accepted the call, 1 it refused, failed or did not
answer, 2 the request was wrong before anything was sent. The API key comes from
``--api-key`` or ``VOICEGRAPH_API_KEY`` and is never printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import trio

from pipeline.platform.rest import (
    DEFAULT_BASE_URL,
    CallRequest,
    CallStarted,
    InvalidCallRequest,
    PlatformClient,
    RestError,
    WebhookDetails,
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mobile", required=True, metavar="NUMBER", help="10-digit number to call")
    parser.add_argument("--did", required=True, metavar="NUMBER", help="10-digit DID to call from")
    parser.add_argument("--ws-url", required=True, metavar="URL", help="the bot, ws:// or wss://")
    parser.add_argument("--webhook-url", default=None, metavar="URL", help="lifecycle webhooks")
    parser.add_argument(
        "--webhook-method",
        default="POST",
        choices=("POST", "PUT", "GET"),
        help="request_type of the webhooks (default POST)",
    )
    parser.add_argument("--webhook-header", default=None, metavar="NAME", help="header sent")
    parser.add_argument(
        "--webhook-value",
        default=os.environ.get("VOICEGRAPH_WEBHOOK_VALUE"),
        metavar="VALUE",
        help="its value (default from VOICEGRAPH_WEBHOOK_VALUE)",
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help="x-metro-api-key (default from VOICEGRAPH_API_KEY; prefer the variable)",
    )
    parser.add_argument(
        "--base-url",
        default=os.environ.get("VOICEGRAPH_PLATFORM_URL", DEFAULT_BASE_URL),
        metavar="URL",
        help=f"the platform (default {DEFAULT_BASE_URL}, or VOICEGRAPH_PLATFORM_URL)",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    parser.add_argument("--json", action="store_true", help="print the outcome as JSON")


def build_request(args: argparse.Namespace) -> CallRequest:
    webhook = None
    if args.webhook_url is not None:
        webhook = WebhookDetails(
            args.webhook_url, args.webhook_method, args.webhook_header, args.webhook_value
        )
    elif args.webhook_header:
        raise InvalidCallRequest("webhook_details", "--webhook-header needs --webhook-url")
    request = CallRequest(args.mobile, args.did, args.ws_url, webhook)
    request.validate()
    return request


def main(args: argparse.Namespace) -> int:
    api_key = args.api_key or os.environ.get("VOICEGRAPH_API_KEY")
    try:
        if not api_key:
            raise InvalidCallRequest(
                "api_key", "no API key: pass --api-key or set VOICEGRAPH_API_KEY"
            )
        if args.timeout <= 0:
            raise InvalidCallRequest("timeout", "must be positive")
        request = build_request(args)
        client = PlatformClient(api_key, base_url=args.base_url, timeout=args.timeout)
    except InvalidCallRequest as exc:
        return _fail(args, exc, 2)
    try:
        started = trio.run(_place, client, request)
    except RestError as exc:
        return _fail(args, exc, 1)
    _print_started(args, started)
    return 0


async def _place(client: PlatformClient, request: CallRequest) -> CallStarted:
    async with client:
        return await client.place_call(request)


def _print_started(args: argparse.Namespace, started: CallStarted) -> None:
    if args.json:
        print(json.dumps({"success": True, **started.as_dict()}))
    else:
        print(f"call {started.call_id}: {started.status} ({started.message})")


def _fail(args: argparse.Namespace, exc: RestError, status: int) -> int:
    if args.json:
        error: dict[str, Any] = {
            "kind": type(exc).__name__,
            "reason": str(exc),
            "code": exc.code,
            "http_status": exc.http_status,
        }
        print(json.dumps({"success": False, "error": error}))
    print(f"voicegraph dial: {exc}", file=sys.stderr)
    return status
