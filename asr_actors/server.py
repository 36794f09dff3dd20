"""The gateway: listeners; per connection, an HTTP answer or a supervised WebSocket session."""

from __future__ import annotations

import functools
import gc
import ipaddress
import logging
import math
import secrets
import signal
import time
from collections.abc import Awaitable, Callable, Mapping

import attrs
import trio

from asr_actors import http, protocol, session
from asr_actors.backend import backend, resolve_secrets
from asr_actors.bus.base import Bus
from asr_actors.bus.memory import MemoryBus
from asr_actors.config import Config
from asr_actors.dialects import V1, Admission, Bailian, Dialect
from asr_actors.directory import Directory, StaticDirectory
from asr_actors.engines.base import Engine, EngineUnavailable
from asr_actors.errors import DependencyUnavailable
from asr_actors.limits import HandshakeRate, Limits, memory_limits
from asr_actors.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from asr_actors.metrics import Metrics
from asr_actors.overload import LoopLag
from asr_actors.protocol import ErrorCode, ProtocolError
from asr_actors.records import RecordStore
from asr_actors.session import Shared
from asr_actors.signing import MemoryReplayGuard, ReplayGuard
from asr_actors.transport import ClientGone
from asr_actors.websocket import WebSocket

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


def _address(stream: trio.abc.Stream) -> str:
    """The client's IP address, or "" for streams without a socket (in-memory tests)."""
    socket = getattr(stream, "socket", None)
    if socket is None:
        return ""
    peer = socket.getpeername()
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)


def _local_peer(peer: str) -> bool:
    """A request from this host ("" is an in-memory stream: a test in this process)."""
    return not peer or is_loopback(peer)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    # A dual-stack socket reports an IPv4 client as ::ffff:a.b.c.d.
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return (mapped or address).is_loopback


# Answers a request that is not a WebSocket session: an HTTP response.
HttpRoute = Callable[[http.RequestHead], Awaitable[http.Response]]


