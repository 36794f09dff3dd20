"""Chaos: two gateways under a mix of misbehaviour while healthy real-time sessions stream through them.

One in-process gateway (in-process bus, fake engine that fails on purpose for German) and one `serve`
process on the Redis bus with a worker, each with 20 healthy real-time sessions, while real tools and
bad clients run against both: `curl -I`, a POST, an `h2load` keep-alive burst, malformed request heads,
garbage WebSocket frames, clients that vanish with a TCP reset, German sessions whose engine raises, and
on the Redis side one stop/start of redis-server. Both processes must live throughout; every healthy
session not caught in the Redis outage ends with exact finals; every affected client gets a coded error or
a close, none hangs; the in-process gateway's census and Redis's session channels are back to baseline.
"""

from __future__ import annotations

import os
import re
import socket
import struct
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
from wsproto.events import BytesMessage

from asr_actors import client
from asr_actors.engines.fake import FakeEngine
from asr_actors.testing.redis_server import RedisServer, redis_server
from asr_actors.testing.subprocess_server import running_server
from tests.e2e.test_scale_out import settled_channels, workers, write_config
from tests.support import APPKEY, SECRET
from tests.test_faults import EXPECTED, SPEECH, census, gateway_on_loopback, link, raw_session, settled

GUARD = 90
HEALTHY = 20


async def tool(*command: str) -> str:
    """A real tool's output (it must succeed: a tool that fails is a finding)."""
    done = await trio.run_process(list(command), capture_stdout=True, capture_stderr=True)
    return done.stdout.decode()


async def http_code(url: str) -> str:
    """The status `curl` gets for `url` (an operator's health check)."""
    return await tool("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", url)


async def raw_http(http_url: str, request: bytes) -> bytes:
    host, port = http_url.removeprefix("http://").rstrip("/").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(request)
        return await stream.receive_some()


def misbehaviour(http_url: str, ws_url: str, outcomes: list[str]) -> list[Callable[[], Awaitable[None]]]:
    """The mix of bad requests and clients against one gateway; each notes what it got in `outcomes`."""

    async def head() -> None:
        for path in ("", "healthz", "metrics"):  # not readyz: it is 503 while Redis is down
            answer = await tool("curl", "-sS", "-I", "--max-time", "10", http_url + path)
            outcomes.append("HEAD " + answer.split("\r\n", 1)[0])

    async def post() -> None:
        code = await tool(
            "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-XPOST", http_url + "healthz"
        )
        outcomes.append(f"POST {code}")

    async def burst() -> None:
        report = await tool("h2load", "--h1", "-n", "300", "-c", "4", http_url + "healthz")
        outcomes.append("h2load " + re.search(r"requests: .*", report).group(0))  # type: ignore[union-attr]

    async def malformed() -> None:
        for request in (
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
            + os.urandom(64)
            + b"\r\n\r\n",  # TLS to plain HTTP
            b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\nHost: x\r\n\r\n",
        ):
            outcomes.append("malformed " + (await raw_http(http_url, request)).split(b"\r\n", 1)[0].decode())

    async def garbage_frames() -> None:
        stream, _connection = await raw_session(ws_url)
        async with stream:
            # A masked text frame with RSV1 set, which no extension was agreed for: a protocol error.
            await stream.send_all(b"\xc1\x85" + os.urandom(4) + b"hello")
            answer = b""
            with trio.move_on_after(10):
                while chunk := await stream.receive_some():
                    answer += chunk
        # A close frame (0x88) with wsproto's protocol-error code, then the socket closes.
        code = struct.unpack("!H", answer[2:4])[0] if answer[:1] == b"\x88" else answer
        outcomes.append(f"garbage frames: close {code!r}")

    async def vanish() -> None:
        stream, connection = await raw_session(ws_url)
        for _ in range(10):
            await stream.send_all(connection.send(BytesMessage(data=SPEECH[:3200])))
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await stream.aclose()
        outcomes.append("vanished")

    return [head, post, burst, malformed, garbage_frames, vanish, vanish]


async def healthy_sessions(ws_url: str, results: list[str], count: int = HEALTHY) -> None:
    async def one() -> None:
        try:
            received = await client.stream_pcm(link(ws_url), SPEECH, realtime=True)
            finals = [r.text for r in received if r.status == "final"]
            results.append("exact" if finals == EXPECTED else f"wrong finals {finals}")
        except client.ServerError as exc:
            results.append(f"{exc.code}")
            if exc.code == 503:
                print(f"[chaos] 503: {exc.message}", file=sys.stderr)

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one)


