"""What a request on one port is for: an HTTP route, or a dialect's WebSocket session.

A port's `Router` is a table: an HTTP answer per path, a dialect per WebSocket path (or one dialect for
every path, as the Bailian port has), and what answers any other path. Adding a route or a dialect is
one entry where the gateway builds its routers (`server.Gateway`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import attrs

from asr_actors import http
from asr_actors.dialects import Dialect

# Answers a request that is not a WebSocket session: an HTTP response.
HttpRoute = Callable[[http.RequestHead], Awaitable[http.Response]]


@attrs.frozen
class Upload:
    """A route that takes a request body (POST): it reads the body as it arrives, and has `timeout`
    seconds for the whole exchange (the port's handshake deadline is for heads, not uploads)."""

    answer: Callable[[http.RequestHead, http.RequestBody], Awaitable[http.Response]]
    timeout: float


async def not_found(head: http.RequestHead) -> http.Response:
    return http.text_response(404, "Not found")


async def upgrade_required(head: http.RequestHead) -> http.Response:
    return http.text_response(426, "This endpoint speaks WebSocket")


@attrs.frozen
class Router:
    # HTTP answers by path.
    routes: Mapping[str, HttpRoute] = attrs.field(factory=dict)
    # WebSocket sessions by path, each in its dialect.
    dialects: Mapping[str, Dialect] = attrs.field(factory=dict)
    # The dialect of a WebSocket request on any other path (None: only `dialects`' paths upgrade).
    any_path: Dialect | None = None
    # Answers the HTTP requests no route takes.
    otherwise: HttpRoute = not_found
    # POST routes by path.
    uploads: Mapping[str, Upload] = attrs.field(factory=dict)

    def dialect(self, head: http.RequestHead) -> Dialect | None:
        """The dialect a WebSocket request is for, or None (it is then answered as HTTP)."""
        if not head.is_websocket:
            return None
        return self.dialects.get(head.path, self.any_path)

    def upload(self, head: http.RequestHead) -> Upload | None:
        """The upload route a POST is for, or None."""
        return self.uploads.get(head.path) if head.method == "POST" else None

    def route(self, head: http.RequestHead) -> HttpRoute:
        if head.path in self.uploads:
            return _post_only
        return self.routes.get(head.path, self.otherwise)


async def _post_only(head: http.RequestHead) -> http.Response:
    return http.Response(405, b"Method not allowed\n", extra_headers=((b"allow", b"POST"),))