class Gateway:
    """Shared state of one gateway process; the `handle_*` methods are per-connection entry points."""

    def __init__(
        self,
        config: Config,
        engines: Mapping[str, Engine],
        app_secrets: Mapping[str, str],
        wall_clock: Callable[[], float] = time.time,
        bus: Bus | None = None,
        replay: ReplayGuard | None = None,
        records: RecordStore | None = None,
        shared_directory: Callable[[Directory], Directory] | None = None,
        limits: Limits | None = None,
    ) -> None:
        """`shared_directory` wraps the config's directory in one shared by all gateways (Redis); `limits`
        count in this process unless given (Redis: across gateways)."""
        self.config = config
        self.engines = engines
        demo = config.demo
        self.demo_enabled = demo.enabled == "on" or (
            demo.enabled == "auto" and is_loopback(config.server.host)
        )
        all_secrets = dict(app_secrets)
        if self.demo_enabled and demo.appkey not in all_secrets:
            # The page's demo app needs a secret; one made at start-up never lands in a file.
            all_secrets[demo.appkey] = secrets.token_urlsafe(32)
        self.secrets = all_secrets
        self.wall_clock = wall_clock
        self.bus: Bus = bus or MemoryBus(
            engines,
            events_capacity=config.channels.engine_events,
        )
        own = StaticDirectory(config, all_secrets)
        self.directory = shared_directory(own) if shared_directory else own
        self.v1 = V1(directory=self.directory, replay=replay or MemoryReplayGuard(), wall_clock=wall_clock)
        self.bailian = Bailian()
        self.shared = Shared(
            config, self.bus, self.directory, limits or memory_limits(config), records, wall_clock
        )
        self.active_sessions = 0
        self.draining = False
        self._lifetimes: set[session.Lifetime] = set()
        self._all_ended = trio.Event()
        self._all_ended.set()
        self.metrics = Metrics()
        self._handshakes = HandshakeRate(config.server.handshakes_per_minute)
        # Run by the serving loop (`_serve_gateway`); a gateway driven directly by tests is never overloaded.
        self.loop_lag = LoopLag(config.server.max_loop_lag or math.inf)
        self.metrics.watch(
            "asr_event_loop_lag_seconds",
            "How late this process's event loop runs (the largest of its last samples)",
            lambda: self.loop_lag.lag,
        )
        self.metrics.watch(
            "asr_engines_unavailable", "Engines that failed to prepare", lambda: len(self.unavailable)
        )
        self.metrics.watch(
            "asr_engine_streams_open",
            "Engine streams open now (in-process tasks or worker placements)",
            lambda: self.bus.statistics().streams_open,
        )
        self.metrics.watch_count(
            "asr_bus_failovers",
            "Sessions moved after their worker died",
            lambda: self.bus.statistics().failovers,
        )
        self.metrics.watch_count(
            "asr_bus_malformed_results",
            "Engine worker results that broke the protocol",
            lambda: self.bus.statistics().malformed_results,
        )
        # Engines that failed to prepare, with the reason (their sessions get 503).
        self.unavailable: dict[str, str] = {}

    async def prepare(self) -> None:
        for name, engine in self.engines.items():
            try:
                await engine.prepare()
            except EngineUnavailable as exc:
                # The gateway still serves the other engines; this one's sessions get 503 and the reason.
                log.warning("engine %s is unavailable: %s", name, exc)
                self.unavailable[name] = str(exc)

    async def handle_connection(self, stream: trio.abc.Stream) -> None:
        """The main port: the page, /healthz, /v1/sign, and protocol v1 sessions at /v1/asr."""
        await self._serve(stream, self._v1_upgrade, self._http)

    async def handle_operator_connection(self, stream: trio.abc.Stream) -> None:
        """The metrics port: /metrics, /healthz and /readyz only, no WebSocket."""
        await self._serve(stream, _no_upgrade, self._operator)

    async def _operator(self, head: http.RequestHead) -> http.Response:
        routes: dict[str, HttpRoute] = {
            "/healthz": self._health,
            "/readyz": self._ready,
            "/metrics": self._metrics,
        }
        route = routes.get(head.path)
        return await route(head) if route else http.text_response(404, "Not found")

    async def handle_bailian_connection(self, stream: trio.abc.Stream) -> None:
        """The Bailian compatibility port: that demo's protocol on any path, for allowed origins only."""
        await self._serve(stream, self._bailian_upgrade, self._upgrade_required)

    def _v1_upgrade(self, head: http.RequestHead) -> Dialect | None:
        return self.v1 if head.path == protocol.PATH else None

    def _bailian_upgrade(self, head: http.RequestHead) -> Dialect | None:
        return self.bailian

    async def _serve(
        self,
        stream: trio.abc.Stream,
        upgrade: Callable[[http.RequestHead], Dialect | None],
        answer: HttpRoute,
    ) -> None:
        """The connection's boundary: whatever its handling raises ends this connection only, logged with
        its traceback and counted (`asr_faults_total`), never reaching the listener or another session.
        Inside, each layer gives the best answer it still can: a route's failure is an HTTP 500 (503 for a
        dependency that is down), a session's a coded close (`session.run`)."""
        try:
            await self._converse(stream, upgrade, answer)
        except* Exception as group:
            self.metrics.faults.labels(stage="connection").inc()
            log.error("connection failed", exc_info=group)
        finally:
            with trio.move_on_after(self.config.session.close_timeout, shield=True):
                await stream.aclose()

    async def _converse(
        self,
        stream: trio.abc.Stream,
        upgrade: Callable[[http.RequestHead], Dialect | None],
        answer: HttpRoute,
    ) -> None:
        """HTTP requests one after another while the client keeps the connection alive, until one of them
        upgrades to a WebSocket session."""
        server = self.config.server
        reader = http.RequestReader(stream, server.max_request_head_bytes)
        # One deadline for the request head and its answer or, for a WebSocket, the upgrade: a slow or
        # silent client holds a connection for at most handshake_timeout before it has a session.
        deadline = trio.current_time() + server.handshake_timeout
        first = True
        while True:
            head = await _next_head(stream, reader, deadline, self._refuse if first else _not_counted)
            if head is None:
                return
            head = attrs.evolve(head, peer=_address(stream))
            first = False
            dialect = upgrade(head) if head.is_websocket else None
            origin = head.headers.get("origin")
            if dialect is not None and origin is not None and not self._origin_allowed(origin, head.host):
                log.info("refused %s connection from origin %r", dialect.name, origin)
                self._refuse("origin")
                response = http.text_response(403, "Origin not allowed")
            elif dialect is not None and not self._handshakes.allow(_address(stream), trio.current_time()):
                log.info("refused a handshake from %s: over the rate limit", _address(stream))
                self._refuse("rate")
                response = http.text_response(429, "Too many connections from this address; slow down")
            elif dialect is not None and (self.loop_lag.overloaded or self.bus.overload() is not None):
                self._refuse("overload")
                response = http.Response(
                    503,
                    b"Overloaded: this gateway cannot take more sessions now; retry later\n",
                    extra_headers=((b"retry-after", str(server.overload_retry_after).encode()),),
                )
            elif dialect is not None:
                await self._websocket(stream, head, reader.rest(), deadline, dialect)
                return
            else:
                with trio.move_on_at(deadline):
                    response = await self._answer(answer, head)
                if trio.current_time() >= deadline:
                    return  # the answer took the whole deadline: nothing is sent late
            data, reusable = http.encode_response(head, response)
            with trio.move_on_at(deadline):
                if not await _send_quietly(stream, data):
                    return
            if not reusable or trio.current_time() >= deadline:
                return
            deadline = trio.current_time() + server.keep_alive_timeout

    def _refuse(self, reason: str) -> None:
        self.metrics.handshakes_refused.labels(reason=reason).inc()

    async def _answer(self, answer: HttpRoute, head: http.RequestHead) -> http.Response:
        """The route's answer; a route that fails answers 503 when a dependency is down, else 500."""
        if head.method not in http.ALLOWED_METHODS:
            return http.method_not_allowed()
        try:
            return await answer(head)
        except DependencyUnavailable as exc:
            log.warning("%s %s: %s", head.method, head.path, exc)
            return http.text_response(503, str(exc))
        except Exception:
            self.metrics.faults.labels(stage="http").inc()
            log.exception("%s %s failed", head.method, head.path)
            return http.text_response(500, "Internal server error")

    def _origin_allowed(self, origin: str, host: str) -> bool:
        return http.origin_allowed(origin, host, self.config.server.allowed_origins)

    async def _http(self, head: http.RequestHead) -> http.Response:
        routes: dict[str, HttpRoute] = {
            "/healthz": self._health,
            "/readyz": self._ready,
            "/metrics": self._metrics,
            "/v1/sign": self._sign,
            "/v1/languages": self._languages,
            protocol.PATH: self._upgrade_required,
        }
        route = routes.get(head.path)
        return await route(head) if route else http.static_file(self.config.server.web_root_path(), head.path)

    async def _health(self, head: http.RequestHead) -> http.Response:
        return http.json_response(200, {"status": "ok", "sessions": self.active_sessions})

    async def _ready(self, head: http.RequestHead) -> http.Response:
        """Ready to take sessions: not draining, and at least one routed engine can take them (on the Redis
        bus: has a live worker). Each engine's state is listed, so an unconfigured optional engine (say,
        DashScope without a key) shows without taking the gateway out of service."""
        engines: dict[str, str] = {}
        try:
            routed = set((await self.directory.routes()).values())
        except DependencyUnavailable as exc:
            engines["directory"] = str(exc)
            routed = set()
        for engine in sorted(routed):
            reason = self.unavailable.get(engine) or await self.bus.engine_problem(engine)
            engines[f"engine:{engine}"] = reason or "ok"
        checks = {"gateway": "draining" if self.draining else "ok", **engines}
        ready = not self.draining and "ok" in engines.values()
        return http.json_response(200 if ready else 503, {"ready": ready, "checks": checks})

    async def _metrics(self, head: http.RequestHead) -> http.Response:
        return http.Response(200, self.metrics.exposition(), METRICS_CONTENT_TYPE)

    async def _sign(self, head: http.RequestHead) -> http.Response:
        if not self.demo_enabled:
            return http.text_response(404, "Signing is disabled on this server")
        if self.config.demo.enabled == "auto" and (head.proxied or not _local_peer(head.peer)):
            # Behind a proxy on this host every request comes from loopback: the headers tell them apart.
            log.info("refused a demo link to %s (proxied: %s)", head.peer or "-", head.proxied)
            return http.text_response(
                403, 'Demo links are given only to requests made on this host ([demo] enabled = "on")'
            )
        demo = self.config.demo.appkey
        return http.signed_url_response(head, self.secrets[demo], demo, self.wall_clock())

    async def _languages(self, head: http.RequestHead) -> http.Response:
        return http.json_response(200, {"languages": await self.languages()})

    async def languages(self) -> list[dict[str, object]]:
        """Each routed language, its engine, and whether that engine can take sessions now."""
        listed: list[dict[str, object]] = []
        for code, engine in (await self.directory.routes()).items():
            entry: dict[str, object] = {
                "code": code,
                "engine": engine,
                "available": engine not in self.unavailable,
            }
            if engine in self.unavailable:
                entry["reason"] = self.unavailable[engine]
            listed.append(entry)
        return listed

    async def _upgrade_required(self, head: http.RequestHead) -> http.Response:
        return http.text_response(426, "This endpoint speaks WebSocket")

    async def _websocket(
        self, stream: trio.abc.Stream, head: http.RequestHead, early: bytes, deadline: float, dialect: Dialect
    ) -> None:
        """`early`: what the client sent after the head before the upgrade was answered."""
        connection: WebSocket | None = None
        with trio.move_on_at(deadline):
            try:
                connection = await WebSocket.accept(
                    stream, head.raw + early, self.config.session.max_message_bytes
                )
            except ClientGone:
                self._refuse("malformed")
                return
        if connection is None:
            self._refuse("timeout")
            return
        lifetime = session.Lifetime()
        self._lifetimes.add(lifetime)
        self._all_ended = trio.Event()
        self.active_sessions += 1
        self.metrics.sessions_active.inc()
        started = trio.current_time()
        try:
            outcome = await session.run(
                connection, Admission(head.host, head.target), dialect, self.shared, lifetime
            )
            self._count(outcome, trio.current_time() - started)
        finally:
            self._lifetimes.discard(lifetime)
            self.active_sessions -= 1
            self.metrics.sessions_active.dec()
            if not self._lifetimes:
                self._all_ended.set()

    def _count(self, outcome: session.Outcome, seconds: float) -> None:
        metrics = self.metrics
        metrics.duration.observe(seconds)
        metrics.audio_seconds.inc(outcome.audio_seconds)
        route = {"engine": outcome.engine or "none", "language": outcome.language or "none"}
        if outcome.first_partial_s is not None:
            metrics.first_partial.labels(**route).observe(outcome.first_partial_s)
        for latency in outcome.final_latencies:
            metrics.final_latency.labels(**route).observe(latency)
        if outcome.fault:
            metrics.faults.labels(stage="session").inc()
        if outcome.error is not None:
            metrics.sessions.labels(outcome="error", **route).inc()
            metrics.errors.labels(code=str(int(outcome.error.code)), **route).inc()
        else:
            outcome_name = "client_gone" if outcome.client_gone else "ok"
            metrics.sessions.labels(outcome=outcome_name, **route).inc()

    async def drain(self, grace_s: float) -> None:
        """Let running sessions finish for up to `grace_s`, then end the rest with 503 (the caller has
        stopped accepting connections)."""
        self.draining = True
        self.metrics.draining.set(1)
        with trio.move_on_after(grace_s):
            await self._all_ended.wait()
        shutdown = ProtocolError(ErrorCode.UNAVAILABLE, "Server is shutting down; reconnect")
        for lifetime in list(self._lifetimes):
            lifetime.end(shutdown)
        # Each cancelled session still closes (close_timeout) and keeps its record (record_timeout).
        session = self.config.session
        with trio.move_on_after(session.close_timeout + session.record_timeout):
            await self._all_ended.wait()


