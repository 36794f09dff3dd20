"""The synthetic engine: its cadence, its deterministic text and the timing it reports to a benchmark."""

from __future__ import annotations

import trio

from asr_actors.engines.base import EngineEvent, Final, Partial, StreamSpec
from asr_actors.engines.synthetic import STAMP_BYTES, SyntheticEngine, SyntheticScript, Timing, stamp

FRAME = 3200  # 100 ms at 16 kHz


def stamped(number: int, sent_ns: int) -> bytes:
    frame = bytearray(FRAME)
    stamp(frame, number, sent_ns)
    return bytes(frame)


def test_a_partial_every_n_frames_and_a_final_every_m() -> None:
    script = SyntheticScript(partial_frames=2, final_frames=5, sample_rate=16000)
    events = [script.feed(bytes(FRAME), 0) for _ in range(12)]
    assert [None, Partial("s0 f2", 0, 200), None, Partial("s0 f4", 0, 400), Final("s0 f5", 0, 500)] == events[
        :5
    ]
    assert Partial("s1 f7", 500, 700) == events[6]
    assert Final("s1 f10", 500, 1000) == events[9]
    # Two frames into sentence 2, then the audio ends: they become its final.
    assert Final("s2 f12", 1000, 1200) == script.flush(0)
    assert script.flush(0) is None


def test_stamped_frames_report_emit_time_uplink_delays_and_missing_frames() -> None:
    script = SyntheticScript(partial_frames=2, final_frames=50, sample_rate=16000)
    assert script.feed(stamped(0, sent_ns=1_000_000), now_ns=1_250_000) is None
    # Frame 1 never arrives: frame 2 is counted missing one.
    event = script.feed(stamped(2, sent_ns=2_000_000), now_ns=5_000_000)
    assert isinstance(event, Partial)
    assert event.text.startswith("s0 f2|")
    assert Timing(emitted_ns=5_000_000, uplink_us=(250, 3000), missing_frames=1) == Timing.parse(event.text)
    # Delays are reported once: the next event carries only the frames since.
    script.feed(stamped(3, sent_ns=6_000_000), now_ns=6_010_000)
    final = script.flush(now_ns=7_000_000)
    assert final is not None
    assert Timing(7_000_000, (10,), 1) == Timing.parse(final.text)


def test_unstamped_text_has_no_timing() -> None:
    assert Timing.parse("s0 f5") is None
    assert STAMP_BYTES < FRAME


async def test_engine_runs_the_script_and_flushes_at_the_end_of_audio() -> None:
    engine = SyntheticEngine(partial_frames=2, final_frames=3, max_streams=1)
    audio_tx, audio_rx = trio.open_memory_channel[bytes](8)
    events_tx, events_rx = trio.open_memory_channel[EngineEvent](8)
    spec = StreamSpec(session_id="s", language="en", sample_rate=8000)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.run_stream, spec, audio_rx, events_tx)
        async with audio_tx:
            for _ in range(4):
                await audio_tx.send(bytes(1600))
        received = [event async for event in events_rx]
    assert [Partial("s0 f2", 0, 200), Final("s0 f3", 0, 300), Final("s1 f4", 300, 400)] == received
