"""OpenAI's Realtime transcription sessions as a dialect: the decoder and encoder without sockets, then
whole sessions through the gateway on in-memory streams with the fake engine."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing
import trio_websocket

from asr_actors.engines.fake import FakeEngine
from asr_actors.openai_api.realtime import RealtimeDecoder, RealtimeEncoder, _Settings
from asr_actors.protocol import AudioReceived, Reply, Result, ResultStatus, StreamOpened
from asr_actors.server import Gateway
from tests.support import APPKEY, SECRET, fake_config, wired_gateway

GUARD = 10
API_KEY = "sk-test-0123456789abcdef"


def decoder() -> RealtimeDecoder:
    return RealtimeDecoder(_Settings("s1"), default_language="en", max_frame_bytes=256 * 1024)


def append(pcm: bytes) -> str:
    return json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()})


def replies(events: list[Any]) -> list[dict[str, Any]]:
    return [json.loads(event.text) for event in events if isinstance(event, Reply)]


def test_audio_at_24khz_reaches_the_engine_at_16khz() -> None:
    decode = decoder()
    update = {
        "type": "session.update",
        "session": {
            "type": "transcription",
            "audio": {
                "input": {"format": {"type": "audio/pcm", "rate": 24000}, "transcription": {"language": "en"}}
            },
        },
    }
    [updated] = replies(decode.receive(json.dumps(update)))
    assert ("session.updated", {"type": "audio/pcm", "rate": 24000}) == (
        updated["type"],
        updated["session"]["audio"]["input"]["format"],
    )
    events = decode.receive(append(b"\x00\x01" * 2400)) + decode.receive(append(b"\x00\x01" * 2400))
    assert StreamOpened("en", 16000) == events[0]
    converted = sum(len(event.pcm) for event in events if isinstance(event, AudioReceived))
    assert abs(converted - 2 * 3200) <= 64  # 200 ms at 16 kHz


def test_the_transcription_prompt_reaches_the_engine_as_a_hint() -> None:
    """`transcription.prompt` becomes the stream's `prompt` option, advisory: the local engine gives it to
    Whisper, an engine without prompts runs without it."""
    decode = decoder()
    update = {
        "type": "session.update",
        "session": {"type": "transcription", "audio": {"input": {"transcription": {"prompt": "Dashwood."}}}},
    }
    decode.receive(json.dumps(update))
    opened = decode.receive(append(b"\x00\x01" * 2400))[0]
    assert isinstance(opened, StreamOpened)
    assert ("Dashwood.", frozenset({"prompt"})) == (opened.options.prompt, opened.options.advisory)


def test_g711_in_the_beta_event() -> None:
    decode = decoder()
    update = {"type": "transcription_session.update", "session": {"input_audio_format": "g711_ulaw"}}
    [updated] = replies(decode.receive(json.dumps(update)))
    assert ("transcription_session.updated", "g711_ulaw") == (
        updated["type"],
        updated["session"]["input_audio_format"],
    )
    events = decode.receive(append(bytes([0xFF]) * 800))  # 100 ms of μ-law silence at 8 kHz
    assert StreamOpened("en", 16000) == events[0]
    pcm = b"".join(event.pcm for event in events if isinstance(event, AudioReceived))
    assert 0 == int(np.abs(np.frombuffer(pcm, dtype="<i2")).max())


@pytest.mark.parametrize(
    ("message", "code"),
    [
        (b"\x00\x01", "invalid_event"),
        ("not json", "invalid_event"),
        ('{"type": "response.create"}', "invalid_event"),
        ('{"type": "input_audio_buffer.append", "audio": "%%%"}', None),
        ('{"type": "session.update", "session": {"type": "realtime"}}', None),
        (
            '{"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/opus"}}}}}',
            None,
        ),
    ],
)
def test_mistakes_are_error_events_and_the_session_goes_on(message: str | bytes, code: str | None) -> None:
    decode = decoder()
    [error] = replies(decode.receive(message))
    assert ("error", "invalid_request_error", code) == (
        error["type"],
        error["error"]["type"],
        error["error"]["code"],
    )
    assert StreamOpened("en", 16000) == decode.receive(append(b"\x00\x00" * 480))[0]


def test_the_format_cannot_change_once_audio_has_arrived() -> None:
    decode = decoder()
    decode.receive(append(b"\x00\x00" * 480))
    change = {"type": "transcription_session.update", "session": {"input_audio_format": "g711_alaw"}}
    [error] = replies(decode.receive(json.dumps(change)))
    assert "cannot change" in error["error"]["message"]


def messages(encoded: str | list[str] | None) -> list[dict[str, Any]]:
    if encoded is None:
        return []
    return [json.loads(one) for one in (encoded if isinstance(encoded, list) else [encoded])]


def test_deltas_append_only_what_two_partials_agree_on() -> None:
    """The live line is rewritten ("and" → "And Mr."); deltas carry only words two partials in a row
    begin with, and together they are the start of the completed transcript."""
    encode = RealtimeEncoder("s1")
    sent: list[dict[str, Any]] = []
    for text in ("and", "And Mr.", "And Mr. John Dash", "And Mr. John Dashwood had"):
        sent += messages(encode(Result(ResultStatus.PARTIAL, "s1-0", text, 800, 2000)))
    sent += messages(
        encode(Result(ResultStatus.FINAL, "s1-0", "And Mr. John Dashwood had then leisure.", 800, 7300))
    )
    kinds = [message["type"] for message in sent]
    assert [
        "input_audio_buffer.speech_started",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.delta",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.input_audio_transcription.completed",
    ] == kinds
    deltas = [message["delta"] for message in sent if message["type"].endswith("delta")]
    assert ["And Mr.", " John", " Dashwood had then leisure."] == deltas
    assert "".join(deltas) == sent[-1]["transcript"]
    assert {message["item_id"] for message in sent} == {"item_s1-0"}
    assert (800, 7300) == (sent[0]["audio_start_ms"], sent[4]["audio_end_ms"])


def gateway(monkeypatch: pytest.MonkeyPatch) -> Gateway:
    monkeypatch.setenv("TESTER_KEY", API_KEY)
    config = fake_config(apps={APPKEY: {"secret": SECRET}, "tester": {"api_key_env": "TESTER_KEY"}})
    return wired_gateway(config, {"fake": FakeEngine()}, {APPKEY: SECRET})


async def connect(
    nursery: trio.Nursery, gw: Gateway, *, key: str | None = None, subprotocols: list[str] | None = None
) -> trio_websocket.WebSocketConnection:
    """A realtime session's WebSocket to `gw` over an in-memory stream, with `key` as a Bearer header."""
    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(gw.handle_connection, server)
    return await trio_websocket.wrap_client_stream(
        nursery,
        client,  # type: ignore[arg-type]
        "t",
        "/v1/realtime?intent=transcription",
        subprotocols=subprotocols,
        extra_headers=[(b"authorization", f"Bearer {key}".encode())] if key else None,
    )