def _no_upgrade(head: http.RequestHead) -> Dialect | None:
    return None


def _not_counted(reason: str) -> None:
    """A kept-alive connection's later requests: its idle end is no refusal."""


async def _next_head(
    stream: trio.abc.SendStream,
    reader: http.RequestReader,
    deadline: float,
    refuse: Callable[[str], None],
) -> http.RequestHead | None:
    """The connection's next request head; None when there is none to answer: the client closed or went
    silent past `deadline` (`refuse("timeout")`), or sent a malformed head (answered here, 400 or h11's
    more precise code; `refuse("malformed")`)."""
    with trio.move_on_at(deadline) as waiting:
        try:
            return await reader.next_head()
        except http.BadRequest as exc:
            log.debug("bad request: %s", exc)
            refuse("malformed")
            await _send_quietly(stream, http.refusal(exc))
        except trio.BrokenResourceError:
            pass
    if waiting.cancelled_caught:
        refuse("timeout")
    return None


async def _send_quietly(stream: trio.abc.SendStream, data: bytes) -> bool:
    """Send `data`; False if the client has gone (nothing else to do for it then)."""
    try:
        await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return False
    return True


@attrs.frozen
class Listening:
    """Where a started gateway listens: the page's URL, and the Bailian port if enabled."""

    url: str
    bailian_url: str | None = None


