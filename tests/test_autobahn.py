"""Autobahn|Testsuite's fuzzing cases against the server WebSocket (`asr_actors/websocket.py`).

The cases come from `kosoku` (PyPI: Autobahn's suite on Python 3, no Docker), which drives an echo route
over our WebSocket on a real socket as Autobahn's fuzzing client does. 12.* and 13.* (compression) are not
run: the server negotiates no extension. 9.* (messages up to 16 MiB, and many small ones) is the
performance part; the runner's limits there are its own, so those cases are asserted to pass too.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import trio

from asr_actors.transport import ClientGone
from asr_actors.websocket import WebSocket

# Installed by the test extra, beside this Python.
KOSOKU = str(Path(sys.executable).with_name("kosoku"))
# Autobahn's largest message (9.1.6, 9.2.6) is 16 MiB.
LARGEST_MESSAGE = 16 * 1024 * 1024 + 1024
AGENT = "asr-actors"


async def echo(stream: trio.SocketStream) -> None:
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = await stream.receive_some(4096)
        if not chunk:
            return
        head += chunk
    try:
        websocket = await WebSocket.accept(stream, head, LARGEST_MESSAGE)
        while True:
            await websocket.send_message(await websocket.get_message())
    except ClientGone:
        pass
    finally:
        await trio.aclose_forcefully(stream)


async def run_cases(tmp_path: Path, *selection: str) -> dict[str, dict[str, str]]:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        arguments = [KOSOKU, "-m", "fuzzingclient", f"127.0.0.1:{port}", "-p", "4", "-o", str(tmp_path)]
        for case in selection:
            arguments += ["-i", case]
        # Exit status 1 when a case fails: the index says which.
        await trio.run_process(arguments, capture_stdout=True, capture_stderr=True, check=False)
        nursery.cancel_scope.cancel()
    index = json.loads((tmp_path / "index.json").read_text())
    return {case: result for results in index.values() for case, result in results.items()}


def failures(results: dict[str, dict[str, str]]) -> dict[str, str]:
    passing = {"OK", "NON-STRICT", "INFORMATIONAL"}
    return {
        case: f"{result['behavior']} / close {result['behaviorClose']}"
        for case, result in results.items()
        if result["behavior"] not in passing or result["behaviorClose"] not in passing
    }


async def test_autobahn_protocol_cases_pass(tmp_path: Path) -> None:
    with trio.fail_after(300):
        results = await run_cases(tmp_path, *(f"{n}.*" for n in (1, 2, 3, 4, 5, 6, 7, 10)))
    assert len(results) > 240
    assert {} == failures(results)


async def test_autobahn_large_message_cases_pass(tmp_path: Path) -> None:
    with trio.fail_after(300):
        results = await run_cases(tmp_path, "9.*")
    assert len(results) >= 54
    assert {} == failures(results)
