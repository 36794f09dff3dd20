"""The session supervisor and its actors, end to end over in-memory WebSockets with the fake engine.

Every timeout runs on MockClock(autojump_threshold=0): a 30 s timeout takes milliseconds of real time and
the test asserts the virtual time at which it fired.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing
import trio_websocket
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, Request

from asr_actors import client, logs, session
from asr_actors.engines.fake import FakeEngine
from tests.support import (
    APPKEY,
    SECRET,
    make_gateway,
    open_connection,
    read_until_close,
    signed_target,
    statuses,
)

PCM_100MS = b"\x01\x00" * 1600


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def test_orderly_session_delivers_every_final_then_end(nursery: trio.Nursery) -> None:
    """start, partials, finals (tail included), end, close 1000; a partial's speech_id matches its final."""
    engine = FakeEngine(partial_bytes=3200, sentence_bytes=16000)
    connection = await open_connection(nursery, make_gateway(engine))
    for _ in range(12):
        await connection.send_message(PCM_100MS)
    await connection.send_message(b"\x01\x00" * 100)  # a tail shorter than one word
    await connection.send_message('{"status": "end"}')
    messages = await read_until_close(connection)
    sentence = [*["partial"] * 5, "final"]
    assert ["start", *sentence, *sentence, "partial", "partial", "final", "end"] == statuses(messages)
    finals = [m["data"] for m in messages if m["data"]["status"] == "final"]
    # The tail final carries the last, partly heard word: nothing sent before end is lost.
    assert ["w0 w1 w2 w3 w4", "w5 w6 w7 w8 w9", "w10 w11 w12"] == [f["result"] for f in finals]
    partials = [m["data"] for m in messages if m["data"]["status"] == "partial"]
    assert {partials[0]["speech_id"]} == {p["speech_id"] for p in partials[:5]} == {finals[0]["speech_id"]}
    assert finals[0]["speech_id"] != finals[1]["speech_id"]
    assert (0, 500) == (finals[0]["begin_time"], finals[0]["end_time"])
    assert 1000 == connection.closed.code
    assert 1 == engine.streams_finished


async def test_audio_at_any_rate_reaches_the_engine_at_16khz(nursery: trio.Nursery) -> None:
    """A client at 8 kHz: the gateway resamples to 16 kHz, so the fake engine (a word per 100 ms of
    16 kHz audio) hears 2 s as 20 words, and the times count in the client's audio."""
    connection = await open_connection(nursery, make_gateway(), signed_target("sample_rate=8000"))
    for _ in range(20):
        await connection.send_message(b"\x01\x00" * 800)  # 100 ms at 8 kHz
    await connection.send_message('{"status": "end"}')
    messages = await read_until_close(connection)
    finals = [m["data"] for m in messages if m["data"]["status"] == "final"]
    words = [f"w{k}" for k in range(20)]
    assert [" ".join(words[:10]), " ".join(words[10:])] == [f["result"] for f in finals]
    # The resampler holds 2 ms back until the next frame: the first sentence ends one frame later.
    assert (0, 1098, 2000) == (finals[0]["begin_time"], finals[0]["end_time"], finals[1]["end_time"])


async def test_old_client_json_session_with_wav_header(nursery: trio.Nursery) -> None:
    """The ASRWebSocketServer client: base64 JSON frames of a WAV file, language from the first frame."""
    import base64
    import io
    import wave

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(16000)
        writer.writeframes(b"\x01\x00" * 16000)
    wav = buffer.getvalue()
    chunks = [wav[i : i + 1280] for i in range(0, len(wav), 1280)]
    connection = await open_connection(nursery, make_gateway())
    for index, chunk in enumerate(chunks):
        status = "start" if index == 0 else "end" if index == len(chunks) - 1 else "partial"
        frame = {"language_code": "zh", "audio_format": "wav/16000", "status": status}
        frame["data"] = base64.b64encode(chunk).decode()
        await connection.send_message(json.dumps(frame))
    messages = await read_until_close(connection)
    finals = [m["data"]["result"] for m in messages if m["data"]["status"] == "final"]
    # 32000 bytes of audio after the 44-byte header: exactly ten 3200-byte words, none from the header.
    assert ["w0 w1 w2 w3 w4 w5 w6 w7 w8 w9"] == finals
    assert "end" == statuses(messages)[-1]


