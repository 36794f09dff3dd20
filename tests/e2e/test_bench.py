"""The benchmark as a user runs it (`python -m asr_actors bench`), small enough for CI.

These check that the benchmark measures what it says (every frame accounted for, latency samples from
both directions, JSON and plot written), never how fast anything is: speed figures live in
docs/performance.md.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

GUARD = 300


def bench(*arguments: str, progress: str = "frames sent") -> tuple[str, list[dict[str, object]]]:
    """Run `bench` as a user does; its table (stdout) and the measurements it wrote as JSON."""
    json_path = Path(arguments[arguments.index("--json") + 1])
    finished = subprocess.run(
        [sys.executable, "-m", "asr_actors", "bench", *arguments],
        capture_output=True,
        text=True,
        timeout=GUARD,
        check=True,
    )
    # Progress goes to stderr while it runs; the table to stdout.
    assert progress in finished.stderr
    return finished.stdout, json.loads(json_path.read_text())


def test_memory_bus_and_reference_relay_side_by_side(tmp_path: Path) -> None:
    plot = tmp_path / "sweep.png"
    table, measured = bench(
        "--sweep",
        "2,4",
        "--duration",
        "1.5",
        "--baseline",
        "--json",
        str(tmp_path / "m.json"),
        "--plot",
        str(plot),
    )
    assert ["asr-actors (memory bus, 1 gateway)", "reference (asyncio websockets)"] * 2 == [
        m["system"] for m in measured
    ]
    for m in measured:
        streams = m["streams"]
        assert isinstance(streams, int)
        # 15 frames of 100 ms per stream, every one heard by the engine, every stream ended cleanly.
        assert streams * 15 == m["frames_sent"] == m["frames_heard"]
        assert 0 == m["dropped_frames"]
        assert streams == m["streams_ok"]
        assert {} == m["errors"]
        uplink, downlink = m["uplink_ms"], m["downlink_ms"]
        assert isinstance(uplink, list)
        assert isinstance(downlink, list)
        assert 0 < uplink[0] <= uplink[1] <= uplink[2]
        assert 0 < downlink[0] <= downlink[1] <= downlink[2]
        # CPU time comes in 10 ms ticks: a run this small may read 0, never less or unset.
        cpu = m["gateway_cpu_us_per_frame"]
        assert isinstance(cpu, float)
        assert math.isfinite(cpu)
        assert cpu >= 0
    assert "asr-actors ÷ reference: gateway CPU µs per frame" in table
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_redis_bus_with_two_gateway_processes_and_a_worker(tmp_path: Path) -> None:
    _table, [m] = bench(
        "--streams",
        "6",
        "--duration",
        "1",
        "--bus",
        "redis",
        "--gateways",
        "2",
        "--json",
        str(tmp_path / "m.json"),
    )
    assert "asr-actors (redis bus, 2 gateways)" == m["system"]
    assert 60 == m["frames_sent"] == m["frames_heard"]
    assert 6 == m["streams_ok"]
    # The worker and redis-server processes were measured (CPU in 10 ms ticks: small runs may read 0).
    for figure in ("engine_cpu_us_per_frame", "redis_cpu_us_per_frame"):
        value = m[figure]
        assert isinstance(value, float)
        assert math.isfinite(value)
        assert value >= 0


def test_clients_that_reconnect_for_new_sessions(tmp_path: Path) -> None:
    """--session-seconds: each client's audio is cut into back-to-back sessions on new connections (the
    soak's workload), every session accounted for."""
    _table, [m] = bench(
        "--streams", "3", "--duration", "1.5", "--session-seconds", "0.5", "--json", str(tmp_path / "m.json")
    )
    # 15 frames per client in sessions of 5, the first sessions spread over one session length (2, 3 and
    # 5 frames): 2+5+5+3, 3+5+5+2 and 5+5+5 frames.
    assert 4 + 4 + 3 == m["sessions"] == m["streams_ok"]
    assert 45 == m["frames_sent"] == m["frames_heard"]
    assert 0 == m["dropped_frames"]


def test_dashscope_transports_side_by_side(tmp_path: Path) -> None:
    """`bench --dashscope`: both transports against the fake upstream, every session ended, a partial
    latency measured for every partial (a character every 5 frames: 2 s of audio is 4 partials)."""
    table, measured = bench(
        *[
            "--dashscope",
            "sdk,native",
            "--streams",
            "3",
            "--duration",
            "2",
            "--json",
            str(tmp_path / "d.json"),
        ],
        progress="dashscope bench: native transport",
    )
    assert ["sdk", "native"] == [m["transport"] for m in measured]
    assert [(3, 12)] * 2 == [(m["sessions_ok"], m["partials"]) for m in measured]
    assert all(0 < m["partial_p50_ms"] <= m["partial_p99_ms"] for m in measured)
    assert 2 == table.count("| 3 | 3 / 3 |")
