"""Who may connect and where each language goes: the app secrets and the language routes.

The embedded gateway's directory is its config (plus the apps file that `python -m asr_actors apps`
manages); on the Redis bus the directory lives in Redis, shared by every gateway and editable while they
run (`apps` and `routes` commands), with the config as the fallback.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from asr_actors.config import Config, state_path

APPKEY_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class Directory(Protocol):
    async def secret(self, appkey: str) -> str | None:
        """The app's secret, or None if the app is unknown."""
        ...

    async def engine_for(self, language: str) -> str | None:
        """The engine a language routes to, or None if it has no route."""
        ...

    async def routes(self) -> dict[str, str]:
        """Every routed language and its engine."""
        ...

    async def app_for_api_key(self, digest: str) -> str | None:
        """The app whose API key has this SHA-256 (hex), or None."""
        ...


class StaticDirectory:
    """The config's routes and a fixed set of app secrets and API key digests."""

    def __init__(
        self, config: Config, secrets: Mapping[str, str], api_keys: Mapping[str, str] | None = None
    ) -> None:
        self._config = config
        self._secrets = dict(secrets)
        self._api_keys = dict(api_keys or {})

    async def secret(self, appkey: str) -> str | None:
        return self._secrets.get(appkey)

    async def app_for_api_key(self, digest: str) -> str | None:
        return self._api_keys.get(digest)

    async def engine_for(self, language: str) -> str | None:
        return self._config.engine_for(language)

    async def routes(self) -> dict[str, str]:
        return {code: engine for code in self._config.languages if (engine := self._config.engine_for(code))}


def check_appkey(appkey: str) -> str:
    if not APPKEY_PATTERN.match(appkey):
        raise ValueError(f"app keys are 1-64 letters, digits, '_', '.' or '-': {appkey!r}")
    return appkey


def _read_apps_tables(path: Path) -> dict[str, dict[str, str]]:
    import tomllib

    if not path.exists():
        return {}
    data = tomllib.loads(path.read_text())
    return {
        key: {name: str(value) for name, value in table.items()}
        for key, table in data.get("apps", {}).items()
    }


def read_apps_file(path: Path) -> dict[str, str]:
    """The secrets of the apps file: TOML tables `[apps.KEY] secret = "..."` that the `apps` command writes
    (git-ignored); an app there may have an API key's SHA-256 (`api_key_sha256`) instead or as well."""
    return {key: table["secret"] for key, table in _read_apps_tables(path).items() if "secret" in table}


def read_api_key_digests(path: Path) -> dict[str, str]:
    """The apps file's API keys: SHA-256 (hex) -> app."""
    tables = _read_apps_tables(path)
    return {table["api_key_sha256"]: key for key, table in tables.items() if "api_key_sha256" in table}


def write_apps_file(path: Path, apps: Mapping[str, Mapping[str, str]]) -> None:
    # JSON strings are valid TOML basic strings, so json.dumps quotes both keys and secrets correctly.
    lines = ["# Written by `python -m asr_actors apps`; holds secrets: keep it out of git.", ""]
    for key in sorted(apps):
        lines.append(f"[apps.{json.dumps(key)}]")
        lines += [f"{name} = {json.dumps(value)}" for name, value in sorted(apps[key].items())]
        lines.append("")
    path.write_text("\n".join(lines))
    path.chmod(0o600)


class DirectoryAdmin(Protocol):
    """What the `apps` and `routes` commands change."""

    async def list_apps(self) -> list[str]: ...

    async def add_app(self, appkey: str, secret: str) -> None: ...

    async def rotate_app(self, appkey: str, secret: str) -> None: ...

    async def remove_app(self, appkey: str) -> None: ...

    async def set_api_key(self, appkey: str, digest: str, *, new_app: bool) -> None:
        """Give `appkey` the API key with this SHA-256, replacing its old one; `new_app`: the app must not
        exist yet (it is made with the key only), else it must."""
        ...

    async def routes(self) -> dict[str, str]: ...

    async def set_route(self, language: str, engine: str) -> None: ...

    async def remove_route(self, language: str) -> None: ...


class FileAdmin:
    """Embedded mode: apps in the apps file (read by the gateway at start); routes are the config's."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._path = state_path(config, config.server.apps_file)

    async def list_apps(self) -> list[str]:
        return sorted({*_read_apps_tables(self._path), *self._config.apps})

    async def add_app(self, appkey: str, secret: str) -> None:
        apps = self._tables(appkey, exists=False)
        write_apps_file(self._path, {**apps, appkey: {"secret": secret}})

    async def rotate_app(self, appkey: str, secret: str) -> None:
        apps = self._tables(appkey, exists=True)
        write_apps_file(self._path, {**apps, appkey: {**apps[appkey], "secret": secret}})

    async def set_api_key(self, appkey: str, digest: str, *, new_app: bool) -> None:
        apps = self._tables(appkey, exists=not new_app)
        write_apps_file(self._path, {**apps, appkey: {**apps.get(appkey, {}), "api_key_sha256": digest}})

    async def remove_app(self, appkey: str) -> None:
        apps = self._tables(appkey, exists=True)
        del apps[appkey]
        write_apps_file(self._path, apps)

    def _tables(self, appkey: str, *, exists: bool) -> dict[str, dict[str, str]]:
        apps = _read_apps_tables(self._path)
        if not exists and (appkey in apps or appkey in self._config.apps):
            raise ValueError(f"app {appkey!r} exists already (use rotate)")
        if exists and appkey not in apps:
            raise ValueError(f"no app {appkey!r} in {self._path} (apps in the config file are edited there)")
        return apps

    async def routes(self) -> dict[str, str]:
        return await StaticDirectory(self._config, {}).routes()

    async def set_route(self, language: str, engine: str) -> None:
        raise ValueError("in embedded mode routes are the config's [languages] tables: edit the config file")

    async def remove_route(self, language: str) -> None:
        await self.set_route(language, "")
