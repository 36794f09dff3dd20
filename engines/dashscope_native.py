"""The `dashscope` engine's native transport: DashScope's realtime protocol on Trio, no SDK, no threads.

One WebSocket per session (trio-websocket, over a TCP or TLS stream this module opens and closes itself:
trio-websocket's own client leaks its socket when the server closes first). The session's task sends
`run-task`, waits for `task-started` (bounded by `start_timeout`), then streams the client's audio as it
comes while the results are read as they arrive — nothing polls, nothing waits for the next frame to
deliver a result. At the end of the audio it sends `finish-task` and waits for `task-finished`, bounded by
`stop_timeout`. Every failure of the socket or the service becomes one `EngineError` with the same
client-facing reasons as the SDK transport (`dashscope_wire.describe_failure`), converted here, once.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import trio
import trio_websocket

from asr_actors.config import DashScopeEngineConfig
from asr_actors.engines import dashscope_wire as wire
from asr_actors.engines.base import EngineError, EngineEvent, Final, Partial, StreamSpec

log = logging.getLogger(__name__)

# The service's results are small; a larger message is not one of them.
MAX_MESSAGE_BYTES = 1 << 20
# Messages trio-websocket buffers from the service before it stops reading the socket.
MESSAGE_QUEUE = 64


async def run_stream(
    config: DashScopeEngineConfig,
    api_key: str,
    spec: StreamSpec,
    audio: trio.MemoryReceiveChannel[bytes],
    events: trio.MemorySendChannel[EngineEvent],
) -> None:
    task_id = uuid.uuid4().hex
    hints = list(config.language_hints) or [spec.language]
    # One deadline for the whole start: connect, upgrade, run-task -> task-started.
    started_by = trio.current_time() + config.start_timeout
    async with events, _upstream(config, api_key, started_by) as upstream:
        with trio.move_on_at(started_by) as starting:
            await upstream.send_message(wire.run_task(task_id, config.model, spec.sample_rate, hints))
            await _until_started(upstream)
        if starting.cancelled_caught:
            raise EngineError(f"DashScope did not start within {config.start_timeout:g} s")
        finishing = trio.CancelScope()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_send_audio, upstream, audio, task_id, finishing, config.stop_timeout)
            with finishing:
                await _relay_results(upstream, events)
            nursery.cancel_scope.cancel()
        if finishing.cancelled_caught:
            raise EngineError(f"DashScope did not finish within {config.stop_timeout:g} s")


@asynccontextmanager
async def _upstream(
    config: DashScopeEngineConfig, api_key: str, connected_by: float
) -> AsyncIterator[_Upstream]:
    """A WebSocket to the service, open by `connected_by` and closed (bounded) on the way out; its
    failures as EngineError."""
    split = urlsplit(config.url or wire.DEFAULT_URL)
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
        raise EngineError("DashScope is unreachable") from exc
    async with stream, trio.open_nursery() as nursery:
        try:
            with trio.fail_at(connected_by):
                connection = await trio_websocket.wrap_client_stream(
                    nursery,
                    stream,
                    split.netloc,
                    split.path or "/",
                    extra_headers=[(b"authorization", f"Bearer {api_key}".encode())],
                    message_queue_size=MESSAGE_QUEUE,
                    max_message_size=MAX_MESSAGE_BYTES,
                )
        except trio_websocket.ConnectionRejected as exc:
            if exc.status_code in (401, 403):
                raise EngineError("DashScope refused the API key") from exc
            raise EngineError(f"DashScope refused the connection: HTTP {exc.status_code}") from exc
        except (trio_websocket.HandshakeError, trio.TooSlowError, OSError) as exc:
            raise EngineError("DashScope connection failed") from exc
        upstream = _Upstream(connection)
        try:
            yield upstream
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(config.stop_timeout):
                await connection.aclose()
            nursery.cancel_scope.cancel()


class _Upstream:
    """The service's WebSocket; a dropped or closed connection is `EngineError` here, the only place."""

    def __init__(self, connection: trio_websocket.WebSocketConnection) -> None:
        self._connection = connection

    async def send_message(self, message: str | bytes) -> None:
        try:
            await self._connection.send_message(message)
        except trio_websocket.ConnectionClosed as exc:
            raise EngineError("DashScope connection failed") from exc

    async def event(self) -> wire.ServiceEvent | None:
        try:
            message = await self._connection.get_message()
        except trio_websocket.ConnectionClosed as exc:
            raise EngineError("DashScope connection failed") from exc
        if isinstance(message, bytes):
            raise EngineError("DashScope sent binary data")
        try:
            event = wire.parse_event(message)
        except wire.WireError as exc:
            raise EngineError(f"DashScope broke its protocol: {exc}") from exc
        if isinstance(event, wire.Failed):
            log.warning("DashScope error %s: %s", event.code, event.message)
            raise EngineError(event.reason)
        return event


async def _until_started(upstream: _Upstream) -> None:
    while not isinstance(await upstream.event(), wire.Started):
        pass


async def _send_audio(
    upstream: _Upstream,
    audio: trio.MemoryReceiveChannel[bytes],
    task_id: str,
    finishing: trio.CancelScope,
    stop_timeout: float,
) -> None:
    """The client's audio as it comes; at its end `finish-task`, and from then on `stop_timeout` for the
    service to finish."""
    async with audio:
        async for pcm in audio:
            if pcm:
                await upstream.send_message(pcm)
    await upstream.send_message(wire.finish_task(task_id))
    finishing.deadline = trio.current_time() + stop_timeout


async def _relay_results(upstream: _Upstream, events: trio.MemorySendChannel[EngineEvent]) -> None:
    """Results to the session as they arrive, until `task-finished`."""
    while True:
        event = await upstream.event()
        if isinstance(event, wire.Finished):
            return
        if isinstance(event, Partial | Final):
            await events.send(event)
