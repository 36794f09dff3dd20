"""The receiver actor: reads client messages, decodes them, sends audio on and answers pings.

Readiness (`task_status.started`) carries the stream's language and rate, known once the first audio
frame arrives; the supervisor then opens the engine. The idle timeout lives here because only the
receiver sees audio arrive: its deadline moves on each audio frame, pings do not move it.
"""

from __future__ import annotations

import trio

from asr_actors import transport
from asr_actors.protocol import (
    IDLE,
    AudioReceived,
    Decoder,
    ErrorCode,
    PingReceived,
    Pong,
    ProtocolError,
    ServerEvent,
    StreamOpened,
)
from asr_actors.transport import Transport


async def run(
    connection: Transport,
    decoder: Decoder,
    audio: trio.MemorySendChannel[bytes],
    outbound: trio.MemorySendChannel[ServerEvent],
    idle_timeout: float,
    *,
    task_status: trio.TaskStatus[StreamOpened] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with audio, outbound:
        idle = trio.CancelScope()

        def audio_arrived() -> None:
            idle.deadline = trio.current_time() + idle_timeout

        audio_arrived()
        with idle:
            while not decoder.ended:
                message = await transport.receive(connection)
                for event in decoder.receive(message):
                    if isinstance(event, StreamOpened):
                        task_status.started(event)
                    elif isinstance(event, AudioReceived):
                        audio_arrived()
                        await audio.send(event.pcm)
                    elif isinstance(event, PingReceived):
                        await outbound.send(Pong())
        if idle.cancelled_caught:
            raise ProtocolError(ErrorCode.TIMEOUT, IDLE)
