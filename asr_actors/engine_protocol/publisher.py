"""Everything one process publishes to Redis, batched: one task, one pipelined round trip per tick."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator

import attrs
import trio

from asr_actors.engine_protocol import wire
from asr_actors.redis_client import Pipeline, RedisClient, RedisUnavailable

log = logging.getLogger(__name__)

# One PUBLISH carries at most this many bytes of records (more go in the next PUBLISH of the same round
# trip): far below Redis's pub/sub output-buffer limits (8 MiB soft, 32 MiB hard by default), so that a
# batch never gets a healthy subscriber cut off on its own.
MAX_PUBLISH_BYTES = 256 * 1024
# Bytes of records a process may have queued or in flight before `Publisher.post` waits for Redis (a
# second of 1,000 streams' audio is 32 MiB: this is a few hundred milliseconds of it).
MAX_UNSENT_BYTES = 8 * 1024 * 1024

# A command added to a batch's pipeline (its reply is not read: the batch raises if the round trip fails).
Command = Callable[[Pipeline], object]


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

    def __init__(self, client: RedisClient, tick: float, on_error: Callable[[], None]) -> None:
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
            except RedisUnavailable as exc:
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
