"""The engine relay actor: opens the engine stream on the bus and turns its events into protocol results.

The session's audio goes from the receiver to the bus directly (the bus reads the channel), so a frame
makes no hop through this actor. The relay runs the stream inside the session's `Flush` scope: once the
client's audio has ended, the engine has `flush_timeout` to deliver its last finals; then `end` is sent and
the outbound channel closes, which lets the sender finish.
"""

from __future__ import annotations

import attrs
import trio

from asr_actors.bus.base import Bus
from asr_actors.engines.base import (
    EngineEvent,
    EngineFailed,
    EngineUnavailable,
    Final,
    StreamSpec,
    UnsupportedStream,
)
from asr_actors.protocol import ErrorCode, ProtocolError, Result, ResultStatus, ServerEvent
from asr_actors.records import FinalRecord, SessionLedger


@attrs.define(eq=False)
class Flush:
    """The deadline for the engine's last finals: started (`start`) when the client's audio ends."""

    timeout: float
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)

    def start(self) -> None:
        self.scope.deadline = trio.current_time() + self.timeout


async def run(
    audio: trio.MemoryReceiveChannel[bytes],
    outbound: trio.MemorySendChannel[ServerEvent],
    bus: Bus,
    engine: str,
    spec: StreamSpec,
    flush: Flush,
    ledger: SessionLedger,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with outbound:
        try:
            with flush.scope:
                async with bus.open_stream(engine, spec, audio) as events:
                    task_status.started()
                    await outbound.send(Result(ResultStatus.START))
                    await _relay_events(events, outbound, spec, ledger)
        # Both are raised by open_stream before anything runs.
        except UnsupportedStream as exc:
            raise ProtocolError(ErrorCode.BAD_INPUT, str(exc)) from None
        except EngineUnavailable as exc:
            raise ProtocolError(ErrorCode.UNAVAILABLE, f"No engine available: {exc}") from None
        if flush.scope.cancelled_caught:
            raise ProtocolError(ErrorCode.ENGINE_FAILURE, "Engine did not finish in time")
        await outbound.send(Result(ResultStatus.END))


async def _relay_events(
    events: trio.MemoryReceiveChannel[EngineEvent],
    outbound: trio.MemorySendChannel[ServerEvent],
    spec: StreamSpec,
    ledger: SessionLedger,
) -> None:
    session_id, bytes_per_ms = spec.session_id, spec.sample_rate * 2 / 1000
    sentence = 0
    async for event in events:
        if isinstance(event, EngineFailed):
            raise ProtocolError(ErrorCode.ENGINE_FAILURE, event.message)
        # One speech_id per sentence, so a client can match each partial to its final.
        status = ResultStatus.FINAL if isinstance(event, Final) else ResultStatus.PARTIAL
        words = tuple((w.text, w.begin_ms, w.end_ms) for w in event.words) if isinstance(event, Final) else ()
        result = Result(status, f"{session_id}-{sentence}", event.text, event.begin_ms, event.end_ms, words)
        try:
            # No yield when the sender has room: the loop's next receive is the checkpoint.
            outbound.send_nowait(result)
        except trio.WouldBlock:
            await outbound.send(result)
        if isinstance(event, Final):
            final = FinalRecord(event.text, event.begin_ms, event.end_ms, words)
            ledger.final_sent(final, round(event.end_ms * bytes_per_ms), trio.current_time())
            sentence += 1
        else:
            ledger.partial_sent(trio.current_time())
