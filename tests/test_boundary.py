"""The connection boundary: an exception injected at each stage of one connection ends that connection only.

Each case breaks one stage for one client while a healthy session is mid-stream on the same gateway: the
faulty client gets the coded error its stage can still send (500 for a fault, 503 for a dependency that
is down) or a closed connection, the fault is logged once with its traceback and counted in
`asr_faults_total`, the healthy session gets every final, and the gateway keeps answering. Injection is by
monkeypatching the stage's function: nothing real can be made to raise on demand at each of these places.
Over in-memory streams, on the real clock (nothing here waits on a timeout).
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing
import trio_websocket

from asr_actors import dialects, session
from asr_actors.actors import receiver, relay, sender
from asr_actors.bus.memory import MemoryBus
from asr_actors.engines.fake import FakeEngine
from asr_actors.errors import DependencyUnavailable
from asr_actors.limits import DailyAudioLimits, MemorySessionSlots
from asr_actors.records import SessionRecord
from asr_actors.server import Gateway
from asr_actors.websocket import WebSocket
from tests.support import (
    APPKEY,
    SECRET,
    fake_config,
    open_connection,
    read_until_close,
    statuses,
    wired_gateway,
)

GUARD = 20
PCM_100MS = b"\x01\x00" * 1600
DOWN = DependencyUnavailable("The app directory is unavailable: Error 111 connecting to redis")


def raising(exc: Exception) -> Callable[..., Any]:
    async def fail(*_args: object, **_kwargs: object) -> Any:
        raise exc

    return fail


def raising_context(exc: Exception) -> Callable[..., Any]:
    @asynccontextmanager
    async def fail(*_args: object, **_kwargs: object) -> AsyncIterator[Any]:
        raise exc
        yield  # pragma: no cover

    return fail


class FailingRecords:
    """A record store whose every write fails (a full disk, a lost Redis)."""

    async def save(self, record: SessionRecord) -> None:
        raise OSError(28, "No space left on device")

    async def transcripts(self, *, app: str | None = None, since: float = 0) -> list[SessionRecord]:
        return []


async def http_exchange(gateway: Gateway, request: bytes) -> bytes:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gateway.handle_connection, server_stream)
        await client_stream.send_all(request)
        answer = b""
        while chunk := await client_stream.receive_some():
            answer += chunk
    return answer


def faults(gateway: Gateway) -> dict[str, float]:
    counted: dict[str, float] = {}
    for line in gateway.metrics.exposition().decode().splitlines():
        if line.startswith("asr_faults_total{"):
            stage = line.split('stage="', 1)[1].split('"', 1)[0]
            counted[stage] = float(line.rsplit(" ", 1)[1])
    return counted


async def upgrade_without_answer(gateway: Gateway) -> list[str]:
    """An upgrade request by hand: `closed` if the connection ends with no answer at all. (trio-websocket's
    client waits forever for a handshake whose connection closed, so it cannot be used here.)"""
    answer = await http_exchange(
        gateway,
        b"GET /v1/asr HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    return ["closed"] if answer == b"" else [answer.decode(errors="replace")]


async def faulty_session(nursery: trio.Nursery, gateway: Gateway) -> list[str]:
    """One client's session through the broken stage: the statuses and error codes it was told."""
    connection = await open_connection(nursery, gateway)
    try:
        for _ in range(3):
            await connection.send_message(PCM_100MS)
        await connection.send_message('{"status": "end"}')
    except trio_websocket.ConnectionClosed:
        pass
    return statuses(await read_until_close(connection))


# (stage, where, name, replacement, what the faulty client sees, where the fault is counted)
SESSION_STAGES = [
    ("admission", dialects.auth, "run", raising(RuntimeError("injected")), ["500"], "session"),
    ("admission: Redis down", dialects.auth, "run", raising(DOWN), ["503"], None),
    ("receiver", receiver, "run", raising(RuntimeError("injected")), ["500"], "session"),
    ("relay", relay, "run", raising(RuntimeError("injected")), ["500"], "session"),
    ("sender", sender, "run", raising(RuntimeError("injected")), ["500"], "session"),
    ("engine stream", MemoryBus, "open_stream", raising_context(KeyError("injected")), ["500"], "session"),
    ("session slots", MemorySessionSlots, "hold", raising_context(RuntimeError("x")), ["500"], "session"),
    ("session slots: Redis down", MemorySessionSlots, "hold", raising_context(DOWN), ["503"], None),
    ("daily audio", DailyAudioLimits, "allowance", raising(DOWN), ["503"], None),
]


