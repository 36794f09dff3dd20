"""Benchmark the local engine through the whole gateway: N concurrent real-time streams of real speech.

    .venv/bin/python bench/local_engine.py [--partials whisper pocketsphinx] [--streams 1 2 4 6]
        [--clip librivox|short] [--snr clean 10] [--stagger 0.37] [--local KEY=VALUE ...] [--json FILE]

Starts a real `serve` on a free port per partial mode; each client streams the five LibriVox sentences of
tests/data (1 s pauses between them, ~30 s of audio; with `--clip short`, eleven sentences of two or three
words: three CMU cards recordings and eight espeak-ng ones, ~25 s) timed like a microphone (frame i sent
when its 100 ms have elapsed, `client.stream_pcm(realtime=True)`), the streams started `--stagger` seconds
apart, clean or mixed with pink noise (made by sox) at the given signal-to-noise ratios. Prints, per mode,
noise and concurrency: streams refused; word error rate of the finals, next to the whole-file WER of the
same Whisper model decoded as the finals are (beam 5, prompted); sentences (finals) against those read; the
agreement of each sentence's last partial with its final as recall (the share of the final's words already
in the partial, in order) and precision (the share of the partial's words the final kept); latency of the
first partial after speech starts, and of the final after the sentence's speech ends (the engine's own end
time) — only sentences that end in the audio, followed by a pause: the last one, which the client's `end`
flushes, says nothing about the engine's latency after a pause; server CPU seconds per audio second per
stream; server RSS; Whisper passes per batch (the server's /metrics). Figures go in docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import tempfile
import urllib.request
from pathlib import Path

import jiwer
import trio

from asr_actors import client
from asr_actors.testing.speech import librivox, short_utterances, whole_file_text, with_noise
from asr_actors.testing.subprocess_server import running_server
from asr_actors.testing.textnorm import agreement, normalize, precision

APPKEY, SECRET = "bench", "bench-secret"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SAMPLE_RATE = 16000


def whole_file_wer(pcm: bytes, reference: str) -> float:
    return float(jiwer.wer(normalize(reference), normalize(whole_file_text(pcm))))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def whisper_queue_counts(url: str) -> tuple[float, float]:
    """The server's Whisper passes and batches so far (its /metrics)."""
    with urllib.request.urlopen(url + "metrics", timeout=30) as response:
        text = response.read().decode()
    counts = dict(re.findall(r"^asr_local_whisper_(passes|batches)_total (\S+)$", text, re.MULTILINE))
    return float(counts.get("passes", 0)), float(counts.get("batches", 0))


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


# A sentence whose speech ends this close to the end of the audio is ended by the client's `end` (the
# flush), not by a pause the engine heard: its final's latency is not counted.
FLUSHED_TAIL_S = 0.8


async def run_level(
    url: str, pid: int, streams: int, pcm: bytes, reference: str, stagger: float
) -> dict[str, float]:
    ws_url = url.replace("http://", "ws://") + "v1/asr"
    transcripts: list[list[client.Received]] = []
    refused: list[client.ServerError] = []
    peak_rss = rss_mib(pid)
    cpu_before = cpu_seconds(pid)
    queue_before = await trio.to_thread.run_sync(whisper_queue_counts, url)

    async def one_stream(delay: float) -> None:
        await trio.sleep(delay)
        signed = client.sign_url(ws_url, APPKEY, SECRET, nonce=client.fresh_nonce())
        try:
            transcripts.append(await client.stream_pcm(signed, pcm, realtime=True))
        except client.ServerError as exc:
            refused.append(exc)

    async with trio.open_nursery() as nursery:
        for index in range(streams):
            nursery.start_soon(one_stream, index * stagger)
        while len(transcripts) + len(refused) < streams:
            peak_rss = max(peak_rss, rss_mib(pid))
            await trio.sleep(0.5)
    cpu = cpu_seconds(pid) - cpu_before
    queue_after = await trio.to_thread.run_sync(whisper_queue_counts, url)
    passes, batches = (after - before for after, before in zip(queue_after, queue_before, strict=True))
    audio_s = len(pcm) / (SAMPLE_RATE * 2)
    first_partial, final_latency, hypotheses, recalls, precisions, finals_count = [], [], [], [], [], []
    for results in transcripts:
        finals = [r for r in results if r.status == "final" and r.text]
        finals_count.append(len(finals))
        for final in finals:
            partials = [r for r in results if r.status == "partial" and r.speech_id == final.speech_id]
            if partials:
                first_partial.append(partials[0].at - final.begin_ms / 1000)
                recalls.append(agreement(partials[-1].text, final.text))
                precisions.append(precision(partials[-1].text, final.text))
            else:
                recalls.append(0.0)
                precisions.append(0.0)
            if final.end_ms / 1000 < audio_s - FLUSHED_TAIL_S:
                final_latency.append(final.at - final.end_ms / 1000)
        hypotheses.append(normalize(" ".join(f.text for f in finals)))
    served = len(transcripts)
    return {
        "streams": streams,
        "refused": len(refused),
        "wer": jiwer.wer([normalize(reference)] * served, hypotheses) if served else float("nan"),
        "finals_per_stream": statistics.mean(finals_count) if finals_count else 0.0,
        "agreement_mean": statistics.mean(recalls) if recalls else 0.0,
        "agreement_min": min(recalls) if recalls else 0.0,
        "precision_mean": statistics.mean(precisions) if precisions else 0.0,
        "first_partial_p50_s": statistics.median(first_partial) if first_partial else float("nan"),
        "first_partial_p95_s": percentile(first_partial, 0.95) if first_partial else float("nan"),
        "final_p50_s": statistics.median(final_latency) if final_latency else float("nan"),
        "final_p95_s": percentile(final_latency, 0.95) if final_latency else float("nan"),
        "final_max_s": max(final_latency) if final_latency else float("nan"),
        # Per stream served: what one more stream costs the machine.
        "cpu_s_per_audio_s": cpu / (audio_s * served) if served else float("nan"),
        "server_rss_peak_mib": peak_rss,
        # From the server's /metrics: how many Whisper passes shared a generate call.
        "passes_per_batch": passes / batches if batches else float("nan"),
    }


