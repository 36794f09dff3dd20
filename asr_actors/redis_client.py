"""Redis, as the rest of the project sees it: the one module that imports its client library (coredis).

coredis runs natively on Trio (anyio): no bridge threads (docs/dependencies.md compares the options). Its
errors, and the socket and stream errors it lets through, become `RedisUnavailable` here and nowhere else,
as httpcore's `map_exceptions` does for its backends: the engine protocol (`asr_actors.engine_protocol`)
and the stores (`asr_actors.stores`) catch one domain error, and the session turns it into a 503. Only
the commands the project uses are here, each typed as the project uses it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Generic, TypeVar

import anyio
import coredis
import coredis.exceptions
import coredis.patterns.pipeline
from coredis.response.types import PubSubMessage

from asr_actors.errors import DependencyUnavailable
from asr_actors.groups import first_leaf

_ERRORS = (coredis.exceptions.RedisError, OSError, anyio.BrokenResourceError, anyio.ClosedResourceError)

T = TypeVar("T")


class RedisUnavailable(DependencyUnavailable):
    """Redis did not do what it was asked: away, restarting, out of memory, or it refused the command."""


@contextlib.contextmanager
def _converted() -> Iterator[None]:
    try:
        yield
    except _ERRORS as exc:
        raise RedisUnavailable(str(exc) or type(exc).__name__) from exc
    except BaseExceptionGroup as group:
        # The pub/sub connection's own tasks report in groups (with a Cancelled beside, often): the Redis
        # errors in one become one RedisUnavailable, the rest stays as it was.
        redis_errors, rest = group.split(_ERRORS)
        if redis_errors is None:
            raise
        leaf = first_leaf(redis_errors)
        converted = RedisUnavailable(str(leaf) or type(leaf).__name__)
        converted.__cause__ = redis_errors
        if rest is None:
            raise converted from group
        raise BaseExceptionGroup(group.message, [converted, rest]) from None


class Reply(Generic[T]):
    """A pipelined command's answer, readable once the pipeline's round trip is over."""

    def __init__(self, request: Awaitable[object], convert: Callable[[object], T]) -> None:
        self._request = request
        self._convert = convert

    async def get(self) -> T:
        with _converted():
            return self._convert(await self._request)


class Pipeline:
    """Commands sent together in one round trip when the `pipeline` context ends (replies unread unless
    asked for: a failed round trip raises at the context's end)."""

    def __init__(self, pipeline: coredis.patterns.pipeline.Pipeline[bytes]) -> None:
        self._pipeline = pipeline

    def lpush(self, key: str, values: Sequence[bytes]) -> None:
        self._pipeline.lpush(key, values)

    def publish(self, channel: str, payload: bytes) -> None:
        self._pipeline.publish(channel, payload)

    def incr(self, key: str) -> None:
        self._pipeline.incr(key)

    def incrbyfloat(self, key: str, amount: float) -> None:
        self._pipeline.incrbyfloat(key, amount)

    def expire(self, key: str, seconds: int) -> None:
        self._pipeline.expire(key, seconds)

    def zadd(self, key: str, scores: Mapping[str, float]) -> None:
        members: dict[str | bytes, float] = {member: score for member, score in scores.items()}
        self._pipeline.zadd(key, members)

    def zremrangebyscore(self, key: str, low: float, high: float) -> None:
        self._pipeline.zremrangebyscore(key, low, high)

    def zcard(self, key: str) -> Reply[int]:
        return Reply(self._pipeline.zcard(key), _as_int)

    def exists(self, key: str) -> Reply[bool]:
        return Reply(self._pipeline.exists([key]), lambda count: bool(_as_int(count)))


def _as_int(value: object) -> int:
    assert isinstance(value, int)
    return value


class RedisClient:
    """A pool of connections to one Redis (a URL: redis://, rediss:// for TLS, unix://; ACL user, db)."""

    def __init__(self, url: str, name: str) -> None:
        # The connections carry `name` (CLIENT LIST shows whose inbox lags).
        self._client: coredis.Redis[bytes] = coredis.Redis.from_url(url, client_name=name)

    @asynccontextmanager
    async def open(self) -> AsyncIterator[RedisClient]:
        """The pool for the length of the context. Nothing is converted around the block, which is a whole
        process's life: the pool connects lazily, and its connections' failures surface on the commands."""
        async with self._client:
            yield self

    @asynccontextmanager
    async def pipeline(self, *, transaction: bool = False) -> AsyncIterator[Pipeline]:
        with _converted():
            async with self._client.pipeline(transaction=transaction) as pipeline:
                yield Pipeline(pipeline)

    @asynccontextmanager
    async def subscribed(self, handlers: Mapping[str, Callable[[bytes], None]]) -> AsyncIterator[None]:
        """One pub/sub connection subscribed to `handlers`' channels, each message's payload handed to its
        channel's handler as it arrives, for the length of the context. The connection's tasks fail into
        the block (as a group, at its end), so Redis's errors are converted around all of it: a block
        should only use this module's commands, which raise `RedisUnavailable` already."""

        def payload_to(handler: Callable[[bytes], None]) -> Callable[[PubSubMessage], None]:
            def deliver(message: PubSubMessage) -> None:
                data = message["data"]
                if isinstance(data, bytes):
                    handler(data)

            return deliver

        with _converted():
            async with self._client.pubsub(ignore_subscribe_messages=True) as pubsub:
                await pubsub.subscribe(**{channel: payload_to(h) for channel, h in handlers.items()})
                yield

    # Strings and keys
    async def get(self, key: str) -> bytes | None:
        with _converted():
            return await self._client.get(key)

    async def set(
        self, key: str, value: bytes | str, *, px: int | None = None, ex: int | None = None
    ) -> None:
        with _converted():
            await self._client.set(key, value, px=px, ex=ex)

    async def set_if_absent(self, key: str, value: bytes, *, px: int) -> bool:
        """SET NX: True if the key was not there and now is."""
        with _converted():
            return bool(await self._client.set(key, value, condition=coredis.PureToken.NX, px=px))

    async def getdel(self, key: str) -> bytes | None:
        """GET and DELETE in one step: a value taken once."""
        with _converted():
            return await self._client.getdel(key)

    async def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        with _converted():
            return list(await self._client.mget(keys))

    async def delete(self, key: str) -> None:
        with _converted():
            await self._client.delete([key])

    async def exists(self, key: str) -> bool:
        with _converted():
            return bool(await self._client.exists([key]))

    async def expire(self, key: str, seconds: int) -> None:
        with _converted():
            await self._client.expire(key, seconds)

    async def pttl(self, key: str) -> int:
        with _converted():
            return await self._client.pttl(key)

    async def scan(self, match: str) -> list[str]:
        """The keys matching `match`, by SCAN (never KEYS: a large keyspace must not block Redis)."""
        with _converted():
            return [key.decode() async for key in self._client.scan_iter(match=match, count=1000)]

    # Lists
    async def lpush(self, key: str, values: Sequence[bytes]) -> None:
        with _converted():
            await self._client.lpush(key, values)

    async def lrem(self, key: str, count: int, value: bytes) -> int:
        with _converted():
            return await self._client.lrem(key, count, value)

    async def brpop(self, key: str, block_s: float) -> bytes | None:
        """The oldest value of the list `key`; Redis holds the call up to `block_s` seconds for one (BRPOP's
        own timeout, kept by the server: not a client-side deadline)."""
        with _converted():
            popped = await self._client.brpop([key], timeout=block_s)
        return popped[1] if popped is not None else None

    async def rpop(self, key: str, count: int) -> list[bytes]:
        """Up to `count` of the oldest values of the list `key`, without waiting."""
        with _converted():
            popped = await self._client.rpop(key, count=count)
        return popped if isinstance(popped, list) else []

    # Pub/sub
    async def publish(self, channel: str, payload: bytes) -> None:
        with _converted():
            await self._client.publish(channel, payload)

    # Hashes
    async def hget(self, key: str, field: str) -> bytes | None:
        with _converted():
            return await self._client.hget(key, field)

    async def hgetall(self, key: str) -> dict[bytes, bytes]:
        with _converted():
            return await self._client.hgetall(key)

    async def hkeys(self, key: str) -> list[bytes]:
        with _converted():
            return list(await self._client.hkeys(key))

    async def hsetnx(self, key: str, field: str, value: str) -> bool:
        with _converted():
            return await self._client.hsetnx(key, field, value)

    async def hexists(self, key: str, field: str) -> bool:
        with _converted():
            return await self._client.hexists(key, field)

    async def hset(self, key: str, values: Mapping[str, str]) -> None:
        with _converted():
            await self._client.hset(key, values)

    async def hdel(self, key: str, field: str) -> bool:
        with _converted():
            return bool(await self._client.hdel(key, [field]))

    # Sorted sets
    async def zadd(self, key: str, scores: Mapping[str, float]) -> None:
        with _converted():
            members: dict[str | bytes, float] = {member: score for member, score in scores.items()}
            await self._client.zadd(key, members)

    async def zrem(self, key: str, member: str) -> None:
        with _converted():
            await self._client.zrem(key, [member])

    async def zremrangebyscore(self, key: str, low: float, high: float) -> None:
        with _converted():
            await self._client.zremrangebyscore(key, low, high)

    async def zrange_by_score(self, key: str, low: float, high: float | str) -> list[str]:
        with _converted():
            members = await self._client.zrange(key, low, high, sortby=coredis.PureToken.BYSCORE)
        return [member.decode() for member in members if isinstance(member, bytes)]
