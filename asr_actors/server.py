"""The gateway: its parts put together, its HTTP routes, and its listeners.

A connection goes to the HTTP front (`http_front.py`: keep-alive, handshake checks, the connection's
boundary), which asks the port's router (`router.py`) what a request is for: an HTTP route of this module
or a dialect's WebSocket session, run and counted by the session registry (`registry.py`). What the
sessions share (bus, engines, stores, limits) comes in a `Backend` (`backend.py`); the gateway builds
none of it.
"""

from __future__ import annotations

import functools
import gc
import logging
import math
import secrets
import signal
import time
from collections.abc import Awaitable, Callable, Mapping

import attrs
import trio

from asr_actors import http, protocol
from asr_actors.backend import Backend, backend, resolve_api_keys, resolve_secrets
from asr_actors.config import Config
from asr_actors.dialects import V1, Bailian
from asr_actors.directory import StaticDirectory
from asr_actors.engines.base import EngineUnavailable
from asr_actors.errors import DependencyUnavailable
from asr_actors.http_front import HttpFront, is_loopback
from asr_actors.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from asr_actors.metrics import Metrics, watch_whisper_queue
from asr_actors.openai_api import realtime
from asr_actors.openai_api.client_secrets import Issuer
from asr_actors.openai_api.keys import ApiKeys, configured_digests
from asr_actors.openai_api.transcriptions import Transcriptions
from asr_actors.overload import LoopLag
from asr_actors.registry import SessionRegistry
from asr_actors.router import Router, Upload, upgrade_required
from asr_actors.session import Shared

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


def _local_peer(peer: str) -> bool:
    """A request from this host ("" is an in-memory stream: a test in this process)."""
    return not peer or is_loopback(peer)


class Gateway:
    """One gateway process: its routers per port, its routes, its sessions; `handle_*` are the ports'
    per-connection entry points."""

    def __init__(
        self,
        config: Config,
        backend: Backend,
        app_secrets: Mapping[str, str],
        wall_clock: Callable[[], float] = time.time,
        api_keys: Mapping[str, str] | None = None,
    ) -> None:
        """`app_secrets`: app -> secret; `api_keys`: SHA-256 of an API key -> app (default: the config's)."""
        self.config = config
        self.engines = backend.engines
        self.bus = backend.bus
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
        own = StaticDirectory(
            config, all_secrets, configured_digests(config) if api_keys is None else api_keys
        )
        self.directory = backend.shared_directory(own) if backend.shared_directory else own
        self.metrics = Metrics()
        shared = Shared(config, self.bus, self.directory, backend.limits, backend.records, wall_clock)
        self.sessions = SessionRegistry(shared, self.metrics)
        keys = ApiKeys(self.directory)
        transcriptions = Transcriptions(shared, keys)
        issuer = Issuer(keys, backend.client_secrets, wall_clock)
        server = config.server
        # Run by the serving loop (`_serve_gateway`); a gateway driven directly by tests is never overloaded.
        self.loop_lag = LoopLag(config.server.max_loop_lag or math.inf)
        self.front = HttpFront(config, self.metrics, self.sessions, self._overloaded)
        v1 = V1(directory=self.directory, replay=backend.replay, wall_clock=wall_clock)
        health = {"/healthz": self._health, "/readyz": self._ready, "/metrics": self._metrics}
        # The main port: the page, health, signing, languages, protocol v1 sessions at /v1/asr and the
        # OpenAI-compatible API.
        self.main_router = Router(
            routes={
                **health,
                "/v1/sign": self._sign,
                "/v1/languages": self._languages,
                protocol.PATH: upgrade_required,
            },
            dialects={protocol.PATH: v1, realtime.PATH: realtime.Realtime(keys, backend.client_secrets)},
            otherwise=self._static_file,
            uploads={
                "/v1/audio/transcriptions": Upload(transcriptions.answer, config.openai.request_timeout),
                "/v1/realtime/client_secrets": Upload(issuer.answer, server.handshake_timeout),
                "/v1/realtime/transcription_sessions": Upload(issuer.answer, server.handshake_timeout),
            },
        )
        # The metrics port: health and metrics only, no WebSocket.
        self.operator_router = Router(routes=health)
        # The Bailian compatibility port: that demo's protocol on any path (allowed origins only).
        self.bailian_router = Router(any_path=Bailian(), otherwise=upgrade_required)
        self._watch_metrics()
        # Engines that failed to prepare, with the reason (their sessions get 503).
        self.unavailable: dict[str, str] = {}

    def _watch_metrics(self) -> None:
        self.metrics.watch(
            "asr_event_loop_lag_seconds",
            "How late this process's event loop runs (the largest of its last samples)",
            lambda: self.loop_lag.lag,
        )
        self.metrics.watch(
            "asr_engines_unavailable", "Engines that failed to prepare", lambda: len(self.unavailable)
        )
        if "local" in self.engines:
            # Imported here: only a process that runs the local engine loads its module (backend.py).
            from asr_actors.engines.local import LocalEngine

            local = self.engines["local"]
            if isinstance(local, LocalEngine):
                watch_whisper_queue(self.metrics.registry, local.whisper_statistics)
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

    @property
    def active_sessions(self) -> int:
        return self.sessions.active

    def _overloaded(self) -> bool:
        return self.loop_lag.overloaded or self.bus.overload() is not None

    async def prepare(self) -> None:
        for name, engine in self.engines.items():
            try:
                await engine.prepare()
            except EngineUnavailable as exc:
                # The gateway still serves the other engines; this one's sessions get 503 and the reason.
                log.warning("engine %s is unavailable: %s", name, exc)
                self.unavailable[name] = str(exc)

    async def handle_connection(self, stream: trio.abc.Stream) -> None:
        await self.front.serve(stream, self.main_router)

    async def handle_operator_connection(self, stream: trio.abc.Stream) -> None:
        await self.front.serve(stream, self.operator_router)

    async def handle_bailian_connection(self, stream: trio.abc.Stream) -> None:
        await self.front.serve(stream, self.bailian_router)

    async def drain(self, grace_s: float) -> None:
        await self.sessions.drain(grace_s)

    async def _static_file(self, head: http.RequestHead) -> http.Response:
        return http.static_file(self.config.server.web_root_path(), head.path)

    async def _health(self, head: http.RequestHead) -> http.Response:
        return http.json_response(200, {"status": "ok", "sessions": self.sessions.active})

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
        draining = self.sessions.draining
        checks = {"gateway": "draining" if draining else "ok", **engines}
        ready = not draining and "ok" in engines.values()
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
        """Each routed language, its engine, whether that engine can take sessions now, and the session
        options it honours (docs/protocol.md; known for engines in this process, not for remote workers)."""
        listed: list[dict[str, object]] = []
        for code, engine in (await self.directory.routes()).items():
            entry: dict[str, object] = {
                "code": code,
                "engine": engine,
                "available": engine not in self.unavailable,
            }
            if engine in self.engines:
                entry["options"] = sorted(self.engines[engine].options)
            if engine in self.unavailable:
                entry["reason"] = self.unavailable[engine]
            listed.append(entry)
        return listed


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
        gateway = Gateway(config, chosen, resolve_secrets(config), api_keys=resolve_api_keys(config))
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
