"""Benchmark the OpenAI-compatible file API on the local engine, beside the live path on the same audio.

    .venv/bin/python bench/openai_file.py [--repeat 2] [--runs 3]

Starts a real `serve` (default config, the local engine) with an API key; the audio is the five LibriVox
sentences of tests/data with 1 s pauses, `--repeat` times over (2: ~58 s). Each run posts it as a WAV
through the official `openai` SDK (`audio.transcriptions.create`, json) and, as the baseline, streams the
same PCM through protocol v1 as fast as the server takes it (`client.stream_pcm`, realtime off): both
through the same engine, one after the other. Prints, side by side: wall time from the request to the
answer, real-time factor (audio seconds per second), word error rate of the finals against the reference,
and the server's CPU seconds per audio second.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
import wave
from pathlib import Path

import jiwer
import openai
import psutil
import trio

from asr_actors import client
from asr_actors.testing.speech import SAMPLE_RATE, librivox
from asr_actors.testing.subprocess_server import running_server
from asr_actors.testing.textnorm import normalize
from asr_actors.tools.benchmark.run import cpu_seconds

API_KEY = "sk-bench-0123456789abcdef"


def as_wav(pcm: bytes) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(SAMPLE_RATE)
        file.writeframes(pcm)
    return out.getvalue()


def file_api(url: str, wav: bytes) -> str:
    sdk = openai.OpenAI(api_key=API_KEY, base_url=f"{url}v1", max_retries=0, timeout=600)
    return sdk.audio.transcriptions.create(file=("speech.wav", wav), model="whisper-1").text


async def live(url: str, pcm: bytes) -> str:
    signed = await client.fetch_demo_url(url)
    results = await client.stream_pcm(signed, pcm, realtime=False)
    return " ".join(result.text for result in results if result.status == "final")


async def main(repeat: int, runs: int) -> None:
    pcm, sentences = librivox()
    pcm, reference = pcm * repeat, normalize(" ".join(sentences * repeat))
    seconds = len(pcm) / (2 * SAMPLE_RATE)
    wav = as_wav(pcm)
    rows: dict[str, list[tuple[float, float, float]]] = {
        "file API (openai SDK)": [],
        "protocol v1 (baseline)": [],
    }
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "config.toml"
        config.write_text(
            f'[records]\npath = "{folder}/records.sqlite3"\n[apps.bench]\napi_key_env = "BENCH_KEY"\n'
        )
        async with running_server(config, env={"BENCH_KEY": API_KEY}) as (url, process):
            await live(url, pcm[: SAMPLE_RATE * 4])  # warm the models up
            for _ in range(runs):
                for name, measured in rows.items():
                    cpu, started = cpu_seconds([psutil.Process(process.pid)]), time.monotonic()
                    if name.startswith("file"):
                        text = await trio.to_thread.run_sync(file_api, url, wav)
                    else:
                        text = await live(url, pcm)
                    wall = time.monotonic() - started
                    wer = float(jiwer.wer(reference, normalize(text)))
                    measured.append((wall, wer, (cpu_seconds([psutil.Process(process.pid)]) - cpu) / seconds))
    print(f"{seconds:.1f} s of speech, {runs} run(s) each, median")
    print("| | wall s | real-time factor | WER | server CPU s per audio s |\n|---|---|---|---|---|")
    for name, measured in rows.items():
        wall = statistics.median(m[0] for m in measured)
        wer = statistics.median(m[1] for m in measured)
        cpu = statistics.median(m[2] for m in measured)
        print(f"| {name} | {wall:.1f} | {seconds / wall:.1f}x | {wer:.3f} | {cpu:.2f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=2, help="times the five sentences are repeated")
    parser.add_argument("--runs", type=int, default=3)
    arguments = parser.parse_args()
    trio.run(main, arguments.repeat, arguments.runs)
