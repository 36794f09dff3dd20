"""The result sender actor: encodes server events in the session's dialect and writes them, in order.

It owns the slow-reader limit: a message waits at most `send_timeout` for the client's socket to take data.
That wait comes before the write, so that a timeout there leaves no half-written frame and the coded close
can still follow. A write the socket took only in part (rare: the socket said it had room) has
`send_timeout` again to finish; past it the client is gone, as nothing can follow half a frame.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from asr_actors.protocol import NOT_READING, Encoded, ErrorCode, ProtocolError, ServerEvent, messages
from asr_actors.transport import Transport


async def run(
    connection: Transport,
    outbound: trio.MemoryReceiveChannel[ServerEvent],
    encode: Callable[[ServerEvent], Encoded],
    send_timeout: float,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Runs until every sender of `outbound` has closed its end (the relay after `end`).

    `encode` returns None for events the dialect does not put on the wire, and a list where the dialect
    says several things for one event (OpenAI's realtime events).
    """
    async with outbound:
        # Every actor has the same shape (`nursery.start`-able); the session starts this one with
        # `start_soon`, as nothing waits on its readiness.
        task_status.started()
        async for event in outbound:
            for message in messages(encode(event)):
                if not connection.writable():
                    with trio.move_on_after(send_timeout) as stalled:
                        await connection.wait_writable()
                    if stalled.cancelled_caught:
                        raise ProtocolError(ErrorCode.TIMEOUT, NOT_READING)
                await connection.send_message(message, send_timeout)
