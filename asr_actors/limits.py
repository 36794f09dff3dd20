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
