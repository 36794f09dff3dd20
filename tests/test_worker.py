"""The worker's audio feed, without Redis: records in from the inbox route, PCM out to the engine."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from asr_actors.bus import wire
from asr_actors.engines.fake import FakeEngine
from asr_actors.worker import Worker, _StreamBroken
from tests.support import fake_config

GUARD = 100  # virtual seconds


def feeder() -> tuple[Worker, trio.MemorySendChannel[wire.Record], trio.MemoryReceiveChannel[wire.Record]]:
    worker = Worker(fake_config(bus={"kind": "redis", "audio_timeout": 40.0}), FakeEngine(), concurrency=1)
    records_tx, records_rx = trio.open_memory_channel[wire.Record](16)
    return worker, records_tx, records_rx


async def test_a_gateway_that_goes_quiet_ends_the_stream_after_the_audio_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    worker, records_tx, records_rx = feeder()
    audio_tx, audio_rx = trio.open_memory_channel[bytes](16)
    with trio.fail_after(GUARD):
        await records_tx.send(wire.audio("s", 0, 0, b"\x00\x00"))
        await trio.sleep(30)  # well inside the timeout: the frame was taken, the clock restarted
        start = trio.current_time()
        with pytest.raises(_StreamBroken, match="no audio from the gateway"):
            await worker._feed(records_rx, audio_tx)
    assert [b"\x00\x00"] == [audio_rx.receive_nowait()]
    assert 40.0 == pytest.approx(trio.current_time() - start)


async def test_a_slow_engine_is_not_a_quiet_gateway(autojump_clock: trio.testing.MockClock) -> None:
    """Time spent waiting for the engine to take a frame does not count as the gateway's silence."""
    worker, records_tx, records_rx = feeder()
    audio_tx, audio_rx = trio.open_memory_channel[bytes](0)
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker._feed, records_rx, audio_tx)
            await records_tx.send(wire.audio("s", 0, 0, b"\x00\x00"))
            await records_tx.send(wire.end_of_audio("s", 0, 1))
            await trio.sleep(60)  # the engine takes its frame only now
            assert b"\x00\x00" == await audio_rx.receive()
            with pytest.raises(trio.EndOfChannel):
                await audio_rx.receive()


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (wire.audio("s", 0, 1, b"\x00\x00"), "sequence gap at 0"),
        (wire.Record(b"X", "s", 0, 0, b""), "record of kind b'X'"),
        (wire.audio("s", 0, 0, b"\x00"), "odd number of bytes"),
        (wire.cancel("s", 0), "cancelled by the gateway"),
    ],
)
async def test_records_that_break_the_stream(
    autojump_clock: trio.testing.MockClock, record: wire.Record, reason: str
) -> None:
    worker, records_tx, records_rx = feeder()
    audio_tx, _audio_rx = trio.open_memory_channel[bytes](16)
    with trio.fail_after(GUARD):
        await records_tx.send(record)
        with pytest.raises(_StreamBroken, match=reason):
            await worker._feed(records_rx, audio_tx)
