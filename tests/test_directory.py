"""Apps and routes: the `apps` command on the embedded apps file, and live edits in Redis that running
gateways pick up without a restart."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import trio

from asr_actors.backend import resolve_secrets
from asr_actors.directory import StaticDirectory
from asr_actors.engine_protocol.gateway import RedisBus
from asr_actors.engines.fake import FakeEngine
from asr_actors.server import Gateway
from asr_actors.stores.redis import RedisDirectory
from asr_actors.testing.redis_server import redis_server
from asr_actors.worker import Worker
from tests.support import (
    fake_config,
    open_connection,
    read_until_close,
    redis_connection,
    running_bus,
    statuses,
    wired_gateway,
)

GUARD = 30
FRAME = b"\x01\x00" * 1600


def cli(config: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "asr_actors", *args, "--config", str(config)]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, check=False)


async def session_statuses(
    nursery: trio.Nursery, gateway: Gateway, appkey: str, secret: str, lang: str = "en"
) -> list[str]:
    from asr_actors import client

    target = client.sign_url("ws://gateway.test/v1/asr", appkey, secret, nonce=client.fresh_nonce())
    connection = await open_connection(nursery, gateway, target.split("gateway.test", 1)[1] + f"&lang={lang}")
    await connection.send_message(FRAME)
    await connection.send_message('{"status": "end"}')
    return statuses(await read_until_close(connection))


def test_apps_command_on_the_embedded_apps_file(tmp_path: Path) -> None:
    """add prints a new secret once, list shows keys only, rotate replaces, remove deletes; file is 600."""
    apps_file = tmp_path / "apps.local.toml"
    config = tmp_path / "config.toml"
    config.write_text(f'[server]\napps_file = "{apps_file}"\n')
    added = cli(config, "apps", "add", "mobile")
    appkey, secret = added.stdout.split()
    assert ("mobile", 0o600) == (appkey, apps_file.stat().st_mode & 0o777)
    assert "mobile" == cli(config, "apps", "list").stdout.strip()
    assert secret not in cli(config, "apps", "list").stdout
    assert 1 == cli(config, "apps", "add", "mobile").returncode
    rotated = cli(
        config, "apps", "rotate", "mobile", "--secret-stdin", stdin="a-rotated-secret-of-some-length\n"
    )
    assert "mobile a-rotated-secret-of-some-length" == rotated.stdout.strip()
    from asr_actors.config import load_config

    assert {"mobile": "a-rotated-secret-of-some-length"} == resolve_secrets(load_config(config))
    assert 1 == cli(config, "apps", "add", "bad key!").returncode
    assert 0 == cli(config, "apps", "remove", "mobile").returncode
    assert "" == cli(config, "apps", "list").stdout
    assert "routes are the config's" in cli(config, "routes", "set", "de", "fake").stderr


async def test_live_edits_in_redis_reach_running_gateways(tmp_path: Path) -> None:
    """On the Redis bus: an app added, rotated or removed, and a route set, take effect on a running
    gateway at its next session; sessions already admitted are not affected."""
    with trio.fail_after(GUARD):
        async with (
            redis_server(tmp_path) as server,
            redis_connection(server.url, 64).open() as redis,
            trio.open_nursery() as nursery,
        ):
            config = fake_config(bus={"kind": "redis", "url": server.url})
            await nursery.start(
                Worker(config, FakeEngine(languages=frozenset({"en", "de"})), concurrency=4).run
            )
            bus = await nursery.start(running_bus, RedisBus(redis, config.bus, events_capacity=8))
            gateway = wired_gateway(
                config, {}, {}, bus=bus, shared_directory=lambda own: RedisDirectory(redis.client, own)
            )
            admin = RedisDirectory(redis.client, StaticDirectory(config, {}))

            assert ["401"] == await session_statuses(nursery, gateway, "live", "first-secret-0123456789")
            await admin.add_app("live", "first-secret-0123456789")
            assert "end" == (await session_statuses(nursery, gateway, "live", "first-secret-0123456789"))[-1]
            await admin.rotate_app("live", "second-secret-0123456789")
            assert ["401"] == await session_statuses(nursery, gateway, "live", "first-secret-0123456789")
            assert "end" == (await session_statuses(nursery, gateway, "live", "second-secret-0123456789"))[-1]

            assert (
                "403"
                == (await session_statuses(nursery, gateway, "live", "second-secret-0123456789", "de"))[-1]
            )
            await admin.set_route("de", "fake")
            assert {"en": "fake", "zh": "fake", "de": "fake"} == await admin.routes()
            assert (
                "end"
                == (await session_statuses(nursery, gateway, "live", "second-secret-0123456789", "de"))[-1]
            )

            await admin.remove_app("live")
            assert ["401"] == await session_statuses(nursery, gateway, "live", "second-secret-0123456789")
            nursery.cancel_scope.cancel()


def test_api_keys_on_the_embedded_apps_file(tmp_path: Path) -> None:
    """`apps add NAME --api-key` prints a new key once and keeps only its SHA-256; rotate replaces it; the
    gateway resolves the file's keys at start-up; an app of a key alone signs no links."""
    from asr_actors.backend import resolve_api_keys
    from asr_actors.config import load_config
    from asr_actors.openai_api.keys import digest

    apps_file = tmp_path / "apps.local.toml"
    config = tmp_path / "config.toml"
    config.write_text(f'[server]\napps_file = "{apps_file}"\n')
    appkey, key = cli(config, "apps", "add", "batch", "--api-key").stdout.split()
    assert ("batch", True) == (appkey, key.startswith("sk-"))
    assert key not in apps_file.read_text()
    assert {digest(key): "batch"} == resolve_api_keys(load_config(config))
    assert {} == resolve_secrets(load_config(config))
    _, rotated = cli(config, "apps", "rotate", "batch", "--api-key").stdout.split()
    assert {digest(rotated): "batch"} == resolve_api_keys(load_config(config))
    assert 1 == cli(config, "apps", "add", "batch", "--api-key").returncode
    assert 0 == cli(config, "apps", "remove", "batch").returncode
    assert {} == resolve_api_keys(load_config(config))


