"""The native engines' sessions with their recognition services, over one WebSocket each.

`run_session` is the one session skeleton the native engines share (DashScope's realtime protocol,
iFlytek's rtasr): connect and start by one deadline, then the client's audio out while the service's
results are read as they arrive, and at the end of the audio the service's last results within
`stop_timeout`. What differs per service is its `ServiceProtocol`: the messages it takes and how its
messages read.

The WebSocket is `asr_actors.websocket.WebSocket` in its client role, read by the relaying task itself (no
reader task, no queue: the service's results wait in the socket while the session is busy, and TCP pushes
back). A ping from the service that crosses our close frame is dropped there, never answered: with
trio-websocket such a ping failed sessions that had all their results (its issue #184). Failures of the
socket and the handshake, the service's reported failures and messages outside its protocol, become
`EngineError`s naming the service, here, once.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Protocol
from urllib.parse import urlsplit

import attrs
import trio

from asr_actors.engines.base import EngineError, EngineEvent, Final, Partial
from asr_actors.engines.service_wire import Failed, Finished, Started, WireError
from asr_actors.transport import ClientGone
from asr_actors.websocket import Refused, WebSocket

log = logging.getLogger(__name__)

# The services' results are small; a larger message is not one of them.
MAX_MESSAGE_BYTES = 1 << 20


ServiceEvent = Started | Finished | Failed | Partial | Final


class ServiceProtocol(Protocol):
    """One session's side of a service's protocol: what goes out, and what a message in means."""

    # Named in every error the session reports ("iFlytek connection failed").
    service: str
    # The service ends a task by closing the connection after the end of the audio (else by `Finished`).
    finishes_by_closing: bool

    def opening(self) -> Iterable[str | bytes]:
        """Messages sent right after the upgrade, before the service starts."""
        ...

    def audio(self, pcm: bytes) -> Iterable[bytes]:
        """The client's audio as the service takes it."""
        ...

    def closing(self) -> Iterable[str | bytes]:
        """Messages at the end of the audio: what is left of it, and the end."""
        ...

    def parse(self, message: str | bytes) -> ServiceEvent | None:
        """A message of the service (None: nothing for the session); WireError if it is not one."""
        ...


@attrs.frozen
class Timeouts:
    # Connect, upgrade and the service's start: one deadline.
    start: float
    # From the end of the audio to the service's last result; also bounds our close.
    stop: float


async def run_session(
    url: str,
    protocol: ServiceProtocol,
    timeouts: Timeouts,
    audio: trio.MemoryReceiveChannel[bytes],
    events: trio.MemorySendChannel[EngineEvent],
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    """One session with the service, from connect to its last result; every failure is EngineError."""
    service = protocol.service
    started_by = trio.current_time() + timeouts.start
    async with (
        events,
        connect(url, started_by, service=service, close_timeout=timeouts.stop, headers=headers) as socket,
    ):
        with trio.move_on_at(started_by) as starting:
            for message in protocol.opening():
                await socket.send(message)
            while not isinstance(read(protocol, await socket.receive()), Started):
                pass
        if starting.cancelled_caught:
            raise EngineError(f"{service} did not start within {timeouts.start:g} s")
        ended = trio.Event()
        finishing = trio.CancelScope()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_send_audio, socket, protocol, audio, ended, finishing, timeouts.stop)
            with finishing:
                await _relay_results(socket, protocol, events, ended)
            nursery.cancel_scope.cancel()
        if finishing.cancelled_caught:
            raise EngineError(f"{service} did not finish within {timeouts.stop:g} s")


async def _send_audio(
    socket: Upstream,
    protocol: ServiceProtocol,
    audio: trio.MemoryReceiveChannel[bytes],
    ended: trio.Event,
    finishing: trio.CancelScope,
    stop_timeout: float,
) -> None:
    """The client's audio as it comes; at its end the closing messages, and from then on `stop_timeout`
    for the service to finish."""
    async with audio:
        async for pcm in audio:
            for piece in protocol.audio(pcm):
                await socket.send(piece)
    for message in protocol.closing():
        await socket.send(message)
    ended.set()
    finishing.deadline = trio.current_time() + stop_timeout


