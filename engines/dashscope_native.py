"""The `dashscope` engine's native transport: DashScope's realtime protocol on Trio, no SDK, no threads.

One WebSocket per session, run by `upstream.run_session` (the skeleton the native engines share): it
sends `run-task`, waits for `task-started` (connect included, bounded by `start_timeout`), then streams
the client's audio as it comes while the results are read as they arrive — nothing polls, nothing waits
for the next frame to deliver a result. At the end of the audio it sends `finish-task` and waits for
`task-finished`, bounded by `stop_timeout`. Every failure of the socket or the service becomes one
`EngineError` with the same client-facing reasons as the SDK transport (`dashscope_wire.describe_failure`),
converted here and in `upstream`, once.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import trio

from asr_actors.config import DashScopeEngineConfig
from asr_actors.engines import dashscope_wire as wire
from asr_actors.engines import upstream
from asr_actors.engines.base import EngineError, EngineEvent, StreamSpec
from asr_actors.engines.service_wire import WireError


async def run_stream(
    config: DashScopeEngineConfig,
    api_key: str,
    spec: StreamSpec,
    audio: trio.MemoryReceiveChannel[bytes],
    events: trio.MemorySendChannel[EngineEvent],
) -> None:
    parameters = wire.task_parameters(spec.options, spec.language, config.language_hints)
    protocol = DashScopeTask(uuid.uuid4().hex, config.model, spec.sample_rate, parameters)
    try:
        await upstream.run_session(
            config.url or wire.DEFAULT_URL,
            protocol,
            upstream.Timeouts(start=config.start_timeout, stop=config.stop_timeout),
            audio,
            events,
            headers=((b"authorization", f"Bearer {api_key}".encode()),),
        )
    except EngineError as exc:
        # The SDK transport says the same for a refused key (dashscope_wire.describe_failure).
        if str(exc) == "DashScope refused the credentials":
            raise EngineError("DashScope refused the API key") from exc.__cause__
        raise


class DashScopeTask:
    """One recognition task in DashScope's protocol (`upstream.ServiceProtocol`)."""

    service = "DashScope"
    finishes_by_closing = False

    def __init__(self, task_id: str, model: str, sample_rate: int, parameters: dict[str, Any]) -> None:
        self._task_id = task_id
        self._run_task = wire.run_task(task_id, model, sample_rate, parameters)

    def opening(self) -> Iterable[str | bytes]:
        return (self._run_task,)

    def audio(self, pcm: bytes) -> Iterable[bytes]:
        return (pcm,) if pcm else ()

    def closing(self) -> Iterable[str | bytes]:
        return (wire.finish_task(self._task_id),)

    def parse(self, message: str | bytes) -> upstream.ServiceEvent | None:
        if isinstance(message, bytes):
            raise WireError("binary data")
        return wire.parse_event(message)
