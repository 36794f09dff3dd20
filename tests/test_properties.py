"""Property tests: whatever bytes a peer sends, the codecs answer with their documented errors only.

Hypothesis generates the inputs; a crash other than the protocol's own error types fails the test.
"""

from __future__ import annotations

import base64
import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asr_actors import bailian, protocol
from asr_actors.engine_protocol import wire
from asr_actors.engines import dashscope_wire, iflytek_wire, service_wire, upstream
from asr_actors.engines.base import EngineError
from asr_actors.engines.dashscope_native import DashScopeTask
from asr_actors.engines.iflytek import RtasrSession
from asr_actors.protocol import AudioReceived, ClientDecoder, ProtocolError

MAX = 4096
messages = st.one_of(st.binary(max_size=MAX * 2), st.text(max_size=2000))


def decoder() -> ClientDecoder:
    return ClientDecoder(max_frame_bytes=MAX, default_language="en", default_sample_rate=16000)


@settings(max_examples=400, deadline=None)
@given(st.lists(messages, max_size=6))
def test_client_decoder_never_crashes(stream: list[str | bytes]) -> None:
    """Any sequence of messages gives events or a ProtocolError with a code, never another exception."""
    decode = decoder()
    codes = []
    for message in stream:
        try:
            decode.receive(message)
        except ProtocolError as exc:
            codes.append(exc.code)
            break
    assert all(400 <= code < 600 for code in codes)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["status", "data", "audio_format", "language_code", "x"]),
        st.one_of(st.none(), st.integers(), st.text(max_size=40), st.booleans()),
        max_size=5,
    )
)
def test_json_frames_never_crash(frame: dict[str, object]) -> None:
    """Arbitrary JSON objects with the protocol's field names: events or a ProtocolError."""
    with contextlib.suppress(ProtocolError):
        decoder().receive(json.dumps(frame))


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=MAX).filter(lambda data: len(data) % 2 == 0 and not data.startswith(b"RIFF")),
    st.booleans(),
)
def test_audio_arrives_unchanged(pcm: bytes, as_json: bool) -> None:
    """Even-length PCM, binary or base64 in JSON, arrives byte for byte."""
    message: str | bytes = pcm
    if as_json:
        message = json.dumps({"status": "partial", "data": base64.b64encode(pcm).decode()})
    events = decoder().receive(message) if pcm or not as_json else []
    audio = b"".join(event.pcm for event in events if isinstance(event, AudioReceived))
    assert pcm == audio


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=300))
def test_handshake_parser_never_crashes(target: str) -> None:
    """Any request target parses or raises a ProtocolError."""
    with contextlib.suppress(ProtocolError):
        protocol.parse_handshake("/v1/asr?" + target)
    with contextlib.suppress(ProtocolError):
        protocol.parse_handshake(target)


def test_handshake_target_that_looks_like_an_ipv6_url() -> None:
    """Found by the fuzzer (urlsplit raised ValueError): a target is a path and a query, never a URL."""
    with pytest.raises(ProtocolError) as refused:
        protocol.parse_handshake("tp://localhost:8[00/v1/asr?appkey=a")
    assert 404 == refused.value.code
    assert "a" == protocol.parse_handshake("/v1/asr?appkey=a&date=1&signature=s&x=[").appkey


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_bus_messages_never_crash(data: bytes) -> None:
    """Any bytes on the bus decode or raise BusProtocolError (a worker or gateway never crashes on them)."""
    with contextlib.suppress(wire.BusProtocolError):
        wire.Request.decode(data)
    with contextlib.suppress(wire.BusProtocolError):
        for record in wire.decode_batch(data):
            with contextlib.suppress(wire.BusProtocolError):
                wire.decode_result(record)


@settings(max_examples=300, deadline=None)
@given(st.lists(messages, max_size=5))
def test_bailian_decoder_never_crashes(stream: list[str | bytes]) -> None:
    """The Bailian dialect: events or a ProtocolError."""
    decode = bailian.Decoder(max_frame_bytes=MAX, language="en", sample_rate=16000)
    with contextlib.suppress(ProtocolError):
        for message in stream:
            decode.receive(message)


