"""One process's link to Redis for the engine protocol: the client, the batching publisher and the inbox.

Every gateway and worker process has one. Records to other processes' inboxes go out through the
publisher (batched per tick, one round trip); records for this process arrive in its inbox and are routed
to their placements. Redis's errors reach this package as `RedisUnavailable` (converted in
`asr_actors.redis_client`).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import trio

from asr_actors.engine_protocol import wire
from asr_actors.engine_protocol.inbox import Inbox, Route, Sink
from asr_actors.engine_protocol.publisher import Publisher
from asr_actors.redis_client import Pipeline, RedisClient


def new_process_id(role: str) -> str:
    """A process id unique across hosts and restarts: it names the process's inbox."""
    return f"{role}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class RedisConnection:
    """One command client, one pub/sub connection subscribed to the process's inbox, one publisher."""

    def __init__(
        self,
        url: str,
        process_id: str,
        *,
        route_capacity: int = 1024,
        check_interval: float = 1.0,
        batch_interval: float = 0.005,
    ) -> None:
        # The connections carry the process id as their name (CLIENT LIST shows whose inbox lags).
        self.client = RedisClient(url, process_id)
        self.process_id = process_id
        self._publisher = Publisher(self.client, batch_interval, self.suspect)
        self.inbox = Inbox(
            self.client,
            process_id,
            self._publisher,
            route_capacity=route_capacity,
            check_interval=check_interval,
        )

    @asynccontextmanager
    async def open(self) -> AsyncIterator[RedisConnection]:
        async with self.client.open(), trio.open_nursery() as nursery:
            await nursery.start(self.inbox.run)
            nursery.start_soon(self._publisher.run)
            yield self
            nursery.cancel_scope.cancel()

    async def send(self, process_id: str, *records: wire.Record) -> None:
        """Records to another process's inbox, in order, batched with every other send of this process;
        returns when Redis has them."""
        await self._publisher.send(wire.inbox_channel(process_id), records)

    async def post(self, process_id: str, *records: wire.Record) -> None:
        """`send` without waiting for the batch to leave, for records whose loss their receiver detects;
        waits only while the publisher is congested (see `Publisher`). Deliberately no checkpoint otherwise:
        its callers checkpoint on their next receive, and a frame's extra trip through the scheduler was a
        measurable share of the gateway's CPU."""
        # Room first, then the records: every session posting once before waiting would queue a frame
        # backlog per session (2,000 sessions x 16 frames: 100 MB in one batch, measured) past the bound.
        if self._publisher.congested:
            await self._publisher.wait_for_room()
        self._publisher.post(wire.inbox_channel(process_id), records)

    async def push(self, key: str, value: bytes) -> None:
        """LPUSH `value` on the list `key`, in this process's next batch."""
        await self._publisher.push(key, value)

    async def claim(self, process_id: str, record: wire.Record, ttl_s: int) -> None:
        """Send a claim `record` and, in the same round trip, INCR the session's claims counter (renewing
        its expiry to `ttl_s`)."""
        key = wire.claims_key(record.session_id)

        def count(pipeline: Pipeline) -> None:
            pipeline.incr(key)
            pipeline.expire(key, ttl_s)

        await self._publisher.send(wire.inbox_channel(process_id), [record], [count])

    @property
    def unsent_bytes(self) -> int:
        """Bytes of this process's records not yet taken by Redis (bounded near MAX_UNSENT_BYTES)."""
        return self._publisher.unsent_bytes

    @property
    def publish_lag(self) -> float:
        """Seconds this process's records now take to reach Redis (see `Publisher.lag`)."""
        return self._publisher.lag

    # The inbox's, for the placements of both sides:
    @property
    def delivering(self) -> bool:
        return self.inbox.delivering

    async def wait_delivering(self) -> None:
        await self.inbox.wait_delivering()

    def suspect(self) -> None:
        self.inbox.suspect()

    async def attach(self, route: Route, sink: Sink) -> None:
        await self.inbox.attach(route, sink)

    async def open_route(self, route: Route) -> trio.MemoryReceiveChannel[wire.Record]:
        return await self.inbox.open_route(route)

    def close_route(self, route: Route) -> None:
        self.inbox.close_route(route)

    def route(self, route: Route) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[wire.Record]]:
        return self.inbox.route(route)
