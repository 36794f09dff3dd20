"""One process's link to Redis: a command client, a batching publisher and an inbox (engine protocol v2).

Only the `bus` package and the stores talk to Redis, through coredis, which runs natively on Trio (anyio):
no bridge threads (docs/dependencies.md compares the options). Redis's own errors are caught here and in
the stores (`RedisError`, `unavailable`) and become the project's: `DependencyUnavailable`, or an
`EngineUnavailable` for the session that needed the bus.

Every gateway and worker process subscribes to one channel, its inbox, once; records of every session it
serves arrive there in batches and are routed, in memory, to the placement they belong to. Everything a
process publishes goes through one task that coalesces records bound for the same inbox within a short
tick into one PUBLISH, and sends all of a tick's commands in one pipelined round trip.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from typing import Protocol

import anyio
import attrs
import coredis
import coredis.exceptions
import coredis.patterns.pipeline
import trio
from coredis.response.types import PubSubMessage

from asr_actors.bus import wire
from asr_actors.engines.base import EngineUnavailable
from asr_actors.errors import DependencyUnavailable
from asr_actors.groups import first_leaf

log = logging.getLogger(__name__)

RedisError = (coredis.exceptions.RedisError, OSError, anyio.BrokenResourceError, anyio.ClosedResourceError)
# One PUBLISH carries at most this many bytes of records (more go in the next PUBLISH of the same round
# trip): far below Redis's pub/sub output-buffer limits (8 MiB soft, 32 MiB hard by default), so that a
# batch never gets a healthy subscriber cut off on its own.
MAX_PUBLISH_BYTES = 256 * 1024
# Bytes of records a process may have queued or in flight before `Publisher.post` waits for Redis (a
# second of 1,000 streams' audio is 32 MiB: this is a few hundred milliseconds of it).
MAX_UNSENT_BYTES = 8 * 1024 * 1024
# Best-effort clean-ups in a session's shielded exit (the cancel sent to its worker): bounded so that a
# Redis that went away never holds a session's end; what they miss, the worker's audio_timeout cleans up.
CLEANUP_TIMEOUT = 5.0

Route = tuple[str, int]  # a placement: session id and attempt
# A command added to a batch's pipeline (its reply is not read: the batch raises if the round trip fails).
Command = Callable[[coredis.patterns.pipeline.Pipeline[bytes]], object]


@contextlib.contextmanager
def unavailable(what: str) -> Iterator[None]:
    """Redis's errors inside, as the domain's `DependencyUnavailable` naming `what` could not be done."""
    try:
        yield
    except RedisError as exc:
        raise DependencyUnavailable(f"{what}: {exc}") from exc


def new_process_id(role: str) -> str:
    """A process id unique across hosts and restarts: it names the process's inbox."""
    return f"{role}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


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
            log.warning("session %s fell behind its records; ending its stream", record.session)
            return False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    def close(self) -> None:
        self.records.close()


@attrs.define(eq=False)
class _Batch:
    """What goes to Redis in one pipelined round trip; everyone who added to it waits for `done`."""

    opened_at: float
    records: dict[str, list[bytes]] = attrs.field(factory=dict)  # inbox channel -> encoded records
    pushes: dict[str, list[bytes]] = attrs.field(factory=dict)  # list key -> values, one LPUSH each
    commands: list[Command] = attrs.field(factory=list)
    size: int = 0  # bytes of records
    done: trio.Event = attrs.field(factory=trio.Event)
    error: Exception | None = None


