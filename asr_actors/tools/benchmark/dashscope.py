"""`bench --dashscope`: the dashscope engine's transports side by side, against a fake DashScope upstream.

For each transport and stream count: the fake upstream (`asr_actors.testing.fake_dashscope`, a partial
every 5 frames, a sentence every 10 characters) and a `serve` routing Chinese to it start as processes; N
clients (in this process) each stream 100 ms binary frames at real time over protocol v1 for the
duration, then end. Measured: each partial's latency from the frame that completed it (the fake hears one
character per 5 frames, so a result's text says which frame that was), the time from the client's end to
`end`, the gateway's CPU, threads and RSS from outside (psutil), and the CPU of the fake and of the clients,
which share the machine's cores with the gateway.
"""

from __future__ import annotations

import json
import math
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import attrs
import numpy as np
import psutil
import trio

from asr_actors import client
from asr_actors.tools.benchmark.run import FRAME_MS, child_process, cpu_seconds, rss_bytes
from asr_actors.transport import ClientGone
from asr_actors.websocket import WebSocket

# The fake upstream runs as a module of the installed package (`asr_actors.testing`).
FAKE_DASHSCOPE = "asr_actors.testing.fake_dashscope"
KEY_ENV = "ASR_BENCH_DASHSCOPE_KEY"
KEY = "bench-key"
APPKEY, SECRET = "bench", "bench-secret"
FRAME_BYTES = 3200
FRAMES_PER_CHAR = 5
SENTENCE_CHARS = 10
SAMPLE_S = 0.25


@attrs.frozen
class DashScopeMeasurement:
    transport: str
    streams: int
    sessions_ok: int
    partials: int
    partial_p50_ms: float
    partial_p99_ms: float
    end_p50_ms: float
    end_p99_ms: float
    gateway_cpu_percent: float
    upstream_cpu_percent: float
    # This process: the clients, all in it (with the fake and the gateway, on the same cores).
    clients_cpu_percent: float
    threads_peak: int
    rss_peak_mib: float


@attrs.define
class _Session:
    partial_latencies: list[float] = attrs.field(factory=list)
    end_latency: float | None = None


