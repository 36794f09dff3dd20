"""Replicas of the clients ASRWebSocketServer shipped, speaking protocol v1 exactly as each of them does.

Run as a program (the tests start it in a subprocess, as a user would run a client):

    python -m tests.field_clients --as python|java|page FILE.wav URL [URL ...]

Each URL is one run, all concurrent. It prints one JSON line per run: the server's messages in the order
the client's own loop read them. Built on the legacy `websockets` API (< 14; still shipped, deprecated, in
websockets 17), which these clients' generation used. What each sends, byte for byte as in that project's
`client/` folder, except `language_code`, "en" here for the English engine (theirs said "zh"):

- `python`: the whole WAV file, RIFF header included, in 1,280-byte pieces, unpaced, as base64 JSON
  text frames: `start` on the first, `partial` on the others, then `end` with `"data": ""`. It reads
  `while not ws.closed`, napping 10 ms per message (so it stops at the close, with whatever it has not
  read yet still queued).
- `java` (Java-WebSocket 1.3.4): every JSON message as a binary frame, written by hand with newlines; raw
  PCM (the WAV's data, no RIFF header) labelled `"audio_format": "wav/16000"`, 1,280 bytes every 40 ms;
  a last piece shorter than 1,280 bytes as raw bytes in a binary frame; then `end` with
  `"data": "none"`. It reads every message until the server closes.
- `page`: JSON text frames: `start` twice with `"data": ""` before any audio, then raw PCM labelled
  `wav/16000` in 1,280-byte `partial` frames every 40 ms, then `end` with `"data": ""`. It reads every
  message until the server closes.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import warnings
import wave
from pathlib import Path
from typing import Any

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from websockets.exceptions import ConnectionClosed
    from websockets.legacy.client import WebSocketClientProtocol, connect

PIECE = 1280
PACE_S = 0.04
LANGUAGE = "en"


def frame(status: str, data: str) -> str:
    return json.dumps(
        {"language_code": LANGUAGE, "audio_format": "wav/16000", "status": status, "data": data}
    )


def python_frames(wav: bytes) -> list[str | bytes]:
    """The file's bytes, header and all, `start` then `partial`; then `end` with the empty last read."""
    pieces = [base64.b64encode(wav[offset : offset + PIECE]).decode() for offset in range(0, len(wav), PIECE)]
    return [frame("start", pieces[0]), *(frame("partial", piece) for piece in pieces[1:]), frame("end", "")]


def pcm_pieces(pcm: bytes) -> list[str]:
    return [base64.b64encode(pcm[offset : offset + PIECE]).decode() for offset in range(0, len(pcm), PIECE)]


def java_body(status: str, data: str) -> bytes:
    """Its AudioBody.getBytes(): JSON written by hand, a newline after each field."""
    return (
        f'{{"language_code": "{LANGUAGE}",\n"audio_format": "wav/16000",\n"status": "{status}",\n'
        f'"data": "{data}"\n}}'
    ).encode()


def java_frames(pcm: bytes) -> list[str | bytes]:
    """Whole 1,280-byte pieces as JSON in binary frames; a shorter last piece as raw bytes; end "none"."""
    whole = len(pcm) - len(pcm) % PIECE
    pieces = pcm_pieces(pcm[:whole])
    messages: list[str | bytes] = [java_body("start", pieces[0])]
    messages += [java_body("partial", piece) for piece in pieces[1:]]
    if whole < len(pcm):
        messages.append(pcm[whole:])
    return [*messages, java_body("end", "none")]


def page_frames(pcm: bytes) -> list[str | bytes]:
    return [
        frame("start", ""),
        frame("start", ""),
        *(frame("partial", p) for p in pcm_pieces(pcm)),
        frame("end", ""),
    ]


async def send(ws: WebSocketClientProtocol, frames: list[str | bytes], paced: bool) -> None:
    for message in frames:
        await ws.send(message)
        if paced:
            await asyncio.sleep(PACE_S)


async def read_while_open(ws: WebSocketClientProtocol, received: list[Any]) -> None:
    """The Python client's loop: `closed` is checked before each read."""
    while not ws.closed:
        try:
            message = await ws.recv()
        except ConnectionClosed:
            break
        received.append(json.loads(message))
        await asyncio.sleep(0.01)


async def read_all(ws: WebSocketClientProtocol, received: list[Any]) -> None:
    """A callback client's view: every message the library delivers before the close."""
    try:
        async for message in ws:
            received.append(json.loads(message))
    except ConnectionClosed:
        pass


async def one_run(url: str, wav: bytes, pcm: bytes, kind: str) -> list[Any]:
    frames, paced, reader_loop = {
        "python": (python_frames(wav), False, read_while_open),
        "java": (java_frames(pcm), True, read_all),
        "page": (page_frames(pcm), True, read_all),
    }[kind]
    received: list[Any] = []
    async with connect(url, max_size=None) as ws:
        await asyncio.gather(send(ws, frames, paced), reader_loop(ws, received))
    return received


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--as", dest="kind", choices=["python", "java", "page"], required=True)
    parser.add_argument("wav", type=Path)
    parser.add_argument("urls", nargs="+", help="signed links: one concurrent run each")
    arguments = parser.parse_args()
    wav = arguments.wav.read_bytes()
    with wave.open(str(arguments.wav)) as reader:
        pcm = reader.readframes(reader.getnframes())
    runs = await asyncio.gather(*(one_run(url, wav, pcm, arguments.kind) for url in arguments.urls))
    for received in runs:
        sys.stdout.write(json.dumps(received) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
