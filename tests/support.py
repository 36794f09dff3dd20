"""Test helpers: a gateway wired to the fake engine, reached over in-memory streams (no sockets)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import trio
import trio.testing
import trio_websocket

from asr_actors import client
from asr_actors.backend import in_process
from asr_actors.config import Config, config_from_dict
from asr_actors.engine_protocol.connection import RedisConnection, new_process_id
from asr_actors.engine_protocol.gateway import RedisBus
from asr_actors.engines.base import Engine
from asr_actors.engines.fake import FakeEngine
from asr_actors.server import Gateway

APPKEY = "test-app"
SECRET = "test-secret"
HOST = "gateway.test"


def fake_config(**sections: dict[str, Any]) -> Config:
    data: dict[str, Any] = {
        "apps": {APPKEY: {"secret": SECRET}},
        "engines": {"default": "fake"},
        "languages": {"en": {"engine": "fake"}, "zh": {"engine": "fake"}},
    }
    data.update(sections)
    return config_from_dict(data)


def wired_gateway(
    config: Config, engines: dict[str, Engine], app_secrets: Mapping[str, str], **backend: Any
) -> Gateway:
    """A gateway wired as `serve` wires it on the in-process backend, with parts of it replaced by `backend`
    (a Redis bus, shared limits, records)."""
    return Gateway(config, attrs.evolve(in_process(config, engines), **backend), app_secrets)


def make_gateway(engine: Engine | None = None, **sections: dict[str, Any]) -> Gateway:
    config = fake_config(**sections)
    return wired_gateway(config, {"fake": engine or FakeEngine()}, {APPKEY: SECRET})


def signed_target(
    query: str = "", *, now: float | None = None, secret: str = SECRET, nonce: bool = True
) -> str:
    url = client.sign_url(
        f"ws://{HOST}/v1/asr",
        APPKEY,
        secret,
        time.time() if now is None else now,
        client.fresh_nonce() if nonce else None,
    )
    target = url.split(HOST, 1)[1]
    return target + (f"&{query}" if query else "")


async def open_connection(
    nursery: trio.Nursery, gateway: Gateway, target: str | None = None, host: str = HOST
) -> trio_websocket.WebSocketConnection:
    """A client WebSocket to `gateway` over an in-memory stream pair (safe under MockClock)."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    nursery.start_soon(gateway.handle_connection, server_stream)
    return await trio_websocket.wrap_client_stream(
        nursery,
        client_stream,  # type: ignore[arg-type]
        host,
        target or signed_target(),
    )


async def read_until_close(connection: trio_websocket.WebSocketConnection) -> list[dict[str, Any]]:
    """Every message until the server closes, or until `end`, after which the client closes (as a client
    that knows the protocol does; the server would otherwise linger for `end_linger`); envelopes decoded,
    'pong' kept as {'pong': True}."""
    messages: list[dict[str, Any]] = []
    try:
        while True:
            message = await connection.get_message()
            assert isinstance(message, str)
            messages.append({"pong": True} if message == "pong" else json.loads(message))
            if statuses(messages[-1:]) == ["end"]:
                await connection.aclose()
    except trio_websocket.ConnectionClosed:
        pass
    return messages


def statuses(messages: list[dict[str, Any]]) -> list[str]:
    return [m["data"]["status"] if m.get("code") == 200 else str(m.get("code", "pong")) for m in messages]


def redis_connection(url: str, route_capacity: int = 1024) -> RedisConnection:
    """A gateway-like connection to the test's Redis (its own inbox)."""
    return RedisConnection(url, new_process_id("test"), route_capacity=route_capacity)


async def running_bus(
    bus: RedisBus, *, task_status: trio.TaskStatus[RedisBus] = trio.TASK_STATUS_IGNORED
) -> None:
    """A Redis bus open (its worker watch running) until the nursery that started it is cancelled."""
    async with bus.open():
        task_status.started(bus)
        await trio.sleep_forever()


async def leave_mid_stream(
    nursery: trio.Nursery, gateway: Gateway, frame: bytes, upstream_connections: Callable[[], int]
) -> None:
    """A Chinese session that sends three frames, reads `start` and closes in the middle of its audio;
    returns once the fake service has seen its connection go (`upstream_connections` is the fake's count)."""
    leaving = await open_connection(nursery, gateway, signed_target("lang=zh"))
    for _ in range(3):
        await leaving.send_message(frame)
    assert "start" == json.loads(await leaving.get_message())["data"]["status"]
    await leaving.aclose()
    with trio.fail_after(10):
        while upstream_connections():  # noqa: ASYNC110 -- the fake's own count, no event for it
            await trio.sleep(0.01)
