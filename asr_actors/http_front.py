"""The gateway's HTTP front: per connection, requests one after another (keep-alive) until one upgrades
to a WebSocket session, each answered by the port's `Router`; handshake checks (origin, rate, overload)
before a session is accepted; the connection's boundary, where whatever its handling raises ends it."""

from __future__ import annotations

import functools
import ipaddress
import logging
from collections.abc import Awaitable, Callable

import attrs
import trio

from asr_actors import http
from asr_actors.config import Config
from asr_actors.dialects import Admission, Dialect
from asr_actors.errors import DependencyUnavailable
from asr_actors.limits import HandshakeRate
from asr_actors.metrics import Metrics
from asr_actors.registry import SessionRegistry
from asr_actors.router import HttpRoute, Router, Upload
from asr_actors.transport import ClientGone
from asr_actors.websocket import WebSocket

log = logging.getLogger(__name__)


def peer_address(stream: trio.abc.Stream) -> str:
    """The client's IP address, or "" for streams without a socket (in-memory tests)."""
    socket = getattr(stream, "socket", None)
    if socket is None:
        return ""
    peer = socket.getpeername()
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)


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


class HttpFront:
    def __init__(
        self, config: Config, metrics: Metrics, sessions: SessionRegistry, overloaded: Callable[[], bool]
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._sessions = sessions
        # True while the gateway should take no new session (its loop lags, or its bus is overloaded).
        self._overloaded = overloaded
        self._handshakes = HandshakeRate(config.server.handshakes_per_minute)

    async def serve(self, stream: trio.abc.Stream, router: Router) -> None:
        """The connection's boundary: whatever its handling raises ends this connection only, logged with
        its traceback and counted (`asr_faults_total`), never reaching the listener or another session.
        Inside, each layer gives the best answer it still can: a route's failure is an HTTP 500 (503 for a
        dependency that is down), a session's a coded close (`session.run`)."""
        try:
            session = await self._converse(stream, router)
            if session is not None:
                # Run once the HTTP exchange's frames are gone: its request head and reader are not kept
                # for the session's whole life (memory per connection, docs/performance.md).
                await session()
        except* Exception as group:
            self._metrics.faults.labels(stage="connection").inc()
            log.error("connection failed", exc_info=group)
        finally:
            with trio.move_on_after(self._config.session.close_timeout, shield=True):
                await stream.aclose()

    async def _converse(
        self, stream: trio.abc.Stream, router: Router
    ) -> Callable[[], Awaitable[None]] | None:
        """HTTP requests one after another while the client keeps the connection alive, until one of them
        upgrades to a WebSocket: then the session to run."""
        server = self._config.server
        reader = http.RequestReader(stream, server.max_request_head_bytes)
        # One deadline for the request head and its answer or, for a WebSocket, the upgrade: a slow or
        # silent client holds a connection for at most handshake_timeout before it has a session.
        deadline = trio.current_time() + server.handshake_timeout
        first = True
        while True:
            head = await _next_head(stream, reader, deadline, self._refuse if first else _not_counted)
            if head is None:
                return None
            head = attrs.evolve(head, peer=peer_address(stream))
            first = False
            dialect = router.dialect(head)
            refusal = self._refusal(head, dialect) if dialect is not None else None
            if dialect is not None and refusal is None:
                return await self._websocket(stream, head, reader.rest(), deadline, dialect)
            upload = router.upload(head)
            if refusal is not None:
                response = refusal
            elif upload is not None:
                await self._upload(stream, reader, head, upload)
                return None
            else:
                with trio.move_on_at(deadline):
                    response = await self._answer(router.route(head), head)
                if trio.current_time() >= deadline:
                    return None  # the answer took the whole deadline: nothing is sent late
            data, reusable = http.encode_response(head, response)
            with trio.move_on_at(deadline):
                if not await _send_quietly(stream, data):
                    return None
            if not reusable or trio.current_time() >= deadline:
                return None
            deadline = trio.current_time() + server.keep_alive_timeout

    def _refusal(self, head: http.RequestHead, dialect: Dialect) -> http.Response | None:
        """Why a WebSocket handshake is refused before it is accepted, or None to accept it."""
        origin = head.headers.get("origin")
        if origin is not None and not http.origin_allowed(
            origin, head.host, self._config.server.allowed_origins
        ):
            log.info("refused %s connection from origin %r", dialect.name, origin)
            self._refuse("origin")
            return http.text_response(403, "Origin not allowed")
        if not self._handshakes.allow(head.peer, trio.current_time()):
            log.info("refused a handshake from %s: over the rate limit", head.peer)
            self._refuse("rate")
            return http.text_response(429, "Too many connections from this address; slow down")
        if self._overloaded():
            self._refuse("overload")
            return http.Response(
                503,
                b"Overloaded: this gateway cannot take more sessions now; retry later\n",
                extra_headers=((b"retry-after", str(self._config.server.overload_retry_after).encode()),),
            )
        return None

    def _refuse(self, reason: str) -> None:
        self._metrics.handshakes_refused.labels(reason=reason).inc()

    async def _upload(
        self, stream: trio.abc.Stream, reader: http.RequestReader, head: http.RequestHead, upload: Upload
    ) -> None:
        """A POST: its body read by the route as it arrives, the answer sent, the connection closed (what
        is left of a body the route refused is not read)."""
        with trio.move_on_after(upload.timeout) as overrun:
            try:
                response = await upload.answer(head, http.RequestBody(stream, reader, head))
            except http.BadRequest as exc:
                self._refuse("malformed")
                await _send_quietly(stream, http.refusal(exc))
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the client went away mid-upload
            except DependencyUnavailable as exc:
                log.warning("%s %s: %s", head.method, head.path, exc)
                response = http.text_response(503, str(exc))
            except Exception:
                self._metrics.faults.labels(stage="http").inc()
                log.exception("%s %s failed", head.method, head.path)
                response = http.text_response(500, "Internal server error")
            data, _reusable = http.encode_response(head, response)
            await _send_quietly(stream, data)
        if overrun.cancelled_caught:
            log.info("%s %s took longer than %g s; closed", head.method, head.path, upload.timeout)

    async def _answer(self, route: HttpRoute, head: http.RequestHead) -> http.Response:
        """The route's answer; a route that fails answers 503 when a dependency is down, else 500."""
        if head.method not in http.ALLOWED_METHODS:
            return http.method_not_allowed()
        try:
            return await route(head)
        except DependencyUnavailable as exc:
            log.warning("%s %s: %s", head.method, head.path, exc)
            return http.text_response(503, str(exc))
        except Exception:
            self._metrics.faults.labels(stage="http").inc()
            log.exception("%s %s failed", head.method, head.path)
            return http.text_response(500, "Internal server error")

    async def _websocket(
        self, stream: trio.abc.Stream, head: http.RequestHead, early: bytes, deadline: float, dialect: Dialect
    ) -> Callable[[], Awaitable[None]] | None:
        """The upgraded connection's session, or None if the upgrade failed; `early`: what the client sent
        after the head before the upgrade was answered."""
        connection: WebSocket | None = None
        with trio.move_on_at(deadline):
            try:
                connection = await WebSocket.accept(
                    stream, head.raw + early, self._config.session.max_message_bytes, dialect.subprotocols
                )
            except ClientGone:
                self._refuse("malformed")
                return None
        if connection is None:
            self._refuse("timeout")
            return None
        return functools.partial(
            self._sessions.run, connection, Admission(head.host, head.target, head.headers), dialect
        )


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
