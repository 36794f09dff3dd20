"""The receiver actor: reads client messages, decodes them, sends audio on (at the engines' 16 kHz, whatever
rate the client sends) and answers pings.

Readiness (`task_status.started`) carries the stream's language and rate, known once the first audio
frame arrives; the supervisor then opens the engine. The idle timeout lives here because only the
receiver sees audio arrive: its deadline moves on each audio frame, pings do not move it.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from asr_actors.audio import ENGINE_RATE, Resampler
from asr_actors.limits import AudioAllowance
from asr_actors.protocol import (
    ENGINE_STALLED,
    IDLE,
    AudioReceived,
    Decoder,
    ErrorCode,
    PingReceived,
    Pong,
    ProtocolError,
    Reply,
    ServerEvent,
    StreamOpened,
)
from asr_actors.records import SessionLedger
from asr_actors.transport import Transport


async def run(
    connection: Transport,
    decoder: Decoder,
    audio: trio.MemorySendChannel[bytes],
    outbound: trio.MemorySendChannel[ServerEvent],
    idle_timeout: float,
    ledger: SessionLedger,
    audio_ended: Callable[[], None],
    allowance: AudioAllowance | None,
    *,
    task_status: trio.TaskStatus[StreamOpened] = trio.TASK_STATUS_IGNORED,
) -> None:
    """`audio_ended` is called once the client has ended its audio (it starts the engine's flush);
    `allowance` is the audio its app may still send today (None: unlimited)."""
    async with audio, outbound:
        idle = trio.CancelScope()
        # Once the engine stream has ended (a failure, which its events report) further audio is dropped.
        engine_listening = True
        # True while a frame waits for room in `audio`: a timeout then is the engine's fault.
        waiting_for_engine = False

        def audio_arrived() -> None:
            idle.deadline = trio.current_time() + idle_timeout

        audio_arrived()
        allowed_bytes = float("inf")
        over_allowance = allowance.exceeded if allowance is not None else None
        # The client's rate converted to the engines' (every engine takes 16 kHz): one resampler per
        # stream, so that its filter carries across frames.
        resampler: Resampler | None = None

        async def forward(pcm: bytes) -> None:
            nonlocal engine_listening, waiting_for_engine
            ledger.heard(len(pcm), trio.current_time())
            if ledger.audio_bytes > allowed_bytes and over_allowance is not None:
                raise over_allowance
            if engine_listening and pcm:
                waiting_for_engine = True
                try:
                    await audio.send(pcm)
                except trio.BrokenResourceError:
                    engine_listening = False
                waiting_for_engine = False

        with idle:
            while not decoder.ended:
                message = await connection.get_message()
                for event in decoder.receive(message):
                    if isinstance(event, StreamOpened):
                        if event.sample_rate != ENGINE_RATE:
                            resampler = Resampler(event.sample_rate, ENGINE_RATE)
                            event = StreamOpened(event.language, ENGINE_RATE)  # noqa: PLW2901
                        if allowance is not None:
                            allowed_bytes = allowance.seconds * 2 * event.sample_rate
                        task_status.started(event)
                    elif isinstance(event, AudioReceived):
                        audio_arrived()
                        await forward(resampler.feed(event.pcm) if resampler else event.pcm)
                    elif isinstance(event, PingReceived):
                        await outbound.send(Pong())
                    elif isinstance(event, Reply):
                        await outbound.send(event)
            if resampler is not None:
                await forward(resampler.flush())
        if idle.cancelled_caught:
            if waiting_for_engine:
                raise ProtocolError(ErrorCode.ENGINE_FAILURE, ENGINE_STALLED)
            raise ProtocolError(ErrorCode.TIMEOUT, IDLE)
        audio_ended()
