"""The Bailian demo protocol: codec without sockets, then a client speaking exactly that protocol."""

from __future__ import annotations

import functools
import json
from typing import Any

import pytest
import trio
import trio_websocket

from asr_actors import bailian, http
from asr_actors.protocol import (
    AudioReceived,
    EndOfAudio,
    ErrorCode,
    Pong,
    ProtocolError,
    Result,
    ResultStatus,
    StreamOpened,
)
from asr_actors.server import serve
from tests.support import fake_config

GUARD = 30
FRAME = b"\x01\x00" * 1600  # 100 ms at 16 kHz, as that page sends


def test_decoder_binary_then_stop() -> None:
    """Binary Int16 frames are audio at 16 kHz; the text `stop` ends the stream; nothing may follow."""
    decoder = bailian.Decoder(max_frame_bytes=65536, language="en", sample_rate=16000)
    assert [StreamOpened("en", 16000), AudioReceived(FRAME)] == decoder.receive(FRAME)
    assert [EndOfAudio()] == decoder.receive("stop")
    assert decoder.ended
    with pytest.raises(ProtocolError):
        decoder.receive(FRAME)


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("start", ErrorCode.BAD_INPUT),
        (b"\x00" * 3, ErrorCode.BAD_INPUT),
        (b"\x00" * 70000, ErrorCode.TOO_LARGE),
    ],
)
def test_decoder_refusals(message: str | bytes, code: ErrorCode) -> None:
    """Unknown text, odd byte counts and oversized frames are refused with their codes."""
    decoder = bailian.Decoder(max_frame_bytes=65536, language="en", sample_rate=16000)
    with pytest.raises(ProtocolError) as caught:
        decoder.receive(message)
    assert code == caught.value.code


def test_encoding() -> None:
    """Partials are is_end false, finals is_end true, end is `asr stopped`; start and pong are not sent."""
    assert {"text": "hel", "is_end": False} == json.loads(
        bailian.encode(Result(ResultStatus.PARTIAL, "s-0", "hel")) or ""
    )
    assert {"text": "hello.", "is_end": True} == json.loads(
        bailian.encode(Result(ResultStatus.FINAL, "s-0", "hello.")) or ""
    )
    assert "asr stopped" == bailian.encode(Result(ResultStatus.END))
    assert bailian.encode(Result(ResultStatus.START)) is None
    assert bailian.encode(Pong()) is None
    assert {"text": "", "is_end": True, "code": 408, "message": "Connection Timeout"} == json.loads(
        bailian.encode_error(ProtocolError(ErrorCode.TIMEOUT, "Connection Timeout"))
    )


@pytest.mark.parametrize(
    ("origin", "host", "allowed"),
    [
        ("http://localhost:5173", "127.0.0.1:9090", True),
        ("http://127.0.0.1:8080", "127.0.0.1:9090", True),
        ("https://asr.example.com", "asr.example.com", True),  # the server's own page
        ("http://evil.example", "127.0.0.1:9090", False),
        ("http://localhost.evil.example:80", "127.0.0.1:9090", False),
        ("null", "127.0.0.1:9090", False),
        ("file://", "127.0.0.1:9090", False),
    ],
)
def test_origin_rules(origin: str, host: str, allowed: bool) -> None:
    """Own origin always; others by the allowed list, `:*` meaning any port; `null` only if listed."""
    assert allowed == http.origin_allowed(origin, host, ("http://localhost:*", "http://127.0.0.1:*"))


async def bailian_session(url: str, frames: list[str | bytes], origin: str | None) -> tuple[list[Any], int]:
    """Speak the demo's protocol: send `frames`, read until the server closes; return messages and code."""
    host, port = url.removeprefix("ws://").rstrip("/").split(":")
    headers = [(b"origin", origin.encode())] if origin else []
    received: list[Any] = []
    with trio.fail_after(GUARD):
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream, trio.open_nursery() as nursery:
            connection = await trio_websocket.wrap_client_stream(
                nursery, stream, f"{host}:{port}", "/", extra_headers=headers
            )
            for frame in frames:
                await connection.send_message(frame)
            try:
                while True:
                    message = await connection.get_message()
                    received.append(message if message == "asr stopped" else json.loads(message))
            except trio_websocket.ConnectionClosed as closed:
                code = closed.reason.code if closed.reason else 0
            nursery.cancel_scope.cancel()
    return received, code


@pytest.fixture
async def bailian_url(nursery: trio.Nursery) -> str:
    listening = await nursery.start(functools.partial(serve, fake_config(server={"port": 0}), bailian_port=0))
    assert listening.bailian_url is not None
    url: str = listening.bailian_url
    assert url.startswith("ws://127.0.0.1:")
    return url


async def test_demo_protocol_end_to_end(bailian_url: str) -> None:
    """1.2 s of audio, `stop`: partials, a final per sentence (tail too), `asr stopped`, close 1000."""
    received, code = await bailian_session(
        bailian_url, [FRAME] * 12 + ["stop"], origin="http://localhost:5173"
    )
    assert 1000 == code
    assert "asr stopped" == received[-1]
    results = received[:-1]
    assert [r["is_end"] for r in results] == [False] * 10 + [True] + [False] * 2 + [True]
    assert ["w0 w1 w2 w3 w4 w5 w6 w7 w8 w9", "w10 w11"] == [r["text"] for r in results if r["is_end"]]


async def test_client_without_origin_is_served(bailian_url: str) -> None:
    """A non-browser client (no Origin header) is not subject to the origin check."""
    received, code = await bailian_session(bailian_url, ["stop"], origin=None)
    assert (["asr stopped"], 1000) == (received, code)


async def test_foreign_origin_is_refused_before_upgrade(bailian_url: str) -> None:
    """A page from an origin not in allowed_origins gets HTTP 403 and no WebSocket."""
    refused = pytest.RaisesExc(trio_websocket.ConnectionRejected, check=lambda exc: exc.status_code == 403)
    # The library raises it from its reader task, so it arrives inside the client's nursery group.
    with pytest.RaisesGroup(refused, flatten_subgroups=True):
        await bailian_session(bailian_url, ["stop"], origin="http://evil.example")


async def test_bad_frame_gets_error_then_close(bailian_url: str) -> None:
    """Unlike the old demo, errors reach the client: a last is_end message with code, then close 4403."""
    received, code = await bailian_session(bailian_url, [FRAME, "start"], origin=None)
    assert 4403 == code
    assert {"text": "", "is_end": True, "code": 403} == {
        k: received[-1][k] for k in ("text", "is_end", "code")
    }
