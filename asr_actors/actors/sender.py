"""The result sender actor: encodes server events and writes them to the client, in order."""

from __future__ import annotations

import trio

from asr_actors import protocol, transport
from asr_actors.protocol import ServerEvent
from asr_actors.transport import Transport


async def run(
    connection: Transport,
    outbound: trio.MemoryReceiveChannel[ServerEvent],
    task_id: str,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Runs until every sender of `outbound` has closed its end (the relay after `end`)."""
    async with outbound:
        task_status.started()
        async for event in outbound:
            await transport.send(connection, protocol.encode(task_id, event))
