"""The gateway's HTTP front on a real loopback socket: page, health, signing, and refusals."""

from __future__ import annotations

import json

import attrs
import h11
import pytest
import trio

from asr_actors import __version__, client, http
from asr_actors.engines.fake import FakeEngine
from asr_actors.limits import HandshakeRate, memory_limits
from asr_actors.server import serve
from tests.support import fake_config, wired_gateway

GUARD = 30  # seconds: an absolute bound on every I/O test here


@pytest.fixture
async def base_url(nursery: trio.Nursery) -> str:
    config = fake_config(server={"port": 0})
    listening = await nursery.start(serve, config)
    url: str = listening.url
    return url


async def http_get(base: str, target: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """One request on a connection of its own: status, headers, body."""
    host = base.removeprefix("http://").rstrip("/")
    [answer] = await exchange(
        base, f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    )
    return answer


async def upgrade_status_line(host: str, port: int, extra_headers: str = "") -> bytes:
    """Send a WebSocket upgrade request by hand; return the first line of the answer."""
    with trio.fail_after(GUARD):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(
                f"GET /v1/asr HTTP/1.1\r\nHost: {host}:{port}\r\n{extra_headers}Upgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            answer: bytes = (await stream.receive_some()).split(b"\r\n", 1)[0]
            return answer


async def test_page_and_assets(base_url: str) -> None:
    """GET / is the page; its script and worklet are served with JavaScript types."""
    status, headers, body = await http_get(base_url, "/")
    assert 200 == status
    assert headers["content-type"].startswith("text/html")
    assert b'id="transcript"' in body
    for asset in ("/app.js", "/recorder-worklet.js"):
        status, headers, _ = await http_get(base_url, asset)
        assert (200, "text/javascript; charset=utf-8") == (status, headers["content-type"])
    assert "nosniff" == headers["x-content-type-options"]


async def test_languages(base_url: str) -> None:
    """/v1/languages lists each routed language with its engine, its availability and the session
    options that engine honours."""
    status, _, body = await http_get(base_url, "/v1/languages")
    options = sorted(FakeEngine.options)
    expected = [
        {"code": "en", "engine": "fake", "available": True, "options": options},
        {"code": "zh", "engine": "fake", "available": True, "options": options},
    ]
    assert (200, expected) == (status, json.loads(body)["languages"])


async def test_healthz(base_url: str) -> None:
    """/healthz answers JSON with the live session count."""
    status, _, body = await http_get(base_url, "/healthz")
    assert (200, {"status": "ok", "sessions": 0}) == (status, json.loads(body))


@pytest.mark.parametrize(
    ("target", "method", "expected"),
    [
        ("/../pyproject.toml", "GET", 404),
        ("/%2e%2e/pyproject.toml", "GET", 404),
        ("/nothing-here.js", "GET", 404),
        ("/v1/asr", "GET", 426),
        ("/", "POST", 405),
    ],
)
async def test_refusals(base_url: str, target: str, method: str, expected: int) -> None:
    """Traversal, unknown files, a plain GET of the WebSocket path and other methods are refused."""
    status, _, _ = await http_get(base_url, target, method)
    assert expected == status


async def test_sign_gives_a_working_single_use_link(base_url: str) -> None:
    """/v1/sign on a loopback server returns a link that opens one session (and only one)."""
    status, _, body = await http_get(base_url, "/v1/sign")
    assert 200 == status
    url = json.loads(body)["url"]
    assert url.startswith("ws://127.0.0.1:")
    assert "nonce=" in url
    with trio.fail_after(GUARD):
        results = await client.stream_pcm(url, b"\x01\x00" * 8000)
        assert ["start", "partial", "final", "end"] == [r.status for r in results[:2] + results[-2:]]
        with pytest.raises(client.ServerError) as refused:
            await client.stream_pcm(url, b"\x01\x00" * 1600)
    assert 401 == refused.value.code
    # The CLI's way of getting a link works too.
    assert (await client.fetch_demo_url(base_url)).startswith("ws://")


def test_signing_is_off_when_not_on_loopback() -> None:
    """demo.enabled = "auto" serves /v1/sign only when bound to a loopback address."""
    public = fake_config(server={"host": "0.0.0.0"})
    assert not wired_gateway(public, {}, {}).demo_enabled
    assert wired_gateway(
        attrs.evolve(public, server=attrs.evolve(public.server, host="::1")), {}, {}
    ).demo_enabled
    forced = fake_config(server={"host": "0.0.0.0"}, demo={"enabled": "on"})
    assert wired_gateway(forced, {}, {}).demo_enabled


@pytest.mark.parametrize(
    "proxy_header",
    ["X-Forwarded-For: 203.0.113.9", "Forwarded: for=203.0.113.9;proto=https", "X-Forwarded-Host: a.example"],
)
async def test_no_demo_link_through_a_proxy_unless_turned_on(
    nursery: trio.Nursery, proxy_header: str
) -> None:
    """A gateway on loopback behind a proxy on the same host sees every request come from 127.0.0.1: with
    [demo] enabled = "auto" a request that a proxy forwarded gets 403 and no link; with "on" (the operator
    asked for it by name) it gets one."""
    listening = await nursery.start(serve, fake_config(server={"port": 0}))
    host = listening.url.removeprefix("http://").rstrip("/")
    request = f"GET /v1/sign HTTP/1.1\r\nHost: {host}\r\n{proxy_header}\r\nConnection: close\r\n\r\n"
    [(status, _, body)] = await exchange(listening.url, request.encode())
    assert (403, False) == (status, b"ws://" in body)
    opened = await nursery.start(serve, fake_config(server={"port": 0}, demo={"enabled": "on"}))
    host = opened.url.removeprefix("http://").rstrip("/")
    request = f"GET /v1/sign HTTP/1.1\r\nHost: {host}\r\n{proxy_header}\r\nConnection: close\r\n\r\n"
    [(status, _, body)] = await exchange(opened.url, request.encode())
    assert 200 == status
    assert json.loads(body)["url"].startswith("ws://")


def test_the_demo_app_is_small_by_default() -> None:
    """The demo app's default limits: 4 sessions, 60 audio minutes a day; an [apps.demo] of the operator's
    own replaces them."""
    limits = memory_limits(fake_config())
    assert (4, 60.0) == (limits.slots.limit_for("demo"), limits.audio.minutes_for("demo"))
    own = memory_limits(fake_config(apps={"demo": {"secret": "s" * 16, "max_sessions": 9}}))
    assert 9 == own.slots.limit_for("demo")


async def test_the_demo_app_uses_only_the_engines_it_is_allowed(nursery: trio.Nursery) -> None:
    """A demo link's session on an engine outside [demo] engines: 403 with the reason, no stream."""
    listening = await nursery.start(serve, fake_config(server={"port": 0}, demo={"engines": ["local"]}))
    _, _, body = await http_get(listening.url, "/v1/sign")
    with trio.fail_after(GUARD), pytest.raises(client.ServerError) as refused:
        await client.stream_pcm(json.loads(body)["url"], b"\x01\x00" * 1600)
    assert (403, "The demo app may not use the fake engine ([demo] engines)") == (
        refused.value.code,
        refused.value.message,
    )


async def test_v1_refuses_foreign_browser_origins(base_url: str) -> None:
    """A page from a foreign origin cannot open a v1 session (HTTP 403); the server's own page can."""
    _, _, body = await http_get(base_url, "/v1/sign")
    host = json.loads(body)["url"].removeprefix("ws://").split("/")[0]
    hostname, port = host.split(":")
    for origin, expected in (("http://evil.example", 403), (f"http://{host}", 101)):
        answer = await upgrade_status_line(hostname, int(port), f"Origin: {origin}\r\n")
        assert answer.startswith(f"HTTP/1.1 {expected} ".encode()), answer


async def test_readyz_and_metrics(base_url: str) -> None:
    """/readyz reports each routed engine; /metrics is Prometheus text that counts finished sessions."""
    status, _, body = await http_get(base_url, "/readyz")
    assert (200, {"ready": True, "checks": {"gateway": "ok", "engine:fake": "ok"}}) == (
        status,
        json.loads(body),
    )
    _, _, body = await http_get(base_url, "/v1/sign")
    with trio.fail_after(GUARD):
        await client.stream_pcm(json.loads(body)["url"], b"\x01\x00" * 3200)
        # The client has its `end`; the server counts the session once its close handshake is done.
        while json.loads((await http_get(base_url, "/healthz"))[2])["sessions"]:  # noqa: ASYNC110
            await trio.sleep(0.01)
    status, headers, text = await http_get(base_url, "/metrics")
    assert 200 == status
    assert headers["content-type"].startswith("text/plain")
    # Per route: engine and language as labels; the release as asr_build_info.
    assert 'asr_sessions_total{engine="fake",language="en",outcome="ok"} 1.0' in text.decode()
    assert f'asr_build_info{{version="{__version__}"}} 1.0' in text.decode()
    assert "asr_sessions_active 0.0" in text.decode()
    assert "asr_audio_seconds_total 0.2" in text.decode()
    assert "asr_bus_failovers_total 0.0" in text.decode()
    # The conventions: the process collector, and result latencies as histograms.
    assert "process_cpu_seconds_total" in text.decode()
    assert 'asr_first_partial_seconds_count{engine="fake",language="en"} 1.0' in text.decode()
    assert 'asr_final_latency_seconds_count{engine="fake",language="en"} 1.0' in text.decode()


def test_handshake_rate_is_a_token_bucket() -> None:
    """2 per minute: a burst of 2, then one more each 30 s; other addresses are not affected; 0 is off."""
    rate = HandshakeRate(2)
    assert [True, True, False] == [rate.allow("a", 0.0) for _ in range(3)]
    assert rate.allow("b", 0.0)
    assert not rate.allow("a", 29.0)
    assert rate.allow("a", 59.5)
    assert all(HandshakeRate(0).allow("a", 0.0) for _ in range(100))


async def test_handshakes_over_the_rate_get_429(nursery: trio.Nursery) -> None:
    """Over [server] handshakes_per_minute from one address: HTTP 429 before any WebSocket."""
    listening = await nursery.start(serve, fake_config(server={"port": 0, "handshakes_per_minute": 2}))
    host, port = listening.url.removeprefix("http://").rstrip("/").split(":")
    answers = [await upgrade_status_line(host, int(port)) for _ in range(3)]
    assert [b"HTTP/1.1 101 ", b"HTTP/1.1 101 ", b"HTTP/1.1 429 Too Many Requests"] == [
        answer if b"429" in answer else answer[:13] for answer in answers
    ]


async def exchange(base: str, raw_requests: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Send `raw_requests` (one or several, pipelined) on one connection; every response until the server
    closes it or all were answered, read with h11's client side (HEAD answers have no body)."""
    host, port = base.removeprefix("http://").rstrip("/").split(":")
    methods = [line.split(b" ", 1)[0] for line in raw_requests.split(b"\r\n\r\n") if line]
    answers: list[tuple[int, dict[str, str], bytes]] = []
    with trio.fail_after(GUARD):
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(raw_requests)
            connection = h11.Connection(h11.CLIENT)
            for method in methods:
                # h11's client must "send" each request to know how the answer is framed.
                connection.send(h11.Request(method=method, target="/", headers=[("host", host)]))
                connection.send(h11.EndOfMessage())
                status, headers, body = 0, {}, b""
                while True:
                    event = connection.next_event()
                    if event is h11.NEED_DATA:
                        connection.receive_data(await stream.receive_some())
                    elif isinstance(event, h11.Response):
                        status = event.status_code
                        headers = {k.decode(): v.decode() for k, v in event.headers}
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        answers.append((status, headers, body))
                        break
                    elif isinstance(event, h11.ConnectionClosed):
                        return answers
                if connection.our_state is not h11.DONE or connection.their_state is not h11.DONE:
                    break
                connection.start_next_cycle()
    return answers


GET_ROUTES = ["/", "/app.js", "/healthz", "/readyz", "/v1/languages", "/v1/sign", "/v1/asr", "/missing"]


@pytest.mark.parametrize("target", GET_ROUTES)
async def test_head_answers_like_get_without_a_body(base_url: str, target: str) -> None:
    """HEAD, as uptime monitors and load balancers send it, gets GET's status and headers and no body; the
    gateway goes on serving (a HEAD once ended the whole process)."""
    get_status, get_headers, get_body = await http_get(base_url, target)
    host = base_url.removeprefix("http://").rstrip("/")
    [(status, headers, body)] = await exchange(
        base_url, f"HEAD {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    )
    assert (get_status, b"") == (status, body)
    assert get_headers["content-type"] == headers["content-type"]
    if target != "/v1/sign":  # a fresh link each time, its percent-encoded signature of varying length
        assert str(len(get_body)) == headers["content-length"]
    assert 200 == (await http_get(base_url, "/healthz"))[0]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
async def test_other_methods_get_405_with_allow(base_url: str, method: str) -> None:
    """Only GET and HEAD are served; anything else is 405 naming them."""
    [(status, headers, _)] = await exchange(
        base_url, f"{method} /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n".encode()
    )
    assert (405, "GET, HEAD") == (status, headers["allow"])


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Content-Length: abc", 400),
        ("Content-Length: 5\r\nContent-Length: 6", 400),
        ("Transfer-Encoding: gzip", 501),
        ("No colon here", 400),
        ("X-Long: " + "a" * 20000, 431),
    ],
)
async def test_malformed_heads_get_an_http_error(base_url: str, header: str, expected: int) -> None:
    """A head h11 cannot take is answered (400, or its more precise 431 / 501) and closed; the gateway
    goes on."""
    [(status, headers, _)] = await exchange(
        base_url, f"GET /healthz HTTP/1.1\r\nHost: t\r\n{header}\r\n\r\n".encode()
    )
    assert (expected, "close") == (status, headers["connection"])
    assert 200 == (await http_get(base_url, "/healthz"))[0]


async def test_keep_alive_answers_pipelined_requests_on_one_connection(base_url: str) -> None:
    """HTTP/1.1 keeps the connection for the next request (pipelined too); Connection: close ends it."""
    requests = b"".join(
        f"{method} {target} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode()
        for method, target, extra in [
            ("GET", "/healthz", ""),
            ("HEAD", "/", ""),
            ("GET", "/readyz", ""),
            ("GET", "/v1/languages", "Connection: close\r\n"),
            ("GET", "/healthz", ""),  # never answered: the client asked to close before it
        ]
    )
    answers = await exchange(base_url, requests)
    assert [200, 200, 200, 200] == [status for status, _, _ in answers]
    assert b"" == answers[1][2]


async def test_http_1_0_and_requests_with_a_body_close_after_the_answer(base_url: str) -> None:
    """HTTP/1.0 has no keep-alive here (h11), and a body is never read: both connections close after one
    answer, saying so."""
    for first in (
        b"GET /healthz HTTP/1.0\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc",
    ):
        answers = await exchange(base_url, first + b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        assert [(200, "close")] == [(status, headers["connection"]) for status, headers, _ in answers]


def test_encode_response_is_sans_io() -> None:
    """The answer's bytes and whether the connection can be kept, from the head alone."""
    response = http.text_response(200, "hello")
    get = http.parse_request_head(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    head = http.parse_request_head(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n")
    old = http.parse_request_head(b"GET / HTTP/1.0\r\n\r\n")
    data, reusable = http.encode_response(get, response)
    assert reusable
    assert data.endswith(b"\r\n\r\nhello\n")
    data, reusable = http.encode_response(head, response)
    assert (True, b"content-length: 6") == (reusable, data.split(b"\r\n")[2])
    assert data.endswith(b"\r\n\r\n")
    assert not http.encode_response(old, response)[1]


async def test_refused_handshakes_are_counted_by_reason(nursery: trio.Nursery) -> None:
    """A foreign origin, a malformed upgrade and a rate-limited one each count under their reason."""
    listening = await nursery.start(serve, fake_config(server={"port": 0, "handshakes_per_minute": 2}))
    base = listening.url
    host, port = base.removeprefix("http://").rstrip("/").split(":")
    await upgrade_status_line(host, int(port), "Origin: http://evil.example\r\n")
    for _ in range(3):
        await upgrade_status_line(host, int(port))
    with trio.fail_after(GUARD):
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(b"GET /healthz HTTP/1.1\r\nContent-Length: x\r\n\r\n")
            await stream.receive_some()
    _, _, text = await http_get(base, "/metrics")
    counted = {
        line.split('"')[1]: line.rsplit(" ", 1)[1]
        for line in text.decode().splitlines()
        if line.startswith("asr_handshakes_refused_total{")
    }
    assert {"origin": "1.0", "rate": "1.0", "malformed": "1.0"} == counted


async def test_the_metrics_port_serves_the_operator_routes_only(nursery: trio.Nursery) -> None:
    """[server] metrics_port: /metrics, /healthz and /readyz on a port of their own, nothing else there."""
    from asr_actors.testing.redis_server import free_port

    metrics_port = free_port()
    await nursery.start(serve, fake_config(server={"port": 0, "metrics_port": metrics_port}))
    metrics_base = f"http://127.0.0.1:{metrics_port}/"
    assert [200, 200, 200, 404, 404] == [
        (await http_get(metrics_base, target))[0]
        for target in ("/metrics", "/healthz", "/readyz", "/", "/v1/sign")
    ]
