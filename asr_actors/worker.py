"""An engine worker: claims sessions for one engine from Redis and runs them (the scale-out mode).

    python -m asr_actors worker --engine local [--config my.toml] [--concurrency 4]

Many workers on many hosts share an engine's queue; each session is claimed by exactly one of them.
A worker refreshes its liveness key while it runs; on SIGTERM it stops claiming, finishes the sessions it
has, and exits. Its sessions' audio arrives in its inbox, their results go to their gateways' inboxes, in
batches (engine protocol v2: docs/engine-protocol.md; message formats: `asr_actors/bus/wire.py`).
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable

import attrs
import trio

from asr_actors import logs, operator_http
from asr_actors.bus import wire
from asr_actors.bus.liveness import Heartbeat, LivenessWatch
from asr_actors.bus.memory import run_engine
from asr_actors.bus.redis_connection import RedisConnection, RedisError, new_process_id
from asr_actors.config import Config, ConfigError
from asr_actors.engines.base import (
    Engine,
    EngineEvent,
    EngineFailed,
    EngineUnavailable,
    Final,
    Partial,
    StreamSpec,
    UnsupportedStream,
)
from asr_actors.groups import first_leaf
from asr_actors.metrics import WorkerMetrics
from asr_actors.overload import LoopLag

log = logging.getLogger(__name__)

# BRPOP's own timeout: how often the claim loop looks up from an empty queue.
CLAIM_POLL_SECONDS = 1
# Queued requests taken in one round trip at most when sessions arrive in a burst: enough to make a
# burst cost few round trips, few enough that the workers waiting on the queue share it (with 1,024, one
# worker took 45 of a 50-session burst; placement time of a 2,000 burst measured the same at 64 and 1,024).
CLAIM_BATCH = 16
# Seconds before Redis is tried again after a failed claim or while it is away at start-up.
RETRY_INTERVAL = 1.0
# Best-effort messages on the way out (a crashed session's notice to its gateway, the worker's liveness
# key deleted at exit), bounded so that a Redis that went away never holds the worker.
GOODBYE_TIMEOUT = 5.0
# How long the per-session claim counter lives (conformance and failover tests read it; an hour covers any
# session's placement history).
CLAIMS_KEY_TTL_S = 3600


@attrs.define
class _Results:
    """One session's results, to its gateway's inbox: numbers each record (before the send: a send
    cancelled midway may still have reached Redis), so that every path, a crash included, keeps the
    sequence."""

    redis: RedisConnection
    request: wire.Request
    seq: int = 0

    async def send(self, result: wire.Result) -> None:
        record = wire.result_record(self.request.session, self.request.attempt, self.seq, result)
        self.seq += 1
        if isinstance(result, wire.Claimed):
            await self.redis.claim(self.request.reply_to, record, CLAIMS_KEY_TTL_S)
        elif isinstance(result, Partial | Final):
            # Not waited for: a lost batch shows as a sequence gap at the gateway (the `end` that follows
            # the last of them is waited for).
            await self.redis.post(self.request.reply_to, record)
        else:
            await self.redis.send(self.request.reply_to, record)


class Worker:
    def __init__(
        self, config: Config, engine: Engine, concurrency: int, worker_id: str | None = None
    ) -> None:
        self.config = config
        self.engine = engine
        self.id = worker_id or new_process_id(engine.name)
        self._concurrency = concurrency
        # A semaphore, not a CapacityLimiter: the claim loop takes a slot, the session's task gives it back.
        self._slots = trio.Semaphore(concurrency)
        self._stop_claiming = trio.CancelScope()
        # The gateways holding this worker's sessions (made with the Redis connection, in `run`).
        self._gateways: LivenessWatch
        # No claims while the loop runs late: sessions already held keep their share of the process.
        self._loop_lag = LoopLag(config.bus.worker_max_loop_lag)
        self._redis: RedisConnection | None = None
        self._draining = False
        self.metrics = WorkerMetrics(self)

    def drain(self) -> None:
        """Stop claiming; sessions already running go on to their end."""
        self._draining = True
        self._stop_claiming.cancel()

    @property
    def loop_lag(self) -> float:
        return self._loop_lag.lag

    @property
    def sessions_active(self) -> int:
        return self._concurrency - self._slots.value

    def readiness(self) -> dict[str, str]:
        """What /readyz reports: each check "ok" or why not."""
        redis = self._redis
        delivering = redis is not None and redis.delivering
        return {
            "redis": "ok" if delivering else "the pub/sub connection to Redis is not delivering",
            "draining": "draining: claims no new session" if self._draining else "ok",
            "claiming": f"paused: the loop runs {self._loop_lag.lag:.2f} s late"
            if self._loop_lag.overloaded
            else "ok",
        }

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        bus = self.config.bus
        await self.engine.prepare()
        redis = RedisConnection(
            bus.url,
            self.id,
            route_capacity=bus.route_queue,
            check_interval=bus.pubsub_check_interval,
            batch_interval=bus.batch_interval,
        )
        heartbeat = Heartbeat(
            redis, wire.worker_key(self.id), self.engine.name, bus.heartbeat_interval, bus.worker_ttl
        )
        self._gateways = LivenessWatch(redis, bus.heartbeat_interval, wire.gateway_key)
        self._redis = redis
        async with redis.open(), trio.open_nursery() as nursery:
            await _first_heartbeat(redis, heartbeat)
            beating = trio.CancelScope()
            nursery.start_soon(_within, beating, heartbeat.run)
            nursery.start_soon(self._gateways.run)
            nursery.start_soon(self._loop_lag.run)
            log.info("worker %s serving engine %s", self.id, self.engine.name)
            task_status.started(self.id)
            try:
                async with trio.open_nursery() as sessions:
                    with self._stop_claiming:
                        await self._claim(redis, sessions)
                    log.info(
                        "worker %s stopped claiming; %d session(s) to finish", self.id, self.sessions_active
                    )
            finally:
                # Also when the drain's bound ends the sessions: the gateways then move them at once
                # rather than after worker_ttl.
                beating.cancel()
                with (
                    trio.move_on_after(GOODBYE_TIMEOUT),
                    trio.CancelScope(shield=True),
                    contextlib.suppress(*RedisError),
                ):
                    await heartbeat.goodbye()
            nursery.cancel_scope.cancel()

    async def _claim(self, redis: RedisConnection, sessions: trio.Nursery) -> None:
        queue = wire.queue_key(self.engine.name)
        while True:
            await redis.wait_delivering()  # a session claimed now could not be served
            if self._loop_lag.overloaded:
                log.warning(
                    "not claiming: the event loop runs %.2f s late (limit %g s)",
                    self._loop_lag.lag,
                    self.config.bus.worker_max_loop_lag,
                )
                await self._loop_lag.wait_calm()
                log.info("claiming again")
            await self._slots.acquire()
            try:
                popped = await redis.client.brpop([queue], timeout=CLAIM_POLL_SECONDS)
            except RedisError as exc:
                self._slots.release()
                log.warning("claiming failed: %s", exc)
                redis.suspect()
                await trio.sleep(RETRY_INTERVAL)
                continue
            except BaseException:
                self._slots.release()
                raise
            if popped is None:
                self._slots.release()
                continue
            self._start(redis, sessions, popped[1])
            # A burst of sessions (a gateway restarting, its clients reconnecting) is taken in bulk: one
            # round trip for as many queued requests as there are free slots, not one BRPOP each.
            while self._slots.value and not self._loop_lag.overloaded:
                try:
                    queued = await redis.client.rpop(queue, count=min(self._slots.value, CLAIM_BATCH))
                except RedisError as exc:
                    log.warning("claiming failed: %s", exc)
                    break
                if not queued:
                    break
                for raw in queued:
                    self._slots.acquire_nowait()
                    self._start(redis, sessions, raw)

    def _start(self, redis: RedisConnection, sessions: trio.Nursery, raw: bytes) -> None:
        """Start a claimed request's session in the slot already taken for it."""
        try:
            request = wire.Request.decode(raw)
        except wire.BusProtocolError as exc:
            self._slots.release()
            log.warning("dropped a malformed request: %s", exc)
            return
        if not request.reply_to:
            self._slots.release()
            log.warning("dropped a request without reply_to (version %d)", request.version)
            return
        sessions.start_soon(self._session, redis, request)

    async def _session(self, redis: RedisConnection, request: wire.Request) -> None:
        logs.current_session.set(request.session)
        self.metrics.sessions.inc()
        results = _Results(redis, request)
        crashed = False
        try:
            await self._serve(redis, request, results.send)
        except* RedisError as group:
            log.warning("session lost its bus: %s", first_leaf(group))
        except* Exception:
            # A bug in one session must not take the worker's other sessions down, nor leave its gateway
            # waiting: it is told, if the bus still works.
            log.exception("session failed")
            crashed = True
        finally:
            self._slots.release()
        if crashed:
            with trio.move_on_after(GOODBYE_TIMEOUT), contextlib.suppress(*RedisError):
                await results.send(EngineFailed("Engine worker failure"))

    async def _serve(
        self, redis: RedisConnection, request: wire.Request, send: Callable[[wire.Result], Awaitable[None]]
    ) -> None:
        session = request.session

        spec = StreamSpec(session_id=session, language=request.language, sample_rate=request.sample_rate)
        if request.version != wire.PROTOCOL_VERSION:
            await send(
                wire.Refused(
                    f"engine protocol version {request.version} is not {wire.PROTOCOL_VERSION}", True
                )
            )
            return
        # Routed before the claim is announced, so that no audio record arrives unheard.
        route = (session, request.attempt)
        audio_tx, audio_rx = trio.open_memory_channel[bytes](self.config.bus.route_queue)
        feed = AudioFeed(audio_tx, self.config.bus.audio_timeout)
        await redis.attach(route, feed)
        try:
            try:
                self.engine.check(spec)
            except UnsupportedStream as exc:
                await send(wire.Refused(str(exc)))
                return
            except EngineUnavailable as exc:
                await send(wire.Refused(str(exc), unavailable=True))
                return
            await send(wire.Claimed(self.id))
            events_tx, events_rx = trio.open_memory_channel[EngineEvent](self.config.channels.engine_events)
            try:
                with self._gateways.watching(request.reply_to) as gateway_gone:
                    async with trio.open_nursery() as watch:
                        watch.start_soon(_end_when_gone, gateway_gone, watch.cancel_scope)
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(run_engine, self.engine, spec, audio_rx, events_tx)
                            nursery.start_soon(feed.watch)
                            async with events_rx:
                                async for event in events_rx:
                                    await send(event)
                        watch.cancel_scope.cancel()
                if gateway_gone.is_set():
                    self.metrics.gateway_gone.inc()
                    # Nobody is left to tell: the engine slot is what matters (a paid stream, maybe).
                    log.warning(
                        "session %s ended: its gateway %s is gone (its liveness key expired)",
                        session,
                        request.reply_to,
                    )
                    return
                await send(wire.StreamEnded())
            except* _StreamBroken as group:
                broken = first_leaf(group)
                log.warning("stream broken: %s", broken)
                await send(EngineFailed(f"The audio stream broke: {broken}"))
        finally:
            redis.close_route(route)


