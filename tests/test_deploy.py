"""``deploy/`` is consistent with the code it deploys (there is no Docker here to run it):

- every bot front-end in ``compose.yaml`` runs a ``voicegraph serve`` command line that the
  real CLI parser accepts and that would start (not refused as open), with the ``bot.toml``
  it mounts loaded by the real config loader, and a stop grace longer than its drain;
- that ``bot.toml`` points STT, LLM and TTS at the compose model servers, on their ports;
- the model servers run the tests' own command lines (``benchmarks/model_servers.py``) and
  the image installs the test extra's server packages;
- HAProxy's backend lists every front-end on its port, health-checks a path the server
  answers (200, and 503 once draining), never cuts live calls, and retries a 503.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio
import trio.testing
import yaml
from trio_websocket import open_websocket_url

from benchmarks import model_servers
from pipeline.bot.parrot import ParrotBot
from pipeline.caller.emulator import open_call
from pipeline.cli import serve
from pipeline.cli.main import build_parser
from pipeline.cli.serve import bot_config, check_exposure, make_bot
from pipeline.server.voice_stream import ServerConfig, VoiceStreamServer
from tests.pipeline.conftest import serve_process
from tests.pipeline.test_drain import echoes

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
MODEL_SERVICES = {"stt": "whisper_command", "llm": "llm_command", "tts": "speech_command"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def bot_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose["services"].items()
        if service.get("build", {}).get("target") == "bot"
    }


def parse_serve(command: list[str]) -> Any:
    """The real parser's reading of a container command (ENTRYPOINT is ``voicegraph``)."""
    assert command[0] == "serve", command
    try:
        return build_parser().parse_args([str(part) for part in command])
    except SystemExit:
        pytest.fail(f"voicegraph rejects the command line {shlex.join(map(str, command))}")


def serve_has_option(flag: str) -> bool:
    parser = argparse.ArgumentParser()
    serve.configure(parser)
    return flag in parser.format_help().split()


def host_path(service: dict[str, Any], container_path: str) -> Path:
    """The file in ``deploy/`` a service mounts at ``container_path``."""
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if target == container_path:
            return (DEPLOY / source).resolve()
    pytest.fail(f"nothing is mounted at {container_path}")


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)", duration)
    assert match, f"cannot read the duration {duration!r}"
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)


def option(command: list[str], flag: str) -> str:
    return str(command[command.index(flag) + 1])


# --- the bot front-ends -------------------------------------------------------------------


def test_there_are_several_front_ends_each_a_real_serve_command(compose, monkeypatch) -> None:
    monkeypatch.setenv("VOICEGRAPH_SERVE_API_KEY", "key-from-the-environment")
    bots = bot_services(compose)
    assert len(bots) >= 2, "scaling out means more than one front-end"
    if not serve_has_option("--bus"):
        pytest.skip("`serve --bus` is not in the CLI yet (the Redis bus lands separately)")
    for name, service in bots.items():
        args = parse_serve(service["command"])
        assert args.host == "0.0.0.0", f"{name} must listen beyond loopback, for HAProxy"
        assert args.bus == "redis://valkey:6379"
        assert urlsplit(args.bus).hostname in compose["services"]
        assert args.api_key == "key-from-the-environment", "the key comes from the environment"
        assert "VOICEGRAPH_SERVE_API_KEY" in service["environment"]
        assert check_exposure(args) is None, f"{name} would refuse to start"
        config_file = host_path(service, str(args.config))
        make_bot(args, config_file)  # the real loader and the bot it configures
        assert args.drain_timeout > 0, "a rolling update drains its calls"
        grace = seconds(service["stop_grace_period"])
        assert grace > args.drain_timeout, f"{name}: compose would kill it mid-drain"
        assert service["stop_signal"] == "SIGTERM"
        assert str(args.port) in [str(port) for port in service["expose"]]


def test_the_bot_toml_uses_the_compose_model_servers(compose) -> None:
    bots = bot_services(compose)
    service = next(iter(bots.values()))
    args = parse_serve(service["command"])
    config = bot_config(args, host_path(service, str(args.config)))
    for section in ("stt", "llm", "tts"):
        settings = getattr(config, section)
        assert settings.backend == "openai", f"[{section}] must be remote on a front-end"
        url = urlsplit(settings.url)
        server = compose["services"].get(url.hostname)
        assert server is not None, f"[{section}] url {settings.url}: no such compose service"
        assert option(server["command"], "--port") == str(url.port)
        assert str(url.port) in [str(port) for port in server["expose"]]


# --- the model servers ----------------------------------------------------------------------


def flags(argv: list[str]) -> set[str]:
    return {part for part in map(str, argv) if part.startswith("--")}


