"""Python memory per idle connection, and where it is allocated: a gateway in this process (the fake
engine), N signed protocol v1 connections held open and idle by a client in another process.

    .venv/bin/python bench/idle_memory.py [--connections 300] [--top 15]

Prints tracemalloc's difference per connection (what `bench` measures from outside as RSS per idle
connection, without the allocator's and the kernel's share), by file and by the line of ours that led to
it. Figures go in docs/performance.md.
"""

from __future__ import annotations

import argparse
import collections
import functools
import gc
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

import trio

from asr_actors import client
from asr_actors.backend import in_process
from asr_actors.config import config_from_dict
from asr_actors.engines.fake import FakeEngine
from asr_actors.server import Gateway

APPKEY, SECRET = "bench", "bench-secret"
REPOSITORY = Path(__file__).resolve().parents[1]
# Opens every URL in the file given, then holds the connections idle until killed.
HOLDER = """
import asyncio, sys, websockets
async def main(path):
    connections = [await websockets.connect(url) for url in open(path).read().split()]
    print("open", flush=True)
    await asyncio.sleep(3600)
asyncio.run(main(sys.argv[1]))
"""


async def measure(connections: int, top: int) -> None:
    config = config_from_dict(
        {
            "apps": {APPKEY: {"secret": SECRET}},
            "engines": {"default": "fake"},
            "languages": {"en": {"engine": "fake"}},
        }
    )
    gateway = Gateway(config, in_process(config, {"fake": FakeEngine()}), {APPKEY: SECRET})
    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(
            functools.partial(trio.serve_tcp, gateway.handle_connection, 0, host="127.0.0.1")
        )
        url = f"ws://127.0.0.1:{listener.socket.getsockname()[1]}/v1/asr"
        with tempfile.TemporaryDirectory() as scratch:
            urls = Path(scratch) / "urls.txt"
            urls.write_text(
                "\n".join(
                    client.sign_url(url, APPKEY, SECRET, nonce=client.fresh_nonce())
                    for _ in range(connections)
                )
            )
            gc.collect()
            tracemalloc.start(40)
            before = tracemalloc.take_snapshot()
            holder = await trio.lowlevel.open_process(
                [sys.executable, "-c", HOLDER, str(urls)], stdout=subprocess.PIPE
            )
            assert holder.stdout is not None
            await holder.stdout.receive_some(16)
            await trio.sleep(1)  # every session has read its upgrade and waits for a first message
            gc.collect()
            after = tracemalloc.take_snapshot()
            holder.kill()
            await holder.wait()
        nursery.cancel_scope.cancel()
    lines = after.compare_to(before, "lineno")
    print(
        f"{connections} idle connections: {sum(s.size_diff for s in lines) / connections / 1024:.1f} KiB each"
    )
    by_file: collections.Counter[str] = collections.Counter()
    for stat in lines:
        by_file[_short(stat.traceback[0].filename)] += stat.size_diff
    print("\nby file:")
    for name, size in by_file.most_common(top):
        print(f"{size / connections:8.0f} B  {name}")
    ours: collections.Counter[str] = collections.Counter()
    for stat in after.compare_to(before, "traceback"):
        frames = [frame for frame in stat.traceback if "asr_actors" in frame.filename]
        where = (
            f"{frames[-1].filename.rsplit('asr_actors', 1)[-1]}:{frames[-1].lineno}" if frames else "(none)"
        )
        ours[where] += stat.size_diff
    print("\nby the line of ours that led to it:")
    for where, size in ours.most_common(top):
        print(f"{size / connections:8.0f} B  {where}")


def _short(filename: str) -> str:
    """A file's name from its package on (no machine path)."""
    return filename.rsplit("site-packages/", maxsplit=1)[-1].replace(str(REPOSITORY) + "/", "")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--top", type=int, default=15)
    arguments = parser.parse_args()
    trio.run(measure, arguments.connections, arguments.top)
