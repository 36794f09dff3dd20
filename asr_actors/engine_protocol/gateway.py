"""Engine protocol v2, the gateway's side: the Redis bus, sessions placed on engine workers elsewhere.

Placement is competing consumers: the gateway LPUSHes a request (naming its own inbox) on the engine's
queue and exactly one worker BRPOPs it and answers with a `claim` record in the gateway's inbox; then audio
records flow to the worker's inbox and result records back (`wire.py`, docs/engine-protocol.md). The
gateway checks, once per heartbeat interval and in one round trip, the liveness keys of every worker that
holds one of its sessions; when one has expired, its sessions are placed again and the audio since their
last final (kept here) is replayed, so that the client loses no final and gets none twice. The gateway
keeps its own liveness key alive the same way, for the workers to end its sessions if it dies
(`liveness.py`).
"""

from __future__ import annotations

import collections
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import trio

from asr_actors import session_options
from asr_actors.bus.base import BusStatistics
from asr_actors.config import BusConfig
from asr_actors.engine_protocol import wire
from asr_actors.engine_protocol.connection import RedisConnection
from asr_actors.engine_protocol.inbox import CLEANUP_TIMEOUT, RouteTaken
from asr_actors.engine_protocol.liveness import Heartbeat, LivenessWatch, live_workers
from asr_actors.engines.base import (
    EngineEvent,
    EngineFailed,
    EngineUnavailable,
    Final,
    Partial,
    StreamSpec,
    UnsupportedStream,
)
from asr_actors.groups import first_leaf
from asr_actors.redis_client import RedisUnavailable

log = logging.getLogger(__name__)

# Audio frames of one session sent at once when they have queued up behind a slow batch (1.6 s of audio).
MAX_SEND_BATCH = 16


@attrs.define
class _Replay:
    """Audio since the last final, kept for a failover; byte offsets count from the stream's start."""

    bytes_per_ms: float
    # Appended per audio frame, dropped from the left at each final: a deque keeps both O(1).
    frames: collections.deque[tuple[int, bytes]] = attrs.field(factory=collections.deque)
    received: int = 0

    def add(self, pcm: bytes) -> None:
        self.frames.append((self.received, pcm))
        self.received += len(pcm)

    def finalized_until(self, end_ms: int) -> None:
        cut = end_ms * self.bytes_per_ms
        while self.frames and self.frames[0][0] + len(self.frames[0][1]) <= cut:
            self.frames.popleft()

    @property
    def start_ms(self) -> int:
        start = self.frames[0][0] if self.frames else self.received
        return round(start / self.bytes_per_ms)


@attrs.define
class _Stream:
    """One session's state across placements."""

    spec: StreamSpec
    engine: str
    replay: _Replay
    # The session's audio from the receiver and its events to the relay.
    audio: trio.MemoryReceiveChannel[bytes]
    events: trio.MemorySendChannel[EngineEvent]
    # The current placement: its attempt number, its records in this gateway's inbox, its worker.
    attempt: int = 0
    results: trio.MemoryReceiveChannel[wire.Record] | None = None
    worker: str | None = None
    audio_ended: bool = False
    # The worker ended the stream (its `end`, or a failure it reported): nothing to cancel.
    finished: bool = False

    @property
    def route(self) -> tuple[str, int]:
        return (self.spec.session_id, self.attempt)


