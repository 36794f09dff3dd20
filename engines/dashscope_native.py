"""The `dashscope` engine's native transport: DashScope's realtime protocol on Trio, no SDK, no threads.

One WebSocket per session (`engines/upstream.py`: trio-websocket over a stream it opens and closes).
The session's task sends `run-task`, waits for `task-started` (bounded by `start_timeout`), then
streams the client's audio as it comes while the results are read as they arrive — nothing polls,
nothing waits for the next frame to deliver a result. At the end of the audio it sends `finish-task`
and waits for `task-finished`, bounded by `stop_timeout`. Every failure of the socket or the service
becomes one `EngineError` with the same client-facing reasons as the SDK transport
(`dashscope_wire.describe_failure`), converted here and in `upstream`, once.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from asr_actors.config import DashScopeEngineConfig
from asr_actors.engines import dashscope_wire as wire
from asr_actors.engines import upstream
from asr_actors.engines.base import EngineError, EngineEvent, Final, Partial, StreamSpec

log = logging.getLogger(__name__)


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


class _Upstream:
    """DashScope's events over the service's WebSocket; a failure event is EngineError here."""

    def __init__(self, socket: upstream.Upstream) -> None:
        self._socket = socket

    async def send_message(self, message: str | bytes) -> None:
        await self._socket.send(message)

    async def event(self) -> wire.ServiceEvent | None:
        message = await self._socket.receive()
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


@asynccontextmanager
async def _upstream(
    config: DashScopeEngineConfig, api_key: str, connected_by: float
) -> AsyncIterator[_Upstream]:
    """A WebSocket to the service, open by `connected_by`; its failures as EngineError."""
    try:
        async with upstream.connect(
            config.url or wire.DEFAULT_URL,
            connected_by,
            service="DashScope",
            close_timeout=config.stop_timeout,
            headers=((b"authorization", f"Bearer {api_key}".encode()),),
        ) as socket:
            yield _Upstream(socket)
    except EngineError as exc:
        # The SDK transport says the same for a refused key (dashscope_wire.describe_failure).
        if str(exc) == "DashScope refused the credentials":
            raise EngineError("DashScope refused the API key") from exc.__cause__
        raise


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