async def test_api_keys_in_redis_reach_running_gateways(tmp_path: Path) -> None:
    """On the Redis bus an API key added, rotated or removed counts at the gateway's next request."""
    from asr_actors.openai_api.keys import digest
    from tests.test_openai import exchange, multipart, request, wav_bytes

    upload = multipart({"model": "whisper-1"}, wav_bytes(0.3))
    with trio.fail_after(GUARD):
        async with (
            redis_server(tmp_path) as server,
            redis_connection(server.url, 64).open() as redis,
            trio.open_nursery() as nursery,
        ):
            config = fake_config(bus={"kind": "redis", "url": server.url})
            await nursery.start(Worker(config, FakeEngine(), concurrency=4).run)
            bus = await nursery.start(running_bus, RedisBus(redis, config.bus, events_capacity=8))
            gateway = wired_gateway(
                config, {}, {}, bus=bus, shared_directory=lambda own: RedisDirectory(redis.client, own)
            )
            admin = RedisDirectory(redis.client, StaticDirectory(config, {}))
            first, second = "sk-first-0123456789abcdef", "sk-second-0123456789abcdef"

            assert 401 == (await exchange(gateway, request(upload, key=first)))[0]
            await admin.set_api_key("batch", digest(first), new_app=True)
            assert 200 == (await exchange(gateway, request(upload, key=first)))[0]
            assert "batch" in await admin.list_apps()
            await admin.set_api_key("batch", digest(second), new_app=False)
            assert 401 == (await exchange(gateway, request(upload, key=first)))[0]
            assert 200 == (await exchange(gateway, request(upload, key=second)))[0]
            await admin.remove_app("batch")
            assert 401 == (await exchange(gateway, request(upload, key=second)))[0]
            nursery.cancel_scope.cancel()


async def test_client_secrets_in_redis_are_used_once_on_any_gateway(tmp_path: Path) -> None:
    """A secret one gateway kept opens one session on another (the same Redis), then never again; one that
    expired opens none."""
    from asr_actors.stores.redis import RedisClientSecrets

    with trio.fail_after(GUARD):
        async with (
            redis_server(tmp_path) as server,
            redis_connection(server.url).open() as first,
            redis_connection(server.url).open() as second,
        ):
            issuing, redeeming = RedisClientSecrets(first.client), RedisClientSecrets(second.client)
            await issuing.keep("digest-a", "batch", 60)
            await issuing.keep("digest-b", "batch", 0.2)
            assert "batch" == await redeeming.redeem("digest-a")
            assert None is await redeeming.redeem("digest-a")
            await trio.sleep(0.4)
            assert None is await redeeming.redeem("digest-b")
