"""A WebSocket on wsproto, read by its user's own task: the gateway's server side, and the client side of
the native engines' connections to their services (`engines/upstream.py`).

trio-websocket runs a reader task per connection that parses every frame and queues messages on a memory
channel for the application. Here the caller's `get_message` reads the socket and parses in place: one
task and one channel hop per message fewer, and no per-connection queue (docs/performance.md measures
both). Backpressure is unchanged: while the receiver waits on its own bounded channel nobody reads the
socket, and TCP pushes back on the client.

Every error of the socket or the peer becomes `ClientGone` here (`Refused` for a client's refused upgrade).
A ping that arrives after our close frame went out is not answered (RFC 6455 allows no frame after a
close): trio-websocket answers it and fails the connection instead (its issue #184), which is why the
native engines no longer use it.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from asr_actors.transport import ClientGone

# Bytes asked of the socket per read: a 100 ms frame of 16 kHz PCM is 3.2 KB.
RECEIVE_BYTES = 65536
MESSAGE_TOO_BIG = 1009
PROTOCOL_ERROR = 1002


class Refused(ClientGone):
    """The server refused a client's upgrade with this HTTP status."""

    def __init__(self, status_code: int) -> None:
        super().__init__(f"the upgrade was refused: HTTP {status_code}")
        self.status_code = status_code


