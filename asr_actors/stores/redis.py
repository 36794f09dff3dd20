"""What gateways keep in Redis besides the bus: usage limits, single-use links, apps and routes, records.

Shared by every gateway of a deployment. Redis's errors arrive as `RedisUnavailable`
(`asr_actors.redis_client`) and leave as `DependencyUnavailable` naming what could not be done (the
session gets 503); a full app is `LimitReached` (429). Administration commands let them through to the CLI.
Keys keep the `asr:` prefix of the first release (the engine protocol's keys are versioned apart).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import trio

from asr_actors.directory import Directory
from asr_actors.errors import DependencyUnavailable
from asr_actors.limits import DAY_SECONDS, too_many, utc_day
from asr_actors.records import DAY, SessionRecord, TrafficRow, aggregate
from asr_actors.redis_client import RedisClient, RedisUnavailable
from asr_actors.signing import LinkRefused

PREFIX = "asr:"


@contextlib.contextmanager
def unavailable(what: str) -> Iterator[None]:
    """Redis away inside, as `DependencyUnavailable` naming `what` could not be done."""
    try:
        yield
    except RedisUnavailable as exc:
        raise DependencyUnavailable(f"{what}: {exc}") from exc


class RedisAudioQuota:
    """Today's audio seconds per app, shared by every gateway: one counter per app and UTC day."""

    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis

    @staticmethod
    def _key(app: str, now: float) -> str:
        return f"{PREFIX}audio:{app}:{utc_day(now)}"

    async def used_today(self, app: str, now: float) -> float:
        # Without the shared count the limit cannot be kept: refuse rather than admit unmetered.
        with unavailable("Usage limits unavailable"):
            stored = await self._redis.get(self._key(app, now))
        return float(stored) if stored is not None else 0.0

    async def charge(self, app: str, seconds: float, now: float) -> None:
        key = self._key(app, now)
        with unavailable("Usage could not be counted"):
            async with self._redis.pipeline() as pipeline:
                pipeline.incrbyfloat(key, seconds)
                pipeline.expire(key, 2 * DAY_SECONDS)


class RedisSessionSlots:
    """Concurrent sessions per app across every gateway: a sorted set of the sessions holding a slot,
    scored by when their hold expires. A session adds itself, then counts; over the limit it takes itself
    out again (two racing for the last slot may both be refused, never both admitted). Holds are renewed
    every third of `ttl`, so a gateway that dies frees its slots after `ttl`."""

    def __init__(self, redis: RedisClient, limit: int, per_app: dict[str, int], ttl: float) -> None:
        self._redis = redis
        self._limit = limit
        self._per_app = per_app
        self._ttl = ttl

    @asynccontextmanager
    async def hold(self, app: str) -> AsyncIterator[None]:
        limit = self._per_app.get(app, self._limit)
        if not limit:
            yield
            return
        key, member = f"{PREFIX}slots:{app}", uuid.uuid4().hex
        with unavailable("Usage limits unavailable"):
            held = await self._take(key, member)
        try:
            if held > limit:
                raise too_many(app, limit)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._renew, key, member)
                yield
                nursery.cancel_scope.cancel()
        finally:
            with (
                trio.CancelScope(shield=True),
                trio.move_on_after(self._ttl),
                contextlib.suppress(RedisUnavailable),
            ):
                await self._redis.zrem(key, member)

    async def _take(self, key: str, member: str) -> int:
        now = time.time()
        async with self._redis.pipeline(transaction=True) as pipeline:
            pipeline.zremrangebyscore(key, float("-inf"), now)
            pipeline.zadd(key, {member: now + self._ttl})
            held = pipeline.zcard(key)
            pipeline.expire(key, int(self._ttl * 2) + 1)
        return await held.get()

    async def _renew(self, key: str, member: str) -> None:
        while True:
            await trio.sleep(self._ttl / 3)
            with contextlib.suppress(RedisUnavailable):  # a missed renewal is retried; the hold lasts ttl
                await self._redis.zadd(key, {member: time.time() + self._ttl})
                await self._redis.expire(key, int(self._ttl * 2) + 1)


class RedisReplayGuard:
    """Single use of signed links across every gateway: SET NX with the link's remaining lifetime."""

    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis

    async def claim(self, signature: str, expires_at: float, now: float) -> None:
        key = f"{PREFIX}link:{signature.replace(' ', '+')}"
        ttl_ms = max(1, int((expires_at - now) * 1000))
        # Without the shared memory of used links no link can be admitted: the session gets 503.
        with unavailable("The link check is unavailable"):
            first = await self._redis.set_if_absent(key, b"1", px=ttl_ms)
        if not first:
            raise LinkRefused("link already used")


class RedisClientSecrets:
    """The realtime API's client secrets shared by every gateway: a key per secret's SHA-256, expiring with
    it, taken with GETDEL (used once, whichever gateway the browser reaches)."""

    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis

    async def keep(self, secret_digest: str, app: str, ttl_s: float) -> None:
        with unavailable("The client secret could not be kept"):
            await self._redis.set(f"{PREFIX}client_secret:{secret_digest}", app, px=max(1, int(ttl_s * 1000)))

    async def redeem(self, secret_digest: str) -> str | None:
        with unavailable("The client secret check is unavailable"):
            app = await self._redis.getdel(f"{PREFIX}client_secret:{secret_digest}")
        return app.decode() if app is not None else None


