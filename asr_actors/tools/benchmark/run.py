"""The benchmark orchestrator: starts the system under test, drives it with load processes, measures.

Systems: asr-actors (`serve` with the synthetic engine; on the Redis bus also a redis-server on a free port
and synthetic engine workers) and the reference relay (`tools/benchmark/reference_relay.py`). Server-side
processes are measured from outside with psutil: CPU time over the streaming phase, RSS before any connection,
with every connection open and idle, and at its peak while streaming.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import attrs
import numpy as np
import psutil
import trio

from asr_actors.processes import read_line, stop
from asr_actors.testing.redis_server import redis_server
from asr_actors.testing.subprocess_server import running_server
from asr_actors.tools.benchmark.load import SECRET_ENV

# The baseline runs as a module of the installed package.
REFERENCE_RELAY = "asr_actors.tools.benchmark.reference_relay"
STARTUP_TIMEOUT = 120
# Memory settles (allocator arenas, connection buffers) before the idle connections are weighed.
SETTLE_S = 2.0
FRAME_MS = 100


@attrs.frozen
class Workload:
    streams: int
    duration: float
    load_processes: int = 1
    # Each stream starts a new session this often (0: one session for the whole duration).
    session_seconds: float = 0
    partial_frames: int = 5
    final_frames: int = 50
    # Seconds over which the streams start (0: one frame period).
    start_within: float = 0


@attrs.frozen
class System:
    """What is measured: `kind` "asr-actors" (with its bus and process counts) or "reference"."""

    kind: str
    bus: str = "memory"
    gateways: int = 1
    engine_workers: int = 1

    @property
    def label(self) -> str:
        if self.kind == "reference":
            return "reference (asyncio websockets)"
        return f"asr-actors ({self.bus} bus, {self.gateways} gateway{'s' * (self.gateways > 1)})"


@attrs.frozen
class Measurement:
    system: str
    streams: int
    duration_s: float
    # Sessions that ended cleanly with every frame heard, of all sessions started.
    streams_ok: int
    sessions: int
    connect_failures: int
    frames_sent: int
    frames_heard: int
    dropped_frames: int
    late_frames: int
    late_sends: int
    frames_per_s: float
    gateway_cpu_us_per_frame: float
    gateway_cpu_share: float
    engine_cpu_us_per_frame: float
    redis_cpu_us_per_frame: float
    load_cpu_share: float
    uplink_ms: tuple[float, float, float]
    downlink_ms: tuple[float, float, float]
    # Each session's first frame, client to engine: placement included.
    placement_ms: tuple[float, float, float]
    rss_base_mib: float
    rss_idle_kib_per_connection: float
    rss_streaming_kib_per_connection: float
    # Gateway RSS in the last quarter of the streaming phase against the second quarter (means of the
    # one-second samples; the first quarter is warm-up: allocator arenas, the first session turnover).
    # A leak shows as steady growth on long runs (`make soak`).
    rss_drift_percent: float
    errors: dict[str, int]


@attrs.define
class _Running:
    url: str
    gateway: list[psutil.Process]
    engine: list[psutil.Process] = attrs.field(factory=list)
    redis: list[psutil.Process] = attrs.field(factory=list)


@asynccontextmanager
async def child_process(
    arguments: list[str], log: Path, env: dict[str, str], ready: re.Pattern[str] | None
) -> AsyncIterator[tuple[trio.Process, re.Match[str] | None]]:
    """A child process, its stderr in `log`; waits until a stdout line matches `ready`; stopped after."""
    with log.open("ab") as errors:
        process = await trio.lowlevel.open_process(
            arguments, stdout=subprocess.PIPE, stderr=errors, env={**os.environ, **env}
        )
    try:
        found = None
        if ready is not None:
            pending = bytearray()
            with trio.fail_after(STARTUP_TIMEOUT):
                while found is None:
                    found = ready.search(await read_line(process, pending))
        yield process, found
    finally:
        await stop(process)


def _gateway_config(folder: Path, system: System, workload: Workload, redis_url: str) -> Path:
    path = folder / "gateway.toml"
    path.write_text(
        f"""