async def german_session(ws_url: str, outcomes: list[str]) -> None:
    """A session whose engine fails on purpose (the fake engine's switch for German)."""
    try:
        await client.stream_pcm(link(ws_url, "de"), SPEECH)
        outcomes.append("end")
    except client.ServerError as exc:
        outcomes.append(f"{exc.code} {exc.message}")


async def redis_outage(redis: RedisServer) -> None:
    await trio.sleep(1.0)
    await redis.stop()
    await trio.sleep(1.0)
    await redis.start()


def expect_misbehaviour_answered(outcomes: list[str]) -> None:
    assert sorted(outcomes) == sorted(
        [
            *["HEAD HTTP/1.1 200 OK"] * 3,
            "POST 405",
            "h2load requests: 300 total, 300 started, 300 done, 300 succeeded, 0 failed, 0 errored, "
            + "0 timeout",
            "malformed HTTP/1.1 400 Bad Request",
            "malformed HTTP/1.1 400 Bad Request",
            "malformed HTTP/1.1 501 Not Implemented",
            "garbage frames: close 1002",
            "vanished",
            "vanished",
        ]
    ), outcomes


async def test_chaos_on_both_buses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """See the module's docstring."""
    engine = FakeEngine(
        languages=frozenset({"en", "de"}), fault_languages=frozenset({"de"}), fail_after_bytes=16000
    )
    memory_outcomes: list[str] = []
    redis_outcomes: list[str] = []
    memory_healthy: list[str] = []
    caught_in_outage: list[str] = []
    after_outage: list[str] = []
    german: list[str] = []
    with trio.fail_after(GUARD):
        async with (
            gateway_on_loopback(engine) as (gateway, memory_ws),
            redis_server(tmp_path) as redis,
        ):
            config = write_config(tmp_path, redis.url, APPKEY, SECRET)
            async with workers(config, 1, redis), running_server(config) as (redis_http, process):
                redis_ws = redis_http.replace("http://", "ws://") + "v1/asr"
                memory_http = memory_ws.replace("ws://", "http://").removesuffix("v1/asr")
                baseline = census(gateway)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(healthy_sessions, memory_ws, memory_healthy)
                    nursery.start_soon(healthy_sessions, redis_ws, caught_in_outage)
                    for bad in misbehaviour(memory_http, memory_ws, memory_outcomes):
                        nursery.start_soon(bad)
                    # HTTP during the outage; the WebSocket misbehaviour after it (admission needs Redis).
                    for bad in misbehaviour(redis_http, redis_ws, redis_outcomes)[:4]:
                        nursery.start_soon(bad)
                    for _ in range(3):
                        nursery.start_soon(german_session, memory_ws, german)
                    nursery.start_soon(redis_outage, redis)
                # Redis is back: once the worker has re-registered, sessions are exact again.
                with trio.fail_after(30):
                    while await http_code(redis_http + "readyz") != "200":  # noqa: ASYNC110
                        await trio.sleep(0.2)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(healthy_sessions, redis_ws, after_outage)
                    for bad in misbehaviour(redis_http, redis_ws, redis_outcomes)[4:]:
                        nursery.start_soon(bad)
                assert process.returncode is None
                assert ("200", "200") == (
                    await http_code(redis_http + "healthz"),
                    await http_code(memory_http + "healthz"),
                )
                assert baseline == await settled(gateway, baseline)
                assert [] == await settled_channels(redis)
    assert ["exact"] * HEALTHY == memory_healthy
    assert ["exact"] * HEALTHY == after_outage
    assert set(caught_in_outage) <= {"exact", "500", "503"}, caught_in_outage
    assert ["500 fake engine failed on purpose"] * 3 == german
    expect_misbehaviour_answered(memory_outcomes)
    expect_misbehaviour_answered(redis_outcomes)
    caught = {outcome: caught_in_outage.count(outcome) for outcome in sorted(set(caught_in_outage))}
    with capsys.disabled():
        print(f"\n[chaos] sessions caught in the Redis outage ended: {caught}", file=sys.stderr)
