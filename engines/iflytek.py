"""The `iflytek` engine: iFlytek real-time transcription (rtasr), native on Trio, one task per session.

The engine behind ASRWebSocketServer's Chinese, whose clients protocol v1 serves. Per session: a signed
WebSocket (`engines/upstream.py`), the service's `started` awaited within `start_timeout`; then the
client's audio goes out in the 1,280-byte pieces the service asks for while its results are read as they
arrive: intermediate → Partial, definitive → Final. At the end of the audio the `{"end": true}` bytes go
out and the service's last results and its close are awaited within `stop_timeout`. A refused key, a
service error, a connection that closes mid-stream: one EngineError each (a coded 500 for the client,
the service's code in it), converted here and in `upstream`, once. Message formats: `iflytek_wire.py`.
"""

from __future__ import annotations

import logging
import os
import time

import trio

from asr_actors.config import IflytekEngineConfig
from asr_actors.engines import iflytek_wire as wire
from asr_actors.engines import upstream
from asr_actors.engines.base import (
    EngineError,
    EngineEvent,
    EngineUnavailable,
    Final,
    Partial,
    StreamSpec,
    UnsupportedStream,
)

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
SERVICE = "iFlytek"


class IflytekEngine:
    name = "iflytek"

    def __init__(self, config: IflytekEngineConfig) -> None:
        self._config = config
        self.max_streams = config.max_sessions
        self._api_key = ""

    def _missing(self) -> str | None:
        if not self._config.app_id:
            return "iFlytek needs [engines.iflytek] app_id"
        if not self._api_key:
            return f"iFlytek needs an API key in ${self._config.api_key_env}"
        return None

    async def prepare(self) -> None:
        self._api_key = os.environ.get(self._config.api_key_env, "")
        missing = self._missing()
        if missing is not None:
            raise EngineUnavailable(missing)

    def check(self, spec: StreamSpec) -> None:
        missing = self._missing()
        if missing is not None:
            raise EngineUnavailable(missing)
        if spec.language not in self._config.languages:
            raise UnsupportedStream(f"Language {spec.language!r} is not configured for iFlytek")
        if spec.sample_rate != SAMPLE_RATE:
            raise UnsupportedStream(f"iFlytek takes {SAMPLE_RATE} Hz audio, not {spec.sample_rate} Hz")

    async def run_stream(
        self,
        spec: StreamSpec,
        audio: trio.MemoryReceiveChannel[bytes],
        events: trio.MemorySendChannel[EngineEvent],
    ) -> None:
        self.check(spec)
        config = self._config
        url = wire.signed_url(config.url or wire.DEFAULT_URL, config.app_id, self._api_key, time.time())
        # One deadline for the whole start: connect, upgrade, `started`.
        started_by = trio.current_time() + config.start_timeout
        async with (
            events,
            upstream.connect(url, started_by, service=SERVICE, close_timeout=config.stop_timeout) as socket,
        ):
            with trio.move_on_at(started_by) as starting:
                while not isinstance(_parse(await socket.receive()), wire.Started):
                    pass
            if starting.cancelled_caught:
                raise EngineError(f"iFlytek did not start within {config.start_timeout:g} s")
            ended = trio.Event()
            finishing = trio.CancelScope()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_send_audio, socket, audio, ended, finishing, config.stop_timeout)
                with finishing:
                    await _relay_results(socket, events, ended)
                nursery.cancel_scope.cancel()
            if finishing.cancelled_caught:
                raise EngineError(f"iFlytek did not finish within {config.stop_timeout:g} s")


def _parse(message: str | bytes) -> wire.ServiceMessage | None:
    """One message of the service; a service error is EngineError here."""
    if isinstance(message, bytes):
        message = message.decode("utf-8", errors="replace")
    try:
        parsed = wire.parse_message(message)
    except wire.WireError as exc:
        raise EngineError(f"iFlytek broke its protocol: {exc}") from exc
    if isinstance(parsed, wire.Failed):
        log.warning("iFlytek error %s: %s", parsed.code, parsed.description)
        raise EngineError(parsed.reason)
    return parsed


async def _send_audio(
    socket: upstream.Upstream,
    audio: trio.MemoryReceiveChannel[bytes],
    ended: trio.Event,
    finishing: trio.CancelScope,
    stop_timeout: float,
) -> None:
    """The client's audio in the service's pieces; at its end `{"end": true}`, and from then on
    `stop_timeout` for the service to finish."""
    pieces = wire.Rechunker()
    async with audio:
        async for pcm in audio:
            for piece in pieces.feed(pcm):
                await socket.send(piece)
    for piece in pieces.flush():
        await socket.send(piece)
    await socket.send(wire.END_OF_AUDIO)
    ended.set()
    finishing.deadline = trio.current_time() + stop_timeout


async def _relay_results(
    socket: upstream.Upstream, events: trio.MemorySendChannel[EngineEvent], ended: trio.Event
) -> None:
    """Results to the session as they arrive, until the service closes after the end of the audio (a
    close before it is a failure: the session would lose what was said after)."""
    while True:
        received = await socket.receive_or_close()
        if received is None:
            if ended.is_set():
                return
            raise EngineError("iFlytek closed the connection before the end of the audio")
        message = _parse(received)
        if isinstance(message, Partial | Final):
            await events.send(message)
