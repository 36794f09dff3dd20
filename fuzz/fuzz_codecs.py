"""Coverage-guided fuzzing (atheris, libFuzzer) of everything that parses bytes from a peer.

    make fuzz                                    # FUZZ_RUNS executions (default 200000)
    .venv/bin/python fuzz/fuzz_codecs.py fuzz/corpus -runs=1000000

The first input byte picks the entry point; the rest is its input:

    0  protocol v1 client messages (ClientDecoder), split into up to 8 messages at b"\\xff\\xfe"; a message
       starting with b"t" is a text frame, others binary
    1  the v1 handshake (the request target: query, signature fields)
    2  the HTTP request head the gateway reads before any upgrade
    3  engine bus messages (audio frames, results, session requests), as a gateway or worker reads them
    4  the Bailian dialect's client messages, split like 0
    5  DashScope's service messages (dashscope_wire, and the native engine's reading of them)
    6  iFlytek rtasr's service messages (iflytek_wire, and the engine's reading of them)

The only exceptions allowed are the documented protocol errors (ProtocolError with its code,
BusProtocolError, BadRequest, the services' WireError and the engines' EngineError); anything else is
a crash, and libFuzzer stops with the input that caused it. libFuzzer prints the executions run ("Done N
runs in S second(s)").
"""

from __future__ import annotations

import contextlib
import functools
import sys

import atheris

with atheris.instrument_imports():
    from asr_actors import bailian, http, protocol, session_options
    from asr_actors.engine_protocol import wire
    from asr_actors.engines import dashscope_wire, iflytek_wire, service_wire, upstream
    from asr_actors.engines.base import EngineError
    from asr_actors.engines.dashscope_native import DashScopeTask
    from asr_actors.engines.iflytek import RtasrSession

SEPARATOR = b"\xff\xfe"
MAX_FRAME = 4096


def _messages(data: bytes) -> list[str | bytes]:
    messages: list[str | bytes] = []
    for part in data.split(SEPARATOR)[:8]:
        if part.startswith(b"t"):
            messages.append(part[1:].decode("utf-8", errors="replace"))
        else:
            messages.append(part)
    return messages


def _client_messages(data: bytes) -> None:
    decoder = protocol.ClientDecoder(
        max_frame_bytes=MAX_FRAME,
        default_language="en",
        default_sample_rate=16000,
        read_options=functools.partial(session_options.parse, caps=session_options.OptionCaps()),
    )
    try:
        for message in _messages(data):
            decoder.receive(message)
    except protocol.ProtocolError as exc:
        if not 400 <= exc.code < 600:
            raise AssertionError(f"undocumented code {exc.code}") from exc


def _handshake(data: bytes) -> None:
    with contextlib.suppress(protocol.ProtocolError):
        protocol.parse_handshake(data.decode("utf-8", errors="replace"))


def _request_head(data: bytes) -> None:
    with contextlib.suppress(http.BadRequest):
        http.parse_request_head(data)


def _bus_message(data: bytes) -> None:
    with contextlib.suppress(wire.BusProtocolError):
        wire.Request.decode(data)
    with contextlib.suppress(wire.BusProtocolError):
        for record in wire.decode_batch(data):
            with contextlib.suppress(wire.BusProtocolError):
                wire.decode_result(record)


def _bailian_messages(data: bytes) -> None:
    decoder = bailian.Decoder(max_frame_bytes=MAX_FRAME, language="en", sample_rate=16000)
    with contextlib.suppress(protocol.ProtocolError):
        for message in _messages(data):
            decoder.receive(message)


def _dashscope_message(data: bytes) -> None:
    with contextlib.suppress(service_wire.WireError):
        dashscope_wire.parse_event(data.decode("utf-8", errors="replace"))
    with contextlib.suppress(EngineError):
        task = DashScopeTask("task", "model", 16000, {"language_hints": ["zh"]})
        upstream.read(task, data.decode("utf-8", errors="replace"))


def _rtasr_message(data: bytes) -> None:
    with contextlib.suppress(service_wire.WireError):
        iflytek_wire.parse_message(data.decode("utf-8", errors="replace"))
    with contextlib.suppress(EngineError):
        upstream.read(RtasrSession(), data)


ENTRY_POINTS = (
    _client_messages,
    _handshake,
    _request_head,
    _bus_message,
    _bailian_messages,
    _dashscope_message,
    _rtasr_message,
)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    ENTRY_POINTS[data[0] % len(ENTRY_POINTS)](data[1:])


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
