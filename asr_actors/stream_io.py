"""Bytes in and out of a connection for the WebSocket (`asr_actors/websocket.py`): reads that wait first,
writes that do not yield when the socket takes them.

A Trio `SocketStream` tries every `recv` before it waits, so a connection whose next frame is 100 ms away
pays a `recv` that would block, then the wait, then the `recv` again; and every `send` that succeeds at
once still yields to the scheduler (a cancel-shielded checkpoint), as does the lock around it. At one
frame in and a result out per 100 ms, per connection, those were the largest part of the gateway's cost
per frame (docs/performance.md). `SocketIO` reads and writes the socket's descriptor directly: a read
waits for readability first unless the last read filled its buffer (more is probably there), and a write
that the kernel takes whole returns without a yield; only a partial write waits for room. It is used for
plain TCP; anything else (TLS to a cloud service, the tests' memory streams) goes through `StreamIO`, the
stream's own methods.

Both raise what a Trio stream raises: `trio.BrokenResourceError` for a failed socket,
`trio.ClosedResourceError` once it is closed; `receive` returns b"" at the peer's end of stream. A write
given a `stall_timeout` that has not finished within it is a broken connection too: part of its data may
be out, so nothing more can follow it on that connection.
"""

from __future__ import annotations

import errno
import math
import os
import select
from typing import Protocol

import trio

# Zero-timeout writability checks only; register, poll, unregister in one synchronous step, so one shared
# poll set serves every connection of the (single-threaded) Trio loop.
_WRITABLE_CHECK = select.poll()


class ByteIO(Protocol):
    async def receive(self) -> bytes: ...

    async def send_all(self, data: bytes, stall_timeout: float = math.inf) -> None: ...

    def writable(self) -> bool: ...

    async def wait_writable(self) -> None: ...


def open_io(stream: trio.abc.Stream, receive_bytes: int) -> ByteIO:
    if isinstance(stream, trio.SocketStream):
        return SocketIO(stream.socket, receive_bytes)
    return StreamIO(stream, receive_bytes)


class SocketIO:
    """A connected non-blocking socket, read and written through its descriptor; Trio only waits on it.

    The descriptor is asked of the socket at each call (it is -1 once the socket is closed), never kept: a
    kept number could by then belong to another connection.
    """

    def __init__(self, socket: trio.socket.SocketType, receive_bytes: int) -> None:
        self._socket = socket
        self._receive_bytes = receive_bytes
        # The last read took everything there was: the next one waits for the socket first.
        self._drained = True

    async def receive(self) -> bytes:
        # Every read is a checkpoint: a client that keeps the socket full does not keep the loop.
        if not self._drained:
            await trio.lowlevel.checkpoint()
        while True:
            if self._drained:
                await trio.lowlevel.wait_readable(self._socket)
            try:
                data = os.read(self._descriptor(), self._receive_bytes)
            except BlockingIOError:
                self._drained = True
                continue
            except OSError as exc:
                raise _broken(exc) from None
            self._drained = len(data) < self._receive_bytes
            return data

    async def send_all(self, data: bytes, stall_timeout: float = math.inf) -> None:
        view = memoryview(data)
        sent = self._send_now(view)
        if sent == len(view):
            return
        # Only a write the socket took in part waits (and pays for the scope that bounds the wait).
        with trio.move_on_after(stall_timeout):
            while sent < len(view):
                view = view[sent:]
                await trio.lowlevel.wait_writable(self._socket)
                sent = self._send_now(view)
            return
        raise _stalled(stall_timeout)

    def writable(self) -> bool:
        """True if the socket has room (or has failed: the write then says how)."""
        descriptor = self._descriptor()
        _WRITABLE_CHECK.register(descriptor, select.POLLOUT)
        try:
            return bool(_WRITABLE_CHECK.poll(0))
        finally:
            _WRITABLE_CHECK.unregister(descriptor)

    async def wait_writable(self) -> None:
        await trio.lowlevel.wait_writable(self._socket)

    def _send_now(self, data: memoryview) -> int:
        try:
            return os.write(self._descriptor(), data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise _broken(exc) from None

    def _descriptor(self) -> int:
        descriptor = self._socket.fileno()
        if descriptor < 0:
            raise trio.ClosedResourceError("the socket is closed")
        return descriptor


class StreamIO:
    """Any other Trio stream, through its own methods."""

    def __init__(self, stream: trio.abc.Stream, receive_bytes: int) -> None:
        self._stream = stream
        self._receive_bytes = receive_bytes

    async def receive(self) -> bytes:
        return bytes(await self._stream.receive_some(self._receive_bytes))

    async def send_all(self, data: bytes, stall_timeout: float = math.inf) -> None:
        with trio.move_on_after(stall_timeout):
            await self._stream.send_all(data)
            return
        raise _stalled(stall_timeout)

    def writable(self) -> bool:
        return False  # a generic stream cannot be asked: the caller waits

    async def wait_writable(self) -> None:
        await self._stream.wait_send_all_might_not_block()


def _stalled(stall_timeout: float) -> trio.BrokenResourceError:
    return trio.BrokenResourceError(f"the peer took no more of a write for {stall_timeout:g} s")


def _broken(exc: OSError) -> trio.BrokenResourceError | trio.ClosedResourceError:
    if exc.errno == errno.EBADF:
        return trio.ClosedResourceError("the socket is closed")
    return trio.BrokenResourceError(f"socket connection broken: {exc}")
