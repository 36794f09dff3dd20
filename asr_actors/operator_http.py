"""A small HTTP port for operators of processes that serve no page: an engine worker's `/metrics`,
`/healthz` and `/readyz`.

One request per connection, answered within `REQUEST_TIMEOUT` (a scraper or a probe, not a browser):
anything else about a connection (a malformed head, a client that goes away) ends that connection only.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

import trio

from asr_actors import http

log = logging.getLogger(__name__)

# Seconds a probe has to send its request head and read the answer.
REQUEST_TIMEOUT = 10.0
MAX_HEAD_BYTES = 8192

Route = Callable[[], Awaitable[http.Response]]


async def serve(
    host: str,
    port: int,
    routes: Mapping[str, Route],
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer GET and HEAD on `routes` at host:port (0: a free port); reports the port once listening."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    task_status.started(listeners[0].socket.getsockname()[1])

    async def answer(stream: trio.SocketStream) -> None:
        async with stream:
            with trio.move_on_after(REQUEST_TIMEOUT):
                try:
                    head = await http.RequestReader(stream, MAX_HEAD_BYTES).next_head()
                except http.BadRequest as exc:
                    await stream.send_all(http.refusal(exc))
                    return
                if head is None:
                    return
                data, _reusable = http.encode_response(head, await _route(routes, head))
                await stream.send_all(data)

    await trio.serve_listeners(_survive(answer), listeners)


async def _route(routes: Mapping[str, Route], head: http.RequestHead) -> http.Response:
    if head.method not in ("GET", "HEAD"):
        return http.method_not_allowed()
    route = routes.get(head.path)
    if route is None:
        return http.text_response(404, "Not found")
    return await route()


def _survive(
    answer: Callable[[trio.SocketStream], Awaitable[None]],
) -> Callable[[trio.SocketStream], Awaitable[None]]:
    """One connection's trouble ends that connection, never the listener."""

    async def handler(stream: trio.SocketStream) -> None:
        try:
            await answer(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            log.exception("operator request failed")

    return handler