class RedisDirectory:
    """Apps and language routes in Redis, shared and editable while gateways run; `fallback` (the config)
    answers for apps Redis does not know and for routes until Redis holds any."""

    APPS = f"{PREFIX}apps"
    ROUTES = f"{PREFIX}routes"
    # API keys: SHA-256 (hex) -> app, and each app's current digest (to replace or remove it).
    API_KEYS = f"{PREFIX}api_keys"
    APP_API_KEYS = f"{PREFIX}app_api_keys"

    def __init__(self, redis: RedisClient, fallback: Directory) -> None:
        self._redis = redis
        self._fallback = fallback

    async def secret(self, appkey: str) -> str | None:
        with unavailable("The app directory is unavailable"):
            stored = await self._redis.hget(self.APPS, appkey)
        return stored.decode() if stored is not None else await self._fallback.secret(appkey)

    async def engine_for(self, language: str) -> str | None:
        return (await self.routes()).get(language)

    async def app_for_api_key(self, digest: str) -> str | None:
        with unavailable("The app directory is unavailable"):
            stored = await self._redis.hget(self.API_KEYS, digest)
        return stored.decode() if stored is not None else await self._fallback.app_for_api_key(digest)

    async def routes(self) -> dict[str, str]:
        with unavailable("The language routes are unavailable"):
            stored = await self._redis.hgetall(self.ROUTES)
        if not stored:
            return await self._fallback.routes()
        return {code.decode(): engine.decode() for code, engine in stored.items()}

    # Administration (the `apps` and `routes` commands):
    async def list_apps(self) -> list[str]:
        keys = [*await self._redis.hkeys(self.APPS), *await self._redis.hkeys(self.APP_API_KEYS)]
        return sorted({key.decode() for key in keys})

    async def add_app(self, appkey: str, secret: str) -> None:
        if await self._redis.hexists(self.APP_API_KEYS, appkey) or not await self._redis.hsetnx(
            self.APPS, appkey, secret
        ):
            raise ValueError(f"app {appkey!r} exists already (use rotate)")

    async def set_api_key(self, appkey: str, digest: str, *, new_app: bool) -> None:
        exists = await self._redis.hexists(self.APPS, appkey) or await self._redis.hexists(
            self.APP_API_KEYS, appkey
        )
        if new_app and exists:
            raise ValueError(f"app {appkey!r} exists already (use rotate)")
        if not new_app and not exists:
            raise ValueError(f"no app {appkey!r}")
        await self._drop_api_key(appkey)
        await self._redis.hset(self.API_KEYS, {digest: appkey})
        await self._redis.hset(self.APP_API_KEYS, {appkey: digest})

    async def _drop_api_key(self, appkey: str) -> bool:
        old = await self._redis.hget(self.APP_API_KEYS, appkey)
        if old is None:
            return False
        await self._redis.hdel(self.API_KEYS, old.decode())
        await self._redis.hdel(self.APP_API_KEYS, appkey)
        return True

    async def rotate_app(self, appkey: str, secret: str) -> None:
        if not await self._redis.hexists(self.APPS, appkey):
            raise ValueError(f"no app {appkey!r}")
        await self._redis.hset(self.APPS, {appkey: secret})

    async def remove_app(self, appkey: str) -> None:
        had_secret = await self._redis.hdel(self.APPS, appkey)
        if not await self._drop_api_key(appkey) and not had_secret:
            raise ValueError(f"no app {appkey!r}")

    async def set_route(self, language: str, engine: str) -> None:
        if not await self._redis.exists(self.ROUTES):
            # The first edit starts from the config's routes, so that it does not drop the others.
            seed = await self._fallback.routes()
            if seed:
                await self._redis.hset(self.ROUTES, seed)
        await self._redis.hset(self.ROUTES, {language: engine})

    async def remove_route(self, language: str) -> None:
        await self.set_route(language, "")  # seeds the hash from the config first if need be
        await self._redis.hdel(self.ROUTES, language)


class RedisRecordStore:
    """Session records shared by every gateway: one key per session (expiring with the retention) and a
    sorted set of sessions by start time."""

    INDEX = f"{PREFIX}records"

    def __init__(self, redis: RedisClient, retention_days: float) -> None:
        self._redis = redis
        self._retention = retention_days * DAY

    async def save(self, record: SessionRecord) -> None:
        client = self._redis
        with unavailable("The session record could not be kept"):
            await client.set(f"{PREFIX}record:{record.session_id}", record.to_json(), ex=int(self._retention))
            await client.zadd(self.INDEX, {record.session_id: record.started_at})
            await client.zremrangebyscore(self.INDEX, float("-inf"), record.ended_at - self._retention)

    async def transcripts(self, *, app: str | None = None, since: float = 0) -> list[SessionRecord]:
        client = self._redis
        sessions = await client.zrange_by_score(self.INDEX, since, "+inf")
        if not sessions:
            return []
        bodies = await client.mget([f"{PREFIX}record:{session}" for session in sessions])
        records = [SessionRecord.from_json(body) for body in bodies if body is not None]
        return [record for record in records if app is None or record.app == app]

    async def traffic(self, *, app: str | None = None, since: float = 0) -> list[TrafficRow]:
        return aggregate(await self.transcripts(app=app, since=since))
