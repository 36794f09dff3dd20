"""The bus contract, run against both implementations: the in-process bus and the Redis bus.

The Redis cases use a real redis-server (started here on a free port) and a real engine worker running as
a task in this process; both sides speak to Redis over loopback sockets, so these run on the real clock.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import coredis
import pytest
import trio
from coredis.response.types import PubSubMessage

from asr_actors.bus.base import Bus
from asr_actors.bus.memory import MemoryBus
from asr_actors.engine_protocol import wire
from asr_actors.engine_protocol.gateway import RedisBus
from asr_actors.engines.base import EngineEvent, EngineFailed, Final, Partial, StreamSpec, UnsupportedStream
from asr_actors.engines.fake import FakeEngine
from asr_actors.signing import LinkRefused
from asr_actors.stores.redis import RedisReplayGuard
from asr_actors.testing.redis_server import redis_server
from asr_actors.worker import Worker
from tests.support import fake_config, redis_connection

GUARD = 30
FRAME = b"\x01\x00" * 1600
BusFactory = Callable[[FakeEngine], AbstractAsyncContextManager[Bus]]


@asynccontextmanager
async def memory_bus(engine: FakeEngine) -> AsyncIterator[Bus]:
    yield MemoryBus({"fake": engine}, events_capacity=8)


def redis_bus_factory(folder: Path) -> BusFactory:
    @asynccontextmanager
    async def redis_bus(engine: FakeEngine) -> AsyncIterator[Bus]:
        config = fake_config(bus={"kind": "redis", "claim_timeout": 2.0})
        async with redis_server(folder) as server, trio.open_nursery() as nursery:
            config = fake_config(bus={"kind": "redis", "url": server.url, "claim_timeout": 2.0})
            await nursery.start(Worker(config, engine, concurrency=4).run)
            async with (
                redis_connection(server.url).open() as redis,
                RedisBus(redis, config.bus, events_capacity=8).open() as bus,
            ):
                yield bus
            nursery.cancel_scope.cancel()

    return redis_bus


@pytest.fixture(params=["memory", "redis"])
def open_bus(request: pytest.FixtureRequest, tmp_path: Path) -> BusFactory:
    return memory_bus if request.param == "memory" else redis_bus_factory(tmp_path)


async def run_stream(bus: Bus, frames: int, language: str = "en") -> list[EngineEvent]:
    spec = StreamSpec(session_id=f"contract-{frames}-{language}", language=language, sample_rate=16000)
    received: list[EngineEvent] = []
    audio_tx, audio_rx = trio.open_memory_channel[bytes](8)
    async with bus.open_stream("fake", spec, audio_rx) as events, trio.open_nursery() as nursery:

        async def send_audio() -> None:
            async with audio_tx:
                for _ in range(frames):
                    try:
                        await audio_tx.send(FRAME)
                    except trio.BrokenResourceError:
                        return  # the stream ended early (an engine failure); its events say why

        nursery.start_soon(send_audio)
        received += [event async for event in events]
    return received


async def test_events_in_order_and_the_tail_flushed(open_bus: BusFactory) -> None:
    """15 frames: a partial per word, a final per 10 words, the tail flushed as a final at end of audio."""
    with trio.fail_after(GUARD):
        async with open_bus(FakeEngine(sentence_bytes=32000)) as bus:
            events = await run_stream(bus, 15)
    finals = [event for event in events if isinstance(event, Final)]
    assert [("w0 w1 w2 w3 w4 w5 w6 w7 w8 w9", 0, 1000), ("w10 w11 w12 w13 w14", 1000, 1500)] == [
        (final.text, final.begin_ms, final.end_ms) for final in finals
    ]
    assert 15 == sum(1 for event in events if isinstance(event, Partial))
    assert isinstance(events[-1], Final)


async def test_empty_stream_ends_cleanly(open_bus: BusFactory) -> None:
    """No audio at all: no events, and the event channel ends."""
    with trio.fail_after(GUARD):
        async with open_bus(FakeEngine()) as bus:
            assert [] == await run_stream(bus, 0)


async def test_engine_failure_is_an_event(open_bus: BusFactory) -> None:
    """An engine that raises mid-stream: the link delivers EngineFailed with its message, then ends."""
    with trio.fail_after(GUARD):
        async with open_bus(FakeEngine(fail_after_bytes=3 * len(FRAME))) as bus:
            events = await run_stream(bus, 10)
    assert EngineFailed("fake engine failed on purpose") == events[-1]


async def test_unsupported_stream_is_refused_at_open(open_bus: BusFactory) -> None:
    """A language the engine lacks is refused when the stream opens, before any audio."""
    with trio.fail_after(GUARD):
        async with open_bus(FakeEngine(languages=frozenset({"en"}))) as bus:
            with pytest.raises(UnsupportedStream, match="'de'"):
                await run_stream(bus, 1, language="de")


async def test_lagging_subscriber_is_reported_not_silent(tmp_path: Path) -> None:
    """A gateway that cannot keep up with its results loses some (pub/sub is at-most-once): the sequence gap
    is detected and the stream ends with EngineFailed saying so, instead of silently missing words."""
    with trio.fail_after(GUARD):
        async with redis_server(tmp_path) as server, trio.open_nursery() as nursery:
            config = fake_config(bus={"kind": "redis", "url": server.url})
            await nursery.start(Worker(config, FakeEngine(), concurrency=1).run)
            async with (
                redis_connection(server.url, 2).open() as redis,
                RedisBus(redis, config.bus, events_capacity=1).open() as bus,
            ):
                spec = StreamSpec(session_id="lagging", language="en", sample_rate=16000)
                audio_tx, audio_rx = trio.open_memory_channel[bytes](64)
                async with bus.open_stream("fake", spec, audio_rx) as results:
                    async with audio_tx:
                        for _ in range(40):
                            await audio_tx.send(FRAME)
                    await trio.sleep(1)  # the consumer stalls while the worker publishes ~44 results
                    events = [event async for event in results]
            nursery.cancel_scope.cancel()
    assert isinstance(events[-1], EngineFailed)
    assert events[-1].message.startswith("Results were lost on the bus")


async def test_links_are_single_use_across_gateways(tmp_path: Path) -> None:
    """Two gateways (two Redis connections): a link used on one is refused on the other until it expires."""
    with trio.fail_after(GUARD):
        async with (
            redis_server(tmp_path) as server,
            redis_connection(server.url).open() as first,
            redis_connection(server.url).open() as second,
        ):
            now = 1_000_000.0
            await RedisReplayGuard(first.client).claim("sig+1", expires_at=now + 0.3, now=now)
            with pytest.raises(LinkRefused, match="already used"):
                await RedisReplayGuard(second.client).claim("sig 1", expires_at=now + 0.3, now=now)
            await trio.sleep(0.5)  # Redis forgets the signature with its link's lifetime
            await RedisReplayGuard(second.client).claim("sig+1", expires_at=now + 0.3, now=now)


async def test_a_malformed_result_ends_only_its_session_and_is_counted(tmp_path: Path) -> None:
    """A worker that publishes garbage ends that session with a coded failure (counted); a session served
    by a well-behaved worker at the same time completes."""
    with trio.fail_after(GUARD):
        async with redis_server(tmp_path) as server, trio.open_nursery() as nursery:
            config = fake_config(bus={"kind": "redis", "url": server.url})
            await nursery.start(Worker(config, FakeEngine(), concurrency=2).run)
            async with (
                redis_connection(server.url, 64).open() as redis,
                RedisBus(redis, config.bus, events_capacity=64).open() as bus,
            ):

                async def bad_worker() -> None:
                    popped = await redis.client.brpop(wire.queue_key("broken"), block_s=10)
                    assert popped is not None
                    request = wire.Request.decode(popped)
                    inbox = wire.inbox_channel(request.reply_to)
                    claim = wire.result_record(request.session_id, 0, 0, wire.Claimed("bad-worker"))
                    partial = wire.Record(wire.RESULT, request.session_id, 0, 1, b'{"type": "partial"}')
                    await redis.client.set(wire.worker_key("bad-worker"), b"broken", px=10_000)
                    await redis.client.publish(inbox, wire.encode_batch([claim, partial]))

                nursery.start_soon(bad_worker)
                broken: list[EngineEvent] = []
                healthy: list[EngineEvent] = []

                async def collect(engine: str, into: list[EngineEvent]) -> None:
                    spec = StreamSpec(session_id=f"malformed-{engine}", language="en", sample_rate=16000)
                    audio_tx, audio_rx = trio.open_memory_channel[bytes](64)
                    async with bus.open_stream(engine, spec, audio_rx) as events:
                        async with audio_tx:
                            for _ in range(12):
                                with contextlib.suppress(trio.BrokenResourceError):
                                    await audio_tx.send(FRAME)
                        into.extend([event async for event in events])

                async with trio.open_nursery() as sessions:
                    sessions.start_soon(collect, "broken", broken)
                    sessions.start_soon(collect, "fake", healthy)
            nursery.cancel_scope.cancel()
    assert isinstance(broken[-1], EngineFailed)
    assert broken[-1].message.startswith("Malformed result from the engine worker")
    assert 1 == bus.statistics().malformed_results
    assert ["w0 w1 w2 w3 w4 w5 w6 w7 w8 w9", "w10 w11"] == [e.text for e in healthy if isinstance(e, Final)]


async def test_readiness_on_redis_names_engines_without_live_workers(tmp_path: Path) -> None:
    """/readyz's engine check on the Redis bus: an engine with a live worker is ready, one without is named,
    and so is the engine whose worker has left."""
    with trio.fail_after(GUARD):
        async with redis_server(tmp_path) as server, redis_connection(server.url).open() as redis:
            config = fake_config(bus={"kind": "redis", "url": server.url})
            bus = RedisBus(redis, config.bus, events_capacity=8)
            # Keys that are not workers' are left alone by the scan.
            await redis.client.set("asr:link:unrelated", b"fake")
            async with trio.open_nursery() as nursery:
                worker = Worker(config, FakeEngine(), concurrency=1)
                await nursery.start(worker.run)
                assert await bus.engine_problem("fake") is None
                assert "no live worker" == await bus.engine_problem("local")
                worker.drain()
            assert "no live worker" == await bus.engine_problem("fake")


async def test_records_for_one_inbox_leave_in_one_publish(tmp_path: Path) -> None:
    """Engine protocol v2's batching: records that many sessions send to the same process within one tick
    arrive there as one PUBLISH holding all of them, in order per session."""
    published: list[bytes] = []
    arrived = trio.Event()

    def hear(message: PubSubMessage) -> None:
        assert isinstance(message["data"], bytes)
        published.append(message["data"])
        arrived.set()

    with trio.fail_after(GUARD):
        async with (
            redis_server(tmp_path) as server,
            redis_connection(server.url).open() as redis,
            coredis.Redis.from_url(server.url) as probe,
            probe.pubsub(channel_handlers={wire.inbox_channel("probe"): hear}),
        ):
            async with trio.open_nursery() as nursery:
                for session in range(20):
                    records = [wire.audio(f"s{session}", 0, seq, b"\x00\x00") for seq in range(3)]
                    nursery.start_soon(redis.send, "probe", *records)
            await arrived.wait()
            await trio.sleep(0.5)  # nothing else comes
    assert 1 == len(published)
    batch = list(wire.decode_batch(published[0]))
    assert 60 == len(batch)
    assert sorted({record.session_id for record in batch}) == sorted(f"s{n}" for n in range(20))
    for session in range(20):
        assert [0, 1, 2] == [record.seq for record in batch if record.session_id == f"s{session}"]
