"""Config: the shipped config.toml is the defaults, and bad keys are named at start-up."""

from __future__ import annotations

import re
from pathlib import Path

import attrs
import pytest

from asr_actors.config import Config, ConfigError, config_from_dict, load_config, state_path

REPO = Path(__file__).resolve().parent.parent


def test_shipped_config_is_the_documented_defaults() -> None:
    """config.toml documents every default: loading it gives the same Config as no file at all."""
    assert Config() == load_config(REPO / "config.toml")


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"server": {"prot": 8000}}, "prot"),
        ({"session": {"idle_timeout": "30"}}, "config.session.idle_timeout"),
        ({"session": {"idle_timeout": True}}, "config.session.idle_timeout"),
        ({"session": {"idle_timeout": -1}}, "idle_timeout"),
        ({"channels": {"audio": 0}}, "audio"),
        ({"languages": {"xx": {"engine": "nope"}}}, "languages.xx.engine"),
        ({"apps": {"a": {}}}, "apps.a"),
        ({"engines": {"local": {"finals": "best"}}}, "finals"),
        ({"demo": {"enabled": "yes"}}, "enabled"),
        ({"session": {"default_language": "de"}}, "session.default_language"),
        ({"engines": {"local": {"model": "/nonexistent/whisper"}}}, "model: no CTranslate2 model"),
        ({"engines": {"local": {"device": "tpu"}}}, "device"),
        ({"engines": {"local": {"compute_type": "int4"}}}, "compute_type"),
        ({"engines": {"local": {"languages": []}}}, "languages: name at least one language"),
    ],
)
def test_bad_config_names_the_key(data: dict[str, object], named: str) -> None:
    """Unknown keys, wrong types, bad values and dangling references fail with the key in the message."""
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        config_from_dict(data)


def test_language_without_engine_uses_the_default() -> None:
    """A [languages.X] table without engine routes to [engines] default."""
    config = config_from_dict(
        {"engines": {"default": "fake"}, "languages": {"en": {}, "zh": {"engine": "local"}}}
    )
    assert "fake" == config.engine_for("en")
    assert "local" == config.engine_for("zh")
    assert config.engine_for("de") is None


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    """An unreadable or non-TOML file is a ConfigError naming the file."""
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)


def test_secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """secret_env reads the secret from the environment and says which variable is missing."""
    config = config_from_dict({"apps": {"a": {"secret_env": "ASR_TEST_SECRET"}}})
    monkeypatch.delenv("ASR_TEST_SECRET", raising=False)
    with pytest.raises(ConfigError, match="ASR_TEST_SECRET"):
        config.apps["a"].resolve_secret("a")
    monkeypatch.setenv("ASR_TEST_SECRET", "xyz")
    assert "xyz" == config.apps["a"].resolve_secret("a")


DURATION_SUFFIXES = ("_timeout", "_interval", "_ttl", "_linger", "_duration", "_time", "_skew", "_lag")


def _durations(obj: object, prefix: str = "") -> dict[str, float]:
    found: dict[str, float] = {}
    for field in attrs.fields(type(obj)):  # type: ignore[misc]
        value = getattr(obj, field.name)
        if attrs.has(type(value)):
            found.update(_durations(value, f"{prefix}{field.name}."))
        elif field.name.endswith(DURATION_SUFFIXES):
            found[f"{prefix}{field.name}"] = float(value)
    return found


def test_every_timeout_is_in_the_table() -> None:
    """docs/timeouts.md lists every duration key of the config, with its default."""
    table = (REPO / "docs" / "timeouts.md").read_text()
    documented = {
        match.group(1): float(match.group(2))
        for match in re.finditer(r"^\| `([a-z_.]+)` \| ([0-9.]+) s \|", table, flags=re.MULTILINE)
    }
    assert _durations(Config()) == documented


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$ASR_ACTORS_HOST, $ASR_ACTORS_PORT and $ASR_ACTORS_BUS_URL (which selects the Redis bus) override
    the file, so that a container needs none; a bad value names its variable."""
    path = tmp_path / "c.toml"
    path.write_text('[server]\nhost = "127.0.0.1"\nport = 8000\n')
    monkeypatch.setenv("ASR_ACTORS_HOST", "0.0.0.0")
    monkeypatch.setenv("ASR_ACTORS_PORT", "9000")
    monkeypatch.setenv("ASR_ACTORS_BUS_URL", "rediss://gateway:pw@redis.internal:6380/2")
    config = load_config(path)
    assert ("0.0.0.0", 9000) == (config.server.host, config.server.port)
    assert ("redis", "rediss://gateway:pw@redis.internal:6380/2") == (config.bus.kind, config.bus.url)
    monkeypatch.setenv("ASR_ACTORS_PORT", "http")
    with pytest.raises(ConfigError, match=r"\$ASR_ACTORS_PORT"):
        load_config(path)


@pytest.mark.parametrize("url", ["redis://h:1/0", "rediss://user:pw@h:6380/1", "unix:///run/redis.sock?db=2"])
def test_bus_urls_the_redis_client_takes(url: str) -> None:
    """TLS, ACL user names and unix sockets are the Redis client's to parse; other schemes are refused."""
    from asr_actors.engine_protocol.connection import RedisConnection

    assert url == config_from_dict({"bus": {"url": url}}).bus.url
    RedisConnection(url, "test")  # parses without connecting
    with pytest.raises(ConfigError, match=r"must be redis://host:port/db.* @ config\.bus"):
        config_from_dict({"bus": {"url": "http://h:1/"}})


def test_a_renamed_key_names_its_new_name() -> None:
    with pytest.raises(ConfigError, match=r"\[bus\] subscription_queue was replaced: use route_queue"):
        config_from_dict({"bus": {"subscription_queue": 1024}})
    with pytest.raises(ConfigError, match=r"first_partial_window was replaced: use first_draft"):
        config_from_dict({"engines": {"local": {"first_partial_window": 1.5}}})


def test_files_the_server_writes_go_to_a_state_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records and the local app store are never written to the working directory: relative paths live in
    $XDG_STATE_HOME/asr-actors (made, mode 700), $ASR_ACTORS_STATE_DIR over it, [server] state_dir over
    both; an absolute path is kept."""
    monkeypatch.delenv("ASR_ACTORS_STATE_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    config = Config()
    records = state_path(config, config.records.path)
    assert tmp_path / "xdg" / "asr-actors" / "asr-records.sqlite3" == records
    assert 0o700 == records.parent.stat().st_mode & 0o777
    monkeypatch.setenv("ASR_ACTORS_STATE_DIR", str(tmp_path / "env"))
    assert tmp_path / "env" / "apps.local.toml" == state_path(config, config.server.apps_file)
    configured = config_from_dict({"server": {"state_dir": str(tmp_path / "configured")}})
    assert tmp_path / "configured" / "apps.local.toml" == state_path(configured, "apps.local.toml")
    assert tmp_path / "elsewhere.db" == state_path(configured, str(tmp_path / "elsewhere.db"))
