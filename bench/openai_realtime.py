"""Final latency of OpenAI Realtime transcription sessions beside protocol v1: same engine, same load.

    .venv/bin/python bench/openai_realtime.py [--streams 50] [--duration 20]

Starts a real `serve` with the synthetic engine (no decoding cost: it measures the gateway; a final every
50 frames) and an API key. Then `--streams` concurrent protocol v1 sessions (binary 16 kHz frames), and
after them as many realtime sessions (`/v1/realtime?intent=transcription`, base64 PCM16 at 24 kHz, which
the gateway decodes and resamples), each client sending frame i when its (i + 1) x 100 ms have passed, as
a microphone does. A final's latency is the time from the send of the last frame it covers (the engine
names its frame count) to its arrival (v1 `final`, realtime `...transcription.completed`). Prints p50 /
p99 / max per dialect and the gateway's CPU per frame.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import statistics
import tempfile
from pathlib import Path

import psutil
import trio
import trio_websocket

from asr_actors import client
from asr_actors.testing.subprocess_server import running_server
from asr_actors.tools.benchmark.run import cpu_seconds

API_KEY = "sk-bench-0123456789abcdef"
FRAMES = re.compile(r"\bf(\d+)\b")
# The synthetic engine's default sentence: a final every 50 frames.
SENTENCE_FRAMES = 50


async def v1_stream(url: str, frames: int, latencies: list[float]) -> None:
    signed = await client.fetch_demo_url(url)
    sent: list[float] = []
    async with trio_websocket.open_websocket_url(signed) as ws, trio.open_nursery() as nursery:

        async def receive() -> None:
            while True:
                message = json.loads(await ws.get_message())
                data = message.get("data") or {}
                # Sentences that end in the audio only: the tail the `end` flushes is not the engine's
                # latency after speech (realtime sessions have no such flush).
                frames_heard = (
                    int(FRAMES.search(data.get("result", ""))[1]) if data.get("status") == "final" else 0
                )
                if frames_heard and frames_heard % SENTENCE_FRAMES == 0:
                    latencies.append(trio.current_time() - sent[frames_heard - 1])
                if data.get("status") == "end":
                    return

        nursery.start_soon(receive)
        start = trio.current_time()
        for index in range(frames):
            await trio.sleep_until(start + (index + 1) * 0.1)
            sent.append(trio.current_time())
            await ws.send_message(bytes(3200))
        await ws.send_message('{"status": "end"}')


async def realtime_stream(url: str, frames: int, latencies: list[float]) -> None:
    ws_url = url.replace("http://", "ws://") + "v1/realtime?intent=transcription"
    headers = [("Authorization", f"Bearer {API_KEY}")]
    sent: list[float] = []
    frame = base64.b64encode(bytes(4800)).decode()  # 100 ms of PCM16 at 24 kHz
    async with (
        trio_websocket.open_websocket_url(ws_url, extra_headers=headers) as ws,
        trio.open_nursery() as nursery,
    ):
        expected = frames // SENTENCE_FRAMES

        async def receive() -> None:
            got = 0
            while got < expected:
                event = json.loads(await ws.get_message())
                if event["type"] == "conversation.item.input_audio_transcription.completed":
                    latencies.append(
                        trio.current_time() - sent[int(FRAMES.search(event["transcript"])[1]) - 1]
                    )
                    got += 1

        nursery.start_soon(receive)
        start = trio.current_time()
        for index in range(frames):
            await trio.sleep_until(start + (index + 1) * 0.1)
            sent.append(trio.current_time())
            await ws.send_message(json.dumps({"type": "input_audio_buffer.append", "audio": frame}))


def summary(name: str, latencies: list[float], cpu_per_frame_us: float) -> str:
    ms = sorted(latency * 1000 for latency in latencies)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    spread = f"{statistics.median(ms):.1f} / {p99:.1f} / {ms[-1]:.1f}"
    return f"| {name} | {len(ms)} | {spread} | {cpu_per_frame_us:.0f} |"


async def main(streams: int, duration: float) -> None:
    frames = int(duration * 10)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "config.toml"
        config.write_text(
            '[records]\nenabled = false\n[apps.bench]\napi_key_env = "BENCH_KEY"\n'
            '[languages.en]\nengine = "synthetic"\n[demo]\nmax_sessions = 0\naudio_minutes_per_day = 0\n'
        )
        async with running_server(config, env={"BENCH_KEY": API_KEY}) as (url, process):
            for name, stream in (("protocol v1", v1_stream), ("OpenAI realtime", realtime_stream)):
                latencies: list[float] = []
                cpu = cpu_seconds([psutil.Process(process.pid)])
                async with trio.open_nursery() as nursery:
                    for _ in range(streams):
                        nursery.start_soon(stream, url, frames, latencies)
                        await trio.sleep(0.1 / streams)  # spread over one frame period
                used = cpu_seconds([psutil.Process(process.pid)]) - cpu
                rows.append(summary(name, latencies, used / (streams * frames) * 1e6))
    print(f"{streams} streams x {duration:g} s, frames at (i + 1) x 100 ms, synthetic engine")
    print("| dialect | finals | final latency ms p50 / p99 / max | gateway CPU µs per frame |")
    print("|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--duration", type=float, default=20)
    arguments = parser.parse_args()
    trio.run(main, arguments.streams, arguments.duration)
