"""The Redis bus: sessions placed on engine workers in other processes and hosts (the scale-out mode).

Only this module (and the worker) talks to Redis, through coredis, which runs natively on Trio (anyio):
no bridge threads (docs/dependencies.md compares the options). Message formats and key names: `wire.py`.

Placement is competing consumers: the gateway LPUSHes a request on the engine's queue and exactly one
worker BRPOPs it, subscribes to the session's audio channel, and acknowledges with a `claim` on the
session's results channel; only then does audio flow. Each gateway watches the liveness key of its
sessions' workers; when one expires, the session is placed again and the audio since its last final
(kept here) is replayed, so the client loses no final and gets none twice.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager

import anyio
import attrs
import coredis
import coredis.exceptions
import trio
from coredis.response.types import PubSubMessage

from asr_actors.bus import wire
from asr_actors.bus.base import BusStatistics
from asr_actors.config import BusConfig
from asr_actors.directory import Directory
from asr_actors.engines.base import (
    EngineEvent,
    EngineFailed,
    EngineUnavailable,
    Final,
    Partial,
    StreamSpec,
    UnsupportedStream,
)
from asr_actors.errors import DependencyUnavailable
from asr_actors.groups import first_leaf
from asr_actors.limits import DAY_SECONDS, too_many, utc_day
from asr_actors.records import DAY, SessionRecord, TrafficRow, aggregate
from asr_actors.signing import LinkRefused

log = logging.getLogger(__name__)

# Audio frames of one session taken from its channel at once when they have queued up (1.6 s of audio).
MAX_PUBLISH_BATCH = 16
# Best-effort clean-ups in a session's shielded exit (UNSUBSCRIBE, the cancel sent to its worker): bounded
# so that a Redis that went away never holds a session's end; what they miss, expiry and the worker's
# audio_timeout clean up.
CLEANUP_TIMEOUT = 5.0
RedisError = (coredis.exceptions.RedisError, OSError, anyio.BrokenResourceError, anyio.ClosedResourceError)


@contextlib.contextmanager
def unavailable(what: str) -> Iterator[None]:
    """Redis's errors inside, as the domain's `DependencyUnavailable` naming `what` could not be done."""
    try:
        yield
    except RedisError as exc:
        raise DependencyUnavailable(f"{what}: {exc}") from exc


@attrs.define(eq=False)
class _Batch:
    """Messages that go to Redis in one pipelined round trip; everyone who added one waits for `done`."""

    messages: list[tuple[str, bytes]] = attrs.field(factory=list)
    done: trio.Event = attrs.field(factory=trio.Event)
    error: Exception | None = None


class _Publisher:
    """Every PUBLISH of the process goes through one task, many per round trip.

    A command per message costs the client far more CPU than Redis spends on it (docs/performance.md:
    the gateway spent a third of its time in per-frame PUBLISH calls), so messages queued by any session
    while a round trip is in flight leave together in the next one. Nothing waits for a batch to fill: a
    message queued while none is in flight leaves at once. `publish` returns when Redis has the message
    (or raises why not), as a plain PUBLISH would; messages keep the order they were queued in.
    """

    def __init__(self, client: coredis.Redis[bytes], on_error: Callable[[], None]) -> None:
        self._client = client
        self._on_error = on_error
        self._filling = _Batch()
        self._queued = trio.Event()

    async def publish(self, channel: str, messages: list[bytes]) -> None:
        if not messages:
            return
        batch = self._filling
        batch.messages.extend((channel, message) for message in messages)
        self._queued.set()
        await batch.done.wait()
        if batch.error is not None:
            raise batch.error

    async def run(self) -> None:
        while True:
            await self._queued.wait()
            self._queued = trio.Event()
            batch, self._filling = self._filling, _Batch()
            try:
                async with self._client.pipeline(transaction=False) as pipeline:
                    for channel, message in batch.messages:
                        pipeline.publish(channel, message)
            except RedisError as exc:
                batch.error = exc
                self._on_error()
            finally:
                batch.done.set()


class RedisConnection:
    """One command client, one shared pub/sub connection and one publisher per process."""

    def __init__(self, url: str, subscription_queue: int, check_interval: float = 1.0) -> None:
        # The client parses the URL itself: redis://, rediss:// (TLS), unix://, ACL user names, db.
        self.client: coredis.Redis[bytes] = coredis.Redis.from_url(url)
        self._pubsub: coredis.patterns.pubsub.PubSub[bytes] | None = None
        # Set once the current pub/sub connection has delivered a canary; a new, unset one while Redis is
        # away or the connection is being replaced (a connection that only says it is subscribed may
        # deliver nothing: see `_keep_pubsub`).
        self._pubsub_delivers = trio.Event()
        self._subscription_queue = subscription_queue
        self._check_interval = check_interval
        self._streams: dict[str, trio.MemorySendChannel[bytes]] = {}
        # Set by every delivery on the pub/sub connection, the canary's or any stream's.
        self._delivered = trio.Event()
        # Set to have the pub/sub connection checked now rather than at the next interval.
        self._check_now = trio.Event()
        self._publisher = _Publisher(self.client, self.suspect)

    async def publish(self, channel: str, *messages: bytes) -> None:
        """PUBLISH each message on `channel`, in order, batched with every other publish of the process."""
        await self._publisher.publish(channel, list(messages))

    def _hear_canary(self, _message: PubSubMessage) -> None:
        self._delivered.set()

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
            await nursery.start(self._keep_pubsub)
            nursery.start_soon(self._publisher.run)
            yield self
            nursery.cancel_scope.cancel()

    async def _keep_pubsub(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep one working pub/sub connection. Redis cuts a subscriber past its output-buffer limit (and
        all of them when it restarts), and the client then resubscribes without delivering anything more
        (measured with coredis 6.9). So a canary message goes round this connection every check
        interval; when neither it nor any other message comes back within the interval, every stream on
        the connection ends (its session reports the loss at once) and a fresh connection takes over for
        new subscriptions. Other messages count: under load the canary may queue behind thousands of them,
        and a connection that delivers them is alive."""
        canary = f"{wire.PREFIX}canary:{uuid.uuid4().hex}"
        # Started at once, Redis or not: a gateway listens (alive, not ready) while Redis is away, and
        # sessions meanwhile get 503 from `subscription`.
        task_status.started()
        reported_down = False
        while True:
            try:
                with trio.CancelScope() as connection_scope:
                    async with self.client.pubsub(ignore_subscribe_messages=True) as pubsub:
                        await pubsub.subscribe(**{canary: self._hear_canary})
                        self._pubsub = pubsub
                        while True:
                            # The first canary goes at once, so that a new connection is trusted (and
                            # sessions may subscribe) as soon as it has shown that it delivers.
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
                # Redis is away (or the connection's own teardown failed once it went); the streams end
                # below either way, and a new connection is tried every check interval.
                if not reported_down:
                    log.warning("no pub/sub connection to Redis: %s", first_leaf(group))
                    reported_down = True
            self._pubsub = None
            self._not_delivering()
            for stream in self._streams.values():
                stream.close()
            self._streams.clear()
            await trio.sleep(self._check_interval)  # not a hot loop while Redis is away

    @asynccontextmanager
    async def subscription(self, channel: str) -> AsyncIterator[trio.MemoryReceiveChannel[bytes]]:
        """Messages published on `channel` from now on, until the context ends."""
        # A connection being made or proven (at start-up, after a Redis restart) is waited for, one check
        # interval: a subscription on a connection that delivers nothing would lose the session.
        with trio.move_on_after(self._check_interval):
            await self._pubsub_delivers.wait()
        pubsub = self._pubsub
        if pubsub is None or not self.delivering:
            raise EngineUnavailable("The bus is unreachable: no working pub/sub connection to Redis")
        messages_tx, messages_rx = trio.open_memory_channel[bytes](self._subscription_queue)

        def deliver(message: PubSubMessage) -> None:
            self._delivered.set()
            data = message["data"]
            if not isinstance(data, bytes):
                return
            try:
                messages_tx.send_nowait(data)
            except trio.WouldBlock:
                # The subscriber lags and this message is lost: end its stream here, so that the loss is
                # reported now rather than found later as a sequence gap (or never, if it was the last).
                log.warning("subscriber of %s fell behind; closing its stream", channel)
                messages_tx.close()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        try:
            await pubsub.subscribe(**{channel: deliver})
        except BaseException as exc:
            # Redis just restarted, an acknowledgement came late under load, or the session was cancelled
            # while waiting for it: the SUBSCRIBE was sent and may still take effect, so it is taken back,
            # or the channel would stay subscribed on the connection for good.
            await _unsubscribe(pubsub, channel)
            if isinstance(exc, RedisError):
                raise EngineUnavailable(f"The bus is unreachable: {exc}") from exc
            raise
        self._streams[channel] = messages_tx
        try:
            async with messages_rx:
                yield messages_rx
        finally:
            self._streams.pop(channel, None)
            messages_tx.close()
            await _unsubscribe(pubsub, channel)


