"""Engine protocol v2, the worker's side: taking requests off an engine's queue, a claimed session's audio
from the inbox into the engine and its results out to its gateway.

`asr_actors.worker` runs these for an engine (slots, drain, metrics); the conformance suite
(`asr_actors.tools.conformance`) checks any worker, in any language, against the same contract
(docs/engine-protocol.md).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import attrs
import trio

from asr_actors import session_options
from asr_actors.engine_protocol import wire
from asr_actors.engine_protocol.connection import RedisConnection
from asr_actors.engine_protocol.liveness import LivenessWatch
from asr_actors.engines.base import (
    Engine,
    EngineEvent,
    EngineFailed,
    EngineUnavailable,
    Final,
    Partial,
    StreamSpec,
    UnsupportedStream,
    run_engine,
)
from asr_actors.groups import first_leaf
from asr_actors.protocol import ProtocolError

log = logging.getLogger(__name__)

# BRPOP's own timeout: how often the claim loop looks up from an empty queue.
CLAIM_POLL_SECONDS = 1
# How long the per-session claim counter lives (conformance and failover tests read it; an hour covers any
# session's placement history).
CLAIMS_KEY_TTL_S = 3600


async def next_request(redis: RedisConnection, engine: str) -> bytes | None:
    """The oldest request on `engine`'s queue, waiting up to CLAIM_POLL_SECONDS for one."""
    return await redis.client.brpop(wire.queue_key(engine), block_s=CLAIM_POLL_SECONDS)


async def queued_requests(redis: RedisConnection, engine: str, count: int) -> list[bytes]:
    """Up to `count` more queued requests, in one round trip, without waiting."""
    return await redis.client.rpop(wire.queue_key(engine), count)


def parse_request(raw: bytes) -> wire.Request | None:
    """A request taken off a queue, or None (logged) if no worker could serve it."""
    try:
        request = wire.Request.decode(raw)
    except wire.BusProtocolError as exc:
        log.warning("dropped a malformed request: %s", exc)
        return None
    if not request.reply_to:
        log.warning("dropped a request without reply_to (version %d)", request.version)
        return None
    return request


@attrs.define
class Results:
    """One session's results, to its gateway's inbox: numbers each record (before the send: a send
    cancelled midway may still have reached Redis), so that every path, a crash included, keeps the
    sequence."""

    redis: RedisConnection
    request: wire.Request
    seq: int = 0

    async def send(self, result: wire.Result) -> None:
        record = wire.result_record(self.request.session_id, self.request.attempt, self.seq, result)
        self.seq += 1
        if isinstance(result, wire.Claimed):
            await self.redis.claim(self.request.reply_to, record, CLAIMS_KEY_TTL_S)
        elif isinstance(result, Partial | Final):
            # Not waited for: a lost batch shows as a sequence gap at the gateway (the `end` that follows
            # the last of them is waited for).
            await self.redis.post(self.request.reply_to, record)
        else:
            await self.redis.send(self.request.reply_to, record)


@attrs.frozen
class Serving:
    """What serving a claimed session needs from its worker."""

    redis: RedisConnection
    worker_id: str
    engine: Engine
    # The gateways holding this worker's sessions.
    gateways: LivenessWatch
    # [bus] route_queue, [bus] audio_timeout, [channels] engine_events.
    audio_capacity: int
    audio_timeout: float
    events_capacity: int


