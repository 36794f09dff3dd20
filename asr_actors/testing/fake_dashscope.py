"""Fake DashScope realtime ASR server on loopback, speaking the wire protocol the `dashscope` SDK uses.

Protocol (docs/dependencies.md): the client connects with `Authorization: Bearer KEY`, sends a `run-task` JSON
(header.task_id, header.streaming = "duplex", payload.parameters.sample_rate ...), gets `task-started`,
streams binary PCM, and sends `finish-task`. The server answers `result-generated` events whose
`payload.output.sentence` is {begin_time, end_time|null, text, sentence_end, heartbeat, words}, then
`task-finished` with a non-empty payload (the SDK fires on_complete only then), or `task-failed` with
header.error_code / header.error_message.

Recognition is scripted: one character of TEXT per `chars_every_bytes` of audio, a sentence every
`sentence_chars` characters, so tests know exactly what to expect. Switches reproduce upstream faults.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import attrs
import trio

from asr_actors.http import RequestHead
from asr_actors.testing.fake_service import ping_until_closed, serve_websocket_on_loopback
from asr_actors.transport import ClientGone
from asr_actors.websocket import WebSocket

TEXT = "今天天气很好我们一起去公园散步吧"


@attrs.define
class Switches:
    api_key: str = "test-key"
    chars_every_bytes: int = 3200  # 100 ms at 16 kHz
    sentence_chars: int = 10
    # Seconds between receiving audio and sending its result (the real service's own latency).
    result_delay: float = 0.0
    # task-failed (with this error) after this many binary frames.
    fail_after_frames: int | None = None
    fail_code: str = "InternalError"
    # Close the TCP connection without a close frame after this many binary frames.
    drop_after_frames: int | None = None
    # Never answer finish-task (the SDK's stop() then blocks forever).
    ignore_finish: bool = False
    # Never answer run-task (no task-started: the task never starts).
    ignore_run_task: bool = False
    # Ping the client this often (seconds) while connected, as `websockets` servers do every 20 s.
    ping_every: float | None = None
    # From task-finished until the connection closes, ping the client every millisecond: pings that cross
    # the client's close frame.
    ping_while_closing: bool = False


@attrs.define
class Stats:
    connections: int = 0
    tasks_started: int = 0
    tasks_finished: int = 0
    frames: int = 0
    bytes: int = 0
    open_connections: int = 0
    run_tasks: list[dict[str, Any]] = attrs.field(factory=list)


def _event(name: str, task_id: str, payload: dict[str, Any] | None = None, **header: str) -> str:
    message: dict[str, Any] = {"header": {"task_id": task_id, "event": name, "attributes": {}, **header}}
    message["payload"] = payload if payload is not None else {}
    return json.dumps(message, ensure_ascii=False)


def _sentence(begin_ms: int, end_ms: int | None, text: str, ms_per_char: int = 100) -> dict[str, Any]:
    # The service times each word; the fake's words are its characters, one per `ms_per_char`.
    words = [
        {
            "begin_time": begin_ms + i * ms_per_char,
            "end_time": begin_ms + (i + 1) * ms_per_char,
            "text": char,
            "punctuation": "",
        }
        for i, char in enumerate(text)
    ]
    return {
        "output": {
            "sentence": {
                "begin_time": begin_ms,
                "end_time": end_ms,
                "text": text,
                "sentence_end": end_ms is not None,
                "heartbeat": False,
                "words": words,
            }
        },
        "usage": {"duration": 1} if end_ms is not None else None,
    }


class FakeDashScope:
    def __init__(self, switches: Switches | None = None) -> None:
        self.switches = switches or Switches()
        self.stats = Stats()
        self.url = ""

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self.url = await nursery.start(serve_websocket_on_loopback, self._handle, "/api-ws/v1/inference")
            task_status.started(self.url)

    async def _handle(self, request: RequestHead, connection: WebSocket) -> None:
        self.stats.connections += 1
        self.stats.open_connections += 1
        try:
            async with trio.open_nursery() as keepalive:
                if self.switches.ping_every is not None:
                    keepalive.start_soon(ping_until_closed, connection, self.switches.ping_every)
                try:
                    await self._task(connection, request.headers.get("authorization", ""))
                except* ClientGone:
                    pass  # the client left mid-task (from inside a nursery too): its connection's end only
                keepalive.cancel_scope.cancel()
        finally:
            self.stats.open_connections -= 1

    async def _task(self, connection: WebSocket, authorization: str) -> None:
        run_task = json.loads(await connection.get_message())
        self.stats.run_tasks.append(run_task)
        task_id = run_task["header"]["task_id"]
        assert run_task["header"]["action"] == "run-task"
        if authorization != f"Bearer {self.switches.api_key}":
            refusal = _event(
                "task-failed", task_id, error_code="InvalidApiKey", error_message="Invalid API-key."
            )
            await connection.send_message(refusal)
            await connection.aclose()
            return
        if self.switches.ignore_run_task:
            await trio.sleep_forever()
        await connection.send_message(_event("task-started", task_id))
        self.stats.tasks_started += 1
        script = _Script(self.switches, int(run_task["payload"]["parameters"].get("sample_rate", 16000)))
        if not await self._recognise(connection, task_id, script):
            return
        finished = _event("task-finished", task_id, {"output": {}, "usage": {"duration": 1}})
        await connection.send_message(finished)
        self.stats.tasks_finished += 1
        # The SDK closes the connection once it has seen task-finished.
        async with trio.open_nursery() as closing:
            if self.switches.ping_while_closing:
                closing.start_soon(ping_until_closed, connection, 0.001)
            with trio.move_on_after(10), contextlib.suppress(ClientGone):
                await connection.get_message()
            closing.cancel_scope.cancel()

    async def _recognise(self, connection: WebSocket, task_id: str, script: _Script) -> bool:
        """Audio in, results out until finish-task; False if a fault switch ended the task."""
        switches = self.switches
        # Results leave in order, each `result_delay` after the audio that produced it.
        due_tx, due_rx = trio.open_memory_channel[tuple[float, str]](1000)

        async def emit() -> None:
            async for due, message in due_rx:
                await trio.sleep_until(due)
                await connection.send_message(message)

        async def result(payload: dict[str, Any] | None) -> None:
            if payload is not None:
                message = _event("result-generated", task_id, payload)
                await due_tx.send((trio.current_time() + switches.result_delay, message))

        fault = ""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(emit)
            async with due_tx:
                while True:
                    message = await connection.get_message()
                    if isinstance(message, str):
                        if json.loads(message)["header"]["action"] != "finish-task":
                            continue
                        if switches.ignore_finish:
                            await trio.sleep_forever()
                        await result(script.finish())
                        break
                    self.stats.frames += 1
                    self.stats.bytes += len(message)
                    if script.frames + 1 == switches.drop_after_frames:
                        fault = "drop"
                    elif script.frames + 1 == switches.fail_after_frames:
                        fault = "fail"
                    if fault:
                        nursery.cancel_scope.cancel()  # results still waiting are never sent
                        break
                    await result(script.audio(len(message)))
        if fault == "drop":
            # An abrupt drop: no close frame, just the TCP connection going away.
            await trio.aclose_forcefully(connection._stream)
        elif fault == "fail":
            await trio.sleep(switches.result_delay)
            failure = _event("task-failed", task_id, error_code=switches.fail_code, error_message="Boom.")
            await connection.send_message(failure)
        return not fault


def text(start: int, end: int) -> str:
    """Characters start..end of the fake's endless transcript."""
    return "".join(TEXT[i % len(TEXT)] for i in range(start, end))