class WebSocket:
    """One open connection: `get_message`, `send_message`, `aclose` (the `Transport` protocol); a server's
    by `accept`, a client's by `connect`.

    One task reads while others write: writes (messages, and pongs and close replies made while reading)
    share one lock, since a trio stream takes one `send_all` at a time.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        max_message_bytes: int,
        connection_type: ConnectionType = ConnectionType.SERVER,
    ) -> None:
        self._stream = stream
        self._max_message_bytes = max_message_bytes
        self._protocol = WSConnection(connection_type)
        self._peer = "client" if connection_type is ConnectionType.SERVER else "server"
        # The code of the peer's close frame, once it came.
        self.peer_close_code: int | None = None
        self._sending = trio.Lock()
        self._messages: collections.deque[str | bytes] = collections.deque()
        # Pongs and the close reply, made while parsing and sent before the next read.
        self._pending_replies: collections.deque[Event] = collections.deque()
        self._parts: list[str | bytes] = []
        self._size = 0
        self._closed: str | None = None
        # A client frame that breaks the protocol: wsproto reports it as the close to send (1002, 1007).
        self._violation: CloseConnection | None = None

    @classmethod
    async def accept(
        cls,
        stream: trio.abc.Stream,
        request_bytes: bytes,
        max_message_bytes: int,
        subprotocols: Sequence[str] = (),
    ) -> WebSocket:
        """Complete the upgrade of a request already read (`request_bytes`, the head and anything after);
        the first subprotocol the client offers that is in `subprotocols` is the one accepted (a browser
        that offers some fails a handshake that names none)."""
        websocket = cls(stream, max_message_bytes)
        try:
            websocket._protocol.receive_data(request_bytes)
            while (request := _request(websocket._protocol.events())) is None:
                await websocket._read()
        except RemoteProtocolError as exc:
            # wsproto's hint is the HTTP refusal (400 or 426) to send back.
            if exc.event_hint is not None:
                await websocket._send(exc.event_hint)
            raise ClientGone(f"refused the upgrade: {exc}") from None
        chosen = next((offered for offered in request.subprotocols if offered in subprotocols), None)
        await websocket._send(AcceptConnection(subprotocol=chosen))
        # Frames sent right behind the request (in the same read) are in wsproto's buffer, not the socket.
        await websocket._parse()
        return websocket

    @classmethod
    async def connect(
        cls,
        stream: trio.abc.Stream,
        host: str,
        target: str,
        max_message_bytes: int,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> WebSocket:
        """Upgrade a client's `stream` to `target` on `host`; `Refused` if the server says no."""
        websocket = cls(stream, max_message_bytes, ConnectionType.CLIENT)
        await websocket._send(Request(host=host, target=target, extra_headers=list(headers)))
        while True:
            try:
                for event in websocket._protocol.events():
                    if isinstance(event, AcceptConnection):
                        # A first message in the same read as the 101 (iFlytek's `started`) is in
                        # wsproto's buffer, not the socket: parsed once here, not before every read.
                        await websocket._parse()
                        return websocket
                    if isinstance(event, RejectConnection):
                        await trio.aclose_forcefully(stream)
                        raise Refused(event.status_code)
            except RemoteProtocolError as exc:
                await trio.aclose_forcefully(stream)
                raise ClientGone(f"the upgrade failed: {exc}") from None
            await websocket._read()

    async def get_message(self) -> str | bytes:
        while not self._messages:
            await self._read()
            await self._parse()
        return self._messages.popleft()

    async def _parse(self) -> None:
        """What has arrived: messages queued, replies sent, a broken frame or an oversized message fatal."""
        try:
            self._take_events()
        except _TooBig:
            await self._fail(MESSAGE_TOO_BIG, f"Message exceeds {self._max_message_bytes} bytes")
        if self._violation is not None:
            await self._fail(self._violation.code, self._violation.reason or "protocol error")
        await self._flush_replies()

    async def send_message(self, message: str | bytes) -> None:
        event = TextMessage(data=message) if isinstance(message, str) else BytesMessage(data=message)
        await self._send(event)

    async def wait_writable(self) -> None:
        try:
            await self._stream.wait_send_all_might_not_block()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ClientGone(f"connection lost: {exc}") from None

    async def wait_closed(self) -> None:
        while True:
            await self.get_message()

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        """Send a close frame, wait for the client's (the caller bounds the wait), close the socket."""
        try:
            await self._flush_replies()
            if self._protocol.state is ConnectionState.OPEN:
                self._closed = f"closed by the server ({code})"
                await self._send(CloseConnection(code=code, reason=reason))
                # Re-read each turn: parsing the client's close frame changes it.
                while self._state() is not ConnectionState.CLOSED:
                    await self._read()
                    self._take_events()
        except (ClientGone, _TooBig):
            pass
        finally:
            await trio.aclose_forcefully(self._stream)

    def _state(self) -> ConnectionState:
        return self._protocol.state

    def _take_events(self) -> None:
        """Parse what has arrived: complete messages are queued, pings answered, a close noted."""
        for event in self._protocol.events():
            if isinstance(event, TextMessage | BytesMessage):
                self._add_part(event)
            elif isinstance(event, Ping):
                # Once our close went out no frame may follow it, a pong included.
                if self._protocol.state is ConnectionState.OPEN:
                    self._pending_replies.append(event.response())
            elif isinstance(event, CloseConnection):
                if self._protocol.state is ConnectionState.OPEN:
                    self._violation = event
                    return
                self.peer_close_code = event.code
                self._closed = f"closed by the {self._peer} ({event.code} {event.reason or ''})".strip()
                if self._protocol.state is ConnectionState.REMOTE_CLOSING:
                    self._pending_replies.append(event.response())

    def _add_part(self, event: TextMessage | BytesMessage) -> None:
        data = event.data if isinstance(event.data, str) else bytes(event.data)
        self._size += len(data)
        if self._size > self._max_message_bytes:
            raise _TooBig()
        self._parts.append(data)
        if event.message_finished:
            parts, self._parts, self._size = self._parts, [], 0
            if len(parts) == 1:
                self._messages.append(parts[0])
            elif isinstance(parts[0], str):
                self._messages.append("".join(parts))  # type: ignore[arg-type]
            else:
                self._messages.append(b"".join(parts))  # type: ignore[arg-type]

    async def _read(self) -> None:
        if self._closed is not None and self._protocol.state is not ConnectionState.LOCAL_CLOSING:
            raise ClientGone(self._closed)
        try:
            data = await self._stream.receive_some(RECEIVE_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._closed = f"connection lost: {exc}"
            raise ClientGone(self._closed) from None
        if not data:
            self._closed = f"the {self._peer} closed the connection without a close frame"
            raise ClientGone(self._closed)
        try:
            self._protocol.receive_data(bytes(data))
        except RemoteProtocolError as exc:
            await self._fail(PROTOCOL_ERROR, str(exc))

    async def _flush_replies(self) -> None:
        while self._pending_replies:
            reply = self._pending_replies.popleft()
            if isinstance(reply, Pong) and self._protocol.state is not ConnectionState.OPEN:
                # The ping came in the same read as the peer's close: a pong is owed only while open, and
                # sending it would fail the read that also holds the peer's last messages.
                continue
            await self._send(reply)

    async def _fail(self, code: int, reason: str) -> None:
        self._closed = f"refused: {reason}"
        try:
            await self._send(CloseConnection(code=code, reason=reason[:100]))
        finally:
            await trio.aclose_forcefully(self._stream)
        raise ClientGone(self._closed)

    async def _send(self, event: Event) -> None:
        try:
            data = self._protocol.send(event)
        except LocalProtocolError:
            raise ClientGone(self._closed or "the connection is closing") from None
        await self._write(data)

    async def _write(self, data: bytes) -> None:
        async with self._sending:
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._closed = self._closed or f"connection lost: {exc}"
                raise ClientGone(self._closed) from None


class _TooBig(Exception):
    pass


def _request(events: Iterable[Event]) -> Request | None:
    return next((event for event in events if isinstance(event, Request)), None)