@pytest.mark.parametrize("name", sorted(MODEL_SERVICES))
def test_model_servers_run_the_tests_command_lines(compose, name: str, tmp_path: Path) -> None:
    command = [str(part) for part in compose["services"][name]["command"]]
    make = getattr(model_servers, MODEL_SERVICES[name])
    tested = make(8000, tmp_path)[0] if name == "tts" else make(8000)
    tested = ["python" if part == sys.executable else part for part in tested]
    program = tested[:3] if tested[0] == "python" else [Path(tested[0]).name]
    assert command[: len(program)] == program, f"{name} runs another server than the tests"
    assert flags(command) <= flags(tested), f"{name}: options the tests never ran"
    assert option(command, "--host") == "0.0.0.0"


def test_the_image_installs_the_servers_the_tests_use() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    servers = [
        requirement
        for requirement in extra["optional-dependencies"]["test"]
        if requirement.split(">")[0].split("[")[0]
        in ("faster-whisper-server", "llama-cpp-python", "local-tts-studio")
    ]
    assert len(servers) == 3
    for requirement in servers:
        assert f'"{requirement}"' in dockerfile, f"{requirement} (pyproject) not in the image"


def test_the_dockerfile_has_the_targets_and_files_compose_names(compose) -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    targets = set(re.findall(r"^FROM \S+ AS (\S+)$", dockerfile, re.MULTILINE))
    for name, service in compose["services"].items():
        build = service.get("build")
        if build:
            assert (DEPLOY / build["context"] / build["dockerfile"]).resolve().is_file()
            assert build["target"] in targets, f"{name}: no stage {build['target']}"
    for line in re.findall(r"^COPY (?!--from)(.+)$", dockerfile, re.MULTILINE):
        for source in line.split()[:-1]:  # the last is the destination
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    assert 'ENTRYPOINT ["voicegraph"]' in dockerfile