async def _listen(
    nursery: trio.Nursery,
    handler: Callable[[trio.SocketStream], Awaitable[None]],
    host: str,
    port: int,
    connections: trio.Nursery,
    reuse_port: bool = False,
) -> str:
    if reuse_port:
        listeners = await nursery.start(
            functools.partial(
                trio.serve_listeners,
                handler,
                [await _shared_port_listener(host, port)],
                handler_nursery=connections,
            )
        )
    else:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, handler, port, host=host, handler_nursery=connections)
        )
    bound_port = listeners[0].socket.getsockname()[1]
    shown_host = f"[{host}]" if ":" in host else host
    return f"{shown_host}:{bound_port}"


# Allocations between young-generation collections. Each audio frame allocates a few dozen small objects;
# the default (700) runs a collection every few frames at load, and the older generations' collections,
# which walk every live session object, then stall all sessions (docs/performance.md).
GC_YOUNG_THRESHOLD = 50_000


def _settle_garbage_collector() -> None:
    """Keep the objects made at start-up (modules, engines, config) out of every later collection, and
    collect the young generation less often."""
    gc.collect()
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


# Connections the kernel queues before the gateway accepts them (it caps this at net.core.somaxconn).
LISTEN_BACKLOG = 4096


async def _shared_port_listener(host: str, port: int) -> trio.SocketListener:
    """A listener on a port that other gateway processes listen on too; the kernel spreads connections."""
    family = trio.socket.AF_INET6 if ":" in host else trio.socket.AF_INET
    sock = trio.socket.socket(family, trio.socket.SOCK_STREAM)
    sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
    sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
    await sock.bind((host, port))
    sock.listen(LISTEN_BACKLOG)
    return trio.SocketListener(sock)


