"""A small HTTP front on the gateway's one port: the page, /healthz, /v1/sign, and the WebSocket hand-off.

trio-websocket alone answers a plain GET with a bare 400, so each connection's request heads are read here
(parsed by h11) and then either answered as HTTP (several requests per connection when the client keeps
it alive) or handed, bytes and all, to the WebSocket layer for the upgrade. Reading is the only I/O here
(`RequestReader`); parsing heads and encoding answers are sans-IO, so the fuzzer and the tests drive them
without sockets.
"""

from __future__ import annotations

import json
import mimetypes
import uuid
from http import HTTPStatus
from pathlib import Path
from urllib.parse import urlsplit

import attrs
import h11
import trio

from asr_actors import protocol, signing

HEAD_END = b"\r\n\r\n"
RECEIVE_BYTES = 4096
# A request body is read in pieces this large (an upload of megabytes, not a head).
BODY_RECEIVE_BYTES = 65536
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]
# The methods every route answers; others get 405 with this list.
ALLOWED_METHODS = ("GET", "HEAD")


class BadRequest(Exception):
    """The bytes before the WebSocket or HTTP exchange are not a usable request head; `status` is the
    HTTP status that says so (400, or h11's more precise hint: 431 for a head too large, 501 for a
    transfer coding it does not know)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@attrs.frozen
class RequestHead:
    method: str
    target: str
    host: str
    headers: dict[str, str]
    # The head's bytes as received: what the WebSocket layer parses again for the upgrade.
    raw: bytes
    # A body follows the head (Content-Length above 0, or a transfer coding): nothing here reads bodies,
    # so such a request is answered and its connection closed.
    has_body: bool = False
    # The client's IP address ("" for a stream without a socket).
    peer: str = ""

    @property
    def proxied(self) -> bool:
        """A proxy says it forwarded the request (RFC 7239 `Forwarded`, or the X-Forwarded-* family)."""
        return any(name == "forwarded" or name.startswith("x-forwarded-") for name in self.headers)

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def is_websocket(self) -> bool:
        return self.method == "GET" and self.headers.get("upgrade", "").lower() == "websocket"


class RequestReader:
    """The request heads of one connection, one after another; bytes read past a head are kept for the
    next one, or for the WebSocket layer (`rest`)."""

    def __init__(self, stream: trio.abc.ReceiveStream, max_head_bytes: int) -> None:
        self._stream = stream
        self._max_head_bytes = max_head_bytes
        self._buffer = bytearray()

    async def next_head(self) -> RequestHead | None:
        """The next request's head; None if the client closed the connection between requests."""
        while (end := self._buffer.find(HEAD_END, 0, self._max_head_bytes + len(HEAD_END))) < 0:
            if len(self._buffer) > self._max_head_bytes:
                raise BadRequest(f"request head larger than {self._max_head_bytes} bytes", 431)
            chunk = await self._stream.receive_some(RECEIVE_BYTES)
            if not chunk:
                if not self._buffer.strip():
                    return None
                raise BadRequest("connection closed before the request head ended")
            self._buffer += chunk
        head_bytes = bytes(self._buffer[: end + len(HEAD_END)])
        del self._buffer[: end + len(HEAD_END)]
        return parse_request_head(head_bytes)

    @property
    def pending(self) -> bool:
        """Part of a request has arrived."""
        return bool(self._buffer)

    def rest(self) -> bytes:
        """What was read after the last head (the first WebSocket frames, if the client sent them early)."""
        rest, self._buffer = bytes(self._buffer), bytearray()
        return rest


class RequestBody:
    """The body of the request whose head `reader` read last, as it arrives (Content-Length or chunked,
    framed by h11). Nothing is buffered beyond a chunk: the route reads it as a stream and decides how
    much it takes. A body that ends early or breaks its framing is BadRequest."""

    def __init__(self, stream: trio.abc.Stream, reader: RequestReader, head: RequestHead) -> None:
        self._stream = stream
        self._connection, _request, _has_body = _server_connection(head.raw)
        early = reader.rest()
        if early:  # (h11 reads b"" as the end of the stream)
            self._connection.receive_data(early)
        self._continue = head.headers.get("expect", "").lower() == "100-continue"
        length = head.headers.get("content-length", "")
        # The length the client announced (None: chunked), to refuse a body too large before reading it.
        self.declared_length = int(length) if length.isdigit() else None

    async def receive(self) -> bytes:
        """The next piece of the body as it arrives; b"" once it has ended."""
        if self._continue:
            # The client waits for this before it sends the body (curl does, for a large upload).
            self._continue = False
            await self._stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
        while True:
            try:
                event = self._connection.next_event()
            except h11.RemoteProtocolError as exc:
                raise BadRequest(f"malformed body: {exc}", exc.error_status_hint) from None
            if event is h11.NEED_DATA:
                self._connection.receive_data(bytes(await self._stream.receive_some(BODY_RECEIVE_BYTES)))
            elif isinstance(event, h11.Data):
                if event.data:
                    return bytes(event.data)
            elif isinstance(event, h11.EndOfMessage | h11.PAUSED):
                return b""
            else:
                raise BadRequest("malformed body")


