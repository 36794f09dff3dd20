"""The auth actor: checks the handshake's signed link before any audio is read."""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs

from asr_actors import protocol
from asr_actors.directory import Directory
from asr_actors.protocol import ErrorCode, Handshake, ProtocolError
from asr_actors.signing import LinkRefused, ReplayGuard, Window, verify

log = logging.getLogger(__name__)


@attrs.frozen
class Grant:
    """A handshake that passed: who is speaking and what they asked for."""

    appkey: str
    handshake: Handshake


async def run(
    *,
    host: str,
    target: str,
    directory: Directory,
    window: Window,
    replay: ReplayGuard,
    wall_clock: Callable[[], float],
) -> Grant:
    """Return the Grant for this handshake or raise ProtocolError (401 for anything about the link)."""
    handshake = protocol.parse_handshake(target)
    secret = await directory.secret(handshake.appkey)
    try:
        if secret is None:
            raise LinkRefused(f"unknown appkey {handshake.appkey!r}")
        now = wall_clock()
        expires_at = window.check(handshake.date, now)
        verify(
            secret,
            host,
            handshake.date,
            handshake.appkey,
            handshake.path,
            handshake.signature,
            handshake.nonce,
        )
        # Claimed last: a forged or expired link must not use up a genuine signature.
        await replay.claim(handshake.signature, expires_at, now)
    except LinkRefused as exc:
        log.info("refused link for app %r: %s", handshake.appkey, exc)
        raise ProtocolError(ErrorCode.UNAUTHORIZED, protocol.UNAUTHORIZED) from None
    return Grant(appkey=handshake.appkey, handshake=handshake)
