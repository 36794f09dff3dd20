"""The `iflytek` engine: iFlytek real-time transcription (rtasr), native on Trio, one task per session.

The engine behind ASRWebSocketServer's Chinese, whose clients protocol v1 serves. Per session: a signed
WebSocket run by `upstream.run_session` (the skeleton the native engines share), the service's `started`
awaited within `start_timeout`; then the client's audio goes out in the 1,280-byte pieces the service
asks for while its results are read as they arrive: intermediate → Partial, definitive → Final. At the
end of the audio the `{"end": true}` bytes go out and the service's last results and its close are
awaited within `stop_timeout`. A refused key, a service error, a connection that closes mid-stream: one
EngineError each (a coded 500 for the client, the service's code in it), converted here and in
`upstream`, once. Message formats: `iflytek_wire.py`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

import trio

from asr_actors.config import IflytekEngineConfig
from asr_actors.engines import iflytek_wire as wire
from asr_actors.engines import upstream
from asr_actors.engines.base import (
    EngineEvent,
    EngineUnavailable,
    StreamSpec,
    UnsupportedStream,
    refuse_unhonoured,
)

SAMPLE_RATE = 16000
SERVICE = "iFlytek"


class IflytekEngine:
    name = "iflytek"
    # Its results always carry word times; `pd` and `punc` are query parameters of the connection.
    options = frozenset({"words", "punctuation", "iflytek.pd"})

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
        refuse_unhonoured(spec, self.name, self.options)

    async def run_stream(
        self,
        spec: StreamSpec,
        audio: trio.MemoryReceiveChannel[bytes],
        events: trio.MemorySendChannel[EngineEvent],
    ) -> None:
        self.check(spec)
        config = self._config
        url = wire.signed_url(
            config.url or wire.DEFAULT_URL,
            config.app_id,
            self._api_key,
            time.time(),
            wire.query_options(spec.options),
        )
        await upstream.run_session(
            url,
            RtasrSession(),
            upstream.Timeouts(start=config.start_timeout, stop=config.stop_timeout),
            audio,
            events,
        )


class RtasrSession:
    """One session in iFlytek's rtasr protocol (`upstream.ServiceProtocol`): the audio in the service's
    1,280-byte pieces, `{"end": true}` at its end; the service finishes by closing."""

    service = SERVICE
    finishes_by_closing = True

    def __init__(self) -> None:
        self._pieces = wire.Rechunker()

    def opening(self) -> Iterable[str | bytes]:
        return ()

    def audio(self, pcm: bytes) -> Iterable[bytes]:
        return self._pieces.feed(pcm)

    def closing(self) -> Iterable[str | bytes]:
        return (*self._pieces.flush(), wire.END_OF_AUDIO)

    def parse(self, message: str | bytes) -> upstream.ServiceEvent | None:
        if isinstance(message, bytes):
            message = message.decode("utf-8", errors="replace")
        return wire.parse_message(message)