async def measure(args: argparse.Namespace) -> list[dict[str, object]]:
    clean, sentences = librivox() if args.clip == "librivox" else short_utterances()
    reference = " ".join(sentences)
    print(
        f"speech: {len(clean) / 32000:.1f} s per stream, {len(sentences)} sentences; {os.cpu_count()} cores",
        flush=True,
    )
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        audio = {snr: clean if snr == "clean" else with_noise(clean, float(snr)) for snr in args.snr}
        whole = {
            snr: await trio.to_thread.run_sync(whole_file_wer, pcm, reference) for snr, pcm in audio.items()
        }
        for mode in args.partials:
            config = folder / "config.toml"
            local = f'[engines.local]\npartials = "{mode}"\n' if mode != "default" else ""
            if args.local:
                local = (local or "[engines.local]\n") + "".join(f"{setting}\n" for setting in args.local)
            config.write_text(f'[apps.{APPKEY}]\nsecret = "{SECRET}"\n{local}')
            async with running_server(config) as (url, server):
                pid = server.pid
                print(f"[{mode}] server idle RSS after model load: {rss_mib(pid):.0f} MiB", flush=True)
                for snr, pcm in audio.items():
                    for streams in args.streams if snr == "clean" else [1]:
                        print(f"[{mode}] {snr}: {streams} concurrent real-time stream(s)...", flush=True)
                        row = await run_level(url, pid, streams, pcm, reference, args.stagger)
                        rows.append(
                            {
                                "partials": mode,
                                "clip": args.clip,
                                "snr": snr,
                                "sentences_read": len(sentences),
                                **row,
                                "whole_file_wer": whole[snr],
                            }
                        )
    return rows


def print_table(rows: list[dict[str, object]]) -> None:
    header = [
        "partials",
        "audio",
        "streams (refused)",
        "WER (whole file)",
        "finals / read",
        "agreement recall mean / min, precision mean",
        "1st partial p50/p95 s",
        "final after a pause p50/p95/max s",
        "CPU s per audio s per stream",
        "RSS MiB",
        "Whisper passes per batch",
    ]
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        values: dict[str, float] = {
            key: value for key, value in row.items() if isinstance(value, int | float)
        }
        cells = [
            str(row["partials"]),
            f"{row['clip']}, " + ("clean" if row["snr"] == "clean" else f"{row['snr']} dB SNR"),
            f"{values['streams']:.0f} ({values['refused']:.0f})",
            f"{values['wer']:.1%} ({values['whole_file_wer']:.1%})",
            f"{values['finals_per_stream']:.1f} / {values['sentences_read']:.0f}",
            f"{values['agreement_mean']:.2f} / {values['agreement_min']:.2f}, {values['precision_mean']:.2f}",
            f"{values['first_partial_p50_s']:.2f} / {values['first_partial_p95_s']:.2f}",
            f"{values['final_p50_s']:.2f} / {values['final_p95_s']:.2f} / {values['final_max_s']:.2f}",
            f"{values['cpu_s_per_audio_s']:.2f}",
            f"{values['server_rss_peak_mib']:.0f}",
            f"{values['passes_per_batch']:.2f}",
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--partials",
        nargs="+",
        default=["whisper", "pocketsphinx"],
        help='partial modes to run side by side ("default": write no key, the server\'s default)',
    )
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 6])
    parser.add_argument(
        "--clip",
        choices=["librivox", "short"],
        default="librivox",
        help="five read sentences, or sentences of two or three words (testing.speech.short_utterances)",
    )
    parser.add_argument("--stagger", type=float, default=0.37, help="seconds between the streams' starts")
    parser.add_argument("--snr", nargs="+", default=["clean", "10"], help='"clean" or dB values')
    parser.add_argument(
        "--local", nargs="*", default=[], help="more [engines.local] settings, e.g. whisper_threads=2"
    )
    parser.add_argument("--json", help="also write the rows to this JSON file")
    arguments = parser.parse_args()
    results = trio.run(measure, arguments)
    print_table(results)
    if arguments.json:
        Path(arguments.json).write_text(json.dumps(results, indent=2))