async def _first_heartbeat(redis: RedisConnection, heartbeat: Heartbeat) -> None:
    """Announce the worker, waiting for Redis if it is away (a worker may start before it) and for a
    pub/sub connection that delivers (a worker announced without one would lose every session)."""
    await redis.wait_delivering()
    waiting = False
    while True:
        try:
            await heartbeat.beat()
        except RedisError as exc:
            if not waiting:
                log.warning("waiting for Redis: %s", exc)
                waiting = True
            await trio.sleep(RETRY_INTERVAL)
        else:
            return


async def _within(scope: trio.CancelScope, run: Callable[[], Awaitable[None]]) -> None:
    with scope:
        await run()


async def _end_when_gone(gone: trio.Event, scope: trio.CancelScope) -> None:
    await gone.wait()
    scope.cancel()


@attrs.define(eq=False)
class AudioFeed:
    """One placement's audio records, checked and handed to the engine as the inbox decodes them (a
    connection `Sink`: no task and no channel between the inbox and the engine's audio channel)."""

    audio: trio.MemorySendChannel[bytes]
    # [bus] audio_timeout: the gateway's silence, timed from the last record (the engine's pace does not
    # count: records are handed over without waiting for it).
    idle_for: float
    expected: int = 0
    # Why the stream broke, if it did.
    broken: str | None = None
    over: trio.Event = attrs.field(factory=trio.Event)
    idle: trio.CancelScope = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.idle = trio.CancelScope(deadline=trio.current_time() + self.idle_for)

    def deliver(self, record: wire.Record) -> bool:
        if record.kind in (wire.AUDIO, wire.END) and record.seq < self.expected:
            return True  # a repeat
        problem = self._problem(record)
        if problem is not None:
            return self._break(problem)
        self.expected += 1
        self.idle.deadline = trio.current_time() + self.idle_for
        if record.kind == wire.END:
            return self._end()
        try:
            self.audio.send_nowait(record.payload)
        except trio.WouldBlock:
            return self._break("the engine fell behind its audio")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return self._end()  # the engine stopped (a failure): its events say why
        return True

    def _problem(self, record: wire.Record) -> str | None:
        if record.kind == wire.CANCEL:
            return "cancelled by the gateway"
        if record.kind not in (wire.AUDIO, wire.END):
            return f"record of kind {record.kind!r} in the audio"
        if record.seq > self.expected:
            return f"audio lost on the bus (sequence gap at {self.expected})"
        if len(record.payload) % 2:
            return "audio record with an odd number of bytes (not 16-bit PCM)"
        return None

    def close(self) -> None:
        if not self.over.is_set():
            self._break("audio was lost on the bus (it fell behind or the inbox broke)")

    async def watch(self) -> None:
        """Until the audio has ended; raises _StreamBroken if it broke or the gateway went quiet."""
        with self.idle:
            await self.over.wait()
        if self.idle.cancelled_caught:
            self.audio.close()
            raise _StreamBroken("no audio from the gateway")
        if self.broken is not None:
            raise _StreamBroken(self.broken)

    def _end(self) -> bool:
        self.audio.close()
        self.over.set()
        return False

    def _break(self, reason: str) -> bool:
        self.broken = reason
        return self._end()