class Publisher:
    """Every record and queue push of the process goes through one task, a batch per tick.

    A command per frame costs the client far more CPU than Redis spends on it (docs/performance.md), so
    records bound for the same inbox within `tick` seconds of the first one leave as one PUBLISH, and a
    tick's commands share one round trip; while a round trip is in flight the next batch fills. Records keep
    the order they were queued in.

    `send` and `push` return when Redis has the batch (or raise why not), as a plain command would. `post`
    returns at once, so that a frame costs its sender no wake-up when its batch leaves: it is for records
    whose loss the receiver detects by their sequence numbers (a failed batch marks the connection suspect,
    and the next record the receiver gets, or the canary, reveals the gap). It waits only while more than
    MAX_UNSENT_BYTES are queued, which is the back-pressure when Redis is slow.
    """

    def __init__(self, client: coredis.Redis[bytes], tick: float, on_error: Callable[[], None]) -> None:
        self._client = client
        self._tick = tick
        self._on_error = on_error
        self._filling: _Batch | None = None
        self._queued = trio.Event()
        # Bytes of records queued or in flight; senders wait while there are more than MAX_UNSENT_BYTES.
        self._unsent = 0
        self._in_flight: _Batch | None = None
        # Seconds from a batch's first record to Redis's answer, for the last batch that completed.
        self._last_lag = 0.0

    def _batch(self) -> _Batch:
        if self._filling is None:
            self._filling = _Batch(trio.current_time())
            self._queued.set()
        return self._filling

    def _add(self, channel: str, records: Iterable[wire.Record]) -> _Batch:
        batch = self._batch()
        queued = batch.records.setdefault(channel, [])
        for record in records:
            encoded = wire.encode_record(record)
            batch.size += len(encoded)
            self._unsent += len(encoded)
            queued.append(encoded)
        return batch

    async def send(
        self, channel: str, records: Iterable[wire.Record], commands: Iterable[Command] = ()
    ) -> None:
        """Records to `channel`, and commands to run in the same round trip; returns when Redis has them."""
        batch = self._add(channel, records)
        batch.commands.extend(commands)
        await self._wait(batch)

    def post(self, channel: str, records: Iterable[wire.Record]) -> None:
        """Records to `channel` in the next batch, without waiting for it (see the class)."""
        self._add(channel, records)

    async def wait_for_room(self) -> None:
        """Until no more than MAX_UNSENT_BYTES are queued or in flight."""
        while self._unsent > MAX_UNSENT_BYTES:
            batch = self._in_flight or self._filling
            assert batch is not None  # unsent bytes are in one of the two
            await batch.done.wait()

    @property
    def congested(self) -> bool:
        return self._unsent > MAX_UNSENT_BYTES

    @property
    def unsent_bytes(self) -> int:
        """Bytes of records queued or in flight."""
        return self._unsent

    @property
    def lag(self) -> float:
        """How long records wait to reach Redis now: the last batch's latency, or the one in flight's age
        if that is longer."""
        in_flight = self._in_flight
        age = trio.current_time() - in_flight.opened_at if in_flight is not None else 0.0
        return max(self._last_lag, age)

    async def push(self, key: str, value: bytes) -> None:
        batch = self._batch()
        batch.pushes.setdefault(key, []).append(value)
        await self._wait(batch)

    @staticmethod
    async def _wait(batch: _Batch) -> None:
        await batch.done.wait()
        if batch.error is not None:
            raise batch.error

    async def run(self) -> None:
        while True:
            await self._queued.wait()
            assert self._filling is not None
            await trio.sleep_until(self._filling.opened_at + self._tick)
            batch, self._filling, self._queued = self._filling, None, trio.Event()
            self._in_flight = batch
            try:
                async with self._client.pipeline(transaction=False) as pipeline:
                    for key, values in batch.pushes.items():
                        # One LPUSH for a burst of requests (pushed in order, so BRPOP takes the oldest).
                        pipeline.lpush(key, values)
                    for command in batch.commands:
                        command(pipeline)
                    for channel, records in batch.records.items():
                        for payload in _payloads(records):
                            pipeline.publish(channel, payload)
            except RedisError as exc:
                batch.error = exc
                log.warning("a batch of %d bytes was not sent: %s", batch.size, exc)
                self._on_error()
            finally:
                self._unsent -= batch.size
                self._in_flight = None
                self._last_lag = trio.current_time() - batch.opened_at
                batch.done.set()


