"""What the protocol-accurate fakes of recognition services share: a WebSocket server on loopback, and an
address where nothing listens (for the "unreachable" tests)."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

import trio
import trio_websocket
from wsproto.events import Ping
from wsproto.utilities import LocalProtocolError


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


async def ping_until_closed(connection: trio_websocket.WebSocketConnection, interval: float) -> None:
    """Ping the client every `interval` seconds until the connection closes, never waiting for a pong.

    A keepalive as servers built on the `websockets` library send it (every 20 s by default), and faster
    to provoke races: trio-websocket's own `ping()` waits for each pong, so the Ping goes out through its
    `_send` (private, and only in this fake), which also guards the socket with its lock.
    """
    count = 0
    while True:
        try:
            await connection._send(Ping(payload=count.to_bytes(4, "big")))
        except (trio_websocket.ConnectionClosed, LocalProtocolError, trio.ClosedResourceError):
            return
        count += 1
        await trio.sleep(interval)
