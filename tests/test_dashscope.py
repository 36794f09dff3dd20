"""The DashScope engine: the real `dashscope` SDK, through the whole gateway, against a fake server.

The fake (asr_actors/testing/fake_dashscope.py) speaks the service's WebSocket protocol on loopback;
nothing is mocked between the gateway and that socket. The SDK uses threads and real sockets, so these
tests run on the real clock, each under an absolute `fail_after`.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
import trio

from asr_actors.backend import build_engines
from asr_actors.server import Gateway
from asr_actors.testing.fake_dashscope import FakeDashScope, Switches
from asr_actors.testing.fake_dashscope import text as fake_text
from asr_actors.testing.fake_service import unreachable_url
from tests.support import (
    APPKEY,
    SECRET,
    fake_config,
    leave_mid_stream,
    open_connection,
    read_until_close,
    signed_target,
    statuses,
    wired_gateway,
)

KEY_ENV = "ASR_TEST_DASHSCOPE_KEY"
FRAME = b"\x01\x00" * 1600  # 100 ms at 16 kHz: one character of the fake's text


async def start_fake(nursery: trio.Nursery, switches: Switches | None = None) -> FakeDashScope:
    fake = FakeDashScope(switches)
    await nursery.start(fake.serve)
    return fake


async def dashscope_gateway(transport: str, url: str, **engine: Any) -> Gateway:
    config = fake_config(
        engines={
            "default": "fake",
            "dashscope": {"url": url, "api_key_env": KEY_ENV, "transport": transport, **engine},
        },
        languages={"zh": {"engine": "dashscope"}, "en": {"engine": "fake"}},
    )
    gateway = wired_gateway(config, build_engines(config), {APPKEY: SECRET})
    await gateway.prepare()
    return gateway


@pytest.fixture(params=["sdk", "native"])
def transport(request: pytest.FixtureRequest) -> str:
    """Every test runs on both transports: the official SDK, and the protocol spoken natively on Trio."""
    param: str = request.param
    return param


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "test-key")


async def zh_session(
    nursery: trio.Nursery,
    gateway: Gateway,
    frames: int,
    *,
    pause_after: int | None = None,
    pause: float = 0,
    options: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Stream `frames` frames in Chinese (optionally pausing, with session options), end, and return
    every message until close."""
    connection = await open_connection(nursery, gateway, signed_target("lang=zh"))
    if options is not None:
        await connection.send_message(json.dumps({"status": "start", "data": "", "options": options}))
    for index in range(frames):
        if index == pause_after:
            await trio.sleep(pause)
        await connection.send_message(FRAME)
    await connection.send_message('{"status": "end"}')
    return await read_until_close(connection)


def finals(messages: list[dict[str, Any]]) -> list[str]:
    return [m["data"]["result"] for m in messages if m.get("code") == 200 and m["data"]["status"] == "final"]


async def test_session_through_the_real_sdk(transport: str, nursery: trio.Nursery, guarded: None) -> None:
    """25 frames: partials, two sentence ends, the tail flushed as a final at end, then `end`."""
    fake = await start_fake(nursery)
    gateway = await dashscope_gateway(transport, fake.url)
    messages = await zh_session(nursery, gateway, 25)
    assert [fake_text(0, 10), fake_text(10, 20), fake_text(20, 25)] == finals(messages)
    assert "end" == statuses(messages)[-1]
    partials = [m["data"] for m in messages if m["data"]["status"] == "partial"]
    assert partials, "partials arrive while the sentence grows"
    first_final = next(m["data"] for m in messages if m["data"]["status"] == "final")
    assert (0, 1000) == (first_final["begin_time"], first_final["end_time"])
    # The service's word times reach the client (protocol v1's optional `words`).
    assert {"word": fake_text(0, 1), "begin_time": 0, "end_time": 100} == first_final["words"][0]
    assert 10 == len(first_final["words"])
    run_task = fake.stats.run_tasks[0]
    assert "duplex" == run_task["header"]["streaming"]
    parameters = run_task["payload"]["parameters"]
    assert ("pcm", 16000, ["zh"]) == (
        parameters["format"],
        parameters["sample_rate"],
        parameters["language_hints"],
    )
    assert "paraformer-realtime-v2" == run_task["payload"]["model"]
    assert (1, 1) == (fake.stats.tasks_started, fake.stats.tasks_finished)