async def _unsubscribe(pubsub: coredis.patterns.pubsub.PubSub[bytes], channel: str) -> None:
    """Best effort, shielded and bounded: a session's end never waits on a Redis that went away."""
    with trio.CancelScope(shield=True), trio.move_on_after(CLEANUP_TIMEOUT), contextlib.suppress(*RedisError):
        await pubsub.unsubscribe(channel)


class RedisAudioQuota:
    """Today's audio seconds per app, shared by every gateway: one counter per app and UTC day."""

    def __init__(self, connection: RedisConnection) -> None:
        self._redis = connection

    @staticmethod
    def _key(app: str, now: float) -> str:
        return f"{wire.PREFIX}audio:{app}:{utc_day(now)}"

    async def used_today(self, app: str, now: float) -> float:
        # Without the shared count the limit cannot be kept: refuse rather than admit unmetered.
        with unavailable("Usage limits unavailable"):
            stored = await self._redis.client.get(self._key(app, now))
        return float(stored) if stored is not None else 0.0

    async def charge(self, app: str, seconds: float, now: float) -> None:
        key = self._key(app, now)
        with unavailable("Usage could not be counted"):
            async with self._redis.client.pipeline(transaction=False) as pipeline:
                pipeline.incrbyfloat(key, seconds)
                pipeline.expire(key, 2 * DAY_SECONDS)


