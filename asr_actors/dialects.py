"""Wire dialects: how a connection is admitted, its frames decoded and its results encoded.

The actors and the supervisor are the same for every dialect; only these three things differ.
`V1` is protocol v1 (docs/protocol.md); `Bailian` is the old Bailian demo's protocol (bailian.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Protocol

import attrs

from asr_actors import bailian, protocol, session_options
from asr_actors.actors import auth
from asr_actors.config import Config
from asr_actors.directory import Directory
from asr_actors.protocol import ClientDecoder, Decoder, Encoded, ProtocolError, ServerEvent
from asr_actors.signing import ReplayGuard, Window


@attrs.frozen
class Admission:
    """What the HTTP front learnt from the upgrade request."""

    host: str
    target: str
    # The upgrade request's headers (names in lower case).
    headers: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class Admitted:
    appkey: str
    decoder: Decoder
    # What the dialect says first, before the client has sent anything.
    greeting: tuple[str, ...] = ()


class Dialect(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def subprotocols(self) -> tuple[str, ...]:
        """WebSocket subprotocols the dialect accepts (the first the client offers is chosen)."""
        ...

    async def admit(self, admission: Admission, config: Config) -> Admitted:
        """Authenticate the connection and make its decoder; raise ProtocolError to refuse it."""
        ...

    def encoder(self, session_id: str) -> Callable[[ServerEvent], Encoded]: ...

    def encode_error(self, error: ProtocolError) -> str: ...


@attrs.frozen
class V1:
    """Protocol v1: signed single-use links, JSON or binary audio, the ASRWebSocketServer envelope."""

    directory: Directory
    replay: ReplayGuard
    wall_clock: Callable[[], float]
    name: str = "v1"
    subprotocols: tuple[str, ...] = ()

    async def admit(self, admission: Admission, config: Config) -> Admitted:
        grant = await auth.run(
            host=admission.host,
            target=admission.target,
            directory=self.directory,
            window=Window(config.auth.survival_time, config.auth.clock_skew),
            replay=self.replay,
            wall_clock=self.wall_clock,
        )
        decoder = ClientDecoder(
            max_frame_bytes=config.session.max_frame_bytes,
            default_language=config.session.default_language,
            default_sample_rate=config.session.default_sample_rate,
            language=grant.handshake.language,
            sample_rate=grant.handshake.sample_rate,
            read_options=functools.partial(
                session_options.parse, caps=session_options.caps_of(config.session)
            ),
        )
        return Admitted(grant.appkey, decoder)

    def encoder(self, session_id: str) -> Callable[[ServerEvent], Encoded]:
        return functools.partial(protocol.encode, session_id)

    def encode_error(self, error: ProtocolError) -> str:
        return protocol.encode_error(error.code, error.message)


@attrs.frozen
class Bailian:
    """The Bailian demo's protocol, for its unmodified page; loopback only, no link to sign."""

    name: str = "bailian"
    appkey: str = "bailian-compat"
    subprotocols: tuple[str, ...] = ()

    async def admit(self, admission: Admission, config: Config) -> Admitted:
        return Admitted(
            self.appkey,
            bailian.Decoder(
                max_frame_bytes=config.session.max_frame_bytes,
                language=config.session.default_language,
                sample_rate=bailian.SAMPLE_RATE,
            ),
        )

    def encoder(self, session_id: str) -> Callable[[ServerEvent], Encoded]:
        return bailian.encode

    def encode_error(self, error: ProtocolError) -> str:
        return bailian.encode_error(error)