async def test_session_options_reach_the_service(
    transport: str, nursery: trio.Nursery, guarded: None
) -> None:
    """A protocol v1 start frame's options become run-task parameters, on the SDK and the native transport."""
    fake = await start_fake(nursery)
    gateway = await dashscope_gateway(transport, fake.url)
    options = {
        "language_hints": ["zh", "en"],
        "punctuation": False,
        "dashscope": {"vocabulary_id": "vocab-trial-1", "disfluency_removal": True},
    }
    messages = await zh_session(nursery, gateway, 12, options=options)
    assert "end" == statuses(messages)[-1]
    parameters = fake.stats.run_tasks[0]["payload"]["parameters"]
    assert {
        "language_hints": ["zh", "en"],
        "vocabulary_id": "vocab-trial-1",
        "disfluency_removal_enabled": True,
        "punctuation_prediction_enabled": False,
    }.items() <= parameters.items()


async def test_options_dashscope_cannot_honour_are_refused(
    transport: str, nursery: trio.Nursery, guarded: None
) -> None:
    """Hot words need a DashScope vocabulary: asked for directly, the session is refused before any
    audio reaches the service, with the option named."""
    fake = await start_fake(nursery)
    gateway = await dashscope_gateway(transport, fake.url)
    messages = await zh_session(nursery, gateway, 3, options={"hotwords": ["通义"]})
    assert 403 == messages[-1]["code"]
    assert "does not take the option(s) 'hotwords'" in messages[-1]["message"]
    assert 0 == fake.stats.frames


async def test_results_keep_flowing_while_the_client_pauses(
    transport: str, nursery: trio.Nursery, guarded: None
) -> None:
    """The SDK reads only while frames are queued: the engine's empty-frame pump delivers a final that the
    upstream sends 0.3 s late while the client sends nothing for 2 s (and sends no audio of its own)."""
    fake = await start_fake(nursery, Switches(result_delay=0.3))
    gateway = await dashscope_gateway(transport, fake.url)
    connection = await open_connection(nursery, gateway, signed_target("lang=zh"))
    for _ in range(10):
        await connection.send_message(FRAME)
    received: list[str] = []
    with trio.move_on_after(2):
        while True:
            message = await connection.get_message()
            received.append(str(message))
    assert any('"final"' in message for message in received), "the final arrived during the pause"
    assert 10 * len(FRAME) == fake.stats.bytes, "the pump sent no invented audio"
    await connection.send_message('{"status": "end"}')
    assert "end" == statuses(await read_until_close(connection))[-1]


@pytest.mark.parametrize(
    ("switches", "engine", "message"),
    [
        (Switches(api_key="another-key"), {}, "DashScope refused the API key"),
        (Switches(fail_after_frames=5), {}, "DashScope failed: InternalError: Boom."),
        (Switches(drop_after_frames=5), {}, "DashScope connection failed"),
        (Switches(ignore_finish=True), {"stop_timeout": 2.0}, "DashScope did not finish within 2 s"),
    ],
)
async def test_upstream_faults_become_coded_errors(
    transport: str,
    nursery: trio.Nursery,
    guarded: None,
    switches: Switches,
    engine: dict[str, Any],
    message: str,
) -> None:
    """Each upstream fault ends its session with 500 and a reason, close 4500, never a hang; a session on
    another engine running at the same time is unaffected."""
    fake = await start_fake(nursery, switches)
    gateway = await dashscope_gateway(transport, fake.url, **engine)
    healthy = await open_connection(nursery, gateway, signed_target("lang=en"))
    await healthy.send_message(FRAME)
    messages = await zh_session(nursery, gateway, 8)
    assert {"code": 500, "message": message, "data": ""} == messages[-1]
    await healthy.send_message('{"status": "end"}')
    assert ["start", "partial", "final", "end"] == statuses(await read_until_close(healthy))


async def test_a_client_that_leaves_mid_stream_ends_its_upstream_only(
    transport: str, nursery: trio.Nursery, guarded: None
) -> None:
    """A client closes in the middle of its audio: the gateway closes that session's upstream connection
    while the service waits for audio, and the next session runs whole (the fake once let that close
    escape from a nursery, as a group, and stopped serving everyone)."""
    fake = await start_fake(nursery)
    gateway = await dashscope_gateway(transport, fake.url)
    await leave_mid_stream(nursery, gateway, FRAME, lambda: fake.stats.open_connections)
    messages = await zh_session(nursery, gateway, 6)
    assert ["start", "partial", "final", "end"] == statuses(messages)[:1] + statuses(messages)[-3:]


async def test_a_task_that_never_starts_is_bounded(
    transport: str, nursery: trio.Nursery, guarded: None
) -> None:
    """The upstream accepts the connection but never answers run-task. The native transport waits for
    task-started up to start_timeout; the SDK's start() returns before task-started, so there the bound is
    stop_timeout at the end of the audio. Either way a coded 500, never a hang."""
    fake = await start_fake(nursery, Switches(ignore_run_task=True))
    gateway = await dashscope_gateway(transport, fake.url, start_timeout=1.0, stop_timeout=1.0)
    messages = await zh_session(nursery, gateway, 3)
    expected = "did not start within 1 s" if transport == "native" else "did not finish within 1 s"
    assert {"code": 500, "message": f"DashScope {expected}", "data": ""} == messages[-1]


