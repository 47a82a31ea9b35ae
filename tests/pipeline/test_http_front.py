"""The HTTP front: plain HTTP and WebSocket upgrades on one port, bounded and routed."""

from __future__ import annotations

import ssl

import httpx
import pytest
import trio
import trio.testing
import trustme
from trio_websocket import ConnectionRejected, open_websocket_url

from pipeline.server.http_front import HttpFront, HttpRequest, HttpResponse, normalize_path


async def echo_http(request: HttpRequest) -> HttpResponse:
    return HttpResponse.json(
        200,
        {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "body": request.body.decode(),
            "x-test": request.header("X-Test"),
        },
    )


async def echo_websocket(request) -> None:
    ws = await request.accept()
    message = await ws.get_message()
    await ws.send_message(f"{request.path} said {message}")
    await ws.aclose()


def make_front(**options: object) -> HttpFront:
    front = HttpFront(**options)
    front.add_http_route("POST", "/echo", echo_http, max_body=1000)
    front.add_http_route("GET", "/echo", echo_http)
    front.add_websocket_route("/ws", echo_websocket)
    return front


async def start(nursery: trio.Nursery, front: HttpFront, ssl_context=None) -> int:
    listening = await nursery.start(front.serve, "127.0.0.1", 0, ssl_context)
    return listening.port


async def raw_exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        received = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                received += chunk
    return received


def test_paths_ignore_query_and_trailing_slash():
    assert normalize_path("/media/sales/?token=x") == "/media/sales"
    assert normalize_path("/") == "/"
    assert normalize_path("") == "/"
    assert normalize_path("/a//") == "/a"


async def test_http_routes_with_keep_alive(nursery):
    front = make_front()
    port = await start(nursery, front)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        first = await client.post("/echo/?a=1", content=b"hello", headers={"x-test": "yes"})
        second = await client.get("/echo")
    assert first.status_code == 200
    assert first.json() == {
        "method": "POST",
        "path": "/echo",
        "query": {"a": ["1"]},
        "body": "hello",
        "x-test": "yes",
    }
    assert second.json()["method"] == "GET"
    assert front.counters["connections"] == 1  # both requests on one kept-alive connection
    assert front.counters["http_requests"] == 2


async def test_unknown_path_404_and_wrong_method_405(nursery):
    front = make_front()
    port = await start(nursery, front)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        missing = await client.get("/nothing")
        wrong = await client.delete("/echo")
    assert missing.status_code == 404
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "GET, POST"
    assert front.counters["not_found"] == 1


async def test_body_over_the_limit_is_413_declared_or_chunked(nursery):
    front = make_front()
    port = await start(nursery, front)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        declared = await client.post("/echo", content=b"x" * 1001)

        async def chunks():
            for _ in range(20):
                yield b"y" * 100

        chunked = await client.post("/echo", content=chunks())
        fine = await client.post("/echo", content=b"x" * 1000)
    assert declared.status_code == 413
    assert chunked.status_code == 413
    assert fine.status_code == 200
    assert front.counters["bad_requests"] == 2


async def test_malformed_and_oversized_heads_get_4xx_and_a_close(nursery):
    front = make_front()
    port = await start(nursery, front)
    garbage = await raw_exchange(port, b"NOT HTTP AT ALL\r\n\r\n")
    assert garbage.startswith(b"HTTP/1.1 400 ")
    huge = await raw_exchange(port, b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000)
    assert huge.startswith(b"HTTP/1.1 431 ")
    assert front.counters["bad_requests"] == 2


async def test_a_handler_that_raises_is_a_500_and_the_server_goes_on(nursery):
    front = make_front()

    async def broken(request: HttpRequest) -> HttpResponse:
        raise RuntimeError("bug")

    front.add_http_route("GET", "/broken", broken)
    port = await start(nursery, front)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        assert (await client.get("/broken")).status_code == 500
        assert (await client.get("/echo")).status_code == 200
    assert front.counters["handler_errors"] == 1


async def test_a_silent_client_is_dropped_after_the_head_timeout(nursery, autojump_clock):
    front = make_front(head_timeout=10.0)
    client, server = trio.testing.memory_stream_pair()
    start_time = trio.current_time()
    nursery.start_soon(front.handle_stream, server)
    assert await client.receive_some() == b""  # closed by the server, nothing said
    assert 10.0 <= trio.current_time() - start_time < 10.5


async def test_an_idle_kept_alive_connection_is_closed_at_shutdown(nursery):
    front = make_front(keep_alive_timeout=60.0)
    client, server = trio.testing.memory_stream_pair()
    done = trio.Event()

    async def serve() -> None:
        await front.handle_stream(server)
        done.set()

    nursery.start_soon(serve)
    await client.send_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    with trio.fail_after(5):
        reply = await client.receive_some()
        assert reply.startswith(b"HTTP/1.1 200 ")
        front.close_idle()
        await done.wait()


async def test_websocket_upgrade_replays_the_head_to_trio_websocket(nursery):
    front = make_front()
    port = await start(nursery, front)
    with trio.fail_after(10):
        async with open_websocket_url(f"ws://127.0.0.1:{port}/ws?token=abc") as ws:
            await ws.send_message("hi")
            assert await ws.get_message() == "/ws?token=abc said hi"
    assert front.counters["websocket_upgrades"] == 1


async def test_websocket_upgrade_to_an_unknown_path_is_refused_with_404(nursery):
    front = make_front()
    port = await start(nursery, front)
    with pytest.raises(ConnectionRejected) as rejected:
        async with open_websocket_url(f"ws://127.0.0.1:{port}/elsewhere"):
            pass
    assert rejected.value.status_code == 404
    assert front.counters["not_found"] == 1


async def test_default_websocket_handler_takes_any_other_path(nursery):
    front = make_front()
    front.set_default_websocket(echo_websocket)
    port = await start(nursery, front)
    async with open_websocket_url(f"ws://127.0.0.1:{port}/any/path") as ws:
        await ws.send_message("x")
        assert await ws.get_message() == "/any/path said x"


async def test_http_and_websocket_over_tls(nursery):
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate.configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    front = make_front()
    port = await start(nursery, front, server_context)
    with trio.fail_after(10):
        async with httpx.AsyncClient(verify=client_context) as client:
            answer = await client.get(f"https://127.0.0.1:{port}/echo")
        assert answer.json()["path"] == "/echo"
        async with open_websocket_url(f"wss://127.0.0.1:{port}/ws", client_context) as ws:
            await ws.send_message("secure")
            assert await ws.get_message() == "/ws said secure"
