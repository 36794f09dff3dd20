"""Per-app limits on concurrent sessions (429 beyond), per process or shared through Redis."""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

from asr_actors.protocol import ErrorCode, ProtocolError


class SessionSlots(Protocol):
    def hold(self, app: str) -> AbstractAsyncContextManager[None]:
        """Hold one of `app`'s session slots for the duration; ProtocolError 429 if none is free."""
        ...


def too_many(app: str, limit: int) -> ProtocolError:
    return ProtocolError(ErrorCode.TOO_MANY, f"Too many sessions for app {app!r} (limit {limit})")


class MemorySessionSlots:
    """Counts in this process (the embedded gateway). `limit` 0 means unlimited."""

    def __init__(self, limit: int, per_app: dict[str, int] | None = None) -> None:
        self._limit = limit
        self._per_app = per_app or {}
        self._active: collections.Counter[str] = collections.Counter()

    def limit_for(self, app: str) -> int:
        return self._per_app.get(app, self._limit)

    @asynccontextmanager
    async def hold(self, app: str) -> AsyncIterator[None]:
        limit = self.limit_for(app)
        if limit and self._active[app] >= limit:
            raise too_many(app, limit)
        self._active[app] += 1
        try:
            yield
        finally:
            self._active[app] -= 1


class HandshakeRate:
    """Per client address, at most `per_minute` WebSocket handshakes in any 60 s (a token bucket).

    Pure: the caller passes the time. Memory stays bounded: an address whose bucket is full again is
    forgotten.
    """

    def __init__(self, per_minute: int) -> None:
        self._capacity = float(per_minute)
        self._refill_per_s = per_minute / 60.0
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, at)

    def allow(self, address: str, now: float) -> bool:
        if not self._capacity:
            return True
        tokens, at = self._buckets.get(address, (self._capacity, now))
        tokens = min(self._capacity, tokens + (now - at) * self._refill_per_s)
        if tokens < 1:
            self._buckets[address] = (tokens, now)
            return False
        self._buckets[address] = (tokens - 1, now)
        if len(self._buckets) > 10_000:
            self._forget_full(now)
        return True

    def _forget_full(self, now: float) -> None:
        for address, (tokens, at) in list(self._buckets.items()):
            if tokens + (now - at) * self._refill_per_s >= self._capacity:
                del self._buckets[address]
