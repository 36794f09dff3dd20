"""The worker's audio feed, without Redis: records as the inbox decodes them, PCM out to the engine."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from asr_actors.engine_protocol import wire
from asr_actors.engine_protocol.claims import AudioFeed, StreamBroken

GUARD = 100  # virtual seconds


def feed(capacity: int = 16) -> tuple[AudioFeed, trio.MemoryReceiveChannel[bytes]]:
    audio_tx, audio_rx = trio.open_memory_channel[bytes](capacity)
    return AudioFeed(audio_tx, idle_for=40.0), audio_rx


async def test_a_gateway_that_goes_quiet_ends_the_stream_after_the_audio_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(GUARD):
        audio, audio_rx = feed()
        await trio.sleep(30)
        assert audio.deliver(wire.audio("s", 0, 0, b"\x00\x00"))  # the clock starts again here
        start = trio.current_time()
        with pytest.raises(StreamBroken, match="no audio from the gateway"):
            await audio.watch()
    assert 40.0 == pytest.approx(trio.current_time() - start)
    assert [b"\x00\x00"] == [chunk async for chunk in audio_rx]  # the engine's audio ended


async def test_a_slow_engine_is_not_a_quiet_gateway(autojump_clock: trio.testing.MockClock) -> None:
    """Records are handed over without waiting for the engine: its pace does not stop the clock's reset."""
    with trio.fail_after(GUARD):
        audio, audio_rx = feed()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(audio.watch)
            for seq in range(3):
                assert audio.deliver(wire.audio("s", 0, seq, b"\x00\x00"))
                await trio.sleep(30)
            assert not audio.deliver(wire.end_of_audio("s", 0, 3))
        # The engine reads its audio only now, 90 s on; nothing timed out.
        assert 3 == len([chunk async for chunk in audio_rx])


async def test_repeats_are_ignored(autojump_clock: trio.testing.MockClock) -> None:
    audio, audio_rx = feed()
    assert audio.deliver(wire.audio("s", 0, 0, b"\x01\x00"))
    assert audio.deliver(wire.audio("s", 0, 0, b"\x01\x00"))
    assert not audio.deliver(wire.end_of_audio("s", 0, 1))
    with trio.fail_after(GUARD):
        await audio.watch()
    assert [b"\x01\x00"] == [chunk async for chunk in audio_rx]


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
    audio, _audio_rx = feed()
    assert not audio.deliver(record)
    with trio.fail_after(GUARD), pytest.raises(StreamBroken, match=reason):
        await audio.watch()


async def test_an_engine_that_falls_behind_its_audio_breaks_the_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    audio, _audio_rx = feed(capacity=2)
    assert audio.deliver(wire.audio("s", 0, 0, b"\x00\x00"))
    assert audio.deliver(wire.audio("s", 0, 1, b"\x00\x00"))
    assert not audio.deliver(wire.audio("s", 0, 2, b"\x00\x00"))
    with trio.fail_after(GUARD), pytest.raises(StreamBroken, match="fell behind its audio"):
        await audio.watch()


async def test_an_inbox_that_breaks_breaks_the_stream(autojump_clock: trio.testing.MockClock) -> None:
    audio, _audio_rx = feed()
    audio.close()
    with trio.fail_after(GUARD), pytest.raises(StreamBroken, match="inbox broke"):
        await audio.watch()


async def test_a_sink_that_raises_ends_its_own_placement_only() -> None:
    """The inbox routes records synchronously from the pub/sub reader: a sink's bug must not reach it."""
    from asr_actors.engine_protocol.connection import RedisConnection

    class Broken:
        closed = False

        def deliver(self, record: wire.Record) -> bool:
            raise RuntimeError("a bug in one session's sink")

        def close(self) -> None:
            self.closed = True

    inbox = RedisConnection("redis://127.0.0.1:1/0", "test").inbox
    broken, healthy_feed = Broken(), feed()[0]
    inbox._routes[("a", 0)] = broken
    inbox._routes[("b", 0)] = healthy_feed
    batch = wire.encode_batch([wire.audio("a", 0, 0, b"\x00\x00"), wire.audio("b", 0, 0, b"\x00\x00")])
    inbox._deliver(batch)
    assert broken.closed
    assert [("b", 0)] == list(inbox._routes)
    assert 1 == healthy_feed.expected
