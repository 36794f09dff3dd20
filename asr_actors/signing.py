"""Signed links: the ASRWebSocketServer signature scheme, its validity window and replay refusal.

Pure: no clock and no I/O; callers pass `now`.

    sig = Base64(HMAC-SHA256(secret, "host: H\\ndate: D\\nappkey: K\\nGET PATH"))

When the optional `nonce` query parameter is present the signed string gains a fifth line
`"\\nnonce: N"`, so that one app can open several sessions in the same second (links are signed to
the second and each link is single-use). Old clients send no nonce and sign exactly the four lines.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
from typing import Protocol
from urllib.parse import urlencode

import attrs


def string_to_sign(host: str, date: str, appkey: str, path: str, nonce: str | None = None) -> str:
    text = f"host: {host}\ndate: {date}\nappkey: {appkey}\nGET {path}"
    if nonce is not None:
        text += f"\nnonce: {nonce}"
    return text


def sign(secret: str, host: str, date: str, appkey: str, path: str, nonce: str | None = None) -> str:
    digest = hmac.new(
        secret.encode(), string_to_sign(host, date, appkey, path, nonce).encode(), hashlib.sha256
    ).digest()
    return base64.b64encode(digest).decode("ascii")


def signed_query(secret: str, host: str, appkey: str, path: str, now: float, nonce: str | None = None) -> str:
    """The query string of a signed link made at `now` (URL-encoded, so `+` survives)."""
    date = str(int(now))
    params = {"appkey": appkey, "date": date, "signature": sign(secret, host, date, appkey, path, nonce)}
    if nonce is not None:
        params["nonce"] = nonce
    return urlencode(params)


class LinkRefused(Exception):
    """A signed link is not acceptable; the message says why (for logs, not for the client)."""


@attrs.frozen
class Window:
    survival_time: float
    clock_skew: float

    def check(self, date: str, now: float) -> float:
        """Return the link's expiry time, or raise LinkRefused if `date` is outside the window.

        A link is valid from `date - clock_skew` to `date + survival_time + clock_skew`: a link dated in
        the future is only tolerated within the clock skew (the old server accepted it forever).
        """
        try:
            signed_at = int(date)
        except ValueError:
            raise LinkRefused(f"date {date!r} is not a unix time in seconds") from None
        if signed_at - now > self.clock_skew:
            raise LinkRefused(f"link dated {signed_at - now:.0f} s in the future")
        expires_at = signed_at + self.survival_time + self.clock_skew
        if now > expires_at:
            raise LinkRefused(f"link expired {now - expires_at:.0f} s ago")
        return expires_at


def verify(
    secret: str, host: str, date: str, appkey: str, path: str, signature: str, nonce: str | None = None
) -> None:
    """Raise LinkRefused unless `signature` signs these fields with `secret` (constant-time)."""
    # Old clients do not URL-encode the signature, so a `+` of the Base64 arrives as a space.
    presented = signature.replace(" ", "+").encode()
    expected = sign(secret, host, date, appkey, path, nonce).encode()
    if not hmac.compare_digest(presented, expected):
        raise LinkRefused("signature does not match")


class ReplayGuard(Protocol):
    """Refuses a signature's second use while its link is valid (shared by all gateways in Redis mode)."""

    async def claim(self, signature: str, expires_at: float, now: float) -> None:
        """Raise LinkRefused if `signature` was claimed before."""
        ...


class MemoryReplayGuard:
    """The single-process guard: a ReplayCache behind the async interface."""

    def __init__(self) -> None:
        self.cache = ReplayCache()

    async def claim(self, signature: str, expires_at: float, now: float) -> None:
        self.cache.claim(signature, expires_at, now)


class ReplayCache:
    """Remembers used signatures until their link expires; a second use is refused.

    Memory is bounded by the validity window: entries are dropped once their link has expired, since an
    expired link is refused by the window check anyway.
    """

    def __init__(self) -> None:
        self._expiry_by_signature: dict[str, float] = {}
        # The same entries by expiry, soonest first: a claim forgets the expired ones without looking at
        # the rest (a scan of every entry per claim was quadratic in a burst of sessions).
        self._by_expiry: list[tuple[float, str]] = []

    def claim(self, signature: str, expires_at: float, now: float) -> None:
        self._forget_expired(now)
        key = signature.replace(" ", "+")
        if key in self._expiry_by_signature:
            raise LinkRefused("link already used")
        self._expiry_by_signature[key] = expires_at
        heapq.heappush(self._by_expiry, (expires_at, key))

    def _forget_expired(self, now: float) -> None:
        while self._by_expiry and self._by_expiry[0][0] < now:
            _, key = heapq.heappop(self._by_expiry)
            del self._expiry_by_signature[key]

    def __len__(self) -> int:
        return len(self._expiry_by_signature)