async def test_unreachable_upstream(transport: str, nursery: trio.Nursery, guarded: None) -> None:
    """Nothing listening at the configured URL: 500 "DashScope is unreachable"."""
    gateway = await dashscope_gateway(transport, await unreachable_url("/api-ws/v1/inference"))
    messages = await zh_session(nursery, gateway, 3)
    assert {"code": 500, "message": "DashScope is unreachable", "data": ""} == messages[-1]


async def test_missing_key_is_reported_at_start_and_refused_with_503(
    transport: str,
    nursery: trio.Nursery,
    guarded: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without the key the gateway still starts (logging why); Chinese sessions get 503 and the reason."""
    monkeypatch.delenv(KEY_ENV)
    gateway = await dashscope_gateway(transport, "ws://127.0.0.1:9/unused")
    assert any(f"needs an API key in ${KEY_ENV}" in record.message for record in caplog.records)
    reason = f"DashScope needs an API key in ${KEY_ENV}"
    assert {
        "code": "zh",
        "engine": "dashscope",
        "available": False,
        "reason": reason,
        "options": sorted(gateway.engines["dashscope"].options),
    } in await gateway.languages()
    messages = await zh_session(nursery, gateway, 1)
    assert {
        "code": 503,
        "message": f"No engine available: DashScope needs an API key in ${KEY_ENV}",
        "data": "",
    } == (messages[-1])


async def test_pings_from_the_service_never_fail_a_session(
    transport: str, nursery: trio.Nursery, guarded: None
) -> None:
    """A service that pings every 5 ms, and every millisecond while the client closes (pings crossing the
    close frame): 20 concurrent sessions (the engine's default capacity) all end with their finals and
    `end`, none with an error."""
    fake = await start_fake(nursery, Switches(ping_every=0.005, ping_while_closing=True))
    gateway = await dashscope_gateway(transport, fake.url)
    results: list[list[dict[str, Any]]] = []

    async def one() -> None:
        results.append(await zh_session(nursery, gateway, 12))

    async with trio.open_nursery() as clients:
        for _ in range(20):
            clients.start_soon(one)
    expected = [fake_text(0, 10), fake_text(10, 12)]
    assert [(expected, "end")] * 20 == [(finals(messages), statuses(messages)[-1]) for messages in results]
    assert 20 == fake.stats.tasks_finished


def _sdk(thread: threading.Thread) -> bool:
    return not thread.name.startswith("Trio thread")


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def test_twenty_concurrent_sessions(
    transport: str, nursery: trio.Nursery, guarded: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """20 sessions at once through the real SDK all get their exact finals; SDK threads are all gone after."""
    fake = await start_fake(nursery)
    gateway = await dashscope_gateway(transport, fake.url)
    await zh_session(nursery, gateway, 1)  # warm the SDK up, so that its import is not counted per session
    await trio.sleep(0.2)
    threads_before, rss_before = threading.active_count(), rss_mib()
    idents_before = {thread.ident for thread in threading.enumerate()}
    peak = {"threads": threads_before, "rss": rss_before}
    results: list[list[dict[str, Any]]] = []

    async def one() -> None:
        results.append(await zh_session(nursery, gateway, 25, pause_after=12, pause=1.0))

    async def sample() -> None:
        while True:
            peak["threads"] = max(peak["threads"], threading.active_count())
            peak["rss"] = max(peak["rss"], rss_mib())
            await trio.sleep(0.05)

    async with trio.open_nursery() as sessions:
        sessions.start_soon(sample)
        async with trio.open_nursery() as clients:
            for _ in range(20):
                clients.start_soon(one)
        sessions.cancel_scope.cancel()
    expected = [fake_text(0, 10), fake_text(10, 20), fake_text(20, 25)]
    assert 20 == len(results)
    assert all(expected == finals(messages) for messages in results)
    # Trio keeps its idle worker threads for 10 s; every thread the SDK started must be gone.
    with trio.fail_after(10):
        while leftover := [t.name for t in threading.enumerate() if t.ident not in idents_before and _sdk(t)]:  # noqa: ASYNC110 -- threads offer no event
            await trio.sleep(0.1)
    assert [] == leftover
    per_thread = (peak["threads"] - threads_before) / 20
    per_rss = (peak["rss"] - rss_before) / 20
    with capsys.disabled():
        print(f"\n[dashscope] 20 concurrent sessions: {per_thread:.1f} threads, {per_rss:.2f} MiB RSS each")