async def serve(
    config: Config,
    *,
    bailian_port: int | None = None,
    drain_on_signal: bool = False,
    task_status: trio.TaskStatus[Listening] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the gateway until cancelled; readiness carries where it listens.

    `bailian_port` (0 for any free port) also serves the Bailian demo's protocol, on loopback only.
    """
    async with backend(config) as chosen:
        gateway = Gateway(
            config,
            chosen.engines,
            resolve_secrets(config),
            bus=chosen.bus,
            replay=chosen.replay,
            records=chosen.records,
            shared_directory=chosen.shared_directory,
            limits=chosen.limits,
        )
        await gateway.prepare()
        _settle_garbage_collector()
        await _serve_gateway(gateway, bailian_port, task_status, drain_on_signal)


async def _serve_gateway(
    gateway: Gateway, bailian_port: int | None, task_status: trio.TaskStatus[Listening], drain_on_signal: bool
) -> None:
    config = gateway.config
    # Connections live in their own nursery, so that closing the listeners stops only new ones.
    async with trio.open_nursery() as connections:
        async with trio.open_nursery() as listeners:
            address = await _listen(
                listeners,
                gateway.handle_connection,
                config.server.host,
                config.server.port,
                connections,
                config.server.reuse_port,
            )
            listening = Listening(url=f"http://{address}/")
            listeners.start_soon(gateway.loop_lag.run)
            if bailian_port is not None:
                bailian_address = await _listen(
                    listeners, gateway.handle_bailian_connection, LOOPBACK, bailian_port, connections
                )
                listening = attrs.evolve(listening, bailian_url=f"ws://{bailian_address}/")
            if config.server.metrics_port:
                metrics_address = await _listen(
                    listeners,
                    gateway.handle_operator_connection,
                    config.server.host,
                    config.server.metrics_port,
                    connections,
                )
                log.info("metrics on http://%s/metrics", metrics_address)
            log.info(
                "serving on %s (demo signing %s; Bailian compatibility %s)",
                listening.url,
                "on" if gateway.demo_enabled else "off",
                listening.bailian_url or "off",
            )
            task_status.started(listening)
            if not drain_on_signal:
                return  # the listeners run until the caller cancels
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for received in signals:
                    log.info(
                        "signal %d: no new connections; draining for up to %g s",
                        received,
                        config.server.drain_timeout,
                    )
                    break
            listeners.cancel_scope.cancel()
        await gateway.drain(config.server.drain_timeout)
        connections.cancel_scope.cancel()
