"""No secret is ever logged: app secrets, link signatures and the DashScope API key stay out of every log
line, at DEBUG, from our code and from every library (coredis, the DashScope SDK, trio-websocket...).

Each test captures everything the root logger sees while sessions succeed and fail, then searches the
formatted lines and their tracebacks for the secrets.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import pytest
import trio

from asr_actors.engine_protocol.gateway import RedisBus
from asr_actors.engines.fake import FakeEngine
from asr_actors.server import Gateway
from asr_actors.stores.redis import RedisDirectory
from asr_actors.testing.fake_dashscope import FakeDashScope, Switches
from asr_actors.testing.redis_server import redis_server
from asr_actors.worker import Worker
from tests.support import (
    APPKEY,
    SECRET,
    fake_config,
    make_gateway,
    open_connection,
    read_until_close,
    redis_connection,
    running_bus,
    wired_gateway,
)
from tests.test_dashscope import KEY_ENV, dashscope_gateway, zh_session

GUARD = 60
FRAME = b"\x01\x00" * 1600
DASHSCOPE_KEY = "sk-audit-0123456789abcdef"


def logged(caplog: pytest.LogCaptureFixture) -> str:
    handler_format = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return "\n".join(handler_format.format(record) for record in caplog.records)


async def session(nursery: trio.Nursery, gateway: Gateway, target: str) -> list[str]:
    connection = await open_connection(nursery, gateway, target)
    for _ in range(12):
        try:
            await connection.send_message(FRAME)
        except Exception:  # refused: the reason is read below
            break
    else:
        await connection.send_message('{"status": "end"}')
    return [str(message.get("code")) for message in await read_until_close(connection)]


def forms(secret: str) -> list[str]:
    """A secret as it may appear: as is, and percent-encoded as in a link's query."""
    return [secret, quote(secret, safe="")]


def signed(secret: str = SECRET, appkey: str = APPKEY) -> tuple[str, str]:
    from asr_actors import client

    url = client.sign_url("ws://gateway.test/v1/asr", appkey, secret, nonce=client.fresh_nonce())
    target = url.split("gateway.test", 1)[1]
    return target, parse_qs(urlsplit(url).query)["signature"][0]


async def test_sessions_and_refusals_log_no_secret_or_signature(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    gateway = make_gateway()
    good, good_signature = signed()
    forged, forged_signature = signed(secret="not-the-secret-at-all")
    assert "200" in await session(nursery, gateway, good)
    assert ["401"] == await session(nursery, gateway, good)  # replayed
    assert ["401"] == await session(nursery, gateway, forged)
    text = logged(caplog)
    assert "refused link" in text  # the refusals were logged, with their reasons...
    for secret in (SECRET, good_signature, forged_signature):
        for form in forms(secret):
            assert form not in text  # ...and without the secrets


async def test_redis_admin_and_sessions_log_no_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "redis-kept-secret-0123456789"
    with trio.fail_after(GUARD):
        async with (
            redis_server(tmp_path) as server,
            redis_connection(server.url, 64).open() as redis,
            trio.open_nursery() as nursery,
        ):
            config = fake_config(bus={"kind": "redis", "url": server.url})
            await nursery.start(Worker(config, FakeEngine(), concurrency=2).run)
            directory = RedisDirectory(redis.client, make_gateway().directory)
            await directory.add_app("kept", secret)
            gateway = wired_gateway(
                config,
                {},
                {},
                bus=await nursery.start(running_bus, RedisBus(redis, config.bus, events_capacity=8)),
                shared_directory=lambda own: RedisDirectory(redis.client, own),
            )
            target, signature = signed(secret, "kept")
            assert "200" in await session(nursery, gateway, target)
            nursery.cancel_scope.cancel()
    text = logged(caplog)
    for form in [*forms(secret), *forms(signature)]:
        assert form not in text


@pytest.mark.parametrize("transport", ["sdk", "native"])
async def test_dashscope_key_is_not_logged(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, transport: str
) -> None:
    """The SDK's and trio-websocket's own DEBUG logging included: the key is sent to the (fake) service,
    never to a log."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(KEY_ENV, DASHSCOPE_KEY)
    with trio.fail_after(GUARD):
        fake = FakeDashScope(Switches(api_key=DASHSCOPE_KEY))
        await nursery.start(fake.serve)
        gateway = await dashscope_gateway(transport, fake.url)
        messages = await zh_session(nursery, gateway, 10)
    assert "end" == messages[-1]["data"]["status"]
    assert DASHSCOPE_KEY not in logged(caplog)
