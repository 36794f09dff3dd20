"""Liveness on the Redis bus, both ways: every gateway and every worker process keeps a key alive with a
heartbeat, and each side watches the keys of the processes holding its sessions.

A gateway watches the workers of its sessions (a dead worker's sessions are placed again); a worker
watches the gateways of its sessions (a dead gateway's sessions are ended and their engine slots freed,
rather than held until the worker's audio timeout). Keys: `wire.worker_key`, `wire.gateway_key`.
"""

from __future__ import annotations

import collections
import contextlib
import logging
from collections.abc import Callable, Iterator

import trio

from asr_actors.engine_protocol import wire
from asr_actors.engine_protocol.connection import RedisConnection
from asr_actors.redis_client import RedisClient, RedisUnavailable

log = logging.getLogger(__name__)


class Heartbeat:
    """This process's liveness key: `value` under `key`, expiring `ttl` seconds after each refresh."""

    def __init__(self, redis: RedisConnection, key: str, value: str, interval: float, ttl: float) -> None:
        self._redis = redis
        self._key = key
        self._value = value
        self._interval = interval
        self._ttl = ttl
        # Until when the key is known to live (the last refresh that Redis took, plus its ttl).
        self._alive_until = -float("inf")

    @property
    def fresh(self) -> bool:
        """The key lives for at least one more interval (a peer that checks now finds it)."""
        return trio.current_time() + self._interval < self._alive_until

    async def beat(self) -> None:
        """Refresh the key now; RedisUnavailable if Redis did not take it."""
        sent_at = trio.current_time()
        await self._redis.client.set(self._key, self._value, px=int(self._ttl * 1000))
        self._alive_until = sent_at + self._ttl

    async def run(self) -> None:
        while True:
            await trio.sleep(self._interval)
            # Alive means able to serve: while the pub/sub connection delivers nothing (Redis away, or
            # reconnecting) the key is not refreshed, and the peers end or move this process's sessions.
            if not self._redis.delivering:
                continue
            try:
                await self.beat()
            except RedisUnavailable as exc:
                log.warning("heartbeat failed: %s", exc)
                self._redis.suspect()

    async def goodbye(self) -> None:
        """Delete the key: the process is leaving (its peers need not wait for it to expire)."""
        await self._redis.client.delete(self._key)


class LivenessWatch:
    """Which of the processes holding this process's sessions are still alive: their liveness keys checked
    together, one pipelined round trip per interval, however many sessions they hold."""

    def __init__(self, redis: RedisConnection, interval: float, key: Callable[[str], str]) -> None:
        self._redis = redis
        self._interval = interval
        self._key = key
        self._gone: dict[str, trio.Event] = {}
        self._watchers: collections.Counter[str] = collections.Counter()

    @contextlib.contextmanager
    def watching(self, process_id: str) -> Iterator[trio.Event]:
        """An event set once `process_id`'s liveness key has expired (it missed its heartbeats)."""
        gone = self._gone.setdefault(process_id, trio.Event())
        self._watchers[process_id] += 1
        try:
            yield gone
        finally:
            self._watchers[process_id] -= 1
            if not self._watchers[process_id]:
                del self._watchers[process_id]
                del self._gone[process_id]

    async def run(self) -> None:
        # A key expiring in another process gives no event to wait on: they are polled, once per interval.
        while True:
            await trio.sleep(self._interval)
            watched = [process for process, gone in self._gone.items() if not gone.is_set()]
            if not watched:
                continue
            try:
                async with self._redis.client.pipeline(transaction=False) as pipeline:
                    replies = [pipeline.exists(self._key(process)) for process in watched]
                alive = [await reply.get() for reply in replies]
            except RedisUnavailable as exc:
                # The pub/sub check that follows ends every placement if Redis is really away.
                log.warning("checking liveness failed: %s", exc)
                self._redis.suspect()
                continue
            for process, exists in zip(watched, alive, strict=True):
                if not exists and process in self._gone:
                    self._gone[process].set()


async def live_workers(client: RedisClient) -> dict[str, str]:
    """The workers whose liveness key lives now, and the engine each serves (by SCAN, not KEYS: a large
    keyspace of sessions and records must not block Redis for a health check)."""
    keys = await client.scan(wire.worker_key("*"))
    engines = await client.mget(keys) if keys else []
    prefix = len(wire.worker_key(""))
    return {
        key[prefix:]: engine.decode() for key, engine in zip(keys, engines, strict=True) if engine is not None
    }
