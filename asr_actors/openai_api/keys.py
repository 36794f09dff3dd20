"""API keys for the OpenAI-compatible API: `Authorization: Bearer <key>`, one key per app.

Keys come from the environment (`[apps.NAME] api_key_env`) or from `asr-actors apps add NAME --api-key`
(the apps file, or Redis on the Redis bus); only their SHA-256 digests are held, so that neither memory
dumps, files nor logs carry a key, and a lookup by digest does not compare keys byte by byte."""

from __future__ import annotations

import hashlib

from asr_actors.config import Config
from asr_actors.directory import Directory
from asr_actors.openai_api.errors import ApiError


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeys:
    """Looks a Bearer key up in the directory: the config's and the apps file's keys, and on the Redis bus
    the keys `asr-actors apps add NAME --api-key` stored there (live on running gateways)."""

    def __init__(self, directory: Directory) -> None:
        self._directory = directory

    async def app_for(self, authorization: str | None) -> str:
        """The app whose key the `Authorization` header carries; ApiError 401 if none does."""
        return await self.app_for_key(bearer(authorization))

    async def app_for_key(self, key: str | None) -> str:
        if not key:
            raise ApiError(401, "Missing API key: send Authorization: Bearer <key>", code="invalid_api_key")
        appkey = await self._directory.app_for_api_key(digest(key))
        if appkey is None:
            raise ApiError(401, "Incorrect API key provided", code="invalid_api_key")
        return appkey


def bearer(authorization: str | None) -> str | None:
    """The key of an `Authorization: Bearer <key>` header."""
    scheme, _, key = (authorization or "").partition(" ")
    return key.strip() or None if scheme.lower() == "bearer" else None


def configured_digests(config: Config) -> dict[str, str]:
    """The config's API keys (`[apps.NAME] api_key_env`): SHA-256 -> app."""
    found: dict[str, str] = {}
    for appkey, app in config.apps.items():
        key = app.resolve_api_key(appkey)
        if key is not None:
            found[digest(key)] = appkey
    return found
