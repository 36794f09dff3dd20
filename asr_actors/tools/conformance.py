"""The engine protocol conformance suite: drives any engine worker through the contract over Redis.

    python -m asr_actors conformance --engine NAME --redis redis://127.0.0.1:6379/0 [--audio SPEECH.wav]

It plays the gateway's side with the engine protocol package's own parts (`asr_actors.engine_protocol`:
the request queue, the inbox, liveness), driving the records itself (one PUBLISH per batch it chooses,
malformed ones too), and reports each case as pass or fail with the reason.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import numpy as np
import trio

from asr_actors.engine_protocol import wire
from asr_actors.engine_protocol.connection import RedisConnection, new_process_id
from asr_actors.engine_protocol.gateway import request_placement, withdraw
from asr_actors.engine_protocol.liveness import Heartbeat, live_workers

FRAME_SAMPLES = 1600  # 100 ms at 16 kHz
SAMPLE_RATE = 16000
# The suite refreshes its gateway liveness key this often (the gateway default), for the worker to watch.
HEARTBEAT_S = 1.0


def tone_bursts(bursts: int = 2, burst_s: float = 1.0, pause_s: float = 0.8) -> bytes:
    """Speech-like default audio: bursts of a voiced tone between pauses (real speech: --audio)."""
    t = np.arange(int(burst_s * SAMPLE_RATE)) / SAMPLE_RATE
    burst = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 4 * t))
    pause = np.zeros(int(pause_s * SAMPLE_RATE))
    signal = np.concatenate([pause] + [np.concatenate([burst, pause]) for _ in range(bursts)])
    pcm: bytes = (signal * 32767).astype("<i2").tobytes()
    return pcm


@attrs.frozen
class Outcome:
    case: str
    passed: bool
    reason: str


@attrs.define
class _Session:
    """The gateway's side of one session: records to the worker's inbox, results from this process's."""

    redis: RedisConnection
    session_id: str = attrs.field(factory=lambda: f"conformance-{uuid.uuid4().hex}")
    worker: str = ""
    seq: int = 0
    # Each result's JSON with the record's `seq` and `session` added.
    results: list[dict[str, Any]] = attrs.field(factory=list)

    async def publish(self, *records: wire.Record) -> None:
        # One PUBLISH per call, whatever the publisher's tick: the worker must take any batching.
        await self.redis.client.publish(wire.inbox_channel(self.worker), wire.encode_batch(records))

    async def audio(self, pcm: bytes, *, realtime: bool = False, per_batch: int = 1) -> None:
        frames = [
            pcm[offset : offset + FRAME_SAMPLES * 2] for offset in range(0, len(pcm), FRAME_SAMPLES * 2)
        ]
        for first in range(0, len(frames), per_batch):
            batch = []
            for frame in frames[first : first + per_batch]:
                batch.append(wire.audio(self.session_id, 0, self.seq, frame))
                self.seq += 1
            await self.publish(*batch)
            if realtime:
                await trio.sleep(0.1)

    async def end(self) -> None:
        await self.publish(wire.end_of_audio(self.session_id, 0, self.seq))

    async def cancel(self) -> None:
        await self.publish(wire.cancel(self.session_id, 0))


def _result(record: wire.Record) -> dict[str, Any]:
    if record.kind != wire.RESULT:
        raise CaseFailed(f"a record of kind {record.kind!r} among the results")
    try:
        fields: dict[str, Any] = json.loads(record.payload)
    except ValueError as exc:
        raise CaseFailed(f"a result that is not JSON: {exc}") from None
    return {**fields, "seq": record.seq, "session": record.session_id}


async def _run_case(
    ctx: _Context, drive: Callable[[_Session], Awaitable[None]], expect_end: bool = True
) -> _Session:
    """Place a session, run `drive`, collect every result until `end` or `failed` (or the timeout)."""
    redis, engine = ctx.redis, ctx.engine
    session = _Session(redis)
    async with redis.route((session.session_id, 0)) as results:
        request = wire.Request(
            session.session_id, engine, ctx.language, SAMPLE_RATE, reply_to=redis.process_id
        )
        await request_placement(redis, request)
        with trio.move_on_after(ctx.claim_timeout):
            session.results.append(_result(await results.receive()))
        if not session.results:
            await withdraw(redis, request)
            raise CaseFailed(f"no worker claimed the session within {ctx.claim_timeout:g} s")
        if session.results[0].get("type") != "claim":
            raise CaseFailed(f"first message is not a claim: {session.results[0]}")
        session.worker = str(session.results[0].get("worker"))

        async def collect() -> None:
            async for record in results:
                message = _result(record)
                session.results.append(message)
                if message.get("type") in ("end", "failed"):
                    return

        with trio.move_on_after(ctx.finish_timeout) as overrun:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(collect)
                await drive(session)
                if not expect_end:
                    await trio.sleep(1.0)
                    nursery.cancel_scope.cancel()
        if overrun.cancelled_caught and expect_end:
            raise CaseFailed(f"no end within {ctx.finish_timeout:g} s (got {len(session.results)} messages)")
    return session


