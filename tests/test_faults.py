"""Faults under load: 50 live sessions on real loopback sockets, a few of them faulty.

After each fault the healthy sessions must have every final, and the gateway's census (Trio tasks, threads,
open sessions, open engine streams) must be back at its baseline: nothing leaked. The engine is the
scripted fake engine with its per-language fault switches (no model can fail on demand).
"""

from __future__ import annotations

import functools
import re
import socket
import struct
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, Request

from asr_actors import client
from asr_actors.engines.fake import FakeEngine
from asr_actors.server import Gateway
from tests.support import APPKEY, SECRET, fake_config, wired_gateway

GUARD = 60
SESSIONS = 50
SECOND = b"\x01\x00" * 16000
# Three sentences of one second each, sent as fast as the gateway takes them.
SPEECH = SECOND * 3


def expected_finals(words_per_second: int = 10) -> list[str]:
    """The fake engine's finals for SPEECH: one sentence per second of audio."""
    return [
        " ".join(f"w{k}" for k in range(second * words_per_second, (second + 1) * words_per_second))
        for second in range(3)
    ]


EXPECTED = expected_finals()


# Trio keeps finished worker threads idle for 10 s under this name (a busy one carries its job's name):
# they are the thread cache's, not a leak, and how many there are depends on the tests before and on load.
IDLE_TRIO_WORKER = re.compile(r"Trio thread \d+")


@attrs.frozen
class Census:
    tasks: int
    threads: int
    sessions: int
    engine_streams: int


def census(gateway: Gateway) -> Census:
    def count(task: trio.lowlevel.Task) -> int:
        return 1 + sum(count(child) for nursery in task.child_nurseries for child in nursery.child_tasks)

    return Census(
        tasks=count(trio.lowlevel.current_root_task()),
        threads=sum(1 for thread in threading.enumerate() if not IDLE_TRIO_WORKER.fullmatch(thread.name)),
        sessions=gateway.active_sessions,
        engine_streams=gateway.bus.statistics().streams_open,
    )


async def settled(gateway: Gateway, baseline: Census) -> Census:
    """The census once the gateway has let go of the last session (closing takes a few scheduler turns, and
    many more on a busy machine: the wait is bounded by the test's own guard, not by a guess)."""
    with trio.move_on_after(GUARD / 2):
        while census(gateway) != baseline:  # noqa: ASYNC110 -- a count, not an event
            await trio.sleep(0.05)
    return census(gateway)


@asynccontextmanager
async def gateway_on_loopback(
    engine: FakeEngine, **sections: dict[str, Any]
) -> AsyncIterator[tuple[Gateway, str]]:
    config = fake_config(
        languages={"en": {"engine": "fake"}, "zh": {"engine": "fake"}, "de": {"engine": "fake"}}, **sections
    )
    gateway = wired_gateway(config, {"fake": engine}, {APPKEY: SECRET})
    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(
            functools.partial(trio.serve_tcp, gateway.handle_connection, 0, host="127.0.0.1")
        )
        port = listener.socket.getsockname()[1]
        yield gateway, f"ws://127.0.0.1:{port}/v1/asr"
        nursery.cancel_scope.cancel()


def link(url: str, language: str = "en") -> str:
    return client.sign_url(url, APPKEY, SECRET, nonce=client.fresh_nonce()) + f"&lang={language}"


async def healthy_sessions(url: str, count: int) -> list[list[str]]:
    """`count` sessions at once; each one's finals."""
    finals: list[list[str]] = []

    async def one() -> None:
        received = await client.stream_pcm(link(url), SPEECH)
        finals.append([r.text for r in received if r.status == "final"])

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one)
    return finals