async def test_ping_pong(nursery: trio.Nursery) -> None:
    """Text 'ping' is answered with 'pong', before and during audio."""
    connection = await open_connection(nursery, make_gateway())
    await connection.send_message("ping")
    assert "pong" == await connection.get_message()


@pytest.mark.parametrize(
    ("target_kind", "code"),
    [
        ("expired", 401),
        ("forged", 401),
        ("unknown_app", 401),
        ("no_auth", 401),
        ("future", 401),
        ("wrong_host", 401),
        ("wrong_path", 401),
    ],
)
async def test_refused_links_get_401_and_close_4401(
    nursery: trio.Nursery, target_kind: str, code: int
) -> None:
    """Every bad link is 401 "Unauthorized or Timeout", closed with 4401, before any audio is read."""
    now = time.time()
    target = {
        "expired": signed_target(now=now - 300),
        "future": signed_target(now=now + 3600),
        "forged": signed_target(secret="not-the-secret"),
        "unknown_app": signed_target().replace("appkey=test-app", "appkey=other"),
        "no_auth": "/v1/asr",
        "wrong_host": signed_target(),
        # Signed for another path, presented at /v1/asr.
        "wrong_path": "/v1/asr?"
        + client.sign_url("ws://gateway.test/v2/asr", APPKEY, SECRET, now).split("?")[1],
    }[target_kind]
    host = "elsewhere.test" if target_kind == "wrong_host" else "gateway.test"
    connection = await open_connection(nursery, make_gateway(), target, host)
    await connection.send_message(PCM_100MS)  # binary before auth: never decoded
    messages = await read_until_close(connection)
    assert [{"code": code, "message": "Unauthorized or Timeout", "data": ""}] == messages
    assert 4000 + code == connection.closed.code


async def test_replayed_link_is_refused(nursery: trio.Nursery) -> None:
    """A signed link works once; the same link again is 401."""
    gateway = make_gateway()
    target = signed_target(nonce=False)
    first = await open_connection(nursery, gateway, target)
    await first.send_message('{"status": "end"}')
    assert ["start", "end"] == statuses(await read_until_close(first))
    second = await open_connection(nursery, gateway, target)
    assert ["401"] == statuses(await read_until_close(second))


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("not json", 403),
        ('{"status": "start"}', 403),
        ('{"status": "start", "data": "%%%"}', 403),
        (b"\x00\x00\x00", 403),
        (b"\x00" * (2 * 1024 * 1024), 413),
    ],
)
async def test_bad_input_gets_coded_close(nursery: trio.Nursery, message: str | bytes, code: int) -> None:
    """Malformed frames end the session with their code, close 4000+code; other sessions go on."""
    gateway = make_gateway()
    healthy = await open_connection(nursery, gateway)
    await healthy.send_message(PCM_100MS)
    broken = await open_connection(nursery, gateway)
    await broken.send_message(PCM_100MS)
    await broken.send_message(message)
    messages = await read_until_close(broken)
    assert str(code) == statuses(messages)[-1]
    assert 4000 + code == broken.closed.code
    await healthy.send_message('{"status": "end"}')
    assert ["start", "partial", "final", "end"] == statuses(await read_until_close(healthy))


async def test_unknown_language_is_403_at_start(nursery: trio.Nursery) -> None:
    """A language with no route is refused when the stream opens, naming the language."""
    connection = await open_connection(nursery, make_gateway(), signed_target("lang=xx"))
    await connection.send_message(PCM_100MS)
    messages = await read_until_close(connection)
    assert 403 == messages[-1]["code"]
    assert "'xx'" in messages[-1]["message"]


async def test_language_the_engine_lacks_is_403(nursery: trio.Nursery) -> None:
    """A routed language that the engine itself refuses is also 403 at start."""
    connection = await open_connection(
        nursery, make_gateway(FakeEngine(languages=frozenset({"en"}))), signed_target("lang=zh")
    )
    await connection.send_message(PCM_100MS)
    messages = await read_until_close(connection)
    assert [403] == [m["code"] for m in messages]


async def test_full_engine_is_503_until_a_stream_ends(nursery: trio.Nursery) -> None:
    """An engine at max_streams refuses the next session with 503; once a stream ends, a new one starts."""
    gateway = make_gateway(FakeEngine(max_streams=1))
    first = await open_connection(nursery, gateway)
    await first.send_message(PCM_100MS)
    assert "start" == json.loads(await first.get_message())["data"]["status"]
    second = await open_connection(nursery, gateway)
    await second.send_message(PCM_100MS)
    refused = await read_until_close(second)
    assert 503 == refused[-1]["code"]
    assert refused[-1]["message"].startswith("No engine available")
    assert 4503 == second.closed.code
    await first.send_message('{"status": "end"}')
    assert "end" == statuses(await read_until_close(first))[-1]
    third = await open_connection(nursery, gateway)
    await third.send_message('{"status": "end"}')
    assert ["start", "end"] == statuses(await read_until_close(third))


