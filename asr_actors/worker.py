"""An engine worker: claims sessions for one engine from Redis and runs them (the scale-out mode).

    python -m asr_actors worker --engine local [--config my.toml] [--concurrency 4]

Many workers on many hosts share an engine's queue; each session is claimed by exactly one of them.
A worker refreshes its liveness key while it runs; on SIGTERM it stops claiming, finishes the sessions it
has, and exits. Its sessions' audio arrives in its inbox, their results go to their gateways' inboxes, in
batches (engine protocol v2: docs/engine-protocol.md; message formats: `asr_actors/engine_protocol/wire.py`).
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable

import trio

from asr_actors import logs, operator_http
from asr_actors.config import Config, ConfigError
from asr_actors.engine_protocol import claims, wire
from asr_actors.engine_protocol.connection import RedisConnection, new_process_id
from asr_actors.engine_protocol.liveness import Heartbeat, LivenessWatch
from asr_actors.engines.base import Engine, EngineFailed
from asr_actors.groups import first_leaf
from asr_actors.metrics import WorkerMetrics
from asr_actors.overload import LoopLag
from asr_actors.redis_client import RedisUnavailable

log = logging.getLogger(__name__)

# Queued requests taken in one round trip at most when sessions arrive in a burst: enough to make a
# burst cost few round trips, few enough that the workers waiting on the queue share it (with 1,024, one
# worker took 45 of a 50-session burst; placement time of a 2,000 burst measured the same at 64 and 1,024).
CLAIM_BATCH = 16
# Seconds before Redis is tried again after a failed claim or while it is away at start-up.
RETRY_INTERVAL = 1.0
# Best-effort messages on the way out (a crashed session's notice to its gateway, the worker's liveness
# key deleted at exit), bounded so that a Redis that went away never holds the worker.
GOODBYE_TIMEOUT = 5.0


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
                    contextlib.suppress(RedisUnavailable),
                ):
                    await heartbeat.goodbye()
            nursery.cancel_scope.cancel()

    async def _claim(self, redis: RedisConnection, sessions: trio.Nursery) -> None:
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
                raw = await claims.next_request(redis, self.engine.name)
            except RedisUnavailable as exc:
                self._slots.release()
                log.warning("claiming failed: %s", exc)
                redis.suspect()
                await trio.sleep(RETRY_INTERVAL)
                continue
            except BaseException:
                self._slots.release()
                raise
            if raw is None:
                self._slots.release()
                continue
            self._start(redis, sessions, raw)
            # A burst of sessions (a gateway restarting, its clients reconnecting) is taken in bulk: one
            # round trip for as many queued requests as there are free slots, not one BRPOP each.
            while self._slots.value and not self._loop_lag.overloaded:
                try:
                    queued = await claims.queued_requests(
                        redis, self.engine.name, min(self._slots.value, CLAIM_BATCH)
                    )
                except RedisUnavailable as exc:
                    log.warning("claiming failed: %s", exc)
                    break
                if not queued:
                    break
                for raw in queued:
                    self._slots.acquire_nowait()
                    self._start(redis, sessions, raw)

    def _start(self, redis: RedisConnection, sessions: trio.Nursery, raw: bytes) -> None:
        """Start a claimed request's session in the slot already taken for it."""
        request = claims.parse_request(raw)
        if request is None:
            self._slots.release()
            return
        sessions.start_soon(self._session, redis, request)

    async def _session(self, redis: RedisConnection, request: wire.Request) -> None:
        logs.current_session_id.set(request.session_id)
        self.metrics.sessions.inc()
        results = claims.Results(redis, request)
        serving = claims.Serving(
            redis,
            self.id,
            self.engine,
            self._gateways,
            audio_capacity=self.config.bus.route_queue,
            audio_timeout=self.config.bus.audio_timeout,
            events_capacity=self.config.channels.engine_events,
        )
        crashed = False
        try:
            if not await claims.serve(serving, request, results.send):
                self.metrics.gateway_gone.inc()
        except* RedisUnavailable as group:
            log.warning("session lost its bus: %s", first_leaf(group))
        except* Exception:
            # A bug in one session must not take the worker's other sessions down, nor leave its gateway
            # waiting: it is told, if the bus still works.
            log.exception("session failed")
            crashed = True
        finally:
            self._slots.release()
        if crashed:
            with trio.move_on_after(GOODBYE_TIMEOUT), contextlib.suppress(RedisUnavailable):
                await results.send(EngineFailed("Engine worker failure"))


async def _first_heartbeat(redis: RedisConnection, heartbeat: Heartbeat) -> None:
    """Announce the worker, waiting for Redis if it is away (a worker may start before it) and for a
    pub/sub connection that delivers (a worker announced without one would lose every session)."""
    await redis.wait_delivering()
    waiting = False
    while True:
        try:
            await heartbeat.beat()
        except RedisUnavailable as exc:
            if not waiting:
                log.warning("waiting for Redis: %s", exc)
                waiting = True
            await trio.sleep(RETRY_INTERVAL)
        else:
            return


async def _within(scope: trio.CancelScope, run: Callable[[], Awaitable[None]]) -> None:
    with scope:
        await run()


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