class CaseFailed(Exception):
    pass


def _check_sequence(session: _Session) -> None:
    for expected, message in enumerate(session.results):
        if message.get("seq") != expected:
            raise CaseFailed(f"result {expected} has seq {message.get('seq')}")
        if message.get("session") != session.session_id:
            raise CaseFailed(f"result {expected} names session {message.get('session')!r}")


def _check_events(session: _Session, audio_ms: int) -> list[dict[str, Any]]:
    """Partials and finals well formed, in order, inside the audio; returns the finals."""
    finals = []
    last_end = 0
    for message in session.results[1:-1]:
        kind = message.get("type")
        if kind not in ("partial", "final"):
            raise CaseFailed(f"unexpected {kind!r} before the end: {message}")
        begin, end = message.get("begin_ms"), message.get("end_ms")
        if not isinstance(message.get("text"), str) or not isinstance(begin, int) or not isinstance(end, int):
            raise CaseFailed(f"malformed {kind}: {message}")
        if not 0 <= begin <= end <= audio_ms + 100:
            raise CaseFailed(f"{kind} times {begin}..{end} ms outside the {audio_ms} ms of audio")
        if kind == "final":
            if begin < last_end:
                raise CaseFailed(f"final {begin}..{end} overlaps the previous one ending at {last_end}")
            last_end = end
            finals.append(message)
    return finals


@attrs.frozen
class _Context:
    redis: RedisConnection
    engine: str
    speech: bytes
    claim_timeout: float
    finish_timeout: float
    language: str = "en"

    @property
    def speech_ms(self) -> int:
        return len(self.speech) * 1000 // (2 * SAMPLE_RATE)

    async def session(
        self, drive: Callable[[_Session], Awaitable[None]], *, expect_end: bool = True
    ) -> _Session:
        return await _run_case(self, drive, expect_end)


def _audio_then_end(pcm: bytes) -> Callable[[_Session], Awaitable[None]]:
    async def drive(session: _Session) -> None:
        await session.audio(pcm)
        await session.end()

    return drive


async def _heartbeat(ctx: _Context) -> str:
    live = [
        worker for worker, engine in (await live_workers(ctx.redis.client)).items() if engine == ctx.engine
    ]
    if not live:
        raise CaseFailed(f"no {wire.worker_key('*')} key with value {ctx.engine!r}")
    ttl = await ctx.redis.client.pttl(wire.worker_key(live[0]))
    if ttl <= 0:
        raise CaseFailed("the liveness key has no expiry")
    return f"{len(live)} live worker(s), key expires in {ttl} ms"


async def _normal_speech(ctx: _Context) -> str:
    session = await ctx.session(_audio_then_end(ctx.speech))
    _check_sequence(session)
    if session.results[-1].get("type") != "end":
        raise CaseFailed(f"ended with {session.results[-1]}")
    finals = _check_events(session, ctx.speech_ms)
    if not any(final["text"] for final in finals):
        raise CaseFailed("no final with text for the speech")
    claims = int(await ctx.redis.client.get(wire.claims_key(session.session_id)) or 0)
    if claims != 1:
        raise CaseFailed(f"claims counter is {claims}, not 1")
    return f"{len(finals)} final(s), {len(session.results)} messages in sequence, claimed once"


async def _silence_only(ctx: _Context) -> str:
    session = await ctx.session(_audio_then_end(bytes(2 * SAMPLE_RATE * 2)))
    _check_sequence(session)
    if session.results[-1].get("type") != "end":
        raise CaseFailed(f"ended with {session.results[-1]}")
    _check_events(session, 2000)
    return f"clean end after {len(session.results)} messages"