async def with_faults(url: str, faults: list[Callable[[], Awaitable[None]]]) -> list[list[str]]:
    """The faulty sessions run among the healthy ones; returns the healthy ones' finals."""
    healthy: list[list[str]] = []

    async def run_healthy() -> None:
        healthy.extend(await healthy_sessions(url, SESSIONS - len(faults)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_healthy)
        for fault in faults:
            nursery.start_soon(fault)
    return healthy


async def raw_session(url: str) -> tuple[trio.SocketStream, WSConnection]:
    """A client that speaks WebSocket by hand, so that it can misbehave at the socket level."""
    address = url.removeprefix("ws://").split("/", 1)[0]
    host, port = address.rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    connection = WSConnection(ConnectionType.CLIENT)
    target = link(url).split(address, 1)[1]
    await stream.send_all(connection.send(Request(host=address, target=target)))
    connection.receive_data(await stream.receive_some())
    assert [AcceptConnection] == [type(event) for event in connection.events()]
    return stream, connection


async def test_a_client_that_vanishes_mid_sentence_takes_nothing_with_it() -> None:
    """A TCP reset (no close frame) in the middle of a sentence, three times among 50 sessions."""
    engine = FakeEngine()

    async def vanish(url: str) -> None:
        stream, connection = await raw_session(url)
        for _ in range(15):  # a sentence and a half
            await stream.send_all(connection.send(BytesMessage(data=SECOND[:3200])))
        await trio.sleep(0.2)
        # SO_LINGER 0: close() sends RST instead of FIN, as a crashed client or a dropped network does.
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await stream.aclose()

    with trio.fail_after(GUARD):
        async with gateway_on_loopback(engine) as (gateway, url):
            baseline = census(gateway)
            healthy = await with_faults(url, [lambda: vanish(url)] * 3)
            assert baseline == await settled(gateway, baseline)
    assert [EXPECTED] * (SESSIONS - 3) == healthy
    assert SESSIONS == engine.streams_started


async def test_a_client_that_stops_reading_is_closed_with_408_and_others_go_on() -> None:
    """A client that floods audio and never reads: bounded channels fill, its socket stops taking data, and
    after send_timeout it gets 408 while 49 others finish."""
    engine = FakeEngine(partial_bytes=320)  # a result every 10 ms of audio: many results to leave unread
    ended: list[float] = []

    async def stop_reading(url: str) -> None:
        stream, connection = await raw_session(url)
        started = trio.current_time()
        frame = connection.send(BytesMessage(data=SECOND[:3200]))
        with trio.move_on_after(GUARD / 2):
            try:
                while True:
                    await stream.send_all(frame)
            except trio.BrokenResourceError:
                ended.append(trio.current_time() - started)  # the gateway gave up on it
        await stream.aclose()

    with trio.fail_after(GUARD):
        async with gateway_on_loopback(engine, session={"send_timeout": 1.0, "close_timeout": 1.0}) as (
            gateway,
            url,
        ):
            baseline = census(gateway)
            healthy = await with_faults(url, [lambda: stop_reading(url)])
            assert baseline == await settled(gateway, baseline)
            errors = gateway.metrics.exposition().decode()
    assert [expected_finals(words_per_second=100)] * (SESSIONS - 1) == healthy
    assert re.search(r'asr_session_errors_total\{code="408",engine="[a-z]+",language="[a-z]+"\} 1.0', errors)
    assert len(ended) == 1


@pytest.mark.parametrize(
    ("switch", "code", "message"),
    [
        ({"fail_after_bytes": 16000}, 500, "fake engine failed on purpose"),
        ({"hang_on_finish": True}, 500, "Engine did not finish in time"),
    ],
)
async def test_an_engine_that_fails_or_hangs_ends_only_its_sessions(
    switch: dict[str, Any], code: int, message: str
) -> None:
    """The engine raises mid-stream, or never finishes, for German: those sessions get the coded error
    (the hang bounded by flush_timeout), the 47 English ones their finals, and every stream is closed."""
    engine = FakeEngine(languages=frozenset({"en", "de"}), fault_languages=frozenset({"de"}), **switch)
    failures: list[client.ServerError] = []

    async def german(url: str) -> None:
        with pytest.raises(client.ServerError) as caught:
            await client.stream_pcm(link(url, "de"), SPEECH)
        failures.append(caught.value)

    with trio.fail_after(GUARD):
        async with gateway_on_loopback(engine, session={"flush_timeout": 1.0}) as (gateway, url):
            baseline = census(gateway)
            healthy = await with_faults(url, [lambda: german(url)] * 3)
            assert baseline == await settled(gateway, baseline)
    assert [EXPECTED] * (SESSIONS - 3) == healthy
    assert [(code, message)] * 3 == [(failure.code, failure.message) for failure in failures]


async def test_census_counts_what_it_claims() -> None:
    """The census is not vacuous: a session's actors and engine stream show in it while it runs."""
    engine = FakeEngine(hang_on_finish=True)
    with trio.fail_after(GUARD):
        async with gateway_on_loopback(engine) as (gateway, url):
            baseline = census(gateway)
            stream, connection = await raw_session(url)
            await stream.send_all(connection.send(BytesMessage(data=SECOND[:3200])))
            while census(gateway).engine_streams == 0:  # noqa: ASYNC110
                await trio.sleep(0.01)
            during = census(gateway)
            assert during.tasks > baseline.tasks
            assert (1, 1) == (during.sessions, during.engine_streams)
            await stream.aclose()
            assert baseline == await settled(gateway, baseline)


async def test_the_clients_session_options_reach_the_engine() -> None:
    """`client.stream_pcm(options=...)` (what `transcribe --hotword --words` sends) over a real socket."""
    engine = FakeEngine()
    with trio.fail_after(GUARD):
        async with gateway_on_loopback(engine) as (_gateway, url):
            received = await client.stream_pcm(
                link(url), SPEECH, options={"hotwords": ["Zorbulon Quettle"], "words": True}
            )
    assert "end" == received[-1].status
    [spec] = engine.specs
    assert (("Zorbulon Quettle",), True) == (tuple(h.text for h in spec.options.hotwords), spec.options.words)


async def test_a_refused_upgrade_is_a_server_error_for_the_client() -> None:
    """The client turns an HTTP refusal before the upgrade (here the handshake rate, 429) into the same
    ServerError as a coded close, so that callers (transcribe, the benchmarks) handle one exception."""
    with trio.fail_after(GUARD):
        async with gateway_on_loopback(FakeEngine(), server={"handshakes_per_minute": 1}) as (_gateway, url):
            await client.stream_pcm(link(url), SPEECH[:3200])
            with pytest.raises(client.ServerError) as refused:
                await client.stream_pcm(link(url), SPEECH[:3200])
    assert 429 == refused.value.code