async def serve(
    serving: Serving, request: wire.Request, send: Callable[[wire.Result], Awaitable[None]]
) -> bool:
    """Claim (or refuse) one request and run its session to the end; False if its gateway was gone first
    (nobody left to tell)."""
    session_id = request.session_id
    if request.version != wire.PROTOCOL_VERSION:
        await send(
            wire.Refused(f"engine protocol version {request.version} is not {wire.PROTOCOL_VERSION}", True)
        )
        return True
    try:
        # The gateway checked them against its caps; the worker checks what they mean.
        options = session_options.from_wire(request.options)
    except ProtocolError as exc:
        await send(wire.Refused(exc.message))  # the client's mistake: 400
        return True
    spec = StreamSpec(
        session_id=session_id, language=request.language, sample_rate=request.sample_rate, options=options
    )
    # Routed before the claim is announced, so that no audio record arrives unheard.
    route = (session_id, request.attempt)
    audio_tx, audio_rx = trio.open_memory_channel[bytes](serving.audio_capacity)
    feed = AudioFeed(audio_tx, serving.audio_timeout)
    await serving.redis.attach(route, feed)
    try:
        try:
            serving.engine.check(spec)
        except UnsupportedStream as exc:
            await send(wire.Refused(str(exc)))
            return True
        except EngineUnavailable as exc:
            await send(wire.Refused(str(exc), unavailable=True))
            return True
        await send(wire.Claimed(serving.worker_id))
        events_tx, events_rx = trio.open_memory_channel[EngineEvent](serving.events_capacity)
        try:
            with serving.gateways.watching(request.reply_to) as gateway_gone:
                async with trio.open_nursery() as watch:
                    watch.start_soon(_end_when_gone, gateway_gone, watch.cancel_scope)
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(run_engine, serving.engine, spec, audio_rx, events_tx)
                        nursery.start_soon(feed.watch)
                        async with events_rx:
                            async for event in events_rx:
                                await send(event)
                    watch.cancel_scope.cancel()
            if gateway_gone.is_set():
                # Nobody is left to tell: the engine slot is what matters (a paid stream, maybe).
                log.warning(
                    "session %s ended: its gateway %s is gone (its liveness key expired)",
                    session_id,
                    request.reply_to,
                )
                return False
            await send(wire.StreamEnded())
        except* StreamBroken as group:
            broken = first_leaf(group)
            log.warning("stream broken: %s", broken)
            await send(EngineFailed(f"The audio stream broke: {broken}"))
    finally:
        serving.redis.close_route(route)
    return True


async def _end_when_gone(gone: trio.Event, scope: trio.CancelScope) -> None:
    await gone.wait()
    scope.cancel()


@attrs.define(eq=False)
class AudioFeed:
    """One placement's audio records, checked and handed to the engine as the inbox decodes them (a
    connection `Sink`: no task and no channel between the inbox and the engine's audio channel)."""

    audio: trio.MemorySendChannel[bytes]
    # [bus] audio_timeout: the gateway's silence, timed from the last record (the engine's pace does not
    # count: records are handed over without waiting for it).
    idle_for: float
    expected: int = 0
    # Why the stream broke, if it did.
    broken: str | None = None
    over: trio.Event = attrs.field(factory=trio.Event)
    idle: trio.CancelScope = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.idle = trio.CancelScope(deadline=trio.current_time() + self.idle_for)

    def deliver(self, record: wire.Record) -> bool:
        if record.kind in (wire.AUDIO, wire.END) and record.seq < self.expected:
            return True  # a repeat
        problem = self._problem(record)
        if problem is not None:
            return self._break(problem)
        self.expected += 1
        self.idle.deadline = trio.current_time() + self.idle_for
        if record.kind == wire.END:
            return self._end()
        try:
            self.audio.send_nowait(record.payload)
        except trio.WouldBlock:
            return self._break("the engine fell behind its audio")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return self._end()  # the engine stopped (a failure): its events say why
        return True

    def _problem(self, record: wire.Record) -> str | None:
        if record.kind == wire.CANCEL:
            return "cancelled by the gateway"
        if record.kind not in (wire.AUDIO, wire.END):
            return f"record of kind {record.kind!r} in the audio"
        if record.seq > self.expected:
            return f"audio lost on the bus (sequence gap at {self.expected})"
        if len(record.payload) % 2:
            return "audio record with an odd number of bytes (not 16-bit PCM)"
        return None

    def close(self) -> None:
        if not self.over.is_set():
            self._break("audio was lost on the bus (it fell behind or the inbox broke)")

    async def watch(self) -> None:
        """Until the audio has ended; raises StreamBroken if it broke or the gateway went quiet."""
        with self.idle:
            await self.over.wait()
        if self.idle.cancelled_caught:
            self.audio.close()
            raise StreamBroken("no audio from the gateway")
        if self.broken is not None:
            raise StreamBroken(self.broken)

    def _end(self) -> bool:
        self.audio.close()
        self.over.set()
        return False

    def _break(self, reason: str) -> bool:
        self.broken = reason
        return self._end()


class StreamBroken(Exception):
    pass