async def test_engine_failure_is_500_and_isolated(nursery: trio.Nursery) -> None:
    """An engine that raises mid-stream ends its session with 500 and close 4500."""
    failing = make_gateway(FakeEngine(fail_after_bytes=6400))
    connection = await open_connection(nursery, failing)
    for _ in range(4):
        await connection.send_message(PCM_100MS)
    messages = await read_until_close(connection)
    assert "500" == statuses(messages)[-1]
    assert "failed on purpose" in messages[-1]["message"]
    assert 4500 == connection.closed.code


# --- timeouts, on MockClock ------------------------------------------------------------------------


async def test_idle_timeout_fires_30s_after_last_audio(autojump_clock: trio.testing.MockClock) -> None:
    """No audio for 30 s: 408 "Connection Timeout" at exactly last audio + 30 s; pings don't count."""
    async with trio.open_nursery() as nursery:
        connection = await open_connection(nursery, make_gateway())
        await trio.sleep(10)
        await connection.send_message(PCM_100MS)
        last_audio = trio.current_time()
        await trio.sleep(20)
        await connection.send_message("ping")
        messages = await read_until_close(connection)
        assert [{"code": 408, "message": "Connection Timeout", "data": ""}] == messages[-1:]
        assert 4408 == connection.closed.code
        assert last_audio + 30 == pytest.approx(trio.current_time(), abs=0.01)
        nursery.cancel_scope.cancel()


async def test_idle_timeout_before_any_audio(autojump_clock: trio.testing.MockClock) -> None:
    """A connection that never sends audio is closed 30 s after it opened."""
    async with trio.open_nursery() as nursery:
        opened = trio.current_time()
        connection = await open_connection(nursery, make_gateway())
        messages = await read_until_close(connection)
        assert ["408"] == statuses(messages)
        assert opened + 30 == pytest.approx(trio.current_time(), abs=0.01)
        nursery.cancel_scope.cancel()