class RedisSessionSlots:
    """Concurrent sessions per app across every gateway: a sorted set of the sessions holding a slot,
    scored by when their hold expires. A session adds itself, then counts; over the limit it takes itself
    out again (two racing for the last slot may both be refused, never both admitted). Holds are renewed
    every third of `ttl`, so a gateway that dies frees its slots after `ttl`."""

    def __init__(self, connection: RedisConnection, limit: int, per_app: dict[str, int], ttl: float) -> None:
        self._redis = connection
        self._limit = limit
        self._per_app = per_app
        self._ttl = ttl

    @asynccontextmanager
    async def hold(self, app: str) -> AsyncIterator[None]:
        limit = self._per_app.get(app, self._limit)
        if not limit:
            yield
            return
        key, member = f"{wire.PREFIX}slots:{app}", uuid.uuid4().hex
        with unavailable("Usage limits unavailable"):
            held = await self._take(key, member)
        try:
            if held > limit:
                raise too_many(app, limit)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._renew, key, member)
                yield
                nursery.cancel_scope.cancel()
        finally:
            with (
                trio.CancelScope(shield=True),
                trio.move_on_after(self._ttl),
                contextlib.suppress(*RedisError),
            ):
                await self._redis.client.zrem(key, [member])

    async def _take(self, key: str, member: str) -> int:
        now = time.time()
        async with self._redis.client.pipeline(transaction=True) as pipeline:
            pipeline.zremrangebyscore(key, float("-inf"), now)
            pipeline.zadd(key, {member: now + self._ttl})
            held = pipeline.zcard(key)
            pipeline.expire(key, int(self._ttl * 2) + 1)
        return await held

    async def _renew(self, key: str, member: str) -> None:
        while True:
            await trio.sleep(self._ttl / 3)
            with contextlib.suppress(*RedisError):  # a missed renewal is retried; the hold lasts ttl
                await self._redis.client.zadd(key, {member: time.time() + self._ttl})
                await self._redis.client.expire(key, int(self._ttl * 2) + 1)


class RedisReplayGuard:
    """Single use of signed links across every gateway: SET NX with the link's remaining lifetime."""

    def __init__(self, connection: RedisConnection) -> None:
        self._redis = connection

    async def claim(self, signature: str, expires_at: float, now: float) -> None:
        key = f"{wire.PREFIX}link:{signature.replace(' ', '+')}"
        ttl_ms = max(1, int((expires_at - now) * 1000))
        # Without the shared memory of used links no link can be admitted: the session gets 503.
        with unavailable("The link check is unavailable"):
            first = await self._redis.client.set(key, b"1", condition=coredis.PureToken.NX, px=ttl_ms)
        if not first:
            raise LinkRefused("link already used")


