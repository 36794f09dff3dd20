"""A Python client of protocol v1, used by `transcribe`, the tests and the benchmarks."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import attrs
import h11
import numpy as np
import trio
import trio_websocket

from asr_actors import protocol, signing

CHUNK_SECONDS = 0.1


class ServerError(Exception):
    """The server ended the session with a coded error."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message


@attrs.frozen
class Received:
    """A result as the client saw it; `at` is seconds since the first audio frame was sent."""

    status: str
    speech_id: str
    text: str
    begin_ms: int
    end_ms: int
    at: float
    # A final's words with their times, where the engine gives them: (text, begin_ms, end_ms).
    words: tuple[tuple[str, int, int], ...] = ()


def sign_url(url: str, appkey: str, secret: str, now: float | None = None, nonce: str | None = None) -> str:
    """Sign a `ws://host:port/v1/asr` URL; the Host header the client sends is the URL's netloc. Query
    parameters the URL already has (`lang=zh`) are kept after the signed ones."""
    split = urlsplit(url)
    query = signing.signed_query(
        secret, split.netloc, appkey, split.path or protocol.PATH, time.time() if now is None else now, nonce
    )
    kept = f"&{split.query}" if split.query else ""
    return f"{split.scheme}://{split.netloc}{split.path or protocol.PATH}?{query}{kept}"


def fresh_nonce() -> str:
    return uuid.uuid4().hex


async def fetch_demo_url(http_url: str) -> str:
    """Ask a gateway's /v1/sign for a signed link (only served on a loopback-bound demo gateway)."""
    split = urlsplit(http_url)
    host = split.hostname or "127.0.0.1"
    port = split.port or 80
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        connection = h11.Connection(h11.CLIENT)
        request = h11.Request(method="GET", target="/v1/sign", headers=[("host", split.netloc)])
        await stream.send_all(connection.send(request) + (connection.send(h11.EndOfMessage()) or b""))
        body = b""
        status = 0
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                connection.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
    if status != 200:
        raise ServerError(
            status, f"{http_url}v1/sign answered {status}: {body.decode(errors='replace').strip()}"
        )
    url: str = json.loads(body)["url"]
    return url


def load_audio(path: str, sample_rate: int = 16000) -> bytes:
    """Any audio file (WAV at any rate, any channels) as 16-bit mono PCM at `sample_rate`."""
    from faster_whisper.audio import decode_audio

    samples = decode_audio(path, sampling_rate=sample_rate)
    clipped = np.clip(samples * 32768.0, -32768, 32767)
    pcm: bytes = clipped.astype("<i2").tobytes()
    return pcm


async def stream_pcm(
    url: str,
    pcm: bytes,
    *,
    sample_rate: int = 16000,
    realtime: bool = False,
    on_result: Callable[[Received], None] | None = None,
    on_progress: Callable[[float], None] | None = None,
    max_message_size: int = 1 << 20,
    options: dict[str, Any] | None = None,
) -> list[Received]:
    """Stream `pcm` as binary frames of 100 ms, then end; return every result up to `end`. `options`
    (session options, docs/protocol.md) go in a start frame before the audio.

    With `realtime`, frames are paced as a microphone delivers them: frame i (100 ms) once its audio has
    elapsed, at (i + 1) * 100 ms, so that no latency measured with it is a frame better than a user's.
    Raises ServerError if the server ends the session with an error.
    """
    chunk_bytes = int(sample_rate * CHUNK_SECONDS) * 2
    results: list[Received] = []
    failure: ServerError | None = None
    started = trio.current_time()
    try:
        async with await _open_stream(url) as stream, trio.open_nursery() as nursery:
            split = urlsplit(url)
            resource = split.path + (f"?{split.query}" if split.query else "")
            connection = await trio_websocket.wrap_client_stream(
                nursery, stream, split.netloc, resource, max_message_size=max_message_size
            )

            async def send_audio() -> None:
                nonlocal started
                started = trio.current_time()
                try:
                    if options:
                        await connection.send_message(
                            json.dumps({"status": "start", "data": "", "options": options})
                        )
                    for index, offset in enumerate(range(0, len(pcm), chunk_bytes)):
                        if realtime:
                            await trio.sleep_until(started + (index + 1) * CHUNK_SECONDS)
                        await connection.send_message(pcm[offset : offset + chunk_bytes])
                        if on_progress is not None:
                            on_progress(min(1.0, (offset + chunk_bytes) / max(1, len(pcm))))
                    await connection.send_message(json.dumps({"status": "end"}))
                except trio_websocket.ConnectionClosed:
                    return  # the server ended the session; the reading side reports why

            nursery.start_soon(send_audio)
            try:
                while True:
                    message = await connection.get_message()
                    received = parse_result(message, trio.current_time() - started)
                    results.append(received)
                    if on_result is not None:
                        on_result(received)
                    if received.status == protocol.ResultStatus.END:
                        break
            except ServerError as exc:
                failure = exc
            except trio_websocket.ConnectionClosed as exc:
                code, why = (exc.reason.code, exc.reason.reason) if exc.reason else (0, "")
                failure = ServerError(code, f"connection closed before end: {why}")
            # The stream is closed by the `async with` above: trio-websocket's own client leaks its
            # socket when the server closes first (docs/dependencies.md).
            nursery.cancel_scope.cancel()
    except* trio_websocket.ConnectionRejected as group:
        # Refused before the upgrade (HTTP 503 while the gateway is overloaded, 429, 403 ...): raised by
        # trio-websocket's reader task, so it comes out of the nursery.
        rejected = group.exceptions[0]
        assert isinstance(rejected, trio_websocket.ConnectionRejected)
        body = (rejected.body or b"").decode(errors="replace").strip()
        failure = ServerError(rejected.status_code, body)
    if failure is not None:
        raise failure
    return results


async def _open_stream(url: str) -> trio.SocketStream | trio.SSLStream[trio.SocketStream]:
    split = urlsplit(url)
    if split.scheme not in ("ws", "wss") or split.hostname is None:
        raise ValueError(f"not a ws:// or wss:// URL: {url}")
    port = split.port or (443 if split.scheme == "wss" else 80)
    if split.scheme == "wss":
        return await trio.open_ssl_over_tcp_stream(split.hostname, port)
    return await trio.open_tcp_stream(split.hostname, port)


def parse_result(message: str | bytes, at: float) -> Received:
    if isinstance(message, bytes):
        raise ServerError(0, "unexpected binary message from server")
    envelope = json.loads(message)
    if envelope.get("code") != 200:
        raise ServerError(int(envelope.get("code", 0)), str(envelope.get("message", "")))
    data = envelope["data"]
    return Received(
        status=data["status"],
        speech_id=data["speech_id"],
        text=data["result"],
        begin_ms=int(data.get("begin_time", 0)),
        end_ms=int(data.get("end_time", 0)),
        at=at,
        words=tuple(
            (str(word["word"]), int(word["begin_time"]), int(word["end_time"]))
            for word in data.get("words", ())
        ),
    )
