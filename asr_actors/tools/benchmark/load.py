"""The benchmark's load generator: one process driving many real-time protocol-v1 clients.

    python -m asr_actors.tools.benchmark.load --url ws://127.0.0.1:PORT/v1/asr --streams N --duration S \
        --samples FILE   (the app secret in $ASR_BENCH_SECRET)

It is written on asyncio `websockets`, the library of the reference relay, so that both servers face the
same client. Each stream connects, then waits for the word `go` on stdin (so that the orchestrator can
measure idle connections first), then sends stamped 100 ms frames (`engines.synthetic.stamp`) on a
real-time schedule, its phase spread over the frame period like independent microphones, then `end`, and
reads results until the server closes. Progress and the summary go to stdout as JSON lines; the latency
samples (µs) go to `--samples` as a NumPy .npz file.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import os
import sys
import time
from array import array
from typing import Any

import attrs
import numpy as np
import psutil
import websockets
from websockets.asyncio.client import ClientConnection

from asr_actors import client
from asr_actors.engines.synthetic import Timing, stamp

SECRET_ENV = "ASR_BENCH_SECRET"
END = json.dumps({"status": "end"})
CONNECT_TIMEOUT = 120
# A stream whose results stop for this long is counted failed rather than waited for.
RESULT_TIMEOUT = 60
PROGRESS_INTERVAL = 1.0


@attrs.define
class Tally:
    """Counts and samples of every stream in this process."""

    connected: int = 0
    connect_failures: int = 0
    frames_sent: int = 0
    frames_heard: int = 0
    missing_frames: int = 0
    late_sends: int = 0
    results: int = 0
    finals: int = 0
    streams_ok: int = 0
    # Sessions after each stream's first (with --session-seconds).
    sessions_started: int = 0
    errors: collections.Counter[str] = attrs.field(factory=collections.Counter)
    uplink_us: array[int] = attrs.field(factory=lambda: array("q"))
    downlink_us: array[int] = attrs.field(factory=lambda: array("q"))
    # Per session: from sending its first frame to the engine hearing it. The gateway opens the engine
    # stream on the first frame, so this is the placement as a client feels it (plus one hop).
    placement_us: array[int] = attrs.field(factory=lambda: array("q"))


def _sign(url: str, appkey: str, secret: str) -> str:
    return client.sign_url(url, appkey, secret, nonce=client.fresh_nonce())


async def _receive(connection: ClientConnection, tally: Tally) -> tuple[bool, int]:
    """Read results until the server closes; return whether `end` came and the frames the engine heard."""
    ended, heard, missing, placed = False, 0, 0, False
    async for message in connection:
        now_ns = time.time_ns()
        envelope: dict[str, Any] = json.loads(message)
        if envelope.get("code") != 200:
            tally.errors[f"{envelope.get('code')} {envelope.get('message')}"] += 1
            continue
        data = envelope["data"]
        status = data["status"]
        if status == "end":
            ended = True
            continue
        if status not in ("partial", "final"):
            continue
        tally.results += 1
        text: str = data["result"]
        heard = int(text.split(" ", 2)[1].split("|", 1)[0][1:])
        timing = Timing.parse(text)
        if timing is not None:
            tally.downlink_us.append((now_ns - timing.emitted_ns) // 1000)
            tally.uplink_us.extend(timing.uplink_us)
            missing = timing.missing_frames
            if not placed and timing.uplink_us:
                tally.placement_us.append(timing.uplink_us[0])
                placed = True
        if status == "final":
            tally.finals += 1
    tally.frames_heard += heard
    tally.missing_frames += missing
    return ended, heard


async def _connect(args: argparse.Namespace, secret: str, tally: Tally) -> ClientConnection | None:
    try:
        return await asyncio.wait_for(
            websockets.connect(
                _sign(args.url, args.appkey, secret),
                compression=None,
                ping_interval=None,
                max_queue=None,
                open_timeout=CONNECT_TIMEOUT,
            ),
            CONNECT_TIMEOUT,
        )
    except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as exc:
        tally.connect_failures += 1
        tally.errors[f"connect: {type(exc).__name__}: {exc}"[:120]] += 1
        return None


async def _stream(
    index: int, streams: int, args: argparse.Namespace, secret: str, go: asyncio.Event, tally: Tally
) -> None:
    """One client: real-time audio for the whole duration, in sessions of `--session-seconds` (a new
    connection each, right after the last one ended), or in one session."""
    frame_s = args.frame_ms / 1000
    frames = round(args.duration / frame_s)
    per_session = round(args.session_seconds / frame_s) if args.session_seconds else frames
    connection = await _connect(args, secret, tally)
    if connection is None:
        return
    tally.connected += 1
    await go.wait()
    loop = asyncio.get_running_loop()
    # Streams start spread over --start-within seconds (default one frame period: like independent
    # microphones; longer: a burst of sessions arriving, as after a gateway restart).
    start = loop.time() + (args.start_within or frame_s) * index / streams
    schedule = [start + number * frame_s for number in range(frames)]
    # Independent users do not hang up in step: the first sessions' lengths are spread over one session
    # length, so that later sessions end and start spread out too.
    this_session = max(1, round(per_session * (index + 1) / streams)) if args.session_seconds else frames
    while True:
        async with connection:
            sent_ok = await _session(connection, schedule[:this_session], frame_s, args, tally)
        schedule = schedule[this_session:]
        this_session = per_session
        if not sent_ok or not schedule:
            return
        tally.sessions_started += 1
        connection = await _connect(args, secret, tally)
        if connection is None:
            return


async def _session(
    connection: ClientConnection,
    schedule: list[float],
    frame_s: float,
    args: argparse.Namespace,
    tally: Tally,
) -> bool:
    """Send one stamped frame at each scheduled time, then end; True if every frame was heard."""
    receiver = asyncio.ensure_future(_receive(connection, tally))
    loop = asyncio.get_running_loop()
    frame = bytearray(int(args.sample_rate * 2 * frame_s))
    sent = 0
    try:
        for number, due in enumerate(schedule):
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif -delay > frame_s:
                tally.late_sends += 1
            stamp(frame, number, time.time_ns())
            await connection.send(bytes(frame))
            sent += 1
            tally.frames_sent += 1
        await connection.send(END)
        ended, heard = await asyncio.wait_for(receiver, RESULT_TIMEOUT)
    except websockets.exceptions.ConnectionClosed as closed:
        tally.errors[f"closed {closed.rcvd.code if closed.rcvd else 'abnormally'}"] += 1
        receiver.cancel()
        return False
    except TimeoutError:
        tally.errors["no end within the result timeout"] += 1
        return False
    if ended and heard == sent:
        tally.streams_ok += 1
        return True
    return False


async def _progress(tally: Tally, done: asyncio.Event) -> None:
    while not done.is_set():
        _emit(
            progress={
                "sent": tally.frames_sent,
                "results": tally.results,
                "errors": sum(tally.errors.values()),
            }
        )
        await asyncio.sleep(PROGRESS_INTERVAL)


def _emit(**line: object) -> None:
    print(json.dumps(line), flush=True)


async def _wait_for_go(go: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    line = await loop.run_in_executor(None, sys.stdin.readline)
    if line.strip() == "go":
        go.set()


async def main(args: argparse.Namespace) -> None:
    # The load generator's own collector pauses would show up as added latency of the server under test.
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)
    secret = os.environ[SECRET_ENV]
    tally = Tally()
    go = asyncio.Event()
    done = asyncio.Event()
    # Connect in waves, so that a thousand handshakes do not all wait on one accept queue.
    tasks = []
    for index in range(args.streams):
        tasks.append(asyncio.ensure_future(_stream(index, args.streams, args, secret, go, tally)))
        if index % args.connect_batch == args.connect_batch - 1:
            while tally.connected + tally.connect_failures <= index - args.connect_batch:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    while tally.connected + tally.connect_failures < args.streams:  # noqa: ASYNC110 -- counts, not events
        await asyncio.sleep(0.05)
    _emit(connected=tally.connected, failed=tally.connect_failures)
    await _wait_for_go(go)
    cpu_before = psutil.Process().cpu_times()
    progress = asyncio.ensure_future(_progress(tally, done))
    await asyncio.gather(*tasks)
    done.set()
    await progress
    cpu_after = psutil.Process().cpu_times()
    np.savez(
        args.samples,
        uplink_us=np.frombuffer(tally.uplink_us, dtype=np.int64),
        downlink_us=np.frombuffer(tally.downlink_us, dtype=np.int64),
        placement_us=np.frombuffer(tally.placement_us, dtype=np.int64),
    )
    _emit(
        summary={
            "connected": tally.connected,
            "connect_failures": tally.connect_failures,
            "streams_ok": tally.streams_ok,
            "sessions": tally.connected + tally.sessions_started,
            "frames_sent": tally.frames_sent,
            "frames_heard": tally.frames_heard,
            "missing_frames": tally.missing_frames,
            "late_sends": tally.late_sends,
            "results": tally.results,
            "finals": tally.finals,
            "errors": dict(tally.errors),
            "client_cpu_s": (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system),
        }
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m asr_actors.tools.benchmark.load", description=__doc__)
    parser.add_argument("--url", required=True, help="ws://host:port/v1/asr")
    parser.add_argument("--appkey", default="bench")
    parser.add_argument("--streams", type=int, required=True)
    parser.add_argument("--duration", type=float, required=True, help="seconds of audio per stream")
    parser.add_argument("--frame-ms", type=int, default=100)
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument(
        "--session-seconds", type=float, default=0, help="reconnect with a new session this often (0: never)"
    )
    parser.add_argument("--connect-batch", type=int, default=50)
    parser.add_argument(
        "--start-within", type=float, default=0, help="seconds over which streams start (0: one frame period)"
    )
    parser.add_argument("--samples", required=True, help=".npz file for the latency samples")
    return parser


if __name__ == "__main__":
    asyncio.run(main(_parser().parse_args()))