[server]
host = "127.0.0.1"
[demo]
enabled = "off"
[apps.bench]
secret_env = "{SECRET_ENV}"
[engines]
default = "synthetic"
[engines.synthetic]
partial_frames = {workload.partial_frames}
final_frames = {workload.final_frames}
[languages.en]
engine = "synthetic"
[bus]
kind = "{system.bus}"
{f'url = "{redis_url}"' if redis_url else ""}
[records]
path = "{folder / "records.sqlite3"}"
"""
    )
    return path


@asynccontextmanager
async def _running(
    system: System, workload: Workload, folder: Path, env: dict[str, str]
) -> AsyncIterator[_Running]:
    python = sys.executable
    log = folder / f"{system.kind}.log"
    async with AsyncExitStack() as stack:
        if system.kind == "reference":
            process, found = await stack.enter_async_context(
                child_process(
                    [
                        python,
                        "-m",
                        REFERENCE_RELAY,
                        "--partial-frames",
                        str(workload.partial_frames),
                        "--final-frames",
                        str(workload.final_frames),
                    ],
                    log,
                    env,
                    re.compile(r"listening on (\d+)"),
                )
            )
            assert found is not None
            yield _Running(f"ws://127.0.0.1:{found.group(1)}/v1/asr", [psutil.Process(process.pid)])
            return
        running = _Running("", [])
        redis_url = ""
        if system.bus == "redis":
            redis = await stack.enter_async_context(redis_server(folder))
            assert redis.process is not None
            running.redis.append(psutil.Process(redis.process.pid))
            redis_url = redis.url
        config = _gateway_config(folder, system, workload, redis_url)
        if system.bus == "redis":
            per_worker = math.ceil(workload.streams / system.engine_workers) + 1
            for _ in range(system.engine_workers):
                worker, _found = await stack.enter_async_context(
                    child_process(
                        [
                            python,
                            "-m",
                            "asr_actors",
                            "worker",
                            "--engine",
                            "synthetic",
                            "--config",
                            str(config),
                            "--concurrency",
                            str(per_worker),
                        ],
                        log,
                        env,
                        None,
                    )
                )
                running.engine.append(psutil.Process(worker.pid))
        http_url, gateway = await stack.enter_async_context(
            running_server(config, env, ["--workers", str(system.gateways)], log)
        )
        parent = psutil.Process(gateway.pid)
        running.gateway = [parent, *parent.children(recursive=True)]
        running.url = http_url.replace("http://", "ws://") + "v1/asr"
        yield running


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        times = process.cpu_times()
        total += times.user + times.system
    return total


def rss_bytes(processes: list[psutil.Process]) -> int:
    return sum(process.memory_info().rss for process in processes)


def _percentiles(samples_us: np.ndarray) -> tuple[float, float, float]:
    if samples_us.size == 0:
        return (math.nan, math.nan, math.nan)
    p50, p99 = np.percentile(samples_us, [50, 99])
    return (
        round(float(p50) / 1000, 2),
        round(float(p99) / 1000, 2),
        round(float(samples_us.max()) / 1000, 2),
    )


async def measure(system: System, workload: Workload, progress: Callable[[str], None]) -> Measurement:
    secret = secrets.token_urlsafe(32)
    env = {SECRET_ENV: secret}
    with tempfile.TemporaryDirectory(prefix="asr-bench-") as temporary:
        folder = Path(temporary)
        async with _running(system, workload, folder, env) as running:
            progress(f"{system.label}: {workload.streams} streams for {workload.duration:g} s")
            rss_base = rss_bytes(running.gateway)
            return await _drive(system, workload, running, folder, env, rss_base, progress)


async def _drive(
    system: System,
    workload: Workload,
    running: _Running,
    folder: Path,
    env: dict[str, str],
    rss_base: int,
    progress: Callable[[str], None],
) -> Measurement:
    shares = [
        workload.streams // workload.load_processes + (index < workload.streams % workload.load_processes)
        for index in range(workload.load_processes)
    ]
    async with AsyncExitStack() as stack:
        loads: list[tuple[trio.Process, bytearray, Path]] = []
        for index, share in enumerate(shares):
            samples = folder / f"samples-{index}.npz"
            process = await trio.lowlevel.open_process(
                [
                    sys.executable,
                    "-m",
                    "asr_actors.tools.benchmark.load",
                    "--url",
                    running.url,
                    "--streams",
                    str(share),
                    "--duration",
                    str(workload.duration),
                    "--samples",
                    str(samples),
                    "--session-seconds",
                    str(workload.session_seconds),
                    "--start-within",
                    str(workload.start_within),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env={**os.environ, **env},
            )
            stack.push_async_callback(stop, process)
            loads.append((process, bytearray(), samples))
        load_processes = [psutil.Process(process.pid) for process, _, _ in loads]
        connect_failures = 0
        for process, pending, _ in loads:
            connected = json.loads(await read_line(process, pending))
            connect_failures += connected["failed"]
        progress(f"  {workload.streams - connect_failures} connections open; weighing them idle")
        await trio.sleep(SETTLE_S)
        rss_idle = rss_bytes(running.gateway)
        cpu_before = {name: cpu_seconds(group) for name, group in _groups(running).items()}
        load_cpu_before = cpu_seconds(load_processes)
        started = trio.current_time()
        for process, _, _ in loads:
            assert process.stdin is not None
            await process.stdin.send_all(b"go\n")
        summaries: list[dict[str, object]] = []
        rss_peak = rss_idle
        rss_samples: list[int] = []
        async with trio.open_nursery() as nursery:
            sent = [0] * len(loads)
            for index, (process, pending, _) in enumerate(loads):
                nursery.start_soon(_follow, process, pending, sent, index, summaries)
            while len(summaries) < len(loads):
                await trio.sleep(1)
                rss_samples.append(rss_bytes(running.gateway))
                rss_peak = max(rss_peak, rss_samples[-1])
                elapsed = trio.current_time() - started
                rate = sum(sent) / max(elapsed, 1e-9)
                rss_mib = rss_bytes(running.gateway) / 2**20
                progress(
                    f"  {elapsed:5.0f} s  frames sent {sum(sent):>9,} ({rate:,.0f}/s)  "
                    f"gateway RSS {rss_mib:,.0f} MiB"
                )
        wall = trio.current_time() - started
        cpu_after = {name: cpu_seconds(group) for name, group in _groups(running).items()}
        load_cpu = cpu_seconds(load_processes) - load_cpu_before
    uplink = np.concatenate([np.load(samples)["uplink_us"] for _, _, samples in loads])
    downlink = np.concatenate([np.load(samples)["downlink_us"] for _, _, samples in loads])
    placement = np.concatenate([np.load(samples)["placement_us"] for _, _, samples in loads])
    total = {key: sum(int(summary[key]) for summary in summaries) for key in _COUNTS}  # type: ignore[call-overload]
    errors: dict[str, int] = {}
    for summary in summaries:
        for message, count in summary["errors"].items():  # type: ignore[attr-defined]
            errors[message] = errors.get(message, 0) + count
    frames = max(total["frames_sent"], 1)
    connected = max(workload.streams - connect_failures, 1)
    cpu = {name: cpu_after[name] - cpu_before[name] for name in cpu_after}
    return Measurement(
        system=system.label,
        streams=workload.streams,
        duration_s=round(wall, 1),
        streams_ok=total["streams_ok"],
        sessions=total["sessions"],
        connect_failures=connect_failures,
        frames_sent=total["frames_sent"],
        frames_heard=total["frames_heard"],
        dropped_frames=total["frames_sent"] - total["frames_heard"] + total["missing_frames"],
        late_frames=int((uplink > FRAME_MS * 1000).sum()),
        late_sends=total["late_sends"],
        # Every stream sends for exactly the workload's duration: its audio, not the wall time, is the span.
        frames_per_s=round(total["frames_heard"] / workload.duration, 1),
        gateway_cpu_us_per_frame=round(cpu["gateway"] / frames * 1e6, 1),
        gateway_cpu_share=round(cpu["gateway"] / wall, 3),
        engine_cpu_us_per_frame=round(cpu["engine"] / frames * 1e6, 1),
        redis_cpu_us_per_frame=round(cpu["redis"] / frames * 1e6, 1),
        load_cpu_share=round(load_cpu / wall, 3),
        uplink_ms=_percentiles(uplink),
        downlink_ms=_percentiles(downlink),
        placement_ms=_percentiles(placement),
        rss_base_mib=round(rss_base / 2**20, 1),
        rss_idle_kib_per_connection=round((rss_idle - rss_base) / connected / 1024, 1),
        rss_streaming_kib_per_connection=round((rss_peak - rss_base) / connected / 1024, 1),
        rss_drift_percent=_drift(rss_samples),
        errors=errors,
    )


def _drift(samples: list[int]) -> float:
    if len(samples) < 4:
        return math.nan
    quarter = len(samples) // 4
    settled, last = np.mean(samples[quarter : 2 * quarter]), np.mean(samples[-quarter:])
    return round(float((last - settled) / settled * 100), 2)


_COUNTS = ("streams_ok", "sessions", "frames_sent", "frames_heard", "missing_frames", "late_sends")


def _groups(running: _Running) -> dict[str, list[psutil.Process]]:
    return {"gateway": running.gateway, "engine": running.engine, "redis": running.redis}


async def _follow(
    process: trio.Process, pending: bytearray, sent: list[int], index: int, summaries: list[dict[str, object]]
) -> None:
    while True:
        line = json.loads(await read_line(process, pending))
        if "progress" in line:
            sent[index] = line["progress"]["sent"]
        elif "summary" in line:
            summaries.append(line["summary"])
            return