async def realtime_session(
    nursery: trio.Nursery, gw: Gateway, key: str, sends: list[str], until: str, count: int = 1
) -> list[dict[str, Any]]:
    connection = await connect(nursery, gw, key=key)
    got: list[dict[str, Any]] = []
    for message in sends:
        await connection.send_message(message)
    try:
        while sum(event["type"] == until for event in got) < count:
            got.append(json.loads(await connection.get_message()))
    except trio_websocket.ConnectionClosed as closed:
        got.append({"closed": closed.reason.code if closed.reason else None})
    await connection.aclose()
    return got


async def test_a_realtime_session_through_the_gateway(monkeypatch: pytest.MonkeyPatch) -> None:
    """2.3 s of 24 kHz audio (the resampler holds a few samples back until more come): session.created
    first, then two sentences of the fake engine (a word per 100 ms, a sentence per second), each as
    deltas and a completed transcript."""
    gw = gateway(monkeypatch)
    rate = 24000
    pcm = (np.sin(np.arange(int(2.3 * rate)) * 0.05) * 8000).astype("<i2").tobytes()
    sends = [append(pcm[offset : offset + 4800]) for offset in range(0, len(pcm), 4800)]
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            got = await realtime_session(
                nursery, gw, API_KEY, sends, "conversation.item.input_audio_transcription.completed", 2
            )
    assert "session.created" == got[0]["type"]
    completed = [e["transcript"] for e in got if e["type"].endswith("transcription.completed")]
    words = [f"w{k}" for k in range(20)]
    assert [" ".join(words[:10]), " ".join(words[10:])] == completed
    first_item = [e.get("delta") for e in got if e["type"].endswith("delta") and e["item_id"].endswith("-0")]
    assert " ".join(words[:10]) == "".join(first_item)


async def test_a_wrong_key_is_an_error_event_and_a_4401_close(monkeypatch: pytest.MonkeyPatch) -> None:
    gw = gateway(monkeypatch)
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            got = await realtime_session(nursery, gw, "sk-wrong-0123456789", [], "never")
    assert ("error", "invalid_request_error", "401") == (
        got[0]["type"],
        got[0]["error"]["type"],
        got[0]["error"]["code"],
    )
    assert {"closed": 4401} == got[-1]


async def test_a_client_secret_opens_one_session_from_a_browser(monkeypatch: pytest.MonkeyPatch) -> None:
    """The app's server gets a secret with its API key; a page offers it as a subprotocol beside `realtime`
    (browsers cannot set headers), the gateway accepts `realtime`; the secret then is used up."""
    from tests.test_openai import exchange

    gw = gateway(monkeypatch)
    body = b'{"session": {"type": "transcription"}, "expires_after": {"anchor": "created_at", "seconds": 60}}'
    issue = (
        "POST /v1/realtime/client_secrets HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {API_KEY}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with trio.fail_after(GUARD):
        status, _, answer = await exchange(gw, issue)
        secret = json.loads(answer)["value"]
        refused, _, _ = await exchange(gw, issue.replace(API_KEY.encode(), b"sk-wrong-0123456789"))
        outcomes = []
        async with trio.open_nursery() as nursery:
            for _ in range(2):
                offered = ["realtime", f"openai-insecure-api-key.{secret}"]
                connection = await connect(nursery, gw, subprotocols=offered)
                first = json.loads(await connection.get_message())
                outcomes.append((connection.subprotocol, first["type"], first.get("error", {}).get("code")))
                await connection.aclose()
    assert (200, True, 401) == (status, secret.startswith("ek_"), refused)
    assert [("realtime", "session.created", None), ("realtime", "error", "401")] == outcomes
