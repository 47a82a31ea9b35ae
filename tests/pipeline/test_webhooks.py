"""The webhook receiver on its own: credentials, tolerant parsing, bounded filing."""

from __future__ import annotations

import json

import pytest

from pipeline.server import webhooks
from pipeline.server.http_front import HttpRequest
from pipeline.server.webhooks import WebhookReceiver


def post(body: object, headers: tuple[tuple[str, str], ...] = ()) -> HttpRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return HttpRequest("POST", "/callbacks", (("content-type", "application/json"), *headers), raw)


async def test_header_checks_401_then_403_then_accepted():
    receiver = WebhookReceiver(header="X-Hook", value="v")
    event = {"callId": "c", "event": "answered"}
    assert (await receiver.handle(post(event))).status == 401
    assert (await receiver.handle(post(event, (("x-hook", "nope"),)))).status == 403
    assert (await receiver.handle(post(event, (("x-hook", "v"),)))).status == 200
    assert receiver.counters == {
        "accepted": 1,
        "unauthorized": 1,
        "forbidden": 1,
        "invalid": 0,
        "dropped": 0,
    }


def test_header_and_value_go_together():
    with pytest.raises(ValueError, match="together"):
        WebhookReceiver(header="x-hook")


async def test_other_spellings_forms_and_query_strings_are_understood():
    receiver = WebhookReceiver()
    await receiver.handle(post({"call_id": "a", "status": "completed", "new": [1]}))
    form = HttpRequest(
        "POST",
        "/callbacks",
        (("content-type", "application/x-www-form-urlencoded"),),
        b"callId=b&event=answered",
    )
    await receiver.handle(form)
    await receiver.handle(HttpRequest("GET", "/callbacks?callId=c&event=initiated"))
    assert [e.event for e in receiver.events_for("a")] == ["completed"]
    assert receiver.events_for("a")[0].data["new"] == [1]
    assert [e.event for e in receiver.events_for("b")] == ["answered"]
    assert [e.event for e in receiver.events_for("c")] == ["initiated"]


@pytest.mark.parametrize("body", [b"not json", b"[1]", {"event": "x"}, {"callId": ""}])
async def test_what_cannot_be_filed_is_400(body):
    receiver = WebhookReceiver()
    assert (await receiver.handle(post(body))).status == 400
    assert receiver.counters["invalid"] == 1


async def test_events_are_recorded_in_a_safe_folder_and_capped(tmp_path, monkeypatch):
    monkeypatch.setattr(webhooks, "EVENTS_PER_CALL", 3)
    receiver = WebhookReceiver(record_dir=tmp_path / "calls")
    seen = []
    receiver.observers.append(seen.append)
    for index in range(5):
        await receiver.handle(post({"callId": "..", "event": f"e{index}"}))
    (folder,) = (tmp_path / "calls").iterdir()  # never the parent folder
    assert folder.name == "~2E~2E"  # the dots escaped: a folder, not the parent
    lines = [json.loads(line) for line in (folder / "transcript.jsonl").read_text().splitlines()]
    assert [(line["role"], line["event"]) for line in lines] == [
        ("platform", "e0"),
        ("platform", "e1"),
        ("platform", "e2"),
    ]
    assert lines[0]["data"] == {"callId": "..", "event": "e0"}
    assert [event.event for event in seen] == ["e0", "e1", "e2"]
    assert receiver.counters["dropped"] == 2
