"""The session supervisor: one nursery of actors per connection, its channels and its cancel scopes.

    admit (auth) ─▶ receiver ──audio──▶ bus / engine ──events──▶ relay
                │                                            │
                └──pong──▶ sender ◀──────────results─────────┘

The first actor to fail cancels the set; the supervisor then sends the one coded error and closes.
An orderly end flows by channel closure: the receiver closes `audio` at the client's end (and starts the
flush deadline), the engine's events end after its last final, the relay closes `outbound` after `end`,
the sender returns when `outbound` is drained, and the socket closes with 1000.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

import attrs
import trio

from asr_actors import logs, protocol
from asr_actors.actors import idle, receiver, relay, sender
from asr_actors.bus.base import Bus
from asr_actors.config import Config
from asr_actors.dialects import Admission, Admitted, Dialect
from asr_actors.directory import Directory
from asr_actors.engines.base import StreamSpec
from asr_actors.errors import DependencyUnavailable
from asr_actors.groups import first_leaf
from asr_actors.limits import AudioAllowance, LimitReached, Limits
from asr_actors.protocol import Encoded, ErrorCode, ProtocolError, Reply, ServerEvent
from asr_actors.records import RecordStore, SessionLedger, SessionRecord
from asr_actors.transport import ClientGone, Transport

log = logging.getLogger(__name__)


@attrs.frozen
class Outcome:
    """How a session ended: `error` is None for an orderly end or a client that went away; `fault` is
    True when it ended on an exception nobody expected (a bug of ours or a library's, logged)."""

    session_id: str
    error: ProtocolError | None
    client_gone: bool
    audio_seconds: float = 0.0
    fault: bool = False
    # Seconds from the first audio to the first partial, and from each sentence's last audio to its final.
    first_partial_s: float | None = None
    final_latencies: tuple[float, ...] = ()
    # The route it took ("" if it ended before one was chosen).
    engine: str = ""
    language: str = ""


@attrs.define(eq=False)  # identity, so that the gateway can keep them in a set
class Lifetime:
    """A session's outer cancel scope, held by the gateway so that a shutdown can end it with a reason."""

    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    reason: ProtocolError | None = None

    def end(self, reason: ProtocolError) -> None:
        self.reason = reason
        self.scope.cancel()


@attrs.define
class _Facts:
    """What the session learns as it goes, for its record."""

    app: str = ""
    language: str = ""
    engine: str = ""
    sample_rate: int = 0
    ledger: SessionLedger = attrs.field(factory=SessionLedger)


@attrs.frozen
class Shared:
    """What every session of a gateway shares."""

    config: Config
    bus: Bus
    directory: Directory
    # Per-app limits on concurrent sessions and daily audio (429); the config's zeros mean unlimited.
    limits: Limits
    records: RecordStore | None = None
    wall_clock: Callable[[], float] = time.time


async def run(
    connection: Transport,
    admission: Admission,
    dialect: Dialect,
    shared: Shared,
    lifetime: Lifetime | None = None,
) -> Outcome:
    config, records, wall_clock = shared.config, shared.records, shared.wall_clock
    session_id = uuid.uuid4().hex
    logs.current_session_id.set(session_id)
    started_at = wall_clock()
    facts = _Facts()
    ending = _Ending()
    lifetime = lifetime or Lifetime()
    try:
        with lifetime.scope:
            lifetime.scope.deadline = trio.current_time() + config.session.max_duration
            await _run_actors(connection, admission, dialect, shared, session_id, facts)
        if lifetime.scope.cancelled_caught:
            ending.error = lifetime.reason or ProtocolError(
                ErrorCode.TIMEOUT, "Maximum session duration reached"
            )
    except Exception as exc:  # the session's boundary: whatever its parts raise ends this session only
        ending = _judge(exc)
    error, client_gone = ending.error, ending.client_gone
    if error is not None:
        log.info("ends with %d %s", error.code, error.message)
    elif client_gone:
        log.info("client went away: %s", ending.gone_reason)
    else:
        log.info("ended")
    # What the session leaves behind is kept before the close: a session ended by an error (a limit, say)
    # has its audio counted and its record kept by the time its client reads why, so that the client's
    # next session, on any gateway, counts it. (An orderly session's client has its `end` a moment before.)
    if records is not None and facts.app:
        record = SessionRecord(
            session_id=session_id,
            app=facts.app,
            language=facts.language,
            engine=facts.engine,
            started_at=started_at,
            ended_at=wall_clock(),
            audio_bytes=facts.ledger.audio_bytes,
            sample_rate=facts.sample_rate,
            error_code=int(error.code) if error else None,
            finals=tuple(facts.ledger.finals),
        )
        await keep(
            "the session record", functools.partial(records.save, record), config.session.record_timeout
        )
    audio_seconds = facts.ledger.audio_bytes / (2 * facts.sample_rate) if facts.sample_rate else 0.0
    if audio_seconds:
        charge = functools.partial(shared.limits.audio.charge, facts.app, audio_seconds)
        await keep("the session's audio count", charge, config.session.record_timeout)
    if not client_gone:
        if error is None:
            await _linger(connection, config.session.end_linger)
        await _close(connection, dialect, error, config.session.close_timeout)
    return Outcome(
        session_id=session_id,
        error=error,
        client_gone=client_gone,
        audio_seconds=audio_seconds,
        fault=ending.fault,
        first_partial_s=facts.ledger.first_partial_s,
        final_latencies=tuple(facts.ledger.final_latencies),
        engine=facts.engine,
        language=facts.language if facts.engine else "",
    )


async def keep(what: str, write: Callable[[], Awaitable[None]], timeout_s: float) -> None:
    """Keep what an ended session leaves behind (its record, its audio's count against the day): shielded,
    so that a gateway shutting down still keeps it, but bounded, so that it never waits long on a store."""
    with trio.move_on_after(timeout_s, shield=True) as overrun:
        try:
            await write()
        except DependencyUnavailable as exc:
            log.warning("%s", exc)  # it names what was lost, and why
        except Exception:
            log.exception("could not keep %s", what)
    if overrun.cancelled_caught:
        log.warning("keeping %s took too long; it is lost", what)


async def _run_actors(
    connection: Transport,
    admission: Admission,
    dialect: Dialect,
    shared: Shared,
    session_id: str,
    facts: _Facts,
) -> None:
    config = shared.config
    admitted = await dialect.admit(admission, config)
    logs.current_app.set(admitted.appkey)
    facts.app = admitted.appkey
    allowance = await shared.limits.audio.allowance(admitted.appkey)
    async with shared.limits.slots.hold(admitted.appkey):
        await _run_admitted(connection, dialect, shared, session_id, facts, admitted, allowance)


async def _run_admitted(
    connection: Transport,
    dialect: Dialect,
    shared: Shared,
    session_id: str,
    facts: _Facts,
    admitted: Admitted,
    allowance: AudioAllowance | None,
) -> None:
    config = shared.config
    encode = dialect.encoder(session_id)
    idle_deadline = trio.current_time() + config.session.idle_timeout
    first_message = await _first_message(connection, admitted.greeting, encode, idle_deadline)
    audio_tx, audio_rx = trio.open_memory_channel[bytes](config.channels.audio)
    outbound_tx, outbound_rx = trio.open_memory_channel[ServerEvent](config.channels.outbound)
    flush = relay.Flush(config.session.flush_timeout)
    idle_watch = idle.Idle(config.session.idle_timeout, idle_deadline)
    async with trio.open_nursery() as nursery:
        # Not waited for: what is sent before it runs waits in `outbound`, and the idle watch only sleeps
        # (one scheduling round fewer each at the session's start, which a burst of sessions starting
        # together pays once each).
        nursery.start_soon(sender.run, connection, outbound_rx, encode, config.session.send_timeout)
        nursery.start_soon(idle.run, idle_watch)
        opened = await nursery.start(
            receiver.run,
            connection,
            admitted.decoder,
            first_message,
            idle_watch,
            audio_tx,
            outbound_tx.clone(),
            facts.ledger,
            flush.start,
            allowance,
        )
        engine = await shared.directory.engine_for(opened.language)
        if engine is None:
            raise ProtocolError(ErrorCode.BAD_INPUT, f"Language {opened.language!r} is not supported")
        demo = config.demo
        if admitted.appkey == demo.appkey and demo.appkey not in config.apps and engine not in demo.engines:
            raise ProtocolError(
                ErrorCode.BAD_INPUT, f"The demo app may not use the {engine} engine ([demo] engines)"
            )
        spec = StreamSpec(
            session_id=session_id,
            language=opened.language,
            sample_rate=opened.sample_rate,
            options=opened.options,
        )
        facts.language, facts.engine, facts.sample_rate = spec.language, engine, spec.sample_rate
        log.info("stream opened: lang=%s rate=%d engine=%s", spec.language, spec.sample_rate, engine)
        await nursery.start(
            relay.run,
            audio_rx,
            outbound_tx,
            shared.bus,
            engine,
            spec,
            flush,
            facts.ledger,
        )


async def _first_message(
    connection: Transport,
    greeting: tuple[str, ...],
    encode: Callable[[ServerEvent], Encoded],
    idle_deadline: float,
) -> str | bytes:
    """The dialect's greeting out, the client's first message in. Until then a session is this one task,
    with no actors, channels or scopes of its own: a connection that waits to begin costs little memory
    (docs/performance.md). A client that sends nothing by `idle_deadline` is timed out as an idle one."""
    for text in greeting:
        for message in protocol.messages(encode(Reply(text))):
            await connection.send_message(message)
    with trio.move_on_at(idle_deadline):
        return await connection.get_message()
    raise ProtocolError(ErrorCode.TIMEOUT, protocol.IDLE)


@attrs.define
class _Ending:
    """How the session ends: the error to tell the client, or none; whether the client is gone already;
    whether an unexpected exception (a fault) ended it."""

    error: ProtocolError | None = None
    client_gone: bool = False
    fault: bool = False
    # How the client went (closed, dropped, stopped reading mid-message), for the log.
    gone_reason: str = ""


def _judge(exc: Exception) -> _Ending:
    """What to tell the client about what ended the session (one exception, or an actors' group): the
    protocol error if any part raised one; 429 for an app's limit; 503 when a dependency is down; else 500
    for a fault, logged once with its traceback. A client that went away is told nothing."""
    group = exc if isinstance(exc, ExceptionGroup) else ExceptionGroup("session", [exc])
    protocol_errors, _ = group.split(ProtocolError)
    if protocol_errors is not None:
        return _Ending(first_leaf(protocol_errors))
    limits, _ = group.split(LimitReached)
    if limits is not None:
        return _Ending(ProtocolError(ErrorCode.TOO_MANY, str(first_leaf(limits))))
    down, _ = group.split(DependencyUnavailable)
    if down is not None:
        return _Ending(ProtocolError(ErrorCode.UNAVAILABLE, str(first_leaf(down))))
    gone, unexpected = group.split(ClientGone)
    if gone is not None and unexpected is None:
        return _Ending(client_gone=True, gone_reason=str(first_leaf(gone)))
    log.error("failed", exc_info=unexpected)
    return _Ending(ProtocolError(ErrorCode.ENGINE_FAILURE, "Internal server error"), fault=True)


async def _linger(connection: Transport, linger_s: float) -> None:
    """After `end`, leave the socket open for up to `linger_s` so that a client still reading what was
    sent gets it all before the close; a client that closes first ends this at once."""
    with trio.move_on_after(linger_s):
        with contextlib.suppress(ClientGone):
            await connection.wait_closed()


async def _close(
    connection: Transport, dialect: Dialect, error: ProtocolError | None, close_timeout: float
) -> None:
    # Shielded but bounded: a server shutting down still tells its clients why, but never waits long.
    with trio.move_on_after(close_timeout, shield=True):
        try:
            if error is not None:
                await connection.send_message(dialect.encode_error(error))
        except ClientGone:
            return
        if error is None:
            await connection.aclose(1000)
        else:
            await connection.aclose(error.code.close_code, protocol.close_reason(error.message))
