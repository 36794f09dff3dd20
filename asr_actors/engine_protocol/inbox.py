"""One process's inbox: the pub/sub channel every record for this process arrives on, routed in memory to
the placement (session and attempt) it belongs to, and a watchdog that proves the subscription delivers.

Every gateway and worker process subscribes to its inbox once; records of every session it serves arrive
there in batches. Redis cuts a subscriber past its output-buffer limit (and all of them when it restarts),
and the client then resubscribes without delivering anything more (measured with coredis 6.9): so a canary
goes round the connection every check interval, and a connection that delivers neither it nor anything
else is replaced, its placements ended (their sessions report the loss at once).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol

import attrs
import trio

from asr_actors.engine_protocol import wire
from asr_actors.engine_protocol.publisher import Publisher
from asr_actors.groups import first_leaf
from asr_actors.redis_client import RedisClient, RedisUnavailable

log = logging.getLogger(__name__)

# Best-effort clean-ups (a cancel sent to a worker whose claim came late, a session's cancel at its end):
# bounded so that a Redis that went away never holds anyone; what they miss, the worker's audio_timeout
# cleans up.
CLEANUP_TIMEOUT = 5.0

Route = tuple[str, int]  # a placement: session id and attempt


class RouteTaken(Exception):
    """A placement is routed here already (a request delivered twice)."""


class Sink(Protocol):
    """Where the inbox's records of one placement go, synchronously, as they are decoded."""

    def deliver(self, record: wire.Record) -> bool:
        """Take `record`; False if this sink takes no more (it is then closed and its route dropped)."""
        ...

    def close(self) -> None:
        """No more records: the route was closed, or the inbox broke (its records may be lost)."""
        ...


@attrs.frozen
class ChannelSink:
    """Records into a bounded channel; a placement that falls behind it loses its stream at once."""

    records: trio.MemorySendChannel[wire.Record]

    def deliver(self, record: wire.Record) -> bool:
        try:
            self.records.send_nowait(record)
        except trio.WouldBlock:
            # The placement lags and this record is lost: end its channel here, so that the loss is
            # reported now rather than found later as a sequence gap (or never, if it was the last).
            log.warning("session %s fell behind its records; ending its stream", record.session_id)
            return False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    def close(self) -> None:
        self.records.close()