def test_the_model_image_finds_the_bundled_models(tmp_path: Path) -> None:
    """``deploy/bundled_models.py``, as the image build runs it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "benchmarks"), str(ROOT)])}
    subprocess.run(
        [sys.executable, str(DEPLOY / "bundled_models.py"), str(tmp_path / "models")],
        check=True,
        env=env,
        timeout=60,
    )
    models = tmp_path / "models"
    assert (models / "whisper").is_dir()
    assert (models / "llm.gguf").is_file()
    assert (models / "tts" / "settings.json").is_file()


# --- the load balancer ----------------------------------------------------------------------


def haproxy_sections(text: str) -> dict[str, list[str]]:
    """``{"backend bots": [lines], ...}``: HAProxy's configuration is a line per setting
    under a section header; comments and blank lines dropped."""
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if not line[0].isspace():
            current = sections.setdefault(line.strip(), [])
        else:
            current.append(line.strip())
    return sections


@pytest.fixture(scope="module")
def haproxy() -> dict[str, list[str]]:
    return haproxy_sections((DEPLOY / "haproxy.cfg").read_text())


def test_the_balancer_lists_every_front_end(compose, haproxy) -> None:
    frontend = next(lines for name, lines in haproxy.items() if name.startswith("frontend"))
    backend_name = next(line.split()[1] for line in frontend if line.startswith("default_backend"))
    backend = haproxy[f"backend {backend_name}"]
    servers = {}
    for line in backend:
        if line.startswith("server "):
            _, _, address, *_ = line.split()
            host, port = address.rsplit(":", 1)
            servers[host] = port
    bots = bot_services(compose)
    assert set(servers) == set(bots), "every front-end, and only those, in the rotation"
    for name, service in bots.items():
        assert servers[name] == option(service["command"], "--port")
    bind = next(line.split()[1] for line in frontend if line.startswith("bind"))
    published = [str(port).split(":")[-1] for port in compose["services"]["lb"]["ports"]]
    assert bind.rsplit(":", 1)[-1] in published
    assert (
        "./haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro"
        in compose["services"]["lb"]["volumes"]
    )


def test_the_balancer_keeps_live_calls_and_retries_a_draining_front_end(haproxy) -> None:
    everything = " ".join(line for lines in haproxy.values() for line in lines)
    assert "shutdown-sessions" not in everything, "marking a front-end down must not cut calls"
    retry_on = next(line for line in haproxy["defaults"] if line.startswith("retry-on"))
    assert "503" in retry_on.split()
    assert any(line.startswith("option redispatch") for line in haproxy["defaults"])
    assert any(line.startswith("timeout tunnel") for line in haproxy["defaults"])


async def test_the_health_check_path_answers_200_then_503_when_draining(haproxy) -> None:
    backend = next(lines for name, lines in haproxy.items() if name.startswith("backend"))
    send = next(line.split() for line in backend if line.startswith("http-check send"))
    path = send[send.index("uri") + 1]
    expect = next(line.split() for line in backend if line.startswith("http-check expect"))
    assert expect[-2:] == ["status", "200"]
    server = VoiceStreamServer(ServerConfig(api_key="some-key"), ParrotBot())
    assert await status_of(server, path) == 200
    server.start_draining()
    assert await status_of(server, path) == 503, "a draining front-end fails the check"


async def status_of(server: VoiceStreamServer, path: str) -> int:
    client, server_side = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle_stream, server_side)
        request = f"GET {path} HTTP/1.1\r\nhost: voicegraph\r\nconnection: close\r\n\r\n"
        await client.send_all(request.encode())
        response = b""
        while chunk := await client.receive_some(65536):
            response += chunk
    return int(response.split(b" ", 2)[1])


# --- the balancer for real: HAProxy (Debian's haproxy) in front of two front-ends ----------


def local_haproxy_config(ports: list[int], listen: int) -> str:
    """``deploy/haproxy.cfg`` as it is, on loopback: the front-ends at ``ports`` instead of
    the compose names, logs on stderr, a connection cap this machine's limits allow."""
    text = (DEPLOY / "haproxy.cfg").read_text()
    servers = [line for line in text.splitlines() if line.strip().startswith("server ")]
    for index, line in enumerate(servers):
        if index < len(ports):
            name = line.split()[1]
            text = text.replace(line, f"    server {name} 127.0.0.1:{ports[index]}")
        else:
            text = text.replace(line + "\n", "")
    text = re.sub(r"(?m)^    bind :\d+", f"    bind 127.0.0.1:{listen}", text)
    text = text.replace("log stdout format raw", "log stderr format raw")
    return re.sub(r"(?m)^    maxconn \d+", "    maxconn 1000", text)


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs haproxy (.ci/run installs it)")
async def test_haproxy_sends_new_calls_around_a_draining_front_end(tmp_path: Path) -> None:
    """SIGTERM one of two front-ends: every new call through HAProxy still connects (the
    503 before the upgrade is retried on the other one), the draining front-end's live
    call goes on through HAProxy, and it leaves the rotation on its /health."""
    drain = ("--bot", "parrot", "--drain-timeout", "60")
    with trio.fail_after(60):
        async with serve_process(*drain) as front_1, serve_process(*drain) as front_2:
            processes, ports = [front_1[0], front_2[0]], [port_of(front_1[1]), port_of(front_2[1])]
            listen = model_servers.free_port()
            config = tmp_path / "haproxy.cfg"
            config.write_text(local_haproxy_config(ports, listen))
            log = tmp_path / "haproxy.log"
            with log.open("wb") as sink:
                balancer = await trio.lowlevel.open_process(
                    ["haproxy", "-db", "-f", str(config)], stderr=sink
                )
            try:
                await balancer_ready(listen)
                url = f"ws://127.0.0.1:{listen}/"
                async with (
                    open_call(url, call_id="one") as one,
                    open_call(url, call_id="two") as two,
                    open_call(url, call_id="three") as three,
                ):
                    counts = [(await calls_on(port), port) for port in ports]
                    assert sorted(count for count, _ in counts) == [1, 2], counts
                    fewer = min(counts)[1]  # leastconn sends new calls there: make it drain
                    processes[ports.index(fewer)].send_signal(signal.SIGTERM)
                    while (await http_status(fewer, "/health")) != 503:  # noqa: ASYNC110 - HTTP
                        await trio.sleep(0.05)
                    for _attempt in range(4):
                        async with open_websocket_url(url):  # accepted, not 503
                            pass
                    assert all([await echoes(call) for call in (one, two, three)])
                    while not re.search(DOWN_ON_503, log.read_text()):  # noqa: ASYNC110 - a log
                        await trio.sleep(0.1)  # until HAProxy takes it out of the rotation
                retried = re.findall(r' 101 .*/\+1 .*"GET / HTTP/1.1"', log.read_text())
                assert retried, "no new call met the draining front-end: the test proved nothing"
            finally:
                balancer.terminate()
                await balancer.wait()


DOWN_ON_503 = r"bot-\d is DOWN, reason: Layer7 wrong status, code: 503"


def port_of(ready: dict[str, Any]) -> int:
    return int(ready["url"].rstrip("/").rsplit(":", 1)[1])


async def http_status(port: int, path: str) -> int:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        request = f"GET {path} HTTP/1.1\r\nhost: voicegraph\r\nconnection: close\r\n\r\n"
        await stream.send_all(request.encode())
        response = b""
        while chunk := await stream.receive_some(65536):
            response += chunk
    return int(response.split(b" ", 2)[1])


async def calls_on(port: int) -> int:
    """A front-end's live calls, from its /health (loopback, no key: the details)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        response = b""
        while chunk := await stream.receive_some(65536):
            response += chunk
    return int(json.loads(response.partition(b"\r\n\r\n")[2])["calls"])


async def balancer_ready(port: int) -> None:
    """Wait until HAProxy accepts connections and has checked both front-ends up."""
    while True:
        try:
            if await http_status(port, "/health") == 200:
                return
        except OSError:
            pass
        await trio.sleep(0.1)