def _payloads(records: list[bytes]) -> Iterator[bytes]:
    """Records joined into PUBLISH payloads of at most MAX_PUBLISH_BYTES (a larger record goes alone)."""
    start, size = 0, 0
    for index, record in enumerate(records):
        if size and size + len(record) > MAX_PUBLISH_BYTES:
            yield b"".join(records[start:index])
            start, size = index, 0
        size += len(record)
    if start < len(records):
        yield b"".join(records[start:])


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
        # The client parses the URL itself: redis://, rediss:// (TLS), unix://, ACL user names, db. Its
        # connections carry the process id as their name (CLIENT LIST shows whose inbox lags).
        self.client: coredis.Redis[bytes] = coredis.Redis.from_url(url, client_name=process_id)
        self.process_id = process_id
        self.inbox = wire.inbox_channel(process_id)
        self._route_capacity = route_capacity
        self._check_interval = check_interval
        # Set once the current pub/sub connection has delivered a canary; a new, unset one while Redis is
        # away or the connection is being replaced (a connection that only says it is subscribed may
        # deliver nothing: see `_keep_pubsub`).
        self._pubsub_delivers = trio.Event()
        self._routes: dict[Route, Sink] = {}
        # Set by every delivery on the pub/sub connection, the canary's or the inbox's.
        self._delivered = trio.Event()
        # Set to have the pub/sub connection checked now rather than at the next interval.
        self._check_now = trio.Event()
        self._publisher = Publisher(self.client, batch_interval, self.suspect)
        self._nursery: trio.Nursery | None = None
        # Inbox batches whose framing was broken (a peer's fault; their sessions see sequence gaps).
        self.malformed_batches = 0

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
        key = wire.claims_key(record.session)

        def count(pipeline: coredis.patterns.pipeline.Pipeline[bytes]) -> None:
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

    @property
    def delivering(self) -> bool:
        """The pub/sub connection has shown that it delivers (readiness depends on it)."""
        return self._pubsub_delivers.is_set()

    async def wait_delivering(self) -> None:
        """Until the pub/sub connection has shown that it delivers."""
        await self._pubsub_delivers.wait()

    def suspect(self) -> None:
        """A command failed: Redis may have gone or restarted, and a pub/sub connection that lived through
        that may deliver nothing (see `_keep_pubsub`). Not trusted until a canary proves it, checked now."""
        self._not_delivering()
        self._check_now.set()

    def _not_delivering(self) -> None:
        if self._pubsub_delivers.is_set():
            self._pubsub_delivers = trio.Event()

    @asynccontextmanager
    async def open(self) -> AsyncIterator[RedisConnection]:
        async with self.client, trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self._keep_pubsub)
            nursery.start_soon(self._publisher.run)
            yield self
            nursery.cancel_scope.cancel()

    async def attach(self, route: Route, sink: Sink) -> None:
        """Hand the records of one placement that arrive in the inbox from now on to `sink`, until
        `close_route`, the sink declines one, or the inbox breaks (then the sink is closed)."""
        # A connection being made or proven (at start-up, after a Redis restart) is waited for, one check
        # interval: a placement on a connection that delivers nothing would lose the session.
        with trio.move_on_after(self._check_interval):
            await self._pubsub_delivers.wait()
        if not self.delivering:
            raise EngineUnavailable("The bus is unreachable: no working pub/sub connection to Redis")
        if route in self._routes:
            raise EngineUnavailable(f"Session {route[0]!r} attempt {route[1]} is placed here already")
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

    def _deliver(self, message: PubSubMessage) -> None:
        self._delivered.set()
        data = message["data"]
        if not isinstance(data, bytes):
            return
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
            log.exception("delivering a record of session %s failed; ending its stream", record.session)
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
        with trio.move_on_after(CLEANUP_TIMEOUT), contextlib.suppress(*RedisError):
            await self.send(worker, wire.cancel(record.session, record.attempt))

    async def _keep_pubsub(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep one working pub/sub connection on the inbox. Redis cuts a subscriber past its output-buffer
        limit (and all of them when it restarts), and the client then resubscribes without delivering
        anything more (measured with coredis 6.9). So a canary message goes round this connection every
        check interval; when neither it nor any other message comes back within the interval, every
        placement routed here ends (its session reports the loss at once) and a fresh connection takes
        over. Inbox batches count: under load the canary may queue behind them, and a connection that
        delivers them is alive."""
        canary = f"{wire.PREFIX}canary:{self.process_id}"
        # Started at once, Redis or not: a gateway listens (alive, not ready) while Redis is away, and
        # sessions meanwhile get 503 from `route`.
        task_status.started()
        reported_down = False
        while True:
            try:
                with trio.CancelScope() as connection_scope:
                    async with self.client.pubsub(ignore_subscribe_messages=True) as pubsub:
                        await pubsub.subscribe(**{canary: self._hear_canary, self.inbox: self._deliver})
                        while True:
                            # The first canary goes at once, so that a new connection is trusted (and
                            # sessions may be placed) as soon as it has shown that it delivers.
                            self._delivered = trio.Event()
                            try:
                                await self.client.publish(canary, b"1")
                            except RedisError:
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
            except* RedisError as group:
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

    def _hear_canary(self, _message: PubSubMessage) -> None:
        self._delivered.set()