async def _session(url: str, duration_s: float, start_at: float) -> _Session:
    """One client: real-time frames for `duration_s`, then end; latencies as it saw them."""
    result = _Session()
    frames = int(duration_s * 1000 / FRAME_MS)
    sent_at: list[float] = []
    stop_at = math.inf
    split = urlsplit(url)
    await trio.sleep_until(start_at)
    stream = await trio.open_tcp_stream(split.hostname or "127.0.0.1", split.port or 80)
    async with stream, trio.open_nursery() as nursery:
        # The gateway's own client WebSocket (`websockets`' protocol, C masking), not trio-websocket: its
        # pure-Python masking of every frame cost the 1,000 clients most of a core, on the gateway's cores.
        connection = await WebSocket.connect(stream, split.netloc, f"{split.path}?{split.query}", 2**20)

        async def send() -> None:
            nonlocal stop_at
            began = trio.current_time()
            for index in range(frames):
                # As a microphone: frame i once it has elapsed, at (i + 1) frame periods.
                await trio.sleep_until(began + (index + 1) * FRAME_MS / 1000)
                sent_at.append(trio.current_time())
                await connection.send_message(b"\x01\x00" * (FRAME_BYTES // 2))
            stop_at = trio.current_time()
            await connection.send_message('{"status": "end"}')

        nursery.start_soon(send)
        try:
            while True:
                received = client.parse_result(await connection.get_message(), 0)
                now = trio.current_time()
                if received.status == "end":
                    result.end_latency = now - stop_at
                    break
                if received.status == "partial":
                    sentence = int(received.speech_id.rsplit("-", 1)[1])
                    frame = (sentence * SENTENCE_CHARS + len(received.text)) * FRAMES_PER_CHAR
                    if 0 < frame <= len(sent_at):
                        result.partial_latencies.append(now - sent_at[frame - 1])
        except (client.ServerError, ClientGone):
            pass
        nursery.cancel_scope.cancel()
    return result


def _config(folder: Path, upstream: str, transport: str, streams: int) -> Path:
    path = folder / "gateway.toml"
    path.write_text(
        f"""
[apps.{APPKEY}]
secret = "{SECRET}"
[engines]
default = "dashscope"
[engines.dashscope]
url = "{upstream}"
api_key_env = "{KEY_ENV}"
transport = "{transport}"
max_sessions = {streams + 10}
[languages.zh]
engine = "dashscope"
[records]
enabled = false
[session]
default_language = "zh"
"""
    )
    return path


def _ms(samples: list[float], percentile: float) -> float:
    return round(float(np.percentile(samples, percentile)) * 1000, 1) if samples else math.nan


# `--upstream-pings`: the fake pings each client as servers on the `websockets` library do (every 20 s
# there; every second here, so that a short run sees them) and every millisecond while a client closes.
UPSTREAM_PING_EVERY_S = 1.0


async def measure_dashscope(
    transport: str,
    streams: int,
    duration_s: float,
    progress: Callable[[str], None],
    *,
    upstream_pings: bool = False,
) -> DashScopeMeasurement:
    with tempfile.TemporaryDirectory(prefix="asr-bench-dashscope-") as scratch:
        folder = Path(scratch)
        log = folder / "processes.log"
        fake_arguments = [sys.executable, "-m", FAKE_DASHSCOPE, "--api-key", KEY]
        fake_arguments += ["--chars-every-bytes", str(FRAME_BYTES * FRAMES_PER_CHAR)]
        if upstream_pings:
            fake_arguments += ["--ping-every", str(UPSTREAM_PING_EVERY_S), "--ping-while-closing"]
        async with child_process(fake_arguments, log, {}, re.compile(r"(ws://\S+)")) as (
            fake,
            found,
        ):
            assert found is not None
            config = _config(folder, found.group(1), transport, streams)
            serve = [sys.executable, "-m", "asr_actors", "serve", "--config", str(config), "--port", "0"]
            async with child_process(serve, log, {KEY_ENV: KEY}, re.compile(r"open (http://\S+)")) as (
                gateway,
                up,
            ):
                assert up is not None
                ws_url = up.group(1).replace("http://", "ws://") + "v1/asr"
                gateway_process, upstream_process = psutil.Process(gateway.pid), psutil.Process(fake.pid)
                progress(f"dashscope bench: {transport} transport, {streams} streams for {duration_s:g} s")
                peak = {"threads": 0, "rss": 0}

                async def sample() -> None:
                    while True:
                        peak["threads"] = max(peak["threads"], gateway_process.num_threads())
                        peak["rss"] = max(peak["rss"], rss_bytes([gateway_process]))
                        await trio.sleep(SAMPLE_S)

                sessions: list[_Session] = []

                async def one(start_at: float) -> None:
                    url = client.sign_url(ws_url, APPKEY, SECRET, nonce=client.fresh_nonce()) + "&lang=zh"
                    sessions.append(await _session(url, duration_s, start_at))

                clients_process = psutil.Process()
                cpu_before = (
                    cpu_seconds([gateway_process]),
                    cpu_seconds([upstream_process]),
                    cpu_seconds([clients_process]),
                )
                began = trio.current_time()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(sample)
                    async with trio.open_nursery() as clients:
                        for index in range(streams):
                            # Clients start spread over one frame period, as independent users do.
                            clients.start_soon(one, began + FRAME_MS / 1000 * index / streams)
                    nursery.cancel_scope.cancel()
                elapsed = trio.current_time() - began
                gateway_cpu = cpu_seconds([gateway_process]) - cpu_before[0]
                upstream_cpu = cpu_seconds([upstream_process]) - cpu_before[1]
                clients_cpu = cpu_seconds([clients_process]) - cpu_before[2]
    partials = [latency for session in sessions for latency in session.partial_latencies]
    ends = [session.end_latency for session in sessions if session.end_latency is not None]
    return DashScopeMeasurement(
        transport=transport,
        streams=streams,
        sessions_ok=len(ends),
        partials=len(partials),
        partial_p50_ms=_ms(partials, 50),
        partial_p99_ms=_ms(partials, 99),
        end_p50_ms=_ms(ends, 50),
        end_p99_ms=_ms(ends, 99),
        gateway_cpu_percent=round(100 * gateway_cpu / elapsed, 1),
        upstream_cpu_percent=round(100 * upstream_cpu / elapsed, 1),
        clients_cpu_percent=round(100 * clients_cpu / elapsed, 1),
        threads_peak=peak["threads"],
        rss_peak_mib=round(peak["rss"] / 2**20, 1),
    )


def table(measurements: list[DashScopeMeasurement]) -> str:
    header = (
        "| transport | streams | sessions ok | partials | partial p50 / p99 ms | end p50 / p99 ms "
        "| gateway CPU | upstream CPU | clients CPU | threads (peak) | RSS peak MiB |"
    )
    rows = [header, "|" + "---|" * 11]
    for m in measurements:
        rows.append(
            f"| {m.transport} | {m.streams} | {m.sessions_ok} / {m.streams} | {m.partials} "
            f"| {m.partial_p50_ms:g} / {m.partial_p99_ms:g} | {m.end_p50_ms:g} / {m.end_p99_ms:g} "
            f"| {m.gateway_cpu_percent:g} % | {m.upstream_cpu_percent:g} % | {m.clients_cpu_percent:g} % "
            f"| {m.threads_peak} "
            f"| {m.rss_peak_mib:g} |"
        )
    return "\n".join(rows)


def write_json(path: Path, measurements: list[DashScopeMeasurement]) -> None:
    path.write_text(json.dumps([attrs.asdict(m) for m in measurements], indent=2))
