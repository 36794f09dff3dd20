"""The result sender actor: encodes server events in the session's dialect and writes them, in order."""

from __future__ import annotations

from collections.abc import Callable

import trio

from asr_actors.protocol import ServerEvent
from asr_actors.transport import Transport


async def run(
    connection: Transport,
    outbound: trio.MemoryReceiveChannel[ServerEvent],
    encode: Callable[[ServerEvent], str | None],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Runs until every sender of `outbound` has closed its end (the relay after `end`).

    `encode` returns None for events the dialect does not put on the wire.
    """
    async with outbound:
        task_status.started()
        async for event in outbound:
            message = encode(event)
            if message is not None:
                await connection.send_message(message)
