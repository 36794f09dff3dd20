"""What the protocol-accurate fakes of recognition services share: a WebSocket server on loopback, and an
address where nothing listens (for the "unreachable" tests)."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

import trio
import trio_websocket


async def serve_on_loopback(
    handle: Callable[[trio_websocket.WebSocketRequest], Awaitable[None]],
    path: str,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `handle` on a free loopback port; report the ws:// URL with `path` once listening."""
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            functools.partial(trio_websocket.serve_websocket, handle, "127.0.0.1", 0, ssl_context=None)
        )
        task_status.started(f"ws://127.0.0.1:{server.port}{path}")


async def unreachable_url(path: str) -> str:
    """A ws:// URL on a loopback port that was free a moment ago (nothing listens there)."""
    with trio.socket.socket() as placeholder:
        await placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    return f"ws://127.0.0.1:{port}{path}"