class Inbox:
    """The process's inbox channel: routes, the subscription and its watchdog."""

    def __init__(
        self,
        client: RedisClient,
        process_id: str,
        publisher: Publisher,
        *,
        route_capacity: int,
        check_interval: float,
    ) -> None:
        self._client = client
        self._process_id = process_id
        self._channel = wire.inbox_channel(process_id)
        self._publisher = publisher
        self._route_capacity = route_capacity
        self._check_interval = check_interval
        # Set once the current pub/sub connection has delivered a canary; a new, unset one while Redis is
        # away or the connection is being replaced (a connection that only says it is subscribed may
        # deliver nothing).
        self._pubsub_delivers = trio.Event()
        self._routes: dict[Route, Sink] = {}
        # Set by every delivery on the pub/sub connection, the canary's or the inbox's.
        self._delivered = trio.Event()
        # Set to have the pub/sub connection checked now rather than at the next interval.
        self._check_now = trio.Event()
        self._nursery: trio.Nursery | None = None
        # Inbox batches whose framing was broken (a peer's fault; their sessions see sequence gaps).
        self.malformed_batches = 0

    @property
    def delivering(self) -> bool:
        """The pub/sub connection has shown that it delivers (readiness depends on it)."""
        return self._pubsub_delivers.is_set()

    async def wait_delivering(self) -> None:
        """Until the pub/sub connection has shown that it delivers."""
        await self._pubsub_delivers.wait()

    def suspect(self) -> None:
        """A command failed: Redis may have gone or restarted, and a pub/sub connection that lived through
        that may deliver nothing. Not trusted until a canary proves it, checked now."""
        self._not_delivering()
        self._check_now.set()

    def _not_delivering(self) -> None:
        if self._pubsub_delivers.is_set():
            self._pubsub_delivers = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self._keep_pubsub)
            task_status.started()

    async def attach(self, route: Route, sink: Sink) -> None:
        """Hand the records of one placement that arrive from now on to `sink`, until `close_route`, the
        sink declines one, or the inbox breaks (then the sink is closed). RedisUnavailable if the inbox
        does not deliver now; RouteTaken if the placement is routed here already."""
        # A connection being made or proven (at start-up, after a Redis restart) is waited for, one check
        # interval: a placement on a connection that delivers nothing would lose the session.
        with trio.move_on_after(self._check_interval):
            await self._pubsub_delivers.wait()
        if not self.delivering:
            raise RedisUnavailable("no working pub/sub connection to Redis")
        if route in self._routes:
            raise RouteTaken(f"Session {route[0]!r} attempt {route[1]} is placed here already")
        self._routes[route] = sink

    async def open_route(self, route: Route) -> trio.MemoryReceiveChannel[wire.Record]:
        """The records of one placement in a channel (see `attach`); the channel ends early if the
        placement falls `route_capacity` records behind or the inbox breaks."""
        records_tx, records_rx = trio.open_memory_channel[wire.Record](self._route_capacity)
        await self.attach(route, ChannelSink(records_tx))
        return records_rx

    def close_route(self, route: Route) -> None:
        """Stop routing the placement's records (a channel's arrived records stay readable, then it ends)."""
        sink = self._routes.pop(route, None)
        if sink is not None:
            sink.close()

    @asynccontextmanager
    async def route(self, route: Route) -> AsyncIterator[trio.MemoryReceiveChannel[wire.Record]]:
        """`open_route` for the length of the context."""
        records = await self.open_route(route)
        try:
            async with records:
                yield records
        finally:
            self.close_route(route)

    def _deliver(self, data: bytes) -> None:
        self._delivered.set()
        try:
            for record in wire.decode_batch(data):
                self._route(record)
        except wire.BusProtocolError as exc:
            self.malformed_batches += 1
            log.warning("dropped the rest of a malformed batch in the inbox: %s", exc)

    def _route(self, record: wire.Record) -> None:
        sink = self._routes.get(record.route)
        if sink is None:
            self._stray(record)
            return
        try:
            taken = sink.deliver(record)
        except Exception:
            # A sink's bug ends its own placement, never the inbox every other session shares.
            log.exception("delivering a record of session %s failed; ending its stream", record.session_id)
            taken = False
        if not taken:
            del self._routes[record.route]
            sink.close()

    def _stray(self, record: wire.Record) -> None:
        """A record for no placement here: a session that ended, or a claim that came after its gateway
        gave the placement up (its claim timeout). That worker is told to stop rather than wait for audio."""
        if record.kind != wire.RESULT or self._nursery is None:
            return
        with contextlib.suppress(wire.BusProtocolError):
            result = wire.decode_result(record)
            if isinstance(result, wire.Claimed):
                self._nursery.start_soon(self._cancel_late_claim, result.worker, record)

    async def _cancel_late_claim(self, worker: str, record: wire.Record) -> None:
        with trio.move_on_after(CLEANUP_TIMEOUT), contextlib.suppress(RedisUnavailable):
            await self._publisher.send(
                wire.inbox_channel(worker), [wire.cancel(record.session_id, record.attempt)]
            )

    async def _keep_pubsub(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep one working pub/sub connection on the inbox (see the module): a canary every check
        interval; when neither it nor any other message comes back within the interval, every placement
        routed here ends and a fresh connection takes over. Inbox batches count: under load the canary may
        queue behind them, and a connection that delivers them is alive."""
        canary = f"{wire.PREFIX}canary:{self._process_id}"
        # Started at once, Redis or not: a gateway listens (alive, not ready) while Redis is away, and
        # sessions meanwhile get 503 from `attach`.
        task_status.started()
        reported_down = False
        while True:
            try:
                with trio.CancelScope() as connection_scope:
                    async with self._client.subscribed(
                        {canary: self._hear_canary, self._channel: self._deliver}
                    ):
                        while True:
                            # The first canary goes at once, so that a new connection is trusted (and
                            # sessions may be placed) as soon as it has shown that it delivers.
                            self._delivered = trio.Event()
                            try:
                                await self._client.publish(canary, b"1")
                            except RedisUnavailable:
                                # Redis itself is away; judge the connection once it is back.
                                self._not_delivering()
                                await trio.sleep(self._check_interval)
                                continue
                            with trio.move_on_after(self._check_interval):
                                await self._delivered.wait()
                            if not self._delivered.is_set():
                                log.warning("the pub/sub connection stopped delivering; ending its streams")
                                connection_scope.cancel()
                                reported_down = True
                            else:
                                self._pubsub_delivers.set()
                                if reported_down:
                                    log.warning("the pub/sub connection to Redis is back")
                                    reported_down = False
                            with trio.move_on_after(self._check_interval):
                                await self._check_now.wait()
                            self._check_now = trio.Event()
            except* RedisUnavailable as group:
                # Redis is away (or the connection's own teardown failed once it went); the placements end
                # below either way, and a new connection is tried every check interval.
                if not reported_down:
                    log.warning("no pub/sub connection to Redis: %s", first_leaf(group))
                    reported_down = True
            self._not_delivering()
            for sink in self._routes.values():
                sink.close()
            self._routes.clear()
            await trio.sleep(self._check_interval)  # not a hot loop while Redis is away

    def _hear_canary(self, _payload: bytes) -> None:
        self._delivered.set()
