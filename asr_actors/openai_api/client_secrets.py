"""Short-lived client secrets for browsers (the Realtime API's ephemeral keys): an app's server, holding its
API key, asks for one (`POST /v1/realtime/client_secrets`, the beta `/v1/realtime/transcription_sessions`)
and hands it to a page, which opens one realtime session with it; the secret is then used up, or expires.

Only a secret's SHA-256 is kept, with its app and expiry: in this process, or in Redis on the Redis bus
(`stores/redis.RedisClientSecrets`), so that a secret one gateway issued opens a session on any.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from typing import Any, Protocol

from asr_actors import http
from asr_actors.openai_api.errors import ApiError
from asr_actors.openai_api.keys import ApiKeys, digest

PREFIX = "ek_"


def new_secret() -> str:
    return PREFIX + secrets.token_urlsafe(32)


class ClientSecrets(Protocol):
    async def keep(self, secret_digest: str, app: str, ttl_s: float) -> None:
        """Keep the secret with this SHA-256 for `app` for `ttl_s` seconds."""
        ...

    async def redeem(self, secret_digest: str) -> str | None:
        """The app of a kept, unexpired secret, which is then used up; None for any other."""
        ...


class MemoryClientSecrets:
    def __init__(self, wall_clock: Callable[[], float] = time.time) -> None:
        self._kept: dict[str, tuple[str, float]] = {}
        self._wall_clock = wall_clock

    async def keep(self, secret_digest: str, app: str, ttl_s: float) -> None:
        now = self._wall_clock()
        # Expired ones go as new ones come: the map holds at most the secrets of the last ttl.
        self._kept = {key: kept for key, kept in self._kept.items() if kept[1] > now}
        self._kept[secret_digest] = (app, now + ttl_s)

    async def redeem(self, secret_digest: str) -> str | None:
        kept = self._kept.pop(secret_digest, None)
        if kept is None or kept[1] <= self._wall_clock():
            return None
        return kept[0]


async def issue(store: ClientSecrets, app: str, ttl_s: float) -> str:
    secret = new_secret()
    await store.keep(digest(secret), app, ttl_s)
    return secret


# A request for a secret is a small JSON object (the session it is for); larger is no such request.
MAX_REQUEST_BYTES = 64 * 1024
# GA: `expires_after.seconds` may ask for 10 s to 2 h; 10 minutes unless it does. Beta: one minute.
DEFAULT_TTL_S = 600.0
BETA_TTL_S = 60.0
TTL_RANGE_S = (10.0, 7200.0)


class Issuer:
    """`POST /v1/realtime/client_secrets` (and the beta `POST /v1/realtime/transcription_sessions`): an app,
    by its API key, gets a secret for one browser session. The session configuration sent with it is
    echoed back, not bound to the secret: the page's own `session.update` sets the session."""

    def __init__(
        self, keys: ApiKeys, store: ClientSecrets, wall_clock: Callable[[], float] = time.time
    ) -> None:
        self._keys = keys
        self._store = store
        self._wall_clock = wall_clock

    async def answer(self, head: http.RequestHead, body: http.RequestBody) -> http.Response:
        try:
            return await self._issue(head, body)
        except ApiError as exc:
            return exc.response()

    async def _issue(self, head: http.RequestHead, body: http.RequestBody) -> http.Response:
        app = await self._keys.app_for(head.headers.get("authorization"))
        request = await _json_body(body)
        beta = head.path.endswith("/transcription_sessions")
        ttl = BETA_TTL_S if beta else _ttl(request.get("expires_after"))
        secret = await issue(self._store, app, ttl)
        expires_at = int(self._wall_clock() + ttl)
        asked = request.get("session")
        session: dict[str, Any] = asked if isinstance(asked, dict) else {}
        if beta:
            payload = {
                **request,
                "object": "realtime.transcription_session",
                "client_secret": {"value": secret, "expires_at": expires_at},
            }
        else:
            payload = {
                "value": secret,
                "expires_at": expires_at,
                "session": {"type": "transcription", **session},
            }
        return http.Response(200, json.dumps(payload).encode(), "application/json")


async def _json_body(body: http.RequestBody) -> dict[str, Any]:
    data = b""
    while chunk := await body.receive():
        data += chunk
        if len(data) > MAX_REQUEST_BYTES:
            raise ApiError(413, f"The request is larger than {MAX_REQUEST_BYTES} bytes")
    if not data.strip():
        return {}
    try:
        request = json.loads(data)
    except ValueError:
        raise ApiError(400, "The body is not JSON") from None
    if not isinstance(request, dict):
        raise ApiError(400, "The body is not a JSON object")
    return request


def _ttl(expires_after: object) -> float:
    if expires_after is None:
        return DEFAULT_TTL_S
    seconds = expires_after.get("seconds") if isinstance(expires_after, dict) else None
    low, high = TTL_RANGE_S
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not low <= seconds <= high:
        raise ApiError(
            400, f"expires_after.seconds must be {low:g} to {high:g}", param="expires_after.seconds"
        )
    return float(seconds)