@pytest.mark.parametrize(
    ("where", "name", "replacement", "told", "counted"),
    [stage[1:] for stage in SESSION_STAGES],
    ids=[stage[0] for stage in SESSION_STAGES],
)
async def test_a_fault_at_one_stage_ends_only_its_connection(
    nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    where: object,
    name: str,
    replacement: Callable[..., Any],
    told: list[str],
    counted: str | None,
) -> None:
    """The faulty client is told what its stage can still say; the healthy one, started before the fault
    and finished after it, gets every final; the gateway answers /healthz; a fault is counted and logged
    once with its traceback, a dependency that is down is a 503 and no fault."""
    gateway = wired_gateway(fake_config(), {"fake": FakeEngine(sentence_bytes=3200)}, {APPKEY: SECRET})
    with trio.fail_after(GUARD):
        healthy = await open_connection(nursery, gateway)
        await healthy.send_message(PCM_100MS)
        # Its actors and engine stream are running before the stage breaks.
        assert '"start"' in await healthy.get_message()
        with monkeypatch.context() as patch:
            patch.setattr(where, name, replacement)
            assert told == await faulty_session(nursery, gateway)
        await healthy.send_message(PCM_100MS)
        await healthy.send_message('{"status": "end"}')
        assert ["partial", "final", "partial", "final", "end"] == statuses(await read_until_close(healthy))
        assert b"HTTP/1.1 200 " in await http_exchange(gateway, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert ({counted: 1.0} if counted else {}) == faults(gateway)
    tracebacks = [record for record in caplog.records if record.exc_info]
    assert (1 if counted else 0) == len(tracebacks)


async def test_a_failing_http_route_is_500_and_the_next_request_is_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A route that raises answers 500 (503 when a dependency is down) on a connection that stays usable."""
    gateway = wired_gateway(fake_config(), {"fake": FakeEngine()}, {APPKEY: SECRET})
    routes = {
        **gateway.main_router.routes,
        "/healthz": raising(RuntimeError("injected")),
        "/v1/languages": raising(DOWN),
    }
    monkeypatch.setattr(gateway, "main_router", attrs.evolve(gateway.main_router, routes=routes))
    with trio.fail_after(GUARD):
        answer = await http_exchange(
            gateway,
            b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
            b"GET /v1/languages HTTP/1.1\r\nHost: t\r\n\r\n"
            b"GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
    assert [b"500", b"503", b"200"] == re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)
    assert {"http": 1.0} == faults(gateway)


async def test_a_fault_in_the_upgrade_closes_that_connection_only(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The WebSocket layer raising during the upgrade: that connection closes with nothing sent (there is
    no WebSocket to send a code on), counted; a session started before goes on."""
    gateway = wired_gateway(fake_config(), {"fake": FakeEngine(sentence_bytes=3200)}, {APPKEY: SECRET})
    with trio.fail_after(GUARD):
        healthy = await open_connection(nursery, gateway)
        with monkeypatch.context() as patch:
            patch.setattr(WebSocket, "accept", raising(RuntimeError("injected")))
            assert ["closed"] == await upgrade_without_answer(gateway)
        await healthy.send_message(PCM_100MS)
        await healthy.send_message('{"status": "end"}')
        assert ["start", "partial", "final", "end"] == statuses(await read_until_close(healthy))
    assert {"connection": 1.0} == faults(gateway)


async def test_a_fault_while_closing_is_contained(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The close itself raising (a bug in the WebSocket layer) drops that connection, counted; others go
    on."""
    gateway = wired_gateway(fake_config(), {"fake": FakeEngine(sentence_bytes=3200)}, {APPKEY: SECRET})
    with trio.fail_after(GUARD):
        with monkeypatch.context() as patch:
            patch.setattr(WebSocket, "aclose", raising(RuntimeError("injected")))
            connection = await open_connection(nursery, gateway)
            await connection.send_message(PCM_100MS)
            await connection.send_message('{"status": "end"}')
            # Everything was sent before the close failed; then the connection is simply gone.
            assert ["start", "partial", "final", "end"] == statuses(await read_until_close(connection))
            while gateway.active_sessions:  # noqa: ASYNC110 -- the gateway's own count, no event for it
                await trio.sleep(0.01)
        healthy = await open_connection(nursery, gateway)
        await healthy.send_message('{"status": "end"}')
        assert ["start", "end"] == statuses(await read_until_close(healthy))
    assert {"connection": 1.0} == faults(gateway)


async def test_records_that_cannot_be_kept_do_not_touch_the_session(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """A store that fails on write: the session ends normally, the loss is logged with its reason."""
    gateway = wired_gateway(
        fake_config(), {"fake": FakeEngine(sentence_bytes=3200)}, {APPKEY: SECRET}, records=FailingRecords()
    )
    with trio.fail_after(GUARD), caplog.at_level(logging.ERROR):
        connection = await open_connection(nursery, gateway)
        await connection.send_message(PCM_100MS)
        await connection.send_message('{"status": "end"}')
        assert ["start", "partial", "final", "end"] == statuses(await read_until_close(connection))
        while gateway.active_sessions:  # noqa: ASYNC110 -- the gateway's own count, no event for it
            await trio.sleep(0.01)
    assert ["could not keep the session record"] == [r.getMessage() for r in caplog.records]
    assert (
        'asr_sessions_total{engine="fake",language="en",outcome="ok"} 1.0'
        in gateway.metrics.exposition().decode()
    )


def test_session_judges_groups_as_it_judges_single_exceptions() -> None:
    """A protocol error wins over a fault; a dependency that is down is 503; a client gone is told nothing."""
    from asr_actors.protocol import ErrorCode, ProtocolError
    from asr_actors.transport import ClientGone

    bad = ProtocolError(ErrorCode.BAD_INPUT, "bad")
    assert bad is session._judge(ExceptionGroup("", [RuntimeError(), bad])).error
    assert ErrorCode.UNAVAILABLE == session._judge(DOWN).error.code  # type: ignore[union-attr]
    assert session._judge(ExceptionGroup("", [ClientGone()])).client_gone
    assert session._judge(ValueError()).fault