class RedisDirectory:
    """Apps and language routes in Redis, shared and editable while gateways run; `fallback` (the config)
    answers for apps Redis does not know and for routes until Redis holds any."""

    APPS = f"{wire.PREFIX}apps"
    ROUTES = f"{wire.PREFIX}routes"

    def __init__(self, connection: RedisConnection, fallback: Directory) -> None:
        self._redis = connection
        self._fallback = fallback

    async def secret(self, appkey: str) -> str | None:
        with unavailable("The app directory is unavailable"):
            stored = await self._redis.client.hget(self.APPS, appkey)
        return stored.decode() if stored is not None else await self._fallback.secret(appkey)

    async def engine_for(self, language: str) -> str | None:
        return (await self.routes()).get(language)

    async def routes(self) -> dict[str, str]:
        with unavailable("The language routes are unavailable"):
            stored = await self._redis.client.hgetall(self.ROUTES)
        if not stored:
            return await self._fallback.routes()
        return {code.decode(): engine.decode() for code, engine in stored.items()}

    # Administration (the `apps` and `routes` commands):
    async def list_apps(self) -> list[str]:
        return sorted(key.decode() for key in await self._redis.client.hkeys(self.APPS))

    async def add_app(self, appkey: str, secret: str) -> None:
        if not await self._redis.client.hsetnx(self.APPS, appkey, secret):
            raise ValueError(f"app {appkey!r} exists already (use rotate)")

    async def rotate_app(self, appkey: str, secret: str) -> None:
        if not await self._redis.client.hexists(self.APPS, appkey):
            raise ValueError(f"no app {appkey!r}")
        await self._redis.client.hset(self.APPS, {appkey: secret})

    async def remove_app(self, appkey: str) -> None:
        if not await self._redis.client.hdel(self.APPS, [appkey]):
            raise ValueError(f"no app {appkey!r}")

    async def set_route(self, language: str, engine: str) -> None:
        if not await self._redis.client.exists([self.ROUTES]):
            # The first edit starts from the config's routes, so that it does not drop the others.
            seed = await self._fallback.routes()
            if seed:
                await self._redis.client.hset(self.ROUTES, seed)
        await self._redis.client.hset(self.ROUTES, {language: engine})

    async def remove_route(self, language: str) -> None:
        await self.set_route(language, "")  # seeds the hash from the config first if need be
        await self._redis.client.hdel(self.ROUTES, [language])


class RedisRecordStore:
    """Session records shared by every gateway: one key per session (expiring with the retention) and a
    sorted set of sessions by start time."""

    INDEX = f"{wire.PREFIX}records"

    def __init__(self, connection: RedisConnection, retention_days: float) -> None:
        self._redis = connection
        self._retention = retention_days * DAY

    async def save(self, record: SessionRecord) -> None:
        client = self._redis.client
        with unavailable("The session record could not be kept"):
            await client.set(
                f"{wire.PREFIX}record:{record.session}", record.to_json(), ex=int(self._retention)
            )
            await client.zadd(self.INDEX, {record.session: record.started_at})
            await client.zremrangebyscore(self.INDEX, float("-inf"), record.ended_at - self._retention)

    async def transcripts(self, *, app: str | None = None, since: float = 0) -> list[SessionRecord]:
        client = self._redis.client
        members = await client.zrange(self.INDEX, since, "+inf", sortby=coredis.PureToken.BYSCORE)
        sessions = [member.decode() for member in members if isinstance(member, bytes)]
        if not sessions:
            return []
        bodies = await client.mget([f"{wire.PREFIX}record:{session}" for session in sessions])
        records = [SessionRecord.from_json(body) for body in bodies if body is not None]
        return [record for record in records if app is None or record.app == app]

    async def traffic(self, *, app: str | None = None, since: float = 0) -> list[TrafficRow]:
        return aggregate(await self.transcripts(app=app, since=since))


@attrs.define
class _Replay:
    """Audio since the last final, kept for a failover; byte offsets count from the stream's start."""

    bytes_per_ms: float
    # Appended per audio frame, dropped from the left at each final: a deque keeps both O(1).
    frames: collections.deque[tuple[int, bytes]] = attrs.field(factory=collections.deque)
    received: int = 0

    def add(self, pcm: bytes) -> None:
        self.frames.append((self.received, pcm))
        self.received += len(pcm)

    def finalized_until(self, end_ms: int) -> None:
        cut = end_ms * self.bytes_per_ms
        while self.frames and self.frames[0][0] + len(self.frames[0][1]) <= cut:
            self.frames.popleft()

    @property
    def start_ms(self) -> int:
        start = self.frames[0][0] if self.frames else self.received
        return round(start / self.bytes_per_ms)


