"""The benchmark's outputs: a text table, ratios against the reference relay, JSON and a PNG plot."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs

from asr_actors.tools.benchmark.run import Measurement

_ROWS: tuple[tuple[str, Callable[[Measurement], str]], ...] = (
    ("streams", lambda m: f"{m.streams}"),
    ("sessions ok / started", lambda m: f"{m.streams_ok} / {m.sessions}"),
    ("frames/s heard", lambda m: f"{m.frames_per_s:,.0f}"),
    ("dropped frames", lambda m: f"{m.dropped_frames}"),
    ("late frames (> 100 ms to engine)", lambda m: f"{m.late_frames}"),
    ("client sends behind schedule", lambda m: f"{m.late_sends}"),
    ("client → engine ms p50/p99/max", lambda m: "/".join(f"{v:g}" for v in m.uplink_ms)),
    ("first frame (placement) ms p50/p99/max", lambda m: "/".join(f"{v:g}" for v in m.placement_ms)),
    ("engine → client ms p50/p99/max", lambda m: "/".join(f"{v:g}" for v in m.downlink_ms)),
    ("gateway CPU µs per frame", lambda m: f"{m.gateway_cpu_us_per_frame:g}"),
    ("gateway CPU (cores busy)", lambda m: f"{m.gateway_cpu_share:g}"),
    ("engine workers CPU µs per frame", lambda m: f"{m.engine_cpu_us_per_frame:g}"),
    ("redis-server CPU µs per frame", lambda m: f"{m.redis_cpu_us_per_frame:g}"),
    ("load generator CPU (cores busy)", lambda m: f"{m.load_cpu_share:g}"),
    ("gateway RSS before connections MiB", lambda m: f"{m.rss_base_mib:g}"),
    ("RSS per idle connection KiB", lambda m: f"{m.rss_idle_kib_per_connection:g}"),
    ("RSS per streaming connection KiB", lambda m: f"{m.rss_streaming_kib_per_connection:g}"),
    ("gateway RSS drift over the run %", lambda m: f"{m.rss_drift_percent:g}"),
    ("errors", lambda m: ", ".join(f"{k}: {v}" for k, v in m.errors.items()) or "none"),
)


def table(measurements: Sequence[Measurement]) -> str:
    """One column per measurement, one row per figure (markdown, readable as plain text too)."""
    header = ["", *(f"{m.system}, {m.streams} streams" for m in measurements)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, show in _ROWS:
        lines.append("| " + " | ".join([name, *(show(m) for m in measurements)]) + " |")
    return "\n".join(lines)


def ratios(ours: Measurement, reference: Measurement) -> dict[str, float]:
    """asr-actors ÷ reference for the figures both have; below 1.0 is better for asr-actors."""

    def ratio(a: float, b: float) -> float:
        return round(a / b, 2) if b else float("nan")

    return {
        "gateway CPU µs per frame": ratio(ours.gateway_cpu_us_per_frame, reference.gateway_cpu_us_per_frame),
        "client → engine p99": ratio(ours.uplink_ms[1], reference.uplink_ms[1]),
        "engine → client p99": ratio(ours.downlink_ms[1], reference.downlink_ms[1]),
        "RSS per idle connection": ratio(
            ours.rss_idle_kib_per_connection, reference.rss_idle_kib_per_connection
        ),
    }


def write_json(path: Path, measurements: Sequence[Measurement]) -> None:
    path.write_text(json.dumps([attrs.asdict(m) for m in measurements], indent=2, ensure_ascii=False) + "\n")


def plot(path: Path, measurements: Sequence[Measurement]) -> None:
    """p99 added latency (both directions) and gateway CPU per frame against streams, one line per system."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt

    systems = sorted({m.system for m in measurements})
    figure, (latency, cpu) = plt.subplots(1, 2, figsize=(11, 4.2))
    for system in systems:
        points = sorted((m for m in measurements if m.system == system), key=lambda m: m.streams)
        streams = [m.streams for m in points]
        (line,) = latency.plot(
            streams, [m.uplink_ms[1] for m in points], marker="o", label=f"{system}: client → engine"
        )
        latency.plot(
            streams,
            [m.downlink_ms[1] for m in points],
            marker="s",
            linestyle="--",
            color=line.get_color(),
            label=f"{system}: engine → client",
        )
        cpu.plot(streams, [m.gateway_cpu_us_per_frame for m in points], marker="o", label=system)
    latency.set(xlabel="concurrent real-time streams", ylabel="p99 added latency (ms)", title="Latency")
    latency.set_yscale("log")
    cpu.set(xlabel="concurrent real-time streams", ylabel="gateway CPU per frame (µs)", title="CPU")
    cpu.set_ylim(bottom=0)
    for axes in (latency, cpu):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
