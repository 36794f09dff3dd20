"""API keys for the OpenAI-compatible API: `Authorization: Bearer <key>`, one key per app.

Keys come from the environment (`[apps.NAME] api_key_env`); only their SHA-256 digests are held, so that
neither memory dumps nor logs carry a key, and a lookup by digest does not compare keys byte by byte."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from asr_actors.config import Config
from asr_actors.openai_api.errors import ApiError


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeys:
    def __init__(self, apps_by_digest: Mapping[str, str]) -> None:
        self._apps = dict(apps_by_digest)

    @classmethod
    def from_config(cls, config: Config) -> ApiKeys:
        apps: dict[str, str] = {}
        for appkey, app in config.apps.items():
            key = app.resolve_api_key(appkey)
            if key is not None:
                apps[digest(key)] = appkey
        return cls(apps)

    def app_for(self, authorization: str | None) -> str:
        """The app whose key the `Authorization` header carries; ApiError 401 if none does."""
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(401, "Missing API key: send Authorization: Bearer <key>", code="invalid_api_key")
        appkey = self._apps.get(digest(key.strip()))
        if appkey is None:
            raise ApiError(401, "Incorrect API key provided", code="invalid_api_key")
        return appkey
