"""A WebSocket on the `websockets` library's sans-IO protocol, read by its user's own task: the gateway's
server side, and the client side of the native engines' connections to their services
(`engines/upstream.py`).

trio-websocket runs a reader task per connection that parses every frame and queues messages on a memory
channel for the application. Here the caller's `get_message` reads the socket and parses in place: one
task and one channel hop per message fewer, and no per-connection queue (docs/performance.md measures
both). Backpressure is unchanged: while the receiver waits on its own bounded channel nobody reads the
socket, and TCP pushes back on the client. The protocol is `websockets`' `ServerProtocol` and
`ClientProtocol` (C-accelerated unmasking: a 3,200-byte client frame parses in about a quarter of
wsproto's time, FIELD-NOTES); the bytes move through `stream_io`.

Every error of the socket or the peer becomes `ClientGone` here (`Refused` for a client's refused upgrade).
A ping that arrives after our close frame went out is not answered: RFC 6455 allows it, but a peer that
has already closed may treat it as an error (trio-websocket failed sessions on exactly this, its issue
#184), so we send nothing after our close.
"""

from __future__ import annotations

import codecs
import collections
import logging
import math
import os
import struct
from collections.abc import Callable, Sequence

import trio
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidState, InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import Protocol, State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from asr_actors.stream_io import open_io
from asr_actors.transport import ClientGone

try:
    from websockets.speedups import apply_mask
except ImportError:  # a `websockets` built without its C extension
    from websockets.utils import apply_mask

# Bytes asked of the socket per read: a 100 ms frame of 16 kHz PCM is 3.2 KB.
RECEIVE_BYTES = 65536
INVALID_DATA = 1007

# `websockets` logs every connection's opening and closing at INFO: the gateway logs sessions itself.
_PROTOCOL_LOG = logging.getLogger(f"{__name__}.protocol")
_PROTOCOL_LOG.setLevel(logging.WARNING)


class Refused(ClientGone):
    """The server refused a client's upgrade with this HTTP status."""

    def __init__(self, status_code: int) -> None:
        super().__init__(f"the upgrade was refused: HTTP {status_code}")
        self.status_code = status_code


class _Server(ServerProtocol):
    def recv_frame(self, frame: Frame) -> None:
        _receive_frame(self, frame, super().recv_frame)


class _Client(ClientProtocol):
    def recv_frame(self, frame: Frame) -> None:
        _receive_frame(self, frame, super().recv_frame)

    def send_frame(self, frame: Frame) -> None:
        """As `websockets` writes a client frame, with the mask taken from `_MASKS`: its own asks the OS
        for 4 random bytes per frame, a system call per audio frame sent to a service (3.6 % of the
        gateway's time at 1,000 native DashScope sessions). No extension is ever negotiated here."""
        if self.extensions:
            super().send_frame(frame)
            return
        frame.check()
        length = len(frame.data)
        first = (0b10000000 if frame.fin else 0) | frame.opcode
        if length < 126:
            head = bytes((first, 0b10000000 | length))
        elif length < 65536:
            head = struct.pack("!BBH", first, 0b11111110, length)
        else:
            head = struct.pack("!BBQ", first, 0b11111111, length)
        mask = _MASKS.take()
        self.writes.append(b"".join((head, mask, apply_mask(frame.data, mask))))


class _MaskSource:
    """Masking keys for client frames, from the OS's random source (RFC 6455 5.3 asks for strong entropy)
    fetched 1,024 keys at a time. The gateway's connections live on one Trio thread."""

    def __init__(self) -> None:
        self._block = b""
        self._offset = 0

    def take(self) -> bytes:
        if self._offset == len(self._block):
            self._block, self._offset = os.urandom(4096), 0
        mask = self._block[self._offset : self._offset + 4]
        self._offset += 4
        return mask


_MASKS = _MaskSource()


def _receive_frame(protocol: Protocol, frame: Frame, receive: Callable[[Frame], None]) -> None:
    """Two departures from `websockets`' handling, both towards RFC 6455 as Autobahn tests it."""
    if frame.opcode is Opcode.PING and protocol.close_sent is not None:
        protocol.events.append(frame)  # seen, not answered: nothing follows our close frame
        return
    if frame.opcode is Opcode.CLOSE:
        # A close in the middle of a fragmented message is a clean close (Autobahn 7.1.5); `websockets`
        # fails it with 1002. The unfinished message is dropped.
        protocol.current_size = None
    receive(frame)


