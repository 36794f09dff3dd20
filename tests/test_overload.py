"""Overload: a process that cannot keep up refuses or defers new sessions instead of breaking those it has.

The loop lag is measured for real here: the test blocks the event loop (a synchronous sleep, as a burst of
CPU work would) and the gateway's sampler sees it; the publisher's bound runs against a real redis-server.
"""

from __future__ import annotations

import time
from pathlib import Path

import trio

from asr_actors.engine_protocol import wire
from asr_actors.engine_protocol.publisher import MAX_UNSENT_BYTES
from asr_actors.overload import LoopLag
from asr_actors.server import serve
from asr_actors.testing.redis_server import redis_server
from tests.support import fake_config, redis_connection

GUARD = 60


def test_overloaded_while_the_recent_lag_is_over_the_limit() -> None:
    """One late wake-up over the limit makes the process overloaded until a window of calm samples."""
    lag = LoopLag(limit=0.5, window=3)
    assert not lag.overloaded
    lag.sample(0.7)
    assert (True, 0.7, 1) == (lag.overloaded, lag.lag, lag.episodes)
    lag.sample(0.01)
    lag.sample(0.01)
    assert lag.overloaded, "the late sample is still in the window"
    lag.sample(0.01)
    assert (False, 0.01) == (lag.overloaded, lag.lag)
    lag.sample(0.6)
    assert (True, 2) == (lag.overloaded, lag.episodes)


async def _upgrade_answer(host: str, port: int) -> bytes:
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(
            f"GET /v1/asr HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        answer: bytes = await stream.receive_some()
        return answer


async def test_a_gateway_whose_loop_runs_late_refuses_new_sessions_with_503(nursery: trio.Nursery) -> None:
    """The event loop blocked for 0.7 s (over [server] max_loop_lag 0.5 s): the next WebSocket upgrade gets
    HTTP 503 with Retry-After ([server] overload_retry_after) before any session; once the loop keeps up
    again, upgrades are accepted."""
    with trio.fail_after(GUARD):
        config = fake_config(server={"port": 0, "max_loop_lag": 0.5, "overload_retry_after": 7})
        listening = await nursery.start(serve, config)
        host, port = listening.url.removeprefix("http://").rstrip("/").split(":")
        assert (await _upgrade_answer(host, int(port))).startswith(b"HTTP/1.1 101 ")
        time.sleep(0.7)  # noqa: ASYNC251 -- blocking the loop is the point: CPU work that starves it
        await trio.sleep(0.06)  # the sampler wakes, 0.7 s late
        refused = await _upgrade_answer(host, int(port))
        assert refused.startswith(b"HTTP/1.1 503 ")
        assert b"\r\nretry-after: 7\r\n" in refused.lower()
        while not (await _upgrade_answer(host, int(port))).startswith(b"HTTP/1.1 101 "):  # noqa: ASYNC110 -- the socket's answer is what is asserted
            await trio.sleep(0.1)  # calm again once the window holds no late sample (about 0.5 s)


async def test_posted_records_wait_for_room_before_they_are_queued(tmp_path: Path) -> None:
    """2,000 senders each post a 16-frame backlog at once (100 MB in all): no more than MAX_UNSENT_BYTES
    and one post are ever queued, rather than every sender's first post."""
    backlog = [wire.Record(wire.AUDIO, "s", 0, seq, b"\x00" * 3200) for seq in range(16)]
    peak = 0
    with trio.fail_after(GUARD):
        async with redis_server(tmp_path) as redis, redis_connection(redis.url).open() as connection:

            async def sender() -> None:
                nonlocal peak
                await connection.post("nobody", *backlog)
                peak = max(peak, connection.unsent_bytes)

            async with trio.open_nursery() as senders:
                for _ in range(2000):
                    senders.start_soon(sender)
    assert MAX_UNSENT_BYTES < peak <= MAX_UNSENT_BYTES + 16 * (3200 + wire.HEADER.size + 1)
