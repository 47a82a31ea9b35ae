"""Shared by the protocol tests: a registered pair of protocols, message builders, and
every test run under both JSON parsers (orjson and the standard library)."""

from __future__ import annotations

import json

import pytest

import pipeline.protocol.bot_side as protocol_module
from pipeline.protocol.bot_side import (
    ServerProtocol,
)
from pipeline.protocol.events import (
    CloseCode,
    Connected,
    ConnectedAck,
    MessageSkipped,
    ProtocolViolation,
    SkipReason,
)
from pipeline.protocol.platform_side import ClientProtocol

CALL_ID = "call_123456789"
PACKET = bytes([0x80, 0x00, 0x00, 0x01]) + bytes(8) + bytes(range(160))
TIMESTAMP = 1649433600000


@pytest.fixture(params=["orjson", "json"], autouse=True)
def json_parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs with both parsers: the outcomes must not depend on which is installed."""
    if request.param == "json":
        monkeypatch.setattr(protocol_module, "_fast_loads", None)
    elif protocol_module._fast_loads is None:
        pytest.skip("orjson is not installed")
    return request.param


def registered(*, ack: bool = True, **server_options: int) -> tuple[ServerProtocol, ClientProtocol]:
    server = ServerProtocol(**server_options)
    client = ClientProtocol(CALL_ID, "4155551234", extra={"agent": "sales"})
    [connected] = server.receive_message(client.connect())
    assert isinstance(connected, Connected)
    if ack:
        assert client.receive_message(server.acknowledge()) == [ConnectedAck(CALL_ID)]
    return server, client


def text(**fields: object) -> str:
    return json.dumps(fields)


def single(events: list) -> object:
    assert len(events) == 1
    return events[0]


def assert_closes(event: object, code: CloseCode = CloseCode.PROTOCOL_ERROR) -> None:
    assert isinstance(event, ProtocolViolation), event
    assert event.code == code


def assert_skips(event: object, reason: SkipReason) -> None:
    assert isinstance(event, MessageSkipped), event
    assert event.reason is reason