class WebSocket:
    """One open connection: `get_message`, `send_message`, `aclose` (the `Transport` protocol); a server's
    by `accept`, a client's by `connect`.

    One task reads while others write: writes (messages, and pongs and close replies made while reading)
    share one lock, since a socket takes one write at a time.
    """

    def __init__(self, stream: trio.abc.Stream, protocol: Protocol, peer: str) -> None:
        self._stream = stream
        self._io = open_io(stream, RECEIVE_BYTES)
        self._protocol = protocol
        self._peer = peer
        # The code of the peer's close frame, once it came.
        self.peer_close_code: int | None = None
        self._sending = trio.Lock()
        self._messages: collections.deque[str | bytes] = collections.deque()
        # The fragments of a message still arriving, and its decoder if it is text.
        self._parts: list[str | bytes] = []
        self._text: codecs.IncrementalDecoder | None = None
        self._closed: str | None = None

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

        def choose(_: ServerProtocol, offered: Sequence[Subprotocol]) -> Subprotocol | None:
            return next((subprotocol for subprotocol in offered if subprotocol in subprotocols), None)

        # The handshake has a protocol object of its own, dropped once it is done: the request's parse
        # stays referenced by a protocol's parser for the connection's life, some 3 KiB per connection.
        handshake = ServerProtocol(select_subprotocol=choose, logger=_PROTOCOL_LOG)
        head, end_of_head, early = request_bytes.partition(b"\r\n\r\n")
        handshake.receive_data(head + end_of_head)
        websocket = cls(stream, handshake, "client")
        events = handshake.events_received()
        while not events:
            if handshake.handshake_exc is not None:
                await websocket._flush()
                raise ClientGone(f"refused the upgrade: {handshake.handshake_exc}")
            await websocket._receive()
            events = handshake.events_received()
        request, *early_frames = events
        assert isinstance(request, Request)
        response = handshake.accept(request)
        handshake.send_response(response)
        await websocket._flush()
        if response.status_code != 101:
            raise ClientGone(f"refused the upgrade: {handshake.handshake_exc}")
        websocket._protocol = protocol = _Server(
            state=State.OPEN, max_size=max_message_bytes, logger=_PROTOCOL_LOG
        )
        # Frames sent right behind the request: in the same read as its head, or parsed with it.
        protocol.receive_data(early)
        await websocket._take([*early_frames, *protocol.events_received()])
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
        protocol = _Client(
            parse_uri(f"ws://{host}{target}"), max_size=max_message_bytes, logger=_PROTOCOL_LOG
        )
        websocket = cls(stream, protocol, "server")
        request = protocol.connect()
        for name, value in headers:
            request.headers[name.decode("latin-1")] = value.decode("latin-1")
        protocol.send_request(request)
        try:
            await websocket._flush()
            while True:
                await websocket._receive()
                events = protocol.events_received()
                if events:
                    break
                if protocol.handshake_exc is not None:
                    raise ClientGone(f"the upgrade failed: {protocol.handshake_exc}")
        except ClientGone:
            await trio.aclose_forcefully(stream)
            raise
        response, *first_frames = events
        assert isinstance(response, Response)
        if isinstance(protocol.handshake_exc, InvalidStatus):
            await trio.aclose_forcefully(stream)
            raise Refused(response.status_code)
        if protocol.handshake_exc is not None:
            await trio.aclose_forcefully(stream)
            raise ClientGone(f"the upgrade failed: {protocol.handshake_exc}")
        # A first message in the same read as the 101 (iFlytek's `started`) is parsed already.
        await websocket._take([frame for frame in first_frames if isinstance(frame, Frame)])
        return websocket

    async def get_message(self) -> str | bytes:
        while not self._messages:
            if self._closed is not None:
                raise ClientGone(self._closed)
            await self._receive()
            await self._take(self._protocol.events_received())
        return self._messages.popleft()

    async def send_message(self, message: str | bytes, stall_timeout: float = math.inf) -> None:
        """`stall_timeout` bounds the write once it has begun: a client that stops reading in the middle
        of the message is gone (`ClientGone`), as the rest of the connection's frames cannot follow."""
        try:
            if isinstance(message, str):
                self._protocol.send_text(message.encode())
            else:
                self._protocol.send_binary(message)
        except InvalidState:  # our close went out, or the protocol failed the connection
            raise ClientGone(self._closed or "the connection is closing") from None
        await self._flush(stall_timeout)

    async def send_ping(self, payload: bytes = b"") -> None:
        """A ping, also while the connection closes (RFC 6455 allows control frames after a close);
        the pong comes back through `get_message`, which drops it."""
        try:
            self._protocol.send_ping(payload)
        except InvalidState:
            raise ClientGone(self._closed or "the connection is closed") from None
        await self._flush()

    def writable(self) -> bool:
        try:
            return self._io.writable()
        except trio.ClosedResourceError:
            return True  # the write says so

    async def wait_writable(self) -> None:
        try:
            await self._io.wait_writable()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ClientGone(f"connection lost: {exc}") from None

    async def wait_closed(self) -> None:
        while True:
            await self.get_message()

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        """Send a close frame, wait for the peer's (the caller bounds the wait), close the socket."""
        try:
            if self._protocol.state is State.OPEN:
                self._closed = f"closed by the server ({code})"
                self._protocol.send_close(code, reason or "")
                await self._flush()
                while self._protocol.close_rcvd is None and self._protocol.parser_exc is None:
                    await self._receive()
                    await self._take(self._protocol.events_received())
        except ClientGone:
            pass
        finally:
            await trio.aclose_forcefully(self._stream)

    async def _take(self, events: Sequence[object]) -> None:
        """Parsed frames: messages queued, the peer's close noted; then what the protocol has to send
        (pongs, the close reply, the close of a failed connection)."""
        try:
            for frame in events:
                assert isinstance(frame, Frame)
                opcode = frame.opcode
                if opcode is Opcode.BINARY and frame.fin:
                    self._messages.append(bytes(frame.data))
                elif opcode is Opcode.TEXT or opcode is Opcode.BINARY or opcode is Opcode.CONT:
                    self._add_part(frame)
                elif opcode is Opcode.CLOSE:
                    self._parts, self._text = [], None  # a message the close cut off
                    close = self._protocol.close_rcvd
                    self.peer_close_code = close.code if close is not None else 1005
                    reason = close.reason if close is not None else ""
                    self._closed = f"closed by the {self._peer} ({self.peer_close_code} {reason})".strip()
        except UnicodeDecodeError as exc:
            self._protocol.fail(INVALID_DATA, f"invalid UTF-8: {exc.reason}")
            await self._flush()
            await self._fail(f"refused: invalid UTF-8 ({exc.reason})")
        await self._flush()
        if self._protocol.parser_exc is not None and self._closed is None:
            # A frame that breaks the protocol or the size limit: the protocol's close (1002, 1009) went out.
            await self._fail(f"refused: {self._protocol.parser_exc}")

    def _add_part(self, frame: Frame) -> None:
        """A fragment of a message (or a whole text message); text is decoded as it comes, so that
        invalid UTF-8 fails the connection at the frame that holds it."""
        if frame.opcode is Opcode.TEXT:
            self._text = _UTF8()
        self._parts.append(
            self._text.decode(frame.data, frame.fin) if self._text is not None else bytes(frame.data)
        )
        if frame.fin:
            parts, self._parts = self._parts, []
            if self._text is not None:
                self._messages.append("".join(parts))  # type: ignore[arg-type]
            else:
                self._messages.append(b"".join(parts))  # type: ignore[arg-type]
            self._text = None

    async def _receive(self) -> None:
        """One read from the socket into the protocol."""
        try:
            data = await self._io.receive()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._closed = self._closed or f"connection lost: {exc}"
            raise ClientGone(self._closed) from None
        if not data:
            self._closed = self._closed or f"the {self._peer} closed the connection without a close frame"
            raise ClientGone(self._closed)
        self._protocol.receive_data(data)

    async def _fail(self, reason: str) -> None:
        self._closed = reason
        await trio.aclose_forcefully(self._stream)
        raise ClientGone(reason)

    async def _flush(self, stall_timeout: float = math.inf) -> None:
        for data in self._protocol.data_to_send():
            # An empty write is the protocol's end of stream: the socket is closed by whoever ends the
            # connection (`aclose`, `_fail`), after the close frame.
            if data:
                await self._write(data, stall_timeout)

    async def _write(self, data: bytes, stall_timeout: float) -> None:
        # A free lock is taken without a yield, so that a write the socket takes whole costs no trip through
        # the scheduler; a write behind another that waits for room waits its turn.
        if self._sending.locked():
            await self._sending.acquire()
        else:
            self._sending.acquire_nowait()
        try:
            await self._io.send_all(data, stall_timeout)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._closed = self._closed or f"connection lost: {exc}"
            raise ClientGone(self._closed) from None
        finally:
            self._sending.release()


def _UTF8() -> codecs.IncrementalDecoder:
    return codecs.getincrementaldecoder("utf-8")("strict")
