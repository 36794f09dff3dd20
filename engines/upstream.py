"""A WebSocket to a recognition service, for the engines that speak one natively on Trio.

trio-websocket over a TCP or TLS stream opened and closed here (trio-websocket's own client leaks its
socket when the server closes first); open by a deadline, closed (bounded) on the way out. Its failures
become `EngineError`s naming the service, here, once: the engines using it convert nothing else from the
socket.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import trio
import trio_websocket

from asr_actors.engines.base import EngineError

# The services' results are small; a larger message is not one of them.
MAX_MESSAGE_BYTES = 1 << 20
# Messages trio-websocket buffers from the service before it stops reading the socket.
MESSAGE_QUEUE = 64


class Upstream:
    """The service's WebSocket; a dropped or closed connection is EngineError, or `closed` for a caller
    that expects the service to close."""

    def __init__(self, connection: trio_websocket.WebSocketConnection, service: str) -> None:
        self._connection = connection
        self._service = service

    async def send(self, message: str | bytes) -> None:
        try:
            await self._connection.send_message(message)
        except trio_websocket.ConnectionClosed as exc:
            raise self._lost(exc) from exc

    async def receive(self) -> str | bytes:
        try:
            return await self._connection.get_message()
        except trio_websocket.ConnectionClosed as exc:
            raise self._lost(exc) from exc

    async def receive_or_close(self) -> str | bytes | None:
        """The next message, or None if the service closed the connection cleanly (a close frame)."""
        try:
            return await self._connection.get_message()
        except trio_websocket.ConnectionClosed as exc:
            if _clean(exc):
                return None
            raise self._lost(exc) from exc

    def _lost(self, closed: trio_websocket.ConnectionClosed) -> EngineError:
        if _clean(closed):
            return EngineError(f"{self._service} closed the connection before the end of the audio")
        return EngineError(f"{self._service} connection failed")


def _clean(closed: trio_websocket.ConnectionClosed) -> bool:
    """The service closed with a close frame saying all is well (not a dropped connection)."""
    return closed.reason is not None and closed.reason.code in (1000, 1001)


@asynccontextmanager
async def connect(
    url: str,
    connected_by: float,
    *,
    service: str,
    close_timeout: float,
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> AsyncIterator[Upstream]:
    split = urlsplit(url)
    secure = split.scheme == "wss"
    host = split.hostname or ""
    port = split.port or (443 if secure else 80)
    try:
        with trio.fail_at(connected_by):
            stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] = (
                await trio.open_ssl_over_tcp_stream(host, port)
                if secure
                else await trio.open_tcp_stream(host, port)
            )
    except (OSError, trio.TooSlowError) as exc:
        raise EngineError(f"{service} is unreachable") from exc
    resource = split.path or "/"
    if split.query:
        resource += "?" + split.query
    async with stream, trio.open_nursery() as nursery:
        try:
            with trio.fail_at(connected_by):
                connection = await trio_websocket.wrap_client_stream(
                    nursery,
                    stream,
                    split.netloc,
                    resource,
                    extra_headers=list(headers),
                    message_queue_size=MESSAGE_QUEUE,
                    max_message_size=MAX_MESSAGE_BYTES,
                )
        except trio_websocket.ConnectionRejected as exc:
            if exc.status_code in (401, 403):
                raise EngineError(f"{service} refused the credentials") from exc
            raise EngineError(f"{service} refused the connection: HTTP {exc.status_code}") from exc
        except (trio_websocket.HandshakeError, trio.TooSlowError, OSError) as exc:
            raise EngineError(f"{service} connection failed") from exc
        try:
            yield Upstream(connection, service)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(close_timeout):
                await connection.aclose()
            nursery.cancel_scope.cancel()
