"""Engine protocol v2's records and batches, sans-IO (docs/engine-protocol.md)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asr_actors.engine_protocol import wire
from asr_actors.engines.base import EngineFailed, Final, Partial

records = st.builds(
    wire.Record,
    kind=st.sampled_from(wire.KINDS),
    session_id=st.text(max_size=40),
    attempt=st.integers(0, 2**32 - 1),
    seq=st.integers(0, 2**64 - 1),
    payload=st.binary(max_size=200),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(records, max_size=8))
def test_a_batch_round_trips(batch: list[wire.Record]) -> None:
    assert batch == list(wire.decode_batch(wire.encode_batch(batch)))


def test_the_header_is_as_documented() -> None:
    """kind, attempt (u32), seq (u64), session id length (u8), payload length (u32), big-endian."""
    encoded = wire.encode_record(wire.audio("s1", 2, 7, b"\x01\x02"))
    assert (
        b"A" + (2).to_bytes(4, "big") + (7).to_bytes(8, "big") + b"\x02" + (2).to_bytes(4, "big")
        == (encoded[:18])
    )
    assert b"s1\x01\x02" == encoded[18:]


def test_broken_framing_keeps_the_records_before_it() -> None:
    good = wire.encode_record(wire.audio("s", 0, 0, b"\x00\x00"))
    records = wire.decode_batch(good + good[:-1])
    assert wire.audio("s", 0, 0, b"\x00\x00") == next(records)
    with pytest.raises(wire.BusProtocolError, match="longer than its batch"):
        next(records)
    with pytest.raises(wire.BusProtocolError, match="shorter than its header"):
        list(wire.decode_batch(good + b"A"))


def test_an_unknown_kind_reaches_its_session() -> None:
    """The record is framed correctly, so its session is known and told (the worker reports `failed`)."""
    [record] = wire.decode_batch(wire.encode_record(wire.Record(b"X", "s", 0, 3, b"?")))
    assert (b"X", ("s", 0)) == (record.kind, record.route)


@pytest.mark.parametrize(
    "result",
    [
        wire.Claimed("worker-1"),
        wire.Refused("no such language", unavailable=False),
        wire.StreamEnded(),
        EngineFailed("broke"),
        Partial("hello wor", 0, 900),
        Final("Hello world.", 0, 1200),
    ],
)
def test_results_round_trip(result: wire.Result) -> None:
    assert result == wire.decode_result(wire.result_record("s", 1, 4, result))


@pytest.mark.parametrize(
    "payload",
    [b"not json", b"[]", b'{"type": "partial"}', b'{"type": "nonsense"}', b'{"no": "type"}'],
)
def test_malformed_results_are_protocol_errors(payload: bytes) -> None:
    with pytest.raises(wire.BusProtocolError):
        wire.decode_result(wire.Record(wire.RESULT, "s", 0, 1, payload))


def test_requests_name_the_inbox_to_answer() -> None:
    request = wire.Request("s", "local", "en", 16000, reply_to="gateway-h-1-abc", attempt=1)
    assert request == wire.Request.decode(request.encode())
    assert 2 == wire.Request.decode(request.encode()).version
    # A v1 request (no reply_to, no version 2) decodes, so that the worker can log and drop it.
    old = wire.Request.decode(b'{"session": "s", "engine": "e", "language": "en", "sample_rate": 16000}')
    assert ("", 1) == (old.reply_to, old.version)
