"""The engine relay actor: audio to the engine stream, engine events to protocol results.

It owns the flush: once the client's audio has ended, the engine has `flush_timeout` to deliver its last
finals; then `end` is sent and the outbound channel closes, which lets the sender finish.
"""

from __future__ import annotations

import trio

from asr_actors.bus.base import Bus
from asr_actors.protocol import ErrorCode, ProtocolError, Result, ResultStatus, ServerEvent
from asr_actors.records import FinalRecord, SessionLedger
from engines.base import EngineEvent, EngineFailed, EngineUnavailable, Final, StreamSpec, UnsupportedStream


async def run(
    audio: trio.MemoryReceiveChannel[bytes],
    outbound: trio.MemorySendChannel[ServerEvent],
    bus: Bus,
    engine: str,
    spec: StreamSpec,
    flush_timeout: float,
    ledger: SessionLedger,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with audio, outbound:
        # The flush deadline is set once the client's audio has ended; it cancels the engine stream too.
        flush = trio.CancelScope()
        try:
            with flush:
                async with bus.open_stream(engine, spec) as link:
                    task_status.started()
                    await outbound.send(Result(ResultStatus.START))
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(_forward_audio, audio, link.audio, flush, flush_timeout, ledger)
                        await _relay_events(link.events, outbound, spec.session_id, ledger)
        # Both are raised by open_stream before anything runs.
        except UnsupportedStream as exc:
            raise ProtocolError(ErrorCode.BAD_INPUT, str(exc)) from None
        except EngineUnavailable as exc:
            raise ProtocolError(ErrorCode.UNAVAILABLE, f"No engine available: {exc}") from None
        if flush.cancelled_caught:
            raise ProtocolError(ErrorCode.ENGINE_FAILURE, "Engine did not finish in time")
        await outbound.send(Result(ResultStatus.END))


async def _forward_audio(
    audio: trio.MemoryReceiveChannel[bytes],
    engine_audio: trio.MemorySendChannel[bytes],
    flush: trio.CancelScope,
    flush_timeout: float,
    ledger: SessionLedger,
) -> None:
    async with engine_audio:
        try:
            async for pcm in audio:
                ledger.audio_bytes += len(pcm)
                await engine_audio.send(pcm)
        except trio.BrokenResourceError:
            # The engine stopped listening; its event stream says why.
            return
    flush.deadline = trio.current_time() + flush_timeout


async def _relay_events(
    events: trio.MemoryReceiveChannel[EngineEvent],
    outbound: trio.MemorySendChannel[ServerEvent],
    session_id: str,
    ledger: SessionLedger,
) -> None:
    sentence = 0
    async for event in events:
        if isinstance(event, EngineFailed):
            raise ProtocolError(ErrorCode.ENGINE_FAILURE, event.message)
        # One speech_id per sentence, so a client can match each partial to its final.
        status = ResultStatus.FINAL if isinstance(event, Final) else ResultStatus.PARTIAL
        await outbound.send(
            Result(status, f"{session_id}-{sentence}", event.text, event.begin_ms, event.end_ms)
        )
        if isinstance(event, Final):
            ledger.finals.append(FinalRecord(event.text, event.begin_ms, event.end_ms))
            sentence += 1
