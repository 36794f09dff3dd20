"""Benchmark the local engine through the whole gateway: N concurrent real-time streams of real speech.

    .venv/bin/python bench/local_engine.py [--streams 1 2 4] [--json FILE]

Starts a real `serve` on a free port; each client streams the five LibriVox sentences of tests/data
(1 s pauses between them, ~30 s of audio) at real time, like a microphone. Prints, per concurrency level:
word error rate, latency of the first partial after speech starts and of the final after the sentence
ends, server CPU seconds per audio second and server RSS. Figures go in docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import wave
from pathlib import Path

import jiwer
import trio

from asr_actors import client
from asr_actors.testing.subprocess_server import running_server
from asr_actors.testing.textnorm import normalize

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "librivox"
APPKEY, SECRET = "bench", "bench-secret"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def speech_and_reference() -> tuple[bytes, str]:
    pause = bytes(32000)
    pcm, words = b"", []
    for line in sorted((DATA / "transcripts.tsv").read_text().splitlines()):
        name, text = line.split("\t", 1)
        with wave.open(str(DATA / f"{name}.wav")) as reader:
            pcm += reader.readframes(reader.getnframes()) + pause
        words.append(text)
    return pcm, " ".join(words)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


async def run_level(url: str, pid: int, streams: int, pcm: bytes, reference: str) -> dict[str, float]:
    ws_url = url.replace("http://", "ws://") + "v1/asr"
    transcripts: list[list[client.Received]] = []
    peak_rss = rss_mib(pid)
    cpu_before = cpu_seconds(pid)

    async def one_stream() -> None:
        signed = client.sign_url(ws_url, APPKEY, SECRET, nonce=client.fresh_nonce())
        transcripts.append(await client.stream_pcm(signed, pcm, realtime=True))

    async with trio.open_nursery() as nursery:
        for _ in range(streams):
            nursery.start_soon(one_stream)
        while len(transcripts) < streams:
            peak_rss = max(peak_rss, rss_mib(pid))
            await trio.sleep(0.5)
    cpu = cpu_seconds(pid) - cpu_before
    first_partial, final_latency, hypotheses = [], [], []
    for results in transcripts:
        finals = [r for r in results if r.status == "final"]
        for final in finals:
            partials = [r for r in results if r.status == "partial" and r.speech_id == final.speech_id]
            if partials:
                first_partial.append(partials[0].at - final.begin_ms / 1000)
            final_latency.append(final.at - final.end_ms / 1000)
        hypotheses.append(normalize(" ".join(f.text for f in finals)))
    audio_seconds = streams * len(pcm) / 32000
    return {
        "streams": streams,
        "wer": jiwer.wer([normalize(reference)] * streams, hypotheses),
        "first_partial_p50_s": statistics.median(first_partial),
        "first_partial_p95_s": percentile(first_partial, 0.95),
        "final_p50_s": statistics.median(final_latency),
        "final_p95_s": percentile(final_latency, 0.95),
        "final_max_s": max(final_latency),
        "cpu_s_per_audio_s": cpu / audio_seconds,
        "server_rss_peak_mib": peak_rss,
    }


async def measure(levels: list[int]) -> list[dict[str, float]]:
    pcm, reference = speech_and_reference()
    print(f"speech: {len(pcm) / 32000:.1f} s per stream, 5 sentences; {os.cpu_count()} cores", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "config.toml"
        config.write_text(f'[apps.{APPKEY}]\nsecret = "{SECRET}"\n')
        async with running_server(config) as (url, server):
            pid = server.pid
            print(f"server idle RSS after model load: {rss_mib(pid):.0f} MiB", flush=True)
            for streams in levels:
                print(f"running {streams} concurrent real-time stream(s)...", flush=True)
                rows.append(await run_level(url, pid, streams, pcm, reference))
    return rows


def print_table(rows: list[dict[str, float]]) -> None:
    header = ["streams", "WER", "1st partial p50/p95 s", "final p50/p95/max s", "CPU s/audio s", "RSS MiB"]
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        partial = f"{row['first_partial_p50_s']:.2f} / {row['first_partial_p95_s']:.2f}"
        final = f"{row['final_p50_s']:.2f} / {row['final_p95_s']:.2f} / {row['final_max_s']:.2f}"
        print(
            f"| {row['streams']:.0f} | {row['wer']:.1%} | {partial} | {final}"
            f" | {row['cpu_s_per_audio_s']:.2f} | {row['server_rss_peak_mib']:.0f} |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--json", help="also write the rows to this JSON file")
    arguments = parser.parse_args()
    results = trio.run(measure, arguments.streams)
    print_table(results)
    if arguments.json:
        Path(arguments.json).write_text(json.dumps(results, indent=2))
