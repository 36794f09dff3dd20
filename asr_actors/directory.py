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


class StaticDirectory:
    """The config's routes and a fixed set of app secrets."""

    def __init__(self, config: Config, secrets: Mapping[str, str]) -> None:
        self._config = config
        self._secrets = dict(secrets)

    async def secret(self, appkey: str) -> str | None:
        return self._secrets.get(appkey)

    async def engine_for(self, language: str) -> str | None:
        return self._config.engine_for(language)

    async def routes(self) -> dict[str, str]:
        return {code: engine for code in self._config.languages if (engine := self._config.engine_for(code))}


def check_appkey(appkey: str) -> str:
    if not APPKEY_PATTERN.match(appkey):
        raise ValueError(f"app keys are 1-64 letters, digits, '_', '.' or '-': {appkey!r}")
    return appkey


def read_apps_file(path: Path) -> dict[str, str]:
    """The apps file: TOML tables `[apps.KEY] secret = "..."` that the `apps` command writes (git-ignored)."""
    import tomllib

    if not path.exists():
        return {}
    data = tomllib.loads(path.read_text())
    return {key: str(table["secret"]) for key, table in data.get("apps", {}).items()}


def write_apps_file(path: Path, apps: Mapping[str, str]) -> None:
    # JSON strings are valid TOML basic strings, so json.dumps quotes both keys and secrets correctly.
    lines = ["# Written by `python -m asr_actors apps`; holds secrets: keep it out of git.", ""]
    for key in sorted(apps):
        lines += [f"[apps.{json.dumps(key)}]", f"secret = {json.dumps(apps[key])}", ""]
    path.write_text("\n".join(lines))
    path.chmod(0o600)


class DirectoryAdmin(Protocol):
    """What the `apps` and `routes` commands change."""

    async def list_apps(self) -> list[str]: ...

    async def add_app(self, appkey: str, secret: str) -> None: ...

    async def rotate_app(self, appkey: str, secret: str) -> None: ...

    async def remove_app(self, appkey: str) -> None: ...

    async def routes(self) -> dict[str, str]: ...

    async def set_route(self, language: str, engine: str) -> None: ...

    async def remove_route(self, language: str) -> None: ...


class FileAdmin:
    """Embedded mode: apps in the apps file (read by the gateway at start); routes are the config's."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._path = state_path(config, config.server.apps_file)

    async def list_apps(self) -> list[str]:
        return sorted({*read_apps_file(self._path), *self._config.apps})

    async def add_app(self, appkey: str, secret: str) -> None:
        apps = read_apps_file(self._path)
        if appkey in apps or appkey in self._config.apps:
            raise ValueError(f"app {appkey!r} exists already (use rotate)")
        write_apps_file(self._path, {**apps, appkey: secret})

    async def rotate_app(self, appkey: str, secret: str) -> None:
        apps = read_apps_file(self._path)
        if appkey not in apps:
            raise ValueError(f"no app {appkey!r} in {self._path} (apps in the config file are edited there)")
        write_apps_file(self._path, {**apps, appkey: secret})

    async def remove_app(self, appkey: str) -> None:
        apps = read_apps_file(self._path)
        if appkey not in apps:
            raise ValueError(f"no app {appkey!r} in {self._path}")
        del apps[appkey]
        write_apps_file(self._path, apps)

    async def routes(self) -> dict[str, str]:
        return await StaticDirectory(self._config, {}).routes()

    async def set_route(self, language: str, engine: str) -> None:
        raise ValueError("in embedded mode routes are the config's [languages] tables: edit the config file")

    async def remove_route(self, language: str) -> None:
        await self.set_route(language, "")
