"""A minimal reference relay on asyncio `websockets`, the library vosk-server, sherpa-onnx and FunASR use.

    python asr_actors/tools/benchmark/reference_relay.py --port 0     (prints "listening on PORT")

It speaks the part of protocol v1 the benchmark uses (binary PCM frames, `ping`, `{"status": "end"}`,
the same result envelope) and runs the same synthetic engine core as asr-actors
(`engines.synthetic.SyntheticScript`), inline in the connection handler, the way those servers call their
recognisers. It does not check signed links: that is a per-connection cost, outside the benchmark's
per-frame measurements. No timeouts, limits, records or metrics: it is the floor, not a product.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid

from websockets.asyncio.server import ServerConnection, serve

from asr_actors.engines.base import Final
from asr_actors.engines.synthetic import SyntheticScript


def envelope(
    task_id: str, status: str, speech_id: str = "", text: str = "", begin: int = 0, end: int = 0
) -> str:
    data = {
        "task_id": task_id,
        "speech_id": speech_id,
        "status": status,
        "result": text,
        "begin_time": begin,
        "end_time": end,
    }
    return json.dumps({"code": 200, "message": "SUCCESS", "task_id": task_id, "data": data})


async def handle(connection: ServerConnection, partial_frames: int, final_frames: int) -> None:
    task_id = uuid.uuid4().hex
    script = SyntheticScript(partial_frames, final_frames, sample_rate=16000)
    async for message in connection:
        if isinstance(message, bytes):
            if script.frames == 0:
                await connection.send(envelope(task_id, "start"))
            sentence = script.sentence
            event = script.feed(message, time.time_ns())
        elif message == "ping":
            await connection.send("pong")
            continue
        elif json.loads(message).get("status") == "end":
            sentence = script.sentence
            event = script.flush(time.time_ns())
            if event is not None:
                speech_id = f"{task_id}-{sentence}"
                await connection.send(
                    envelope(task_id, "final", speech_id, event.text, event.begin_ms, event.end_ms)
                )
            await connection.send(envelope(task_id, "end"))
            await connection.close()
            return
        else:
            continue
        if event is not None:
            status = "final" if isinstance(event, Final) else "partial"
            speech_id = f"{task_id}-{sentence}"
            await connection.send(
                envelope(task_id, status, speech_id, event.text, event.begin_ms, event.end_ms)
            )


async def main(args: argparse.Namespace) -> None:
    async def handler(connection: ServerConnection) -> None:
        await handle(connection, args.partial_frames, args.final_frames)

    async with serve(handler, "127.0.0.1", args.port, compression=None, ping_interval=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(f"listening on {port}", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--partial-frames", type=int, default=5)
    parser.add_argument("--final-frames", type=int, default=50)
    asyncio.run(main(parser.parse_args()))
