"""The gateway: one listener; per connection, an HTTP answer or a supervised WebSocket session."""

from __future__ import annotations

import functools
import ipaddress
import logging
import secrets
import time
from collections.abc import Mapping

import h11
import trio
import trio_websocket

from asr_actors import http, protocol, session
from asr_actors.bus.memory import MemoryBus
from asr_actors.config import Config
from asr_actors.session import SessionServices
from engines.base import Engine

log = logging.getLogger(__name__)


def build_engines(config: Config) -> dict[str, Engine]:
    """The engines the config routes to, and only those (the local one loads ~200 MB of models)."""
    from engines.fake import FakeEngine

    wanted = {config.engine_for(code) for code in config.languages}
    engines: dict[str, Engine] = {}
    if "local" in wanted:
        from engines.local import LocalEngine

        engines["local"] = LocalEngine(config.engines.local)
    if "fake" in wanted:
        fake = config.engines.fake
        engines["fake"] = FakeEngine(
            partial_bytes=fake.partial_bytes, sentence_bytes=fake.sentence_bytes, max_streams=fake.max_streams
        )
    return engines


def resolve_secrets(config: Config) -> dict[str, str]:
    return {appkey: app.resolve_secret(appkey) for appkey, app in config.apps.items()}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Gateway:
    """Shared state of one gateway process; `handle_connection` is the per-connection entry point."""

    def __init__(self, config: Config, engines: Mapping[str, Engine], app_secrets: Mapping[str, str]) -> None:
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
        bus = MemoryBus(
            engines,
            audio_capacity=config.channels.engine_audio,
            events_capacity=config.channels.engine_events,
        )
        self.services = SessionServices(config=config, bus=bus, secrets=all_secrets)
        self.active_sessions = 0
        self.sessions_total = 0

    async def prepare(self) -> None:
        for engine in self.engines.values():
            await engine.prepare()

    async def handle_connection(self, stream: trio.abc.Stream) -> None:
        # One deadline for the request head and, for a WebSocket, the upgrade: a slow or silent client
        # holds a connection for at most handshake_timeout before it has a session.
        handshake_deadline = trio.current_time() + self.config.server.handshake_timeout
        try:
            request = await self._read_head(stream, handshake_deadline)
            if request is None:
                return
            head, h11_connection = request
            if head.is_websocket and head.path == protocol.PATH:
                await self._websocket(http.PrefixedStream(stream, head.raw), head, handshake_deadline)
            else:
                response = self._http(head)
                try:
                    await http.send_response(stream, h11_connection, response)
                except trio.BrokenResourceError:
                    return
        finally:
            with trio.move_on_after(self.config.session.close_timeout, shield=True):
                await stream.aclose()

    async def _read_head(
        self, stream: trio.abc.Stream, deadline: float
    ) -> tuple[http.RequestHead, h11.Connection] | None:
        with trio.move_on_at(deadline):
            try:
                return await http.read_request_head(stream, self.config.server.max_request_head_bytes)
            except http.BadRequest as exc:
                log.debug("bad request: %s", exc)
            except trio.BrokenResourceError:
                pass
        return None

    def _http(self, head: http.RequestHead) -> http.Response:
        if head.method not in ("GET", "HEAD"):
            return http.text_response(405, "Method not allowed")
        if head.path == "/healthz":
            return http.json_response(200, {"status": "ok", "sessions": self.active_sessions})
        if head.path == "/v1/sign":
            if not self.demo_enabled:
                return http.text_response(404, "Signing is disabled on this server")
            demo = self.config.demo.appkey
            return http.signed_url_response(head, self.secrets[demo], demo, time.time())
        if head.path == protocol.PATH:
            return http.text_response(426, "This endpoint speaks WebSocket")
        return http.static_file(self.config.server.web_root_path(), head.path)

    async def _websocket(self, stream: http.PrefixedStream, head: http.RequestHead, deadline: float) -> None:
        limits = self.config.session
        async with trio.open_nursery() as nursery:
            with trio.move_on_at(deadline) as handshake:
                request = await trio_websocket.wrap_server_stream(
                    nursery,
                    stream,
                    message_queue_size=limits.websocket_queue,
                    max_message_size=limits.max_message_bytes,
                )
                connection = await request.accept()
            if handshake.cancelled_caught:
                nursery.cancel_scope.cancel()
                return
            self.active_sessions += 1
            self.sessions_total += 1
            try:
                await session.run(connection, head.host, head.target, self.services)
            finally:
                self.active_sessions -= 1
                # The library's reader task would otherwise wait on a peer that may never close.
                nursery.cancel_scope.cancel()


async def serve(config: Config, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Run the gateway until cancelled; readiness carries the page's URL."""
    gateway = Gateway(config, build_engines(config), resolve_secrets(config))
    await gateway.prepare()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(
                trio.serve_tcp, gateway.handle_connection, config.server.port, host=config.server.host
            )
        )
        sockname = listeners[0].socket.getsockname()
        host = config.server.host
        shown_host = f"[{host}]" if ":" in host else host
        url = f"http://{shown_host}:{sockname[1]}/"
        log.info("serving on %s (demo signing %s)", url, "on" if gateway.demo_enabled else "off")
        task_status.started(url)