async def test_idle_timeout_counts_from_the_start_when_the_first_message_is_no_audio(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A session waits for its first message before it starts its actors; a ping as that message is
    answered and does not restart the idle clock: 408 at open + 30 s, not at the ping + 30 s."""
    async with trio.open_nursery() as nursery:
        opened = trio.current_time()
        connection = await open_connection(nursery, make_gateway())
        await trio.sleep(10)
        await connection.send_message("ping")
        messages = await read_until_close(connection)
        assert ["pong", "408"] == statuses(messages)
        assert opened + 30 == pytest.approx(trio.current_time(), abs=0.01)
        nursery.cancel_scope.cancel()


async def test_max_duration(autojump_clock: trio.testing.MockClock) -> None:
    """A session that keeps streaming is cut at max_duration with 408, at that virtual time."""
    gateway = make_gateway(session={"max_duration": 50.0, "idle_timeout": 30.0})
    async with trio.open_nursery() as nursery:
        started = trio.current_time()
        connection = await open_connection(nursery, gateway)

        async def stream_forever() -> None:
            while True:
                await connection.send_message(PCM_100MS)
                await trio.sleep(0.1)

        nursery.start_soon(stream_forever)
        messages = await read_until_close(connection)
        assert "Maximum session duration reached" == messages[-1]["message"]
        assert 4408 == connection.closed.code
        assert started + 50 == pytest.approx(trio.current_time(), abs=0.2)
        nursery.cancel_scope.cancel()


async def test_flush_timeout_when_engine_hangs_at_end(autojump_clock: trio.testing.MockClock) -> None:
    """An engine that never finishes after end of audio: 500 at end + flush_timeout, stream cancelled."""
    engine = FakeEngine(hang_on_finish=True)
    async with trio.open_nursery() as nursery:
        connection = await open_connection(nursery, make_gateway(engine))
        await connection.send_message(PCM_100MS)
        await connection.send_message('{"status": "end"}')
        ended = trio.current_time()
        messages = await read_until_close(connection)
        assert {"code": 500, "message": "Engine did not finish in time", "data": ""} == messages[-1]
        assert ended + 30 == pytest.approx(trio.current_time(), abs=0.01)
        assert 0 == engine.streams_finished
        nursery.cancel_scope.cancel()


async def test_the_idle_watch_stops_when_the_audio_ends(autojump_clock: trio.testing.MockClock) -> None:
    """After the client's end the flush deadline governs, however long: an engine still finishing at
    idle_timeout (30 s) is not a silent client; the 500 comes at end + flush_timeout (60 s)."""
    engine = FakeEngine(hang_on_finish=True)
    async with trio.open_nursery() as nursery:
        connection = await open_connection(nursery, make_gateway(engine, session={"flush_timeout": 60.0}))
        await connection.send_message(PCM_100MS)
        await connection.send_message('{"status": "end"}')
        ended = trio.current_time()
        messages = await read_until_close(connection)
        assert {"code": 500, "message": "Engine did not finish in time", "data": ""} == messages[-1]
        assert ended + 60 == pytest.approx(trio.current_time(), abs=0.01)
        nursery.cancel_scope.cancel()


async def test_an_engine_that_stops_taking_audio_is_a_500_not_an_idle_client(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The engine hangs mid-stream: the bounded channels fill, the receiver waits to hand on a frame, and at
    the idle timeout the client is told the engine stalled (500), not that it went quiet (408)."""
    engine = FakeEngine(stall_after_bytes=5 * len(PCM_100MS))
    async with trio.open_nursery() as nursery:
        connection = await open_connection(nursery, make_gateway(engine))
        for _ in range(200):  # more than the channels hold: the last frames wait for the engine
            await connection.send_message(PCM_100MS)
        sent = trio.current_time()
        messages = await read_until_close(connection)
        assert {"code": 500, "message": "Engine stopped taking audio", "data": ""} == messages[-1]
        assert sent + 30 == pytest.approx(trio.current_time(), abs=0.01)
        assert 4500 == connection.closed.code
        nursery.cancel_scope.cancel()


async def test_handshake_timeout_without_request(autojump_clock: trio.testing.MockClock) -> None:
    """A client that connects and sends nothing is dropped after handshake_timeout (10 s)."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    gateway = make_gateway()
    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gateway.handle_connection, server_stream)
        assert b"" == await client_stream.receive_some()
    assert started + 10 == pytest.approx(trio.current_time(), abs=0.01)


async def test_handshake_timeout_is_absolute_for_a_trickling_client(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A slow-loris client sending its head a byte every 3 s is still dropped 10 s after connecting."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    started = trio.current_time()
    handler_ended: list[float] = []

    async def serve_one() -> None:
        await make_gateway().handle_connection(server_stream)
        handler_ended.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_one)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            for byte in b"GET / HTTP/1.1\r\nHost: x\r\n":
                await client_stream.send_all(bytes([byte]))
                await trio.sleep(3)
    assert [started + 10] == pytest.approx(handler_ended, abs=0.01)


async def test_close_is_bounded_when_client_stops_reading(autojump_clock: trio.testing.MockClock) -> None:
    """The server's close handshake never waits longer than close_timeout for a silent client."""
    gateway = make_gateway(session={"idle_timeout": 5.0})
    # A raw client: it sends the handshake, then never reads or answers again.
    client_stream, server_stream = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gateway.handle_connection, server_stream)
        await client_stream.send_all(
            b"GET " + signed_target().encode() + b" HTTP/1.1\r\nHost: gateway.test\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        opened = trio.current_time()
        # Never read again: the server's idle timeout fires at 5 s, its close waits at most 5 s more.
    assert opened + 5 + 5 == pytest.approx(trio.current_time(), abs=0.01)
    assert 0 == gateway.active_sessions


async def test_a_client_that_stops_reading_gets_408_after_send_timeout(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that keeps talking but reads nothing: the results wait in the session's bounded channels
    (no growing memory) until send_timeout, then 408; the close is bounded by close_timeout."""
    gateway = make_gateway(session={"send_timeout": 10.0, "idle_timeout": 30.0})
    # Lockstep streams hold every byte until the other side reads it: no socket buffer to hide in.
    client_stream, server_stream = trio.testing.lockstep_stream_pair()
    client = WSConnection(ConnectionType.CLIENT)
    ended_at: list[float] = []

    async def serve() -> None:
        await gateway.handle_connection(server_stream)
        ended_at.append(trio.current_time())

    async def talk_without_reading() -> None:
        # Until the server closes the connection (BrokenResourceError).
        with contextlib.suppress(trio.BrokenResourceError):
            while True:
                await client_stream.send_all(client.send(BytesMessage(data=PCM_100MS)))
                await trio.sleep(0.1)

    caplog.set_level(logging.INFO)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        await client_stream.send_all(client.send(Request(host="gateway.test", target=signed_target())))
        client.receive_data(await client_stream.receive_some())
        assert [AcceptConnection] == [type(event) for event in client.events()]
        first_audio = trio.current_time()
        nursery.start_soon(talk_without_reading)
        while not ended_at:  # noqa: ASYNC110 -- the session's end is what is measured
            await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    # The start result never leaves: 10 s of waiting, then 5 s for the close that nobody reads.
    assert first_audio + 10 + 5 == pytest.approx(ended_at[0], abs=0.2)
    assert any("ends with 408 Client is not reading results" in r.getMessage() for r in caplog.records)
    assert 0 == gateway.active_sessions


def crash_after_start(real: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """Wrap an actor so that it starts for real, then dies: a fault injected at the actor boundary."""

    async def run(*args: object, task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as inner:
            task_status.started(await inner.start(real, *args))
            await trio.sleep(1)
            raise RuntimeError("actor killed by the test")

    return run


@pytest.mark.parametrize("actor", ["receiver", "relay", "sender"])
async def test_killing_any_actor_ends_the_session_cleanly(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch, actor: str
) -> None:
    """Any one actor dying ends the whole set: one 500 to the client, close 4500, no task left running."""
    module = getattr(session, actor)
    monkeypatch.setattr(module, "run", crash_after_start(module.run))
    engine = FakeEngine()
    gateway = make_gateway(engine)
    async with trio.open_nursery() as nursery:
        connection = await open_connection(nursery, gateway)
        await connection.send_message(PCM_100MS)
        killed_at = trio.current_time() + 1
        messages = await read_until_close(connection)
        assert {"code": 500, "message": "Internal server error", "data": ""} == messages[-1]
        assert 4500 == connection.closed.code
        assert killed_at == pytest.approx(trio.current_time(), abs=0.01)
        await trio.testing.wait_all_tasks_blocked()
        # Only the test's own tasks remain: the connection handler, its actors and the engine are gone.
        assert 0 == gateway.active_sessions
        assert [] == [task.name for task in nursery.child_tasks if "handle_connection" in task.name]
    assert 1 == engine.streams_started


async def test_client_vanishing_cancels_everything(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that drops the connection mid-sentence: the session and its engine stream are cancelled,
    and the log says how the client went."""
    caplog.set_level(logging.INFO)
    engine = FakeEngine()
    gateway = make_gateway(engine)
    client_stream, server_stream = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gateway.handle_connection, server_stream)
        with trio.CancelScope() as client_scope:
            async with trio.open_nursery() as client_nursery:
                connection = await trio_websocket.wrap_client_stream(
                    client_nursery,
                    client_stream,  # type: ignore[arg-type]
                    "gateway.test",
                    signed_target(),
                )
                await connection.send_message(PCM_100MS)
                await trio.sleep(0.5)
                assert 1 == gateway.active_sessions
                client_scope.cancel()
        await client_stream.aclose()  # the TCP reset: no close frame
    assert 0 == gateway.active_sessions
    assert (1, 0) == (engine.streams_started, engine.streams_finished)
    went = [r.getMessage() for r in caplog.records if r.getMessage().startswith("client went away")]
    assert ["client went away: the client closed the connection without a close frame"] == went


async def test_every_session_log_line_names_session_and_app(nursery: trio.Nursery) -> None:
    """Log lines written while a session runs carry its task_id and app, through the logs filter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.SessionContext())
    handler.setFormatter(logging.Formatter(logs.FORMAT))
    logger = logging.getLogger("asr_actors")
    logger.addHandler(handler)
    previous_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        connection = await open_connection(nursery, make_gateway())
        await connection.send_message(PCM_100MS)
        await connection.send_message('{"status": "end"}')
        messages = await read_until_close(connection)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
    task_id = messages[0]["task_id"]
    lines = stream.getvalue().splitlines()
    assert any("stream opened" in line for line in lines)
    assert all(f"[session={task_id} app=test-app]" in line for line in lines), lines


async def test_drain_lets_sessions_finish_then_ends_the_rest(autojump_clock: trio.testing.MockClock) -> None:
    """Shutdown: a session that ends within the grace period ends normally; one still streaming when the
    grace period (10 s) runs out gets 503 "Server is shutting down; reconnect" at that virtual time."""
    gateway = make_gateway()
    async with trio.open_nursery() as nursery:
        quick = await open_connection(nursery, gateway)
        await quick.send_message(PCM_100MS)
        endless = await open_connection(nursery, gateway)

        async def stream_forever() -> None:
            while True:
                await endless.send_message(PCM_100MS)
                await trio.sleep(0.1)

        nursery.start_soon(stream_forever)
        await trio.sleep(1)
        started = trio.current_time()
        nursery.start_soon(gateway.drain, 10.0)
        await trio.sleep(2)
        await quick.send_message('{"status": "end"}')
        assert "end" == statuses(await read_until_close(quick))[-1]
        messages = await read_until_close(endless)
        assert {"code": 503, "message": "Server is shutting down; reconnect", "data": ""} == messages[-1]
        assert 4503 == endless.closed.code
        assert started + 10 == pytest.approx(trio.current_time(), abs=0.2)
        nursery.cancel_scope.cancel()
    assert 0 == gateway.active_sessions


async def test_per_app_session_limit_is_429_until_a_slot_frees(nursery: trio.Nursery) -> None:
    """[auth] sessions_per_app = 1: a second concurrent session of the app gets 429 (close 4429); once the
    first has ended, the app may start another."""
    gateway = make_gateway(auth={"sessions_per_app": 1})
    first = await open_connection(nursery, gateway)
    await first.send_message(PCM_100MS)
    assert "start" == json.loads(await first.get_message())["data"]["status"]
    second = await open_connection(nursery, gateway)
    refused = await read_until_close(second)
    assert {"code": 429, "message": "Too many sessions for app 'test-app' (limit 1)", "data": ""} == refused[
        -1
    ]
    assert 4429 == second.closed.code
    await first.send_message('{"status": "end"}')
    assert "end" == statuses(await read_until_close(first))[-1]
    third = await open_connection(nursery, gateway)
    await third.send_message('{"status": "end"}')
    assert ["start", "end"] == statuses(await read_until_close(third))


async def test_per_app_override(nursery: trio.Nursery) -> None:
    """[apps.X] max_sessions overrides the default limit for that app."""
    gateway = make_gateway(
        auth={"sessions_per_app": 1}, apps={"test-app": {"secret": "test-secret", "max_sessions": 2}}
    )
    held = []
    for _ in range(2):
        connection = await open_connection(nursery, gateway)
        await connection.send_message(PCM_100MS)
        assert "start" == json.loads(await connection.get_message())["data"]["status"]
        held.append(connection)
    third = await open_connection(nursery, gateway)
    assert "429" == statuses(await read_until_close(third))[-1]


async def test_after_end_the_server_lingers_for_a_client_still_reading(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A client that does not close after `end` is closed with 1000 at end_linger (5 s) after it; one that
    closes first ends the session at once."""
    gateway = make_gateway()
    lingering = await open_connection(nursery, gateway)
    await lingering.send_message('{"status": "end"}')
    messages = [await lingering.get_message(), await lingering.get_message()]
    ended_at = trio.current_time()
    with pytest.raises(trio_websocket.ConnectionClosed):
        await lingering.get_message()
    assert ["start", "end"] == statuses([json.loads(m) for m in messages])
    assert lingering.closed is not None
    assert (5.0, 1000) == (pytest.approx(trio.current_time() - ended_at, abs=0.01), lingering.closed.code)
    closing = await open_connection(nursery, gateway)
    await closing.send_message('{"status": "end"}')
    started = trio.current_time()
    assert ["start", "end"] == statuses(await read_until_close(closing))  # closes after `end`
    while gateway.active_sessions:  # noqa: ASYNC110 -- the gateway's own count, no event for it
        await trio.sleep(0.001)
    assert trio.current_time() - started < 0.1


async def test_a_kept_alive_http_connection_closes_at_keep_alive_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After an answer, the next request must come within keep_alive_timeout (15 s), else the connection
    closes."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    gateway = make_gateway()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gateway.handle_connection, server_stream)
        await client_stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        assert (await client_stream.receive_some()).startswith(b"HTTP/1.1 200 ")
        answered = trio.current_time()
        assert b"" == await client_stream.receive_some()
    assert answered + 15 == pytest.approx(trio.current_time(), abs=0.01)
