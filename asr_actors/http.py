"""A small HTTP front on the gateway's one port: the page, /healthz, /v1/sign, and the WebSocket hand-off.

trio-websocket alone answers a plain GET with a bare 400, so each connection's request head is read here
(parsed by h11) and then either answered as HTTP (one request per connection) or handed, bytes and all,
to trio-websocket for the upgrade.
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
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


class BadRequest(Exception):
    """The bytes before the WebSocket or HTTP exchange are not a usable request head."""


@attrs.frozen
class RequestHead:
    method: str
    target: str
    host: str
    headers: dict[str, str]
    raw: bytes

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def is_websocket(self) -> bool:
        return self.headers.get("upgrade", "").lower() == "websocket"


async def read_request_head(
    stream: trio.abc.ReceiveStream, max_bytes: int
) -> tuple[RequestHead, h11.Connection]:
    """Read up to the end of the request head; the bytes read are kept for the WebSocket hand-off.

    The h11 connection is returned too: it writes the HTTP response, if one is due.
    """
    buffer = bytearray()
    while HEAD_END not in buffer:
        if len(buffer) > max_bytes:
            raise BadRequest(f"request head larger than {max_bytes} bytes")
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise BadRequest("connection closed before the request head ended")
        buffer += chunk
    return parse_request_head(bytes(buffer))


def parse_request_head(buffer: bytes) -> tuple[RequestHead, h11.Connection]:
    """The request head at the start of `buffer` (sans-IO: the fuzzer drives it directly); BadRequest if
    it is not one."""
    connection = h11.Connection(h11.SERVER)
    connection.receive_data(buffer)
    try:
        event = connection.next_event()
    except h11.RemoteProtocolError as exc:
        raise BadRequest(str(exc)) from None
    if not isinstance(event, h11.Request):
        raise BadRequest("not an HTTP request")
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in event.headers}
    head = RequestHead(
        method=event.method.decode("ascii"),
        target=event.target.decode("latin-1"),
        host=headers.get("host", ""),
        headers=headers,
        raw=buffer,
    )
    return head, connection


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


async def send_response(stream: trio.abc.SendStream, connection: h11.Connection, response: Response) -> None:
    headers = [
        (b"content-type", response.content_type.encode()),
        (b"content-length", str(len(response.body)).encode()),
        (b"connection", b"close"),
        *SECURITY_HEADERS,
        *response.extra_headers,
    ]
    parts = [
        connection.send(
            h11.Response(
                status_code=response.status, headers=headers, reason=HTTPStatus(response.status).phrase
            )
        ),
        connection.send(h11.Data(data=response.body)),
        connection.send(h11.EndOfMessage()),
    ]
    await stream.send_all(b"".join(part for part in parts if part))


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