# Any JSON the upstream services might send, and their messages' shapes with any value at any field: the
# parsers of their replies read bytes from a peer as the client decoders do.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=16,
)


def shaped(fields: dict[str, st.SearchStrategy[object]]) -> st.SearchStrategy[object]:
    """A dict with these fields (all of them, or any of them missing), or any other JSON value in its place
    (a third of the time: deeper fields are reached only through well-shaped outer ones)."""
    return st.fixed_dictionaries(fields) | st.fixed_dictionaries({}, optional=fields) | json_values


dashscope_events = shaped(
    {
        "header": shaped(
            {
                "event": st.sampled_from(["task-started", "task-finished", "task-failed", "result-generated"])
                | json_values,
                "error_code": json_values,
                "error_message": json_values,
            }
        ),
        "payload": shaped(
            {
                "output": shaped(
                    {
                        "sentence": shaped(
                            {
                                "begin_time": json_values,
                                "end_time": json_values,
                                "text": json_values,
                                "sentence_end": json_values,
                                "heartbeat": json_values,
                                "words": st.lists(
                                    shaped(
                                        {
                                            "begin_time": json_values,
                                            "end_time": json_values,
                                            "text": json_values,
                                            "punctuation": json_values,
                                        }
                                    ),
                                    max_size=3,
                                )
                                | json_values,
                            }
                        )
                    }
                )
            }
        ),
    }
)

rtasr_words = st.lists(
    shaped(
        {
            "wb": json_values,
            "we": json_values,
            "cw": st.lists(shaped({"w": json_values, "wp": json_values}), max_size=2) | json_values,
        }
    ),
    max_size=3,
)
rtasr_data = shaped(
    {
        "seg_id": json_values,
        "cn": shaped(
            {
                "st": shaped(
                    {
                        "bg": json_values | st.integers().map(str),
                        "ed": json_values | st.integers().map(str),
                        "type": st.sampled_from(["0", "1"]) | json_values,
                        "rt": st.lists(shaped({"ws": rtasr_words | json_values}), max_size=2) | json_values,
                    }
                )
            }
        ),
    }
)
rtasr_messages = shaped(
    {
        "action": st.sampled_from(["started", "result", "error"]) | json_values,
        "code": st.sampled_from(["0", "10105"]) | json_values,
        "desc": json_values,
        "sid": json_values,
        "data": rtasr_data.map(json.dumps) | json_values,
    }
)


@settings(max_examples=600, deadline=None)
@given(dashscope_events.map(json.dumps) | st.text(max_size=300))
def test_dashscope_events_parse_or_raise_wire_error(text: str) -> None:
    """Whatever DashScope sends: an event, None, or WireError (the native engine's "broke its protocol")."""
    with contextlib.suppress(service_wire.WireError):
        dashscope_wire.parse_event(text)


@settings(max_examples=600, deadline=None)
@given(rtasr_messages.map(json.dumps) | st.text(max_size=300))
def test_rtasr_messages_parse_or_raise_wire_error(text: str) -> None:
    """Whatever iFlytek sends: a message, None, or WireError (the engine's "broke its protocol")."""
    with contextlib.suppress(service_wire.WireError):
        iflytek_wire.parse_message(text)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | dashscope_events.map(json.dumps) | rtasr_messages.map(json.dumps))
def test_service_messages_end_a_session_only_with_engine_error(message: str | bytes) -> None:
    """The native engines' protocol adapters, as the session reads them: any message is an event, nothing,
    or EngineError."""
    for protocol_session in (
        DashScopeTask("task", "model", 16000, {"language_hints": ["zh"]}),
        RtasrSession(),
    ):
        with contextlib.suppress(EngineError):
            upstream.read(protocol_session, message)
