"""Per-app limits (429 beyond): concurrent sessions and audio minutes per UTC day, per process here,
shared by every gateway through Redis (`stores/redis.py`); and the per-address handshake rate. A reached
limit is a `LimitReached`, which the session turns into its protocol's 429."""

from __future__ import annotations

import collections
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

import attrs

from asr_actors.config import Config

DAY_SECONDS = 86400


def utc_day(now: float) -> int:
    """Days since the epoch, UTC: the period of the daily audio limit."""
    return int(now // DAY_SECONDS)


class SessionSlots(Protocol):
    def hold(self, app: str) -> AbstractAsyncContextManager[None]:
        """Hold one of `app`'s session slots for the duration; LimitReached if none is free."""
        ...


class LimitReached(Exception):
    """An app's limit is reached: the session is refused (or ended, for the daily audio); the message says
    which limit. The session turns it into its protocol's code (429)."""


def too_many(app: str, limit: int) -> LimitReached:
    return LimitReached(f"Too many sessions for app {app!r} (limit {limit})")


@attrs.frozen
class AudioAllowance:
    """What one session may still send today; `exceeded` is its error once it has sent more."""

    seconds: float
    exceeded: LimitReached


class AudioQuota(Protocol):
    """Seconds of audio each app has sent today."""

    async def used_today(self, app: str, now: float) -> float: ...

    async def charge(self, app: str, seconds: float, now: float) -> None: ...


@attrs.define
class DailyAudioLimits:
    """The per-app daily audio limits and the quota that counts against them."""

    quota: AudioQuota
    minutes: float
    per_app_minutes: Mapping[str, float] = attrs.field(factory=dict)
    wall_clock: Callable[[], float] = time.time

    def minutes_for(self, app: str) -> float:
        return self.per_app_minutes.get(app) or self.minutes

    async def allowance(self, app: str) -> AudioAllowance | None:
        """None if `app` is unlimited; 429 if its day's audio is used up already."""
        minutes = self.minutes_for(app)
        if not minutes:
            return None
        exceeded = LimitReached(f"Daily audio limit reached for app {app!r} ({minutes:g} minutes)")
        left = minutes * 60 - await self.quota.used_today(app, self.wall_clock())
        if left <= 0:
            raise exceeded
        return AudioAllowance(left, exceeded)

    async def charge(self, app: str, seconds: float) -> None:
        # Unlimited apps are not counted: no Redis round trip per session for a limit nobody set.
        if seconds > 0 and self.minutes_for(app):
            await self.quota.charge(app, seconds, self.wall_clock())


class MemoryAudioQuota:
    """Counts in this process (the embedded gateway): today's seconds per app, earlier days forgotten."""

    def __init__(self) -> None:
        self._day = -1
        self._used: dict[str, float] = {}

    def _today(self, now: float) -> dict[str, float]:
        if utc_day(now) != self._day:
            self._day, self._used = utc_day(now), {}
        return self._used

    async def used_today(self, app: str, now: float) -> float:
        return self._today(now).get(app, 0.0)

    async def charge(self, app: str, seconds: float, now: float) -> None:
        used = self._today(now)
        used[app] = used.get(app, 0.0) + seconds


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


@attrs.frozen
class Limits:
    """An app's limits as its sessions meet them: slots held while a session runs, audio charged after."""

    slots: SessionSlots
    audio: DailyAudioLimits


def app_limits(
    config: Config, slots_for: Callable[[int, dict[str, int]], SessionSlots], quota: AudioQuota
) -> Limits:
    """The configured limits (`[auth]` for every app, `[apps.K]` overrides) over the given counters."""
    per_app_sessions = {appkey: app.max_sessions for appkey, app in config.apps.items() if app.max_sessions}
    per_app_minutes = {
        appkey: app.audio_minutes_per_day for appkey, app in config.apps.items() if app.audio_minutes_per_day
    }
    demo = config.demo
    if demo.appkey not in config.apps:
        # The app whose links the page hands out: small by default ([demo]).
        if demo.max_sessions:
            per_app_sessions[demo.appkey] = demo.max_sessions
        if demo.audio_minutes_per_day:
            per_app_minutes[demo.appkey] = demo.audio_minutes_per_day
    return Limits(
        slots_for(config.auth.sessions_per_app, per_app_sessions),
        DailyAudioLimits(quota, config.auth.audio_minutes_per_day, per_app_minutes),
    )


def memory_limits(config: Config) -> Limits:
    """Counted in this process: the embedded gateway."""
    return app_limits(config, MemorySessionSlots, MemoryAudioQuota())


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