async def _end_mid_sentence(ctx: _Context) -> str:
    cut = ctx.speech[: (len(ctx.speech) // 2) // 3200 * 3200 + 1600]  # half the audio, mid-frame
    session = await ctx.session(_audio_then_end(cut))
    _check_sequence(session)
    finals = _check_events(session, len(cut) * 1000 // (2 * SAMPLE_RATE))
    if session.results[-1].get("type") != "end" or not finals:
        raise CaseFailed("the audio cut mid-sentence was not flushed as a final before end")
    return f"tail flushed: last final ends at {finals[-1]['end_ms']} ms"


async def _abrupt_cancel(ctx: _Context) -> str:
    async def cancel_midway(session: _Session) -> None:
        await session.audio(ctx.speech[: 8 * 3200])
        await session.cancel()

    for _ in range(3):
        _check_sequence(await ctx.session(cancel_midway, expect_end=False))
    after = await ctx.session(_audio_then_end(ctx.speech[: 10 * 3200]))
    if after.results[-1].get("type") != "end":
        raise CaseFailed(f"a session after three cancels ended with {after.results[-1]}")
    return "three sessions cancelled mid-stream; the worker still serves the next one"


async def _batched_audio(ctx: _Context) -> str:
    async def drive(session: _Session) -> None:
        await session.audio(ctx.speech, per_batch=7)
        await session.end()

    session = await ctx.session(drive)
    _check_sequence(session)
    finals = _check_events(session, ctx.speech_ms)
    if session.results[-1].get("type") != "end" or not any(final["text"] for final in finals):
        raise CaseFailed(f"seven frames per PUBLISH: ended with {session.results[-1]}, finals {finals}")
    return f"seven records per batch: {len(finals)} final(s), clean end"


async def _malformed_audio(ctx: _Context) -> str:
    async def drive(session: _Session) -> None:
        await session.audio(ctx.speech[: 5 * 3200])
        await session.publish(wire.Record(b"X", session.session_id, 0, session.seq, b"garbage"))

    session = await ctx.session(drive)
    if session.results[-1].get("type") != "failed" or not session.results[-1].get("message"):
        raise CaseFailed(f"a malformed audio message ended with {session.results[-1]}, not failed")
    return f"reported: {session.results[-1]['message']}"


async def _unknown_option(ctx: _Context) -> str:
    """A request whose options name one no engine has: refused (seq 0, `unavailable` false), not claimed."""
    redis = ctx.redis
    session = _Session(redis)
    async with redis.route((session.session_id, 0)) as results:
        request = wire.Request(
            session.session_id,
            ctx.engine,
            ctx.language,
            SAMPLE_RATE,
            reply_to=redis.process_id,
            options={"no_such_option": True},
        )
        await request_placement(redis, request)
        answer: dict[str, Any] | None = None
        with trio.move_on_after(ctx.claim_timeout):
            answer = _result(await results.receive())
        if answer is None:
            await withdraw(redis, request)
            raise CaseFailed(f"no answer to the request within {ctx.claim_timeout:g} s")
    if answer.get("type") != "refused" or answer.get("unavailable"):
        raise CaseFailed(f"a request with an unknown option got {answer}, not a refusal")
    return f"refused: {answer.get('message')}"


CASES: list[tuple[str, Callable[[_Context], Awaitable[str]]]] = [
    ("heartbeat", _heartbeat),
    ("normal speech", _normal_speech),
    ("silence only", _silence_only),
    ("end in mid-sentence", _end_mid_sentence),
    ("batched audio", _batched_audio),
    ("abrupt cancel", _abrupt_cancel),
    ("malformed audio", _malformed_audio),
    ("unknown option", _unknown_option),
]


async def run(
    engine: str,
    redis_url: str,
    speech: bytes | None = None,
    claim_timeout: float = 5.0,
    finish_timeout: float = 30.0,
    language: str = "en",
) -> list[Outcome]:
    """Every case against the worker(s) serving `engine` in `language`; `speech` defaults to synthetic
    tone bursts."""
    outcomes: list[Outcome] = []
    connection = RedisConnection(redis_url, new_process_id("conformance"), route_capacity=4096)
    # The suite is the workers' gateway: it keeps a gateway's liveness key alive, as a gateway does.
    heartbeat = Heartbeat(
        connection, wire.gateway_key(connection.process_id), "gateway", HEARTBEAT_S, HEARTBEAT_S * 3
    )
    async with connection.open() as redis, trio.open_nursery() as nursery:
        await heartbeat.beat()
        nursery.start_soon(heartbeat.run)
        ctx = _Context(redis, engine, speech or tone_bursts(), claim_timeout, finish_timeout, language)
        for name, case in CASES:
            try:
                outcomes.append(Outcome(name, True, await case(ctx)))
            except CaseFailed as exc:
                outcomes.append(Outcome(name, False, str(exc)))
        await heartbeat.goodbye()
        nursery.cancel_scope.cancel()
    return outcomes
