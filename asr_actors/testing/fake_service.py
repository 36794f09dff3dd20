"""What the protocol-accurate fakes of recognition services share: a WebSocket server on loopback, and an
address where nothing listens (for the "unreachable" tests).

Two servers: trio-websocket's (`serve_on_loopback`, the iFlytek fake's: the native clients then meet a
WebSocket implementation that is not theirs), and the gateway's own (`serve_websocket_on_loopback`, the
DashScope fake's: the official SDK's aiohttp client checks that one from outside, and it costs less CPU per
frame than trio-websocket (48 against 76 % of a core at 1,000 `bench --dashscope native` sessions), which
matters where the fake shares a benchmark's cores with the gateway).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

import trio
import trio_websocket
from wsproto.events import Ping
from wsproto.utilities import LocalProtocolError

from asr_actors.http import BadRequest, RequestHead, RequestReader
from asr_actors.transport import ClientGone
from asr_actors.websocket import WebSocket

MAX_HEAD_BYTES = 16384
MAX_MESSAGE_BYTES = 1 << 20
CLOSE_TIMEOUT_S = 5.0


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


async def serve_websocket_on_loopback(
    handle: Callable[[RequestHead, WebSocket], Awaitable[None]],
    path: str,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """As `serve_on_loopback`, on `asr_actors.websocket.WebSocket`: `handle` gets the upgrade request's head
    and the open connection. A client that leaves (`ClientGone`, also from inside the handler's nurseries)
    ends its own connection only; the connection is closed, bounded, when `handle` returns."""

    async def serve_connection(stream: trio.SocketStream) -> None:
        async with stream:
            reader = RequestReader(stream, MAX_HEAD_BYTES)
            try:
                head = await reader.next_head()
                if head is None:
                    return
                websocket = await WebSocket.accept(stream, head.raw + reader.rest(), MAX_MESSAGE_BYTES)
            except (BadRequest, ClientGone, trio.BrokenResourceError):
                return
            try:
                await handle(head, websocket)
            except* ClientGone:
                pass
            finally:
                with trio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
                    await websocket.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, serve_connection, listeners)
        task_status.started(f"ws://127.0.0.1:{port}{path}")


async def unreachable_url(path: str) -> str:
    """A ws:// URL on a loopback port that was free a moment ago (nothing listens there)."""
    with trio.socket.socket() as placeholder:
        await placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    return f"ws://127.0.0.1:{port}{path}"


async def ping_until_closed(
    connection: trio_websocket.WebSocketConnection | WebSocket, interval: float
) -> None:
    """Ping the client every `interval` seconds until the connection closes, never waiting for a pong.

    A keepalive as servers built on the `websockets` library send it (every 20 s by default), and faster
    to provoke races. Our WebSocket pings while it closes too; trio-websocket's own `ping()` waits for each
    pong, so there the Ping goes out through its `_send` (private, and only in this fake), which also guards
    the socket with its lock.
    """
    count = 0
    while True:
        payload = count.to_bytes(4, "big")
        try:
            if isinstance(connection, WebSocket):
                await connection.send_ping(payload)
            else:
                await connection._send(Ping(payload=payload))
        except (ClientGone, trio_websocket.ConnectionClosed, LocalProtocolError, trio.ClosedResourceError):
            return
        count += 1
        await trio.sleep(interval)
