"""The session supervisor: one nursery of actors per connection, its channels and its cancel scopes.

    auth ─▶ receiver ──audio──▶ relay ──▶ bus / engine
                │                 │
                └──pong──▶ sender ◀──results

The first actor to fail cancels the set; the supervisor then sends the one coded error and closes.
An orderly end flows by channel closure: the receiver closes `audio` at the client's end, the relay closes
`outbound` after `end`, the sender returns when `outbound` is drained, and the socket closes with 1000.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping

import attrs
import trio

from asr_actors import logs, protocol, transport
from asr_actors.actors import auth, receiver, relay, sender
from asr_actors.bus.base import Bus
from asr_actors.config import Config
from asr_actors.protocol import ClientDecoder, ErrorCode, ProtocolError, ServerEvent
from asr_actors.signing import ReplayCache, Window
from asr_actors.transport import ClientGone, Transport
from engines.base import StreamSpec

log = logging.getLogger(__name__)


@attrs.frozen
class SessionServices:
    """What every session shares: config, the bus, app secrets and the replay cache."""

    config: Config
    bus: Bus
    secrets: Mapping[str, str]
    replay: ReplayCache = attrs.field(factory=ReplayCache)
    wall_clock: Callable[[], float] = time.time


@attrs.frozen
class Outcome:
    """How a session ended: `error` is None for an orderly end or a client that went away."""

    task_id: str
    error: ProtocolError | None
    client_gone: bool


async def run(connection: Transport, host: str, target: str, services: SessionServices) -> Outcome:
    config = services.config
    task_id = uuid.uuid4().hex
    logs.current_session.set(task_id)
    error: ProtocolError | None = None
    client_gone = False
    try:
        with trio.move_on_after(config.session.max_duration) as lifetime:
            await _run_actors(connection, host, target, services, task_id)
        if lifetime.cancelled_caught:
            error = ProtocolError(ErrorCode.TIMEOUT, "Maximum session duration reached")
    except ProtocolError as exc:
        error = exc
    except ClientGone:
        client_gone = True
    except ExceptionGroup as group:
        error, client_gone = _first_failure(group)
    if error is not None:
        log.info("ends with %d %s", error.code, error.message)
    elif client_gone:
        log.info("client went away")
    else:
        log.info("ended")
    if not client_gone:
        await _close(connection, error, config.session.close_timeout)
    return Outcome(task_id=task_id, error=error, client_gone=client_gone)


async def _run_actors(
    connection: Transport, host: str, target: str, services: SessionServices, task_id: str
) -> None:
    config = services.config
    grant = await auth.run(
        host=host,
        target=target,
        secrets=services.secrets,
        window=Window(config.auth.survival_time, config.auth.clock_skew),
        replay=services.replay,
        wall_clock=services.wall_clock,
    )
    logs.current_app.set(grant.appkey)
    handshake = grant.handshake
    decoder = ClientDecoder(
        max_frame_bytes=config.session.max_frame_bytes,
        default_language=config.session.default_language,
        default_sample_rate=config.session.default_sample_rate,
        language=handshake.language,
        sample_rate=handshake.sample_rate,
    )
    audio_tx, audio_rx = trio.open_memory_channel[bytes](config.channels.audio)
    outbound_tx, outbound_rx = trio.open_memory_channel[ServerEvent](config.channels.outbound)
    async with trio.open_nursery() as nursery:
        await nursery.start(sender.run, connection, outbound_rx, task_id)
        opened = await nursery.start(
            receiver.run, connection, decoder, audio_tx, outbound_tx.clone(), config.session.idle_timeout
        )
        engine = config.engine_for(opened.language)
        if engine is None:
            raise ProtocolError(ErrorCode.BAD_INPUT, f"Language {opened.language!r} is not supported")
        spec = StreamSpec(session_id=task_id, language=opened.language, sample_rate=opened.sample_rate)
        log.info("stream opened: lang=%s rate=%d engine=%s", spec.language, spec.sample_rate, engine)
        await nursery.start(
            relay.run, audio_rx, outbound_tx, services.bus, engine, spec, config.session.flush_timeout
        )


def _first_failure(group: ExceptionGroup[Exception]) -> tuple[ProtocolError | None, bool]:
    """The error to tell the client: a protocol error if any actor raised one, else 500 for a bug."""
    protocol_errors, rest = group.split(ProtocolError)
    if protocol_errors is not None:
        return _leaves(protocol_errors)[0], False
    if rest is None:
        return None, False
    _gone, unexpected = rest.split(ClientGone)
    if unexpected is None:
        return None, True
    log.error("failed", exc_info=unexpected)
    return ProtocolError(ErrorCode.ENGINE_FAILURE, "Internal server error"), False


def _leaves(group: BaseExceptionGroup[ProtocolError]) -> list[ProtocolError]:
    leaves: list[ProtocolError] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            leaves += _leaves(exc)
        else:
            leaves.append(exc)
    return leaves


async def _close(connection: Transport, error: ProtocolError | None, close_timeout: float) -> None:
    # Shielded but bounded: a server shutting down still tells its clients why, but never waits long.
    with trio.move_on_after(close_timeout, shield=True):
        try:
            if error is not None:
                await transport.send(connection, protocol.encode_error(error.code, error.message))
        except ClientGone:
            return
        if error is None:
            await connection.aclose(1000)
        else:
            await connection.aclose(error.code.close_code, protocol.close_reason(error.message))
