"""Per-app limits: audio minutes per UTC day (in-process), and both limits shared by gateways over Redis."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_websocket

from asr_actors.engine_protocol.gateway import RedisBus
from asr_actors.engines.fake import FakeEngine
from asr_actors.limits import (
    DAY_SECONDS,
    DailyAudioLimits,
    LimitReached,
    MemoryAudioQuota,
    app_limits,
    memory_limits,
)
from asr_actors.server import Gateway
from asr_actors.stores.redis import RedisAudioQuota, RedisSessionSlots
from asr_actors.testing.redis_server import redis_server
from asr_actors.worker import Worker
from tests.support import (
    APPKEY,
    SECRET,
    fake_config,
    make_gateway,
    open_connection,
    read_until_close,
    redis_connection,
    running_bus,
    statuses,
    wired_gateway,
)

GUARD = 30
SECOND = b"\x01\x00" * 16000
LIMIT_MESSAGE = f"Daily audio limit reached for app {APPKEY!r} (0.05 minutes)"


async def speak(nursery: trio.Nursery, gateway: Gateway, seconds: float) -> list[dict[str, Any]]:
    connection = await open_connection(nursery, gateway)
    # A refused session is closed by the server while the client still sends: it reads why below.
    with contextlib.suppress(trio_websocket.ConnectionClosed):
        for _ in range(int(seconds * 10)):
            await connection.send_message(SECOND[:3200])
        await connection.send_message('{"status": "end"}')
    return await read_until_close(connection)


async def test_daily_audio_limit_ends_a_session_midway_then_refuses_at_entry(
    nursery: trio.Nursery,
) -> None:
    """0.05 minutes (3 s) a day: 2 s pass; the next session is stopped once it passes the third second
    (429, close 4429); the one after is refused before any audio."""
    gateway = make_gateway(auth={"audio_minutes_per_day": 0.05})
    assert "end" == statuses(await speak(nursery, gateway, 2))[-1]
    second = await speak(nursery, gateway, 2)
    assert {"code": 429, "message": LIMIT_MESSAGE, "data": ""} == second[-1]
    # Up to the allowance the session was served.
    assert ["start", "partial"] == statuses(second)[:2]
    assert ["429"] == statuses(await speak(nursery, gateway, 1))


async def test_the_daily_count_starts_again_each_utc_day() -> None:
    now = [10 * DAY_SECONDS + 100.0]
    limits = DailyAudioLimits(MemoryAudioQuota(), minutes=1, wall_clock=lambda: now[0])
    await limits.charge(APPKEY, 60)
    assert await limits.allowance("other-app") is not None
    now[0] += DAY_SECONDS
    allowance = await limits.allowance(APPKEY)
    assert allowance is not None
    assert 60 == allowance.seconds


async def test_per_app_audio_override() -> None:
    config = fake_config(
        auth={"audio_minutes_per_day": 1}, apps={APPKEY: {"secret": SECRET, "audio_minutes_per_day": 2}}
    )
    limits = memory_limits(config)
    assert 2 == limits.audio.minutes_for(APPKEY)
    assert 1 == limits.audio.minutes_for("other-app")


@asynccontextmanager
async def two_gateways(folder: Path, **auth: Any) -> AsyncIterator[tuple[Gateway, Gateway]]:
    """Two gateways, each with its own Redis connection (as two processes would have), one worker."""
    async with redis_server(folder) as server, trio.open_nursery() as nursery:
        config = fake_config(bus={"kind": "redis", "url": server.url}, auth={"shared_slot_ttl": 3.0, **auth})
        await nursery.start(Worker(config, FakeEngine(), concurrency=8).run)
        gateways = []
        async with (
            redis_connection(server.url, 64).open() as first,
            redis_connection(server.url, 64).open() as second,
        ):
            for redis in (first, second):
                limits = app_limits(
                    config,
                    lambda limit, per_app, redis=redis: RedisSessionSlots(redis.client, limit, per_app, 3.0),
                    RedisAudioQuota(redis.client),
                )
                bus = await nursery.start(running_bus, RedisBus(redis, config.bus, events_capacity=64))
                gateways.append(wired_gateway(config, {}, {APPKEY: SECRET}, bus=bus, limits=limits))
            yield gateways[0], gateways[1]
        nursery.cancel_scope.cancel()


async def test_session_limit_is_shared_by_gateways(tmp_path: Path) -> None:
    """sessions_per_app = 1 across two gateways: a session on one makes the other answer 429 until it ends."""
    with trio.fail_after(GUARD):
        async with two_gateways(tmp_path, sessions_per_app=1) as (one, other), trio.open_nursery() as nursery:
            holding = await open_connection(nursery, one)
            await holding.send_message(SECOND[:3200])
            assert "start" in await holding.get_message()
            refused = await speak(nursery, other, 0.1)
            assert {
                "code": 429,
                "message": f"Too many sessions for app {APPKEY!r} (limit 1)",
                "data": "",
            } == (refused[-1])
            await holding.send_message('{"status": "end"}')
            assert "end" == statuses(await read_until_close(holding))[-1]
            assert "end" == statuses(await speak(nursery, other, 0.1))[-1]


async def test_daily_audio_is_counted_across_gateways(tmp_path: Path) -> None:
    """Audio sent through one gateway counts on the other: 3 s a day, 2 s on one, then 2 s on the other."""
    with trio.fail_after(GUARD):
        async with (
            two_gateways(tmp_path, audio_minutes_per_day=0.05) as (one, other),
            trio.open_nursery() as nursery,
        ):
            assert "end" == statuses(await speak(nursery, one, 2))[-1]
            assert {"code": 429, "message": LIMIT_MESSAGE, "data": ""} == (await speak(nursery, other, 2))[-1]
            assert ["429"] == statuses(await speak(nursery, one, 1))


async def test_a_dead_gateways_slots_expire(tmp_path: Path) -> None:
    """A hold that is never given back (its gateway died) stops counting after shared_slot_ttl."""
    with trio.fail_after(GUARD):
        async with redis_server(tmp_path) as server, redis_connection(server.url).open() as redis:
            slots = RedisSessionSlots(redis.client, 1, {}, ttl=1.0)
            # What a dead gateway leaves behind: a hold whose renewals stopped.
            await redis.client.zadd(f"asr:slots:{APPKEY}", {"dead-gateway-session": time.time() + 1.0})
            with pytest.raises(LimitReached, match="Too many sessions"):
                async with slots.hold(APPKEY):
                    pass
            await trio.sleep(1.2)
            async with slots.hold(APPKEY):
                pass  # the expired hold no longer counts
