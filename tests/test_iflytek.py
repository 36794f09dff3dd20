"""The iFlytek engine (rtasr), through the whole gateway, against a protocol-accurate fake on loopback.

The fake (asr_actors/testing/fake_iflytek.py) checks the signature and speaks the service's WebSocket
protocol; nothing is mocked between the gateway and that socket. Sockets are real, so these run on the
real clock, each under an absolute `fail_after`.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from asr_actors.backend import build_engines
from asr_actors.engines import iflytek_wire as wire
from asr_actors.engines.base import Final, Partial, Word
from asr_actors.server import Gateway
from asr_actors.testing.fake_iflytek import FakeIflytek, Switches
from asr_actors.testing.fake_iflytek import signature as fake_signature
from asr_actors.testing.fake_iflytek import text as fake_text
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

KEY_ENV = "ASR_TEST_IFLYTEK_KEY"
FRAME = b"\x01\x00" * 1600  # 100 ms at 16 kHz: one character of the fake's text


async def start_fake(nursery: trio.Nursery, switches: Switches | None = None) -> FakeIflytek:
    fake = FakeIflytek(switches)
    await nursery.start(fake.serve)
    return fake


async def iflytek_gateway(url: str, **engine: Any) -> Gateway:
    config = fake_config(
        engines={
            "default": "fake",
            "iflytek": {"url": url, "app_id": "test-app", "api_key_env": KEY_ENV, **engine},
        },
        languages={"zh": {"engine": "iflytek"}, "en": {"engine": "fake"}},
    )
    gateway = wired_gateway(config, build_engines(config), {APPKEY: SECRET})
    await gateway.prepare()
    return gateway


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "test-key")


async def zh_session(
    nursery: trio.Nursery,
    gateway: Gateway,
    frames: int,
    *,
    frame: bytes = FRAME,
    end: bool = True,
    options: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    connection = await open_connection(nursery, gateway, signed_target("lang=zh"))
    if options is not None:
        await connection.send_message(json.dumps({"status": "start", "data": "", "options": options}))
    for _ in range(frames):
        await connection.send_message(frame)
    if end:
        await connection.send_message('{"status": "end"}')
    return await read_until_close(connection)


def finals(messages: list[dict[str, Any]]) -> list[str]:
    return [m["data"]["result"] for m in messages if m.get("code") == 200 and m["data"]["status"] == "final"]


def test_the_signature_is_the_services() -> None:
    """signa = Base64(HMAC-SHA1(api_key, MD5hex(appid + ts))), as the fake (written from the service's
    documentation) computes it; the URL carries appid, ts and the URL-encoded signa."""
    assert fake_signature("595f23df", "key", "1512041814") == wire.signature("595f23df", "key", "1512041814")
    url = wire.signed_url(wire.DEFAULT_URL, "595f23df", "key", 1512041814.7)
    signa = wire.signature("595f23df", "key", "1512041814")
    assert url.startswith("wss://rtasr.xfyun.cn/v1/ws?appid=595f23df&ts=1512041814&signa=")
    assert signa.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D") in url


def test_results_parse_as_partials_and_finals() -> None:
    def result(kind: str, words: list[tuple[str, int, int]], bg: int, ed: int) -> str:
        ws = [{"wb": wb, "we": we, "cw": [{"w": w, "wp": "p" if w == "。" else "n"}]} for w, wb, we in words]
        data = {"seg_id": 0, "cn": {"st": {"bg": str(bg), "ed": str(ed), "type": kind, "rt": [{"ws": ws}]}}}
        return wire.json.dumps({"action": "result", "code": "0", "data": wire.json.dumps(data)})

    assert Partial("你好", 820, 820 + 60 * 10) == wire.parse_message(
        result("1", [("你", 0, 30), ("好", 30, 60)], 820, 0)
    )
    # Word times: 10 ms frames from the sentence's begin; punctuation joins the word before it.
    assert Final("你好。", 820, 1500, (Word("你好。", 820, 1420),)) == wire.parse_message(
        result("0", [("你好", 0, 60), ("。", 60, 60)], 820, 1500)
    )
    assert wire.Started("sid") == wire.parse_message(
        '{"action": "started", "code": "0", "data": "", "sid": "sid"}'
    )
    failed = wire.parse_message('{"action": "error", "code": "10105", "desc": "illegal access"}')
    assert isinstance(failed, wire.Failed)
    assert "10105" in failed.reason
    with pytest.raises(wire.WireError):
        wire.parse_message('{"action": "result", "code": "0", "data": "not json"}')


def test_frames_are_cut_to_the_services_pieces() -> None:
    pieces = wire.Rechunker()
    assert [] == pieces.feed(b"\x00" * 1000)
    assert [1280, 1280] == [len(p) for p in pieces.feed(b"\x00" * 2200)]
    assert [640] == [len(p) for p in pieces.flush()]
    assert [] == pieces.flush()


async def test_chinese_routed_to_iflytek(nursery: trio.Nursery, guarded: None) -> None:
    """25 frames: partials as the sentence grows, two definitive sentences, the tail flushed at the end."""
    fake = await start_fake(nursery)
    gateway = await iflytek_gateway(fake.url)
    messages = await zh_session(nursery, gateway, 25)
    assert [fake_text(0, 10), fake_text(10, 20), fake_text(20, 25)] == finals(messages)
    assert "end" == statuses(messages)[-1]
    partials = [m["data"]["result"] for m in messages if m["data"]["status"] == "partial"]
    assert fake_text(0, 3) in partials
    first_final = next(m["data"] for m in messages if m["data"]["status"] == "final")
    assert (0, 1000) == (first_final["begin_time"], first_final["end_time"])
    assert {1280} == fake.stats.frame_sizes - {25 * 3200 % 1280}, "audio in the service's 1,280-byte pieces"
    assert (1, 1, 25 * 3200) == (fake.stats.started, fake.stats.finished, fake.stats.bytes)


@pytest.mark.parametrize(
    ("switches", "engine", "message"),
    [
        (Switches(api_key="another-key"), {}, "iFlytek refused the credentials (10105 illegal access"),
        (Switches(fail_after_frames=5), {}, "iFlytek's engine failed (10700)"),
        (Switches(drop_after_frames=5), {}, "iFlytek connection failed"),
        (Switches(close_after_frames=5), {}, "iFlytek closed the connection before the end of the audio"),
        (Switches(ignore_end=True), {"stop_timeout": 1.0}, "iFlytek did not finish within 1 s"),
        (Switches(ignore_start=True), {"start_timeout": 1.0}, "iFlytek did not start within 1 s"),
    ],
)
async def test_upstream_faults_become_coded_errors(
    nursery: trio.Nursery, guarded: None, switches: Switches, engine: dict[str, Any], message: str
) -> None:
    """Each upstream fault ends its session with 500 and a reason, never a hang; a session on another
    engine at the same time is unaffected."""
    fake = await start_fake(nursery, switches)
    gateway = await iflytek_gateway(fake.url, **engine)
    healthy = await open_connection(nursery, gateway, signed_target("lang=en"))
    await healthy.send_message(FRAME)
    # A clean close after our `end` is how the service finishes: the close case sends no `end`, or whether
    # the gateway's `end` got out before the close arrived would decide the outcome.
    messages = await zh_session(nursery, gateway, 8, end=switches.close_after_frames is None)
    assert 500 == messages[-1]["code"]
    assert messages[-1]["message"].startswith(message), messages[-1]
    await healthy.send_message('{"status": "end"}')
    assert ["start", "partial", "final", "end"] == statuses(await read_until_close(healthy))


async def test_a_client_that_leaves_mid_stream_ends_its_upstream_only(
    nursery: trio.Nursery, guarded: None
) -> None:
    """A client closes in the middle of its audio: its upstream connection closes while the service reads
    audio, and the next session runs whole (the fake's own handler must not let that close escape)."""
    fake = await start_fake(nursery)
    gateway = await iflytek_gateway(fake.url)
    await leave_mid_stream(nursery, gateway, FRAME, lambda: fake.stats.open_connections)
    messages = await zh_session(nursery, gateway, 6)
    assert ["start", "end"] == [statuses(messages)[0], statuses(messages)[-1]]
    assert finals(messages)


async def test_session_options_reach_the_service(nursery: trio.Nursery, guarded: None) -> None:
    """`iflytek.pd` and `punctuation: false` become the connection's `pd` and `punc=0`; a session that asks
    for neither sends neither."""
    fake = await start_fake(nursery, Switches())
    gateway = await iflytek_gateway(fake.url)
    options = {"punctuation": False, "words": True, "iflytek": {"pd": "medical"}}
    assert "end" == statuses(await zh_session(nursery, gateway, 4, options=options))[-1]
    assert "end" == statuses(await zh_session(nursery, gateway, 4))[-1]
    asked, plain = fake.stats.queries
    assert ("medical", "0") == (asked.get("pd"), asked.get("punc"))
    assert not {"pd", "punc"} & plain.keys()


async def test_unreachable_upstream(nursery: trio.Nursery, guarded: None) -> None:
    gateway = await iflytek_gateway(await unreachable_url("/v1/ws"))
    messages = await zh_session(nursery, gateway, 3)
    assert {"code": 500, "message": "iFlytek is unreachable", "data": ""} == messages[-1]


@pytest.mark.parametrize("missing", ["key", "app_id"])
async def test_missing_credentials_are_a_503_with_the_reason(
    nursery: trio.Nursery, guarded: None, monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    """Without the key (or the app id) the gateway still starts; Chinese sessions get 503 and why."""
    if missing == "key":
        monkeypatch.delenv(KEY_ENV)
        gateway = await iflytek_gateway("ws://127.0.0.1:9/unused")
        reason = f"iFlytek needs an API key in ${KEY_ENV}"
    else:
        gateway = await iflytek_gateway("ws://127.0.0.1:9/unused", app_id="")
        reason = "iFlytek needs [engines.iflytek] app_id"
    assert {
        "code": "zh",
        "engine": "iflytek",
        "available": False,
        "reason": reason,
        "options": sorted(gateway.engines["iflytek"].options),
    } in await gateway.languages()
    messages = await zh_session(nursery, gateway, 1)
    assert {"code": 503, "message": f"No engine available: {reason}", "data": ""} == messages[-1]


async def test_pings_from_the_service_never_fail_a_session(nursery: trio.Nursery, guarded: None) -> None:
    """A service that pings every 5 ms, and every millisecond from the end of the audio until the close:
    20 concurrent sessions (the engine's default capacity) all end with their finals and
    `end`, none with an error."""
    fake = await start_fake(nursery, Switches(ping_every=0.005, ping_while_closing=True))
    gateway = await iflytek_gateway(fake.url)
    results: list[list[dict[str, Any]]] = []

    async def one() -> None:
        results.append(await zh_session(nursery, gateway, 12))

    async with trio.open_nursery() as clients:
        for _ in range(20):
            clients.start_soon(one)
    expected = [fake_text(0, 10), fake_text(10, 12)]
    assert [(expected, "end")] * 20 == [(finals(messages), statuses(messages)[-1]) for messages in results]
    assert 20 == fake.stats.finished


async def test_twenty_concurrent_sessions(nursery: trio.Nursery, guarded: None) -> None:
    fake = await start_fake(nursery)
    gateway = await iflytek_gateway(fake.url)
    results: list[list[dict[str, Any]]] = []

    async def one() -> None:
        results.append(await zh_session(nursery, gateway, 25))

    async with trio.open_nursery() as clients:
        for _ in range(20):
            clients.start_soon(one)
    assert 20 == len(results)
    expected = [fake_text(0, 10), fake_text(10, 20), fake_text(20, 25)]
    assert all(expected == finals(messages) for messages in results)
    assert (20, 20, 0) == (fake.stats.started, fake.stats.finished, fake.stats.open_connections)
