"""Which Redis client carries the batched data plane (engine protocol v2) more cheaply from Trio?

    .venv/bin/python bench/redis_clients.py [--records-per-s 10000] [--seconds 10] [--tick-ms 5]

One process publishes audio-sized records (3,200 bytes, a 100 ms frame at 16 kHz) at a steady rate in
batches, one PUBLISH per tick as the publisher in `asr_actors/engine_protocol/publisher.py` does, to a channel
that the same process subscribes to; it decodes each batch as an inbox would. Both ends of the plane's hot
path run in one process, so its CPU time per record is the client's cost on both sides. Clients:

- coredis: native on Trio (anyio), a pipeline per tick, the pub/sub callback (what the project uses);
- redis-py with hiredis: blocking clients driven from two threads (one publishing the batches handed to
  it, one reading the subscription), results handed back to Trio with `run_sync_soon`.

A redis-server is started on a free port. Prints CPU µs per record, publish → delivery latency and the
records delivered, side by side. redis-py is not a dependency of the project: install it to run this
(`pip install 'redis[hiredis]'`).
"""

from __future__ import annotations

import argparse
import queue
import statistics
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import trio

from asr_actors.engine_protocol import wire
from asr_actors.testing.redis_server import redis_server

CHANNEL = "asr:v2:inbox:bench"
STAMP = struct.Struct(">d")


def records(count: int) -> bytes:
    pcm = STAMP.pack(time.perf_counter()) + bytes(3200 - STAMP.size)
    return wire.encode_batch(wire.audio(f"session-{n:04d}", 0, n, pcm) for n in range(count))


class Tally:
    def __init__(self) -> None:
        self.delivered = 0
        self.latencies_ms: list[float] = []

    def hear(self, data: bytes) -> None:
        now = time.perf_counter()
        for record in wire.decode_batch(data):
            self.delivered += 1
            self.latencies_ms.append((now - STAMP.unpack_from(record.payload)[0]) * 1000)


async def coredis_run(url: str, args: argparse.Namespace, tally: Tally) -> None:
    import coredis

    per_tick = round(args.records_per_s * args.tick_ms / 1000)
    async with coredis.Redis.from_url(url) as client:

        def hear(message: object) -> None:
            data = message["data"]  # type: ignore[index]
            if isinstance(data, bytes):
                tally.hear(data)

        async with client.pubsub(channel_handlers={CHANNEL: hear}):
            deadline = trio.current_time() + args.seconds
            tick = trio.current_time()
            while tick < deadline:
                async with client.pipeline(transaction=False) as pipeline:
                    pipeline.publish(CHANNEL, records(per_tick))
                tick += args.tick_ms / 1000
                await trio.sleep_until(tick)
            await trio.sleep(0.5)


async def redis_py_run(url: str, args: argparse.Namespace, tally: Tally) -> None:
    import redis

    per_tick = round(args.records_per_s * args.tick_ms / 1000)
    token = trio.lowlevel.current_trio_token()
    outgoing: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
    client = redis.Redis.from_url(url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(CHANNEL)
    stop = threading.Event()

    def publish() -> None:
        while (payload := outgoing.get()) is not None:
            with client.pipeline(transaction=False) as pipeline:
                pipeline.publish(CHANNEL, payload)
                pipeline.execute()

    def read() -> None:
        while not stop.is_set():
            message = pubsub.get_message(timeout=0.2)
            if message is not None and isinstance(message["data"], bytes):
                token.run_sync_soon(tally.hear, message["data"])

    threads = [threading.Thread(target=publish), threading.Thread(target=read)]
    for thread in threads:
        thread.start()
    try:
        deadline = trio.current_time() + args.seconds
        tick = trio.current_time()
        while tick < deadline:
            outgoing.put(records(per_tick))
            tick += args.tick_ms / 1000
            await trio.sleep_until(tick)
        await trio.sleep(0.5)
    finally:
        outgoing.put(None)
        stop.set()
        for thread in threads:
            await trio.to_thread.run_sync(thread.join)
        pubsub.close()
        client.close()


async def busy(period_s: float, phase: float) -> None:
    """A stand-in for one live session of a loaded gateway: wakes every frame period, at its own phase,
    and does a frame's worth of Python work (about 60 µs) in a few steps, as a frame passes from actor to
    actor. With a thousand of them every scheduler round has work in it."""
    await trio.sleep(period_s * phase)
    while True:
        await trio.sleep(period_s)
        for _ in range(4):
            sum(range(400))
            await trio.lowlevel.checkpoint()


async def measure(name: str, args: argparse.Namespace, folder: Path) -> dict[str, float]:
    run = coredis_run if name == "coredis" else redis_py_run
    async with redis_server(folder) as server, trio.open_nursery() as nursery:
        for index in range(args.busy_tasks):
            nursery.start_soon(busy, 0.1, index / max(args.busy_tasks, 1))
        tally = Tally()
        process = psutil.Process()
        before = process.cpu_times()
        await run(server.url, args, tally)
        after = process.cpu_times()
        nursery.cancel_scope.cancel()
    cpu = (after.user + after.system) - (before.user + before.system)
    latencies = sorted(tally.latencies_ms) or [float("nan")]
    return {
        "records delivered": tally.delivered,
        "CPU µs per record (both ends)": round(cpu / max(tally.delivered, 1) * 1e6, 1),
        "CPU (cores busy)": round(cpu / args.seconds, 3),
        "publish → delivery ms p50": round(statistics.median(latencies), 2),
        "publish → delivery ms p99": round(latencies[int(len(latencies) * 0.99)], 2),
    }


async def main(args: argparse.Namespace) -> None:
    results = {}
    with tempfile.TemporaryDirectory(prefix="asr-redis-clients-") as folder:
        for name in args.clients.split(","):
            print(f"measuring {name} ...", file=sys.stderr)
            results[name] = await measure(name, args, Path(folder))
    names = list(results)
    setting = f"{args.records_per_s:,} records/s, {args.tick_ms:g} ms ticks, {args.busy_tasks} busy tasks"
    print(f"| {setting} | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for figure in results[names[0]]:
        print(f"| {figure} | " + " | ".join(f"{results[name][figure]:,}" for name in names) + " |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records-per-s", type=int, default=10000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--tick-ms", type=float, default=5)
    parser.add_argument("--clients", default="coredis,redis-py")
    parser.add_argument(
        "--busy-tasks", type=int, default=0, help="tasks standing in for live sessions (each 10 wake-ups/s)"
    )
    trio.run(main, parser.parse_args())