@attrs.define
class _Stream:
    """One session's state across placements."""

    spec: StreamSpec
    engine: str
    replay: _Replay
    # The session's channels: results from the bus, audio from the receiver, events to the relay.
    results: trio.MemoryReceiveChannel[bytes]
    audio: trio.MemoryReceiveChannel[bytes]
    events: trio.MemorySendChannel[EngineEvent]
    audio_ended: bool = False
    attempt: int = 0
    # The worker ended the stream (its `end`, or a failure it reported): nothing to cancel.
    finished: bool = False


class RedisBus:
    def __init__(self, connection: RedisConnection, config: BusConfig, *, events_capacity: int):
        self._redis = connection
        self._config = config
        self._events_capacity = events_capacity
        self._failovers = 0
        self._streams_open = 0
        # Results from workers that broke the engine protocol (each ended its session with a 500).
        self._malformed = 0

    def statistics(self) -> BusStatistics:
        return BusStatistics(
            streams_open=self._streams_open, failovers=self._failovers, malformed_results=self._malformed
        )

    @asynccontextmanager
    async def open_stream(
        self, engine: str, spec: StreamSpec, audio: trio.MemoryReceiveChannel[bytes]
    ) -> AsyncIterator[trio.MemoryReceiveChannel[EngineEvent]]:
        events_tx, events_rx = trio.open_memory_channel[EngineEvent](self._events_capacity)
        self._streams_open += 1
        try:
            async with self._redis.subscription(wire.results_channel(spec.session_id)) as results:
                replay = _Replay(bytes_per_ms=spec.sample_rate * 2 / 1000)
                stream = _Stream(spec, engine, replay, results, audio, events_tx)
                worker = await self._place(stream)
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._serve, stream, worker)
                        async with events_rx:
                            yield events_rx
                finally:
                    if not stream.finished:
                        # Release the worker now rather than at its idle timeout.
                        await self._cancel_placement(stream)
        finally:
            self._streams_open -= 1

    async def engine_problem(self, engine: str) -> str | None:
        if not self._redis.delivering:
            return "the bus's pub/sub connection to Redis is not delivering (Redis away, or reconnecting)"
        try:
            # SCAN, not KEYS: a large keyspace (sessions, records) must not block Redis for a health check.
            workers = [
                key async for key in self._redis.client.scan_iter(match=wire.worker_key("*"), count=1000)
            ]
            engines = await self._redis.client.mget(workers) if workers else ()
        except RedisError as exc:
            self._redis.suspect()
            return f"the bus is unreachable: {exc}"
        return None if engine.encode() in engines else "no live worker"

    async def _place(self, stream: _Stream) -> str:
        """Queue the session for a worker; return the id of the worker that claimed it."""
        spec = stream.spec
        request = wire.Request(
            spec.session_id, stream.engine, spec.language, spec.sample_rate, stream.attempt
        )
        queue = wire.queue_key(stream.engine)
        try:
            await self._redis.client.lpush(queue, [request.encode()])
            with trio.move_on_after(self._config.claim_timeout):
                async for data in stream.results:
                    try:
                        message = wire.decode_result(data)
                    except wire.BusProtocolError as exc:
                        self._malformed += 1
                        raise EngineUnavailable(f"The engine worker broke the protocol: {exc}") from exc
                    if message.attempt != stream.attempt:
                        continue
                    if isinstance(message.result, wire.Claimed):
                        log.info("claimed by %s (attempt %d)", message.result.worker, stream.attempt)
                        return message.result.worker
                    if isinstance(message.result, wire.Refused):
                        refusal = EngineUnavailable if message.result.unavailable else UnsupportedStream
                        raise refusal(message.result.message)
            # Nobody claimed it in time: take the request back, so that no worker starts it later, and
            # cancel the placement, in case a worker took it just now (it would wait for audio otherwise).
            await self._redis.client.lrem(queue, 1, request.encode())
            await self._cancel_placement(stream)
        except RedisError as exc:
            self._redis.suspect()
            raise EngineUnavailable(f"The bus is unreachable: {exc}") from exc
        raise EngineUnavailable(
            f"No {stream.engine} worker claimed the session in {self._config.claim_timeout:g} s"
        )

    async def _serve(self, stream: _Stream, worker: str) -> None:
        events = stream.events
        async with stream.audio, events:
            while True:
                bus_failure = None
                try:
                    lost = await self._serve_placement(stream, worker)
                except* RedisError as group:
                    bus_failure = first_leaf(group)
                if bus_failure is not None:
                    log.warning("bus failure: %s", bus_failure)
                    await events.send(EngineFailed("The bus failed"))
                    return
                if not lost:
                    stream.finished = True
                    return
                await self._cancel_placement(stream)
                self._failovers += 1
                stream.attempt += 1
                log.warning("worker %s is gone; placing the session again", worker)
                try:
                    worker = await self._place(stream)
                except EngineUnavailable as exc:
                    await events.send(EngineFailed(f"The engine worker was lost and none took over: {exc}"))
                    return

    async def _serve_placement(self, stream: _Stream, worker: str) -> bool:
        """Audio out, results in, until the worker's `end`; True if the worker died first."""
        lost = False
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                nonlocal lost
                await self._wait_until_gone(worker)
                lost = True
                nursery.cancel_scope.cancel()

            nursery.start_soon(self._send_audio, stream)
            nursery.start_soon(watch)
            await self._receive_results(stream)
            nursery.cancel_scope.cancel()
        return lost

    async def _cancel_placement(self, stream: _Stream) -> None:
        session = stream.spec.session_id
        cancel = wire.encode_audio(wire.AudioFrame(session, 0, b"", cancel=True))
        with (
            trio.CancelScope(shield=True),
            trio.move_on_after(CLEANUP_TIMEOUT),
            contextlib.suppress(*RedisError),
        ):
            await self._redis.publish(wire.audio_channel(session, stream.attempt), cancel)

    async def _send_audio(self, stream: _Stream) -> None:
        audio = stream.audio
        session = stream.spec.session_id
        channel = wire.audio_channel(session, stream.attempt)
        seq = 0

        def frame(pcm: bytes, *, end: bool = False) -> bytes:
            nonlocal seq
            seq += 1
            return wire.encode_audio(wire.AudioFrame(session, seq - 1, pcm, end=end))

        # A new placement starts with the audio since the last final (nothing on the first one).
        await self._redis.publish(channel, *[frame(pcm) for _, pcm in list(stream.replay.frames)])
        if not stream.audio_ended:
            async for pcm in audio:
                batch = [pcm]
                # Frames that queued up while the last publish was in flight go out in one round trip.
                while len(batch) < MAX_PUBLISH_BATCH:
                    try:
                        batch.append(audio.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                for queued in batch:
                    stream.replay.add(queued)
                await self._redis.publish(channel, *[frame(queued) for queued in batch])
            stream.audio_ended = True
        await self._redis.publish(channel, frame(b"", end=True))

    async def _wait_until_gone(self, worker: str) -> None:
        """Returns once the worker's liveness key has expired (it missed its heartbeats)."""
        key = wire.worker_key(worker)
        # A key expiring in another process gives no event to wait on: poll it, once per heartbeat.
        while await self._redis.client.exists([key]):  # noqa: ASYNC110
            await trio.sleep(self._config.heartbeat_interval)

    async def _receive_results(self, stream: _Stream) -> None:
        results, events = stream.results, stream.events
        # Times from a new placement count from the start of its replayed audio.
        offset_ms = stream.replay.start_ms
        expected = 1  # seq 0 was the claim
        async for data in results:
            try:
                message = wire.decode_result(data)
            except wire.BusProtocolError as exc:
                self._malformed += 1
                log.warning("malformed result from the engine worker: %s", exc)
                await events.send(EngineFailed(f"Malformed result from the engine worker: {exc}"))
                return
            if (
                message.attempt != stream.attempt
                or message.seq < expected
                or message.session != stream.spec.session_id
            ):
                continue  # a message of an earlier placement, or a duplicate
            if message.seq > expected:
                log.warning("results %d..%d lost on the bus", expected, message.seq - 1)
                await events.send(EngineFailed(f"Results were lost on the bus (sequence gap at {expected})"))
                return
            expected += 1
            result = message.result
            if isinstance(result, wire.StreamEnded):
                return
            if isinstance(result, EngineFailed):
                await events.send(result)
                return
            if isinstance(result, Partial | Final):
                shifted = attrs.evolve(
                    result, begin_ms=result.begin_ms + offset_ms, end_ms=result.end_ms + offset_ms
                )
                if isinstance(shifted, Final):
                    stream.replay.finalized_until(shifted.end_ms)
                await events.send(shifted)
        # The subscription ended before the worker's `end`: this gateway fell behind, or Redis cut it off.
        await events.send(
            EngineFailed(f"Results were lost on the bus (the subscription broke at {expected})")
        )