class _StreamBroken(Exception):
    pass


def build_engine(config: Config, name: str) -> Engine:
    from asr_actors.backend import build_engines

    engines = build_engines(config, {name})
    if name not in engines:
        raise ConfigError(
            f"--engine {name!r} is not an engine (one of: dashscope, fake, iflytek, local, synthetic)"
        )
    return engines[name]


async def serve_worker(
    config: Config,
    engine_name: str,
    concurrency: int,
    *,
    task_status: trio.TaskStatus[int | None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a worker until SIGTERM or SIGINT, then drain for at most [worker] drain_timeout. Reports the
    operator port ([worker] metrics_port; None without one) once the worker has announced itself."""
    worker = Worker(config, build_engine(config, engine_name), concurrency)
    settings = config.worker
    async with trio.open_nursery() as nursery:
        port: int | None = None
        if settings.metrics_port:
            port = await nursery.start(
                operator_http.serve, settings.metrics_host, settings.metrics_port, worker.metrics.routes()
            )
            log.info("worker metrics on http://%s:%d/metrics", settings.metrics_host, port)
        async with trio.open_nursery() as running:
            await running.start(worker.run)
            task_status.started(port)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    log.info(
                        "draining: no new sessions; the %d running may take up to %g s",
                        worker.sessions_active,
                        settings.drain_timeout,
                    )
                    worker.drain()
                    break
            running.cancel_scope.deadline = trio.current_time() + settings.drain_timeout
        if running.cancel_scope.cancelled_caught:
            log.warning(
                "drain_timeout (%g s) passed: the sessions still running were ended", settings.drain_timeout
            )
        nursery.cancel_scope.cancel()