async def _relay_results(
    socket: Upstream,
    protocol: ServiceProtocol,
    events: trio.MemorySendChannel[EngineEvent],
    ended: trio.Event,
) -> None:
    """Results to the session as they arrive, until the service's last. A clean close ends a service that
    finishes by closing, once the audio has ended; any other close loses what was said after it."""
    while True:
        message = await socket.receive_or_close()
        if message is None:
            if protocol.finishes_by_closing and ended.is_set():
                return
            if ended.is_set():
                raise EngineError(f"{protocol.service} closed the connection before its last result")
            raise EngineError(f"{protocol.service} closed the connection before the end of the audio")
        event = read(protocol, message)
        if isinstance(event, Finished):
            return
        if isinstance(event, Partial | Final):
            await events.send(event)


def read(protocol: ServiceProtocol, message: str | bytes) -> ServiceEvent | None:
    """The service's message, its failure or a message outside its protocol as EngineError."""
    try:
        event = protocol.parse(message)
    except WireError as exc:
        raise EngineError(f"{protocol.service} broke its protocol: {exc}") from exc
    if isinstance(event, Failed):
        log.warning("%s error %s: %s", protocol.service, event.code, event.detail)
        raise EngineError(event.reason)
    return event


class Upstream:
    """The service's WebSocket; a dropped or broken connection is EngineError, a clean close is None from
    `receive_or_close` (or EngineError from `receive`, for a caller that did not expect it)."""

    def __init__(self, websocket: WebSocket, service: str) -> None:
        self._websocket = websocket
        self._service = service

    async def send(self, message: str | bytes) -> None:
        try:
            await self._websocket.send_message(message)
        except ClientGone as exc:
            raise self._lost() from exc

    async def receive(self) -> str | bytes:
        message = await self.receive_or_close()
        if message is None:
            raise EngineError(f"{self._service} closed the connection before the end of the audio")
        return message

    async def receive_or_close(self) -> str | bytes | None:
        """The next message, or None if the service closed the connection cleanly (a close frame)."""
        try:
            return await self._websocket.get_message()
        except ClientGone as exc:
            if self._closed_cleanly():
                return None
            raise self._lost() from exc

    def _closed_cleanly(self) -> bool:
        return self._websocket.peer_close_code in (1000, 1001)

    def _lost(self) -> EngineError:
        if self._closed_cleanly():
            return EngineError(f"{self._service} closed the connection before the end of the audio")
        return EngineError(f"{self._service} connection failed")


@asynccontextmanager
async def connect(
    url: str,
    connected_by: float,
    *,
    service: str,
    close_timeout: float,
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> AsyncIterator[Upstream]:
    """The service's WebSocket, upgraded by `connected_by`; closed (bounded by `close_timeout`) on the way
    out, whatever ended the session."""
    split = urlsplit(url)
    secure = split.scheme == "wss"
    host = split.hostname or ""
    port = split.port or (443 if secure else 80)
    target = (split.path or "/") + (f"?{split.query}" if split.query else "")
    try:
        with trio.fail_at(connected_by):
            stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] = (
                await trio.open_ssl_over_tcp_stream(host, port)
                if secure
                else await trio.open_tcp_stream(host, port)
            )
    except (OSError, trio.TooSlowError) as exc:
        raise EngineError(f"{service} is unreachable") from exc
    async with stream:
        try:
            with trio.fail_at(connected_by):
                websocket = await WebSocket.connect(
                    stream, split.netloc, target, MAX_MESSAGE_BYTES, headers=headers
                )
        except Refused as exc:
            if exc.status_code in (401, 403):
                raise EngineError(f"{service} refused the credentials") from exc
            raise EngineError(f"{service} refused the connection: HTTP {exc.status_code}") from exc
        except (ClientGone, trio.TooSlowError) as exc:
            raise EngineError(f"{service} connection failed") from exc
        try:
            yield Upstream(websocket, service)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(close_timeout):
                await websocket.aclose()