class RedisBus:
    def __init__(self, connection: RedisConnection, config: BusConfig, *, events_capacity: int):
        self._redis = connection
        self._config = config
        self._events_capacity = events_capacity
        self._watch = LivenessWatch(connection, config.heartbeat_interval, wire.worker_key)
        # The workers holding this gateway's sessions watch this key (a dead gateway's sessions are ended).
        self._heartbeat = Heartbeat(
            connection,
            wire.gateway_key(connection.process_id),
            "gateway",
            config.heartbeat_interval,
            config.gateway_ttl,
        )
        self._failovers = 0
        self._streams_open = 0
        # Results from workers that broke the engine protocol (each ended its session with a 500).
        self._malformed = 0

    @asynccontextmanager
    async def open(self) -> AsyncIterator[RedisBus]:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch.run)
            nursery.start_soon(self._heartbeat.run)
            yield self
            nursery.cancel_scope.cancel()
            with (
                trio.move_on_after(CLEANUP_TIMEOUT),
                trio.CancelScope(shield=True),
                contextlib.suppress(RedisUnavailable),
            ):
                await self._heartbeat.goodbye()

    def overload(self) -> str | None:
        lag = self._redis.publish_lag
        if lag > self._config.max_publish_lag:
            return f"the bus is overloaded (records take {lag:.1f} s to reach Redis)"
        return None

    def statistics(self) -> BusStatistics:
        return BusStatistics(
            streams_open=self._streams_open, failovers=self._failovers, malformed_results=self._malformed
        )

    @asynccontextmanager
    async def open_stream(
        self, engine: str, spec: StreamSpec, audio: trio.MemoryReceiveChannel[bytes]
    ) -> AsyncIterator[trio.MemoryReceiveChannel[EngineEvent]]:
        events_tx, events_rx = trio.open_memory_channel[EngineEvent](self._events_capacity)
        replay = _Replay(bytes_per_ms=spec.sample_rate * 2 / 1000)
        stream = _Stream(spec, engine, replay, audio, events_tx)
        self._streams_open += 1
        try:
            try:
                await self._place(stream)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._serve, stream)
                    async with events_rx:
                        yield events_rx
            finally:
                await self._release(stream)
        finally:
            self._streams_open -= 1

    async def engine_problem(self, engine: str) -> str | None:
        if not self._redis.delivering:
            return "the bus's pub/sub connection to Redis is not delivering (Redis away, or reconnecting)"
        try:
            workers = await live_workers(self._redis.client)
        except RedisUnavailable as exc:
            self._redis.suspect()
            return f"the bus is unreachable: {exc}"
        return None if engine in workers.values() else "no live worker"

    async def _place(self, stream: _Stream) -> None:
        """Queue the session for a worker; return once one has claimed it (its id in `stream.worker`)."""
        spec = stream.spec
        stream.worker = None
        try:
            stream.results = await self._redis.open_route(stream.route)
        except RedisUnavailable as exc:
            raise EngineUnavailable(f"The bus is unreachable: {exc}") from exc
        except RouteTaken as exc:
            raise EngineUnavailable(str(exc)) from exc
        request = wire.Request(
            spec.session_id,
            stream.engine,
            spec.language,
            spec.sample_rate,
            reply_to=self._redis.process_id,
            attempt=stream.attempt,
            options=session_options.to_wire(spec.options),
        )
        overload = self.overload()
        if overload is not None:
            # Taking another session now would make every session's audio later still: refused at its
            # start, before it has sent audio it would lose.
            log.info("refused a session: %s", overload)
            raise EngineUnavailable("The gateway cannot take more sessions now (the bus is overloaded)")
        try:
            # A worker that claims the session finds this gateway's key alive (or ends the session).
            if not self._heartbeat.fresh:
                await self._heartbeat.beat()
            await request_placement(self._redis, request)
            with trio.move_on_after(self._config.claim_timeout):
                async for record in stream.results:
                    try:
                        result = wire.decode_result(record)
                    except wire.BusProtocolError as exc:
                        self._malformed += 1
                        raise EngineUnavailable(f"The engine worker broke the protocol: {exc}") from exc
                    if isinstance(result, wire.Claimed):
                        log.info("claimed by %s (attempt %d)", result.worker, stream.attempt)
                        stream.worker = result.worker
                        return
                    if isinstance(result, wire.Refused):
                        refusal = EngineUnavailable if result.unavailable else UnsupportedStream
                        raise refusal(result.message)
                raise EngineUnavailable("The bus is unreachable: the gateway's inbox broke")
            await withdraw(self._redis, request)
        except RedisUnavailable as exc:
            self._redis.suspect()
            raise EngineUnavailable(f"The bus is unreachable: {exc}") from exc
        raise EngineUnavailable(
            f"No {stream.engine} worker claimed the session in {self._config.claim_timeout:g} s"
        )

    async def _release(self, stream: _Stream) -> None:
        """The placement is over: stop routing its records; a worker that claimed it (even just now,
        after the claim timeout) and has not ended it is told to stop, rather than left waiting for audio."""
        results = stream.results
        self._redis.close_route(stream.route)
        workers = {stream.worker} if stream.worker is not None and not stream.finished else set()
        if results is not None:
            # Records that arrived but were not read (the route is closed: later ones are strays, and a
            # stray claim is cancelled by the connection).
            with contextlib.suppress(trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                while True:
                    record = results.receive_nowait()
                    with contextlib.suppress(wire.BusProtocolError):
                        late = wire.decode_result(record)
                        if isinstance(late, wire.Claimed):
                            workers.add(late.worker)
        for worker in workers:
            with (
                trio.CancelScope(shield=True),
                trio.move_on_after(CLEANUP_TIMEOUT),
                contextlib.suppress(RedisUnavailable),
            ):
                await self._redis.send(worker, wire.cancel(*stream.route))

    async def _serve(self, stream: _Stream) -> None:
        events = stream.events
        async with stream.audio, events:
            while True:
                bus_failure = None
                try:
                    lost = await self._serve_placement(stream)
                except* RedisUnavailable as group:
                    bus_failure = first_leaf(group)
                if bus_failure is not None:
                    log.warning("bus failure: %s", bus_failure)
                    await events.send(EngineFailed("The bus failed"))
                    return
                if not lost:
                    stream.finished = True
                    return
                log.warning("worker %s is gone; placing the session again", stream.worker)
                await self._release(stream)
                self._failovers += 1
                stream.attempt += 1
                try:
                    await self._place(stream)
                except (EngineUnavailable, UnsupportedStream) as exc:
                    await events.send(EngineFailed(f"The engine worker was lost and none took over: {exc}"))
                    return

    async def _serve_placement(self, stream: _Stream) -> bool:
        """Audio out, results in, until the worker's `end`; True if the worker died first."""
        assert stream.worker is not None
        with self._watch.watching(stream.worker) as gone:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._send_audio, stream)
                nursery.start_soon(_cancel_when, gone, nursery.cancel_scope)
                await self._receive_results(stream)
                nursery.cancel_scope.cancel()
            return gone.is_set()

    async def _send_audio(self, stream: _Stream) -> None:
        audio, worker = stream.audio, stream.worker
        session, attempt = stream.route
        assert worker is not None
        seq = 0

        def frame(pcm: bytes) -> wire.Record:
            nonlocal seq
            seq += 1
            return wire.audio(session, attempt, seq - 1, pcm)

        # A new placement starts with the audio since the last final (nothing on the first one).
        replayed = [frame(pcm) for _, pcm in list(stream.replay.frames)]
        if replayed:
            await self._redis.post(worker, *replayed)
        if not stream.audio_ended:
            async for pcm in audio:
                batch = [pcm]
                # Frames that queued up while the last batch was in flight go out together.
                while len(batch) < MAX_SEND_BATCH:
                    try:
                        batch.append(audio.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                for queued in batch:
                    stream.replay.add(queued)
                # Not waited for: a lost batch shows as a sequence gap at the worker, reported to the
                # client; the end of audio below is waited for, so that a failure is seen here.
                await self._redis.post(worker, *[frame(queued) for queued in batch])
            stream.audio_ended = True
        await self._redis.send(worker, wire.end_of_audio(session, attempt, seq))

    async def _receive_results(self, stream: _Stream) -> None:
        results, events = stream.results, stream.events
        assert results is not None
        # Times from a new placement count from the start of its replayed audio.
        offset_ms = stream.replay.start_ms
        expected = 1  # seq 0 was the claim
        async for record in results:
            if record.seq < expected:
                continue  # a duplicate
            try:
                result = wire.decode_result(record)
            except wire.BusProtocolError as exc:
                self._malformed += 1
                log.warning("malformed result from the engine worker: %s", exc)
                await events.send(EngineFailed(f"Malformed result from the engine worker: {exc}"))
                return
            if record.seq > expected:
                log.warning("results %d..%d lost on the bus", expected, record.seq - 1)
                await events.send(EngineFailed(f"Results were lost on the bus (sequence gap at {expected})"))
                return
            expected += 1
            if isinstance(result, wire.StreamEnded):
                return
            if isinstance(result, EngineFailed):
                await events.send(result)
                return
            if isinstance(result, Partial | Final):
                shifted = attrs.evolve(
                    result, begin_ms=result.begin_ms + offset_ms, end_ms=result.end_ms + offset_ms
                )
                if isinstance(shifted, Final) and shifted.words:
                    shifted = attrs.evolve(
                        shifted,
                        words=tuple(
                            attrs.evolve(w, begin_ms=w.begin_ms + offset_ms, end_ms=w.end_ms + offset_ms)
                            for w in shifted.words
                        ),
                    )
                if isinstance(shifted, Final):
                    stream.replay.finalized_until(shifted.end_ms)
                await events.send(shifted)
        # The route ended before the worker's `end`: this session fell behind, or the inbox broke.
        await events.send(
            EngineFailed(
                f"Results were lost on the bus (the stream fell behind or the inbox broke at {expected})"
            )
        )


async def request_placement(redis: RedisConnection, request: wire.Request) -> None:
    """Queue `request` for a worker of its engine (in this process's next batch); its claim, or a refusal,
    comes to the inbox of `request.reply_to`."""
    await redis.push(wire.queue_key(request.engine), request.encode())


async def withdraw(redis: RedisConnection, request: wire.Request) -> None:
    """Take back a request nobody claimed in time, so that no worker starts it later."""
    await redis.client.lrem(wire.queue_key(request.engine), 1, request.encode())


async def _cancel_when(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