class _Script:
    """What the fake "hears": one character per `chars_every_bytes`, a sentence per `sentence_chars`."""

    def __init__(self, switches: Switches, sample_rate: int) -> None:
        self._switches = switches
        self._bytes_per_ms = sample_rate * 2 / 1000
        self.frames = 0
        self._received = 0
        self._chars = 0
        self._sentence_start = 0

    def _ms(self, nbytes: float) -> int:
        return round(nbytes / self._bytes_per_ms)

    def audio(self, nbytes: int) -> dict[str, Any] | None:
        self.frames += 1
        self._received += nbytes
        heard = self._received // self._switches.chars_every_bytes
        if heard <= self._chars:
            return None
        self._chars = heard
        begin_ms = self._ms(self._sentence_start * self._switches.chars_every_bytes)
        ended = self._chars - self._sentence_start >= self._switches.sentence_chars
        payload = _sentence(
            begin_ms, self._ms(self._received) if ended else None, text(self._sentence_start, heard)
        )
        if ended:
            self._sentence_start = self._chars
        return payload

    def finish(self) -> dict[str, Any] | None:
        """The flush at finish-task: audio after the last sentence end becomes a final sentence."""
        if self._received <= self._sentence_start * self._switches.chars_every_bytes:
            return None
        begin_ms = self._ms(self._sentence_start * self._switches.chars_every_bytes)
        tail = text(self._sentence_start, max(self._chars, self._sentence_start + 1))
        return _sentence(begin_ms, self._ms(self._received), tail)


def main() -> None:
    """Serve the fake on a free loopback port and print its URL (the DashScope benchmark starts it so)."""
    import argparse

    defaults = Switches()
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--api-key", default=defaults.api_key)
    parser.add_argument("--chars-every-bytes", type=int, default=defaults.chars_every_bytes)
    parser.add_argument("--sentence-chars", type=int, default=defaults.sentence_chars)
    parser.add_argument("--ping-every", type=float, help="ping each client this often (seconds)")
    parser.add_argument(
        "--ping-while-closing", action="store_true", help="ping every millisecond while a client closes"
    )
    arguments = parser.parse_args()
    switches = Switches(
        api_key=arguments.api_key,
        chars_every_bytes=arguments.chars_every_bytes,
        sentence_chars=arguments.sentence_chars,
        ping_every=arguments.ping_every,
        ping_while_closing=arguments.ping_while_closing,
    )

    async def serve() -> None:
        fake = FakeDashScope(switches)
        async with trio.open_nursery() as nursery:
            print(await nursery.start(fake.serve), flush=True)

    trio.run(serve)


if __name__ == "__main__":
    main()