def _server_connection(head_bytes: bytes) -> tuple[h11.Connection, h11.Request, bool]:
    """An h11 server connection fed one request head: the request, and whether a body follows."""
    connection = h11.Connection(h11.SERVER)
    connection.receive_data(head_bytes)
    try:
        event = connection.next_event()
        if not isinstance(event, h11.Request):
            raise BadRequest("not an HTTP request")
        has_body = connection.next_event() is h11.NEED_DATA
    except h11.RemoteProtocolError as exc:
        raise BadRequest(str(exc), exc.error_status_hint) from None
    return connection, event, has_body


def parse_request_head(head_bytes: bytes) -> RequestHead:
    """The request head `head_bytes` (sans-IO: the fuzzer drives it directly); BadRequest if it is not one."""
    _connection, event, has_body = _server_connection(head_bytes)
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in event.headers}
    return RequestHead(
        method=event.method.decode("ascii"),
        target=event.target.decode("latin-1"),
        host=headers.get("host", ""),
        headers=headers,
        raw=head_bytes,
        has_body=has_body,
    )


@attrs.frozen
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    extra_headers: tuple[tuple[bytes, bytes], ...] = ()


def json_response(status: int, payload: object) -> Response:
    return Response(status, json.dumps(payload).encode(), "application/json")


def text_response(status: int, text: str) -> Response:
    return Response(status, text.encode() + b"\n")


def method_not_allowed() -> Response:
    return Response(
        405, b"Method not allowed\n", extra_headers=((b"allow", ", ".join(ALLOWED_METHODS).encode()),)
    )


def encode_response(head: RequestHead, response: Response) -> tuple[bytes, bool]:
    """The bytes that answer `head` with `response`, and whether the connection may take another request
    (HTTP/1.1 keep-alive; never after a request with a body, which is not read). A HEAD request gets the
    headers a GET would, without the body."""
    connection, _request, _has_body = _server_connection(head.raw)
    headers = [
        (b"content-type", response.content_type.encode()),
        (b"content-length", str(len(response.body)).encode()),
        *SECURITY_HEADERS,
        *response.extra_headers,
    ]
    if head.has_body:
        headers.append((b"connection", b"close"))
    parts = [
        connection.send(
            h11.Response(
                status_code=response.status, headers=headers, reason=HTTPStatus(response.status).phrase
            )
        )
    ]
    if head.method != "HEAD":
        parts.append(connection.send(h11.Data(data=response.body)))
    parts.append(connection.send(h11.EndOfMessage()))
    reusable = connection.our_state is h11.DONE and connection.their_state is h11.DONE
    return b"".join(part for part in parts if part), reusable


def refusal(error: BadRequest) -> bytes:
    """The answer to a request head that could not be parsed (no h11 state to write it with)."""
    status = HTTPStatus(error.status)
    body = f"{status.phrase}: {error}\n".encode()
    lines = [
        f"HTTP/1.1 {status.value} {status.phrase}".encode(),
        b"content-type: text/plain; charset=utf-8",
        b"content-length: " + str(len(body)).encode(),
        b"connection: close",
        *(name + b": " + value for name, value in SECURITY_HEADERS),
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def origin_allowed(origin: str, host: str, allowed: tuple[str, ...]) -> bool:
    """Whether a browser page from `origin` may open a WebSocket on this `host`.

    The server's own origin always may; others must match an entry of `allowed` exactly, or by
    `scheme://host:*` for any port.
    """
    if origin in allowed:
        return True
    split = urlsplit(origin)
    if split.scheme not in ("http", "https") or not split.hostname:
        return False
    if split.netloc == host:
        return True
    try:
        port = split.port or (443 if split.scheme == "https" else 80)
    except ValueError:
        return False
    return (
        f"{split.scheme}://{split.hostname}:*" in allowed
        or f"{split.scheme}://{split.hostname}:{port}" in allowed
    )


def static_file(web_root: Path, path: str) -> Response:
    name = "index.html" if path in ("", "/") else path.lstrip("/")
    root = web_root.resolve()
    candidate = (root / name).resolve()
    if not candidate.is_relative_to(root) or not candidate.is_file():
        return text_response(404, "Not found")
    content_type = mimetypes.guess_type(candidate.name)[0] or "application/octet-stream"
    if content_type.startswith("text/") or content_type.endswith("javascript"):
        content_type += "; charset=utf-8"
    return Response(200, candidate.read_bytes(), content_type)


def signed_url_response(head: RequestHead, secret: str, appkey: str, now: float) -> Response:
    """A one-use signed WebSocket URL for the demo app, for this page's own host."""
    nonce = uuid.uuid4().hex
    query = signing.signed_query(secret, head.host, appkey, protocol.PATH, now, nonce=nonce)
    scheme = "wss" if head.headers.get("x-forwarded-proto") == "https" else "ws"
    return json_response(200, {"url": f"{scheme}://{head.host}{protocol.PATH}?{query}", "appkey": appkey})
