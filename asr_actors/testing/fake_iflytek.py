"""Fake iFlytek real-time transcription (rtasr v1) server on loopback, speaking the service's protocol.

Protocol (engines/iflytek_wire.py, docs/dependencies.md): the client connects to
`/v1/ws?appid=A&ts=T&signa=S`; a wrong signature (or a `ts` more than 5 minutes off) gets
`{"action": "error", "code": "10105", "desc": "illegal access|..."}` and a close. Otherwise `started`, then
binary PCM in; results out as `{"action": "result", "data": "<JSON>"}` with `cn.st.type` "1"
(intermediate: the sentence so far) or "0" (definitive); the bytes `{"end": true}` end the audio, and the
service sends its last definitive result and closes.

Recognition is scripted: one character of TEXT per `chars_every_bytes` of audio, a sentence every
`sentence_chars` characters, so tests know exactly what to expect. Switches reproduce upstream faults.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from urllib.parse import parse_qs, urlsplit

import attrs
import trio
import trio_websocket

from asr_actors.testing.fake_service import ping_until_closed, serve_on_loopback

TEXT = "科大讯飞实时语音转写服务测试文本"
END_OF_AUDIO = b'{"end": true}'


@attrs.define
class Switches:
    app_id: str = "test-app"
    api_key: str = "test-key"
    chars_every_bytes: int = 3200  # 100 ms at 16 kHz
    sentence_chars: int = 10
    # An error result (this code) and a close after this many audio frames.
    fail_after_frames: int | None = None
    fail_code: str = "10700"
    # Close the TCP connection without a close frame after this many audio frames.
    drop_after_frames: int | None = None
    # Close cleanly (a close frame, no error) after this many audio frames: the upstream going away.
    close_after_frames: int | None = None
    # Never finish after the end of the audio.
    ignore_end: bool = False
    # Never send `started`.
    ignore_start: bool = False
    # Ping the client this often (seconds) while connected, as `websockets` servers do every 20 s.
    ping_every: float | None = None
    # From the end of the audio until the connection closes, ping the client every millisecond: pings that
    # cross the close handshake.
    ping_while_closing: bool = False


@attrs.define
class Stats:
    connections: int = 0
    refused: int = 0
    started: int = 0
    finished: int = 0
    frames: int = 0
    bytes: int = 0
    frame_sizes: set[int] = attrs.field(factory=set)
    open_connections: int = 0
    # Each connection's query parameters (the options a session asked for: `pd`, `punc`).
    queries: list[dict[str, str]] = attrs.field(factory=list)


def signature(app_id: str, api_key: str, ts: str) -> str:
    digest = hashlib.md5((app_id + ts).encode()).hexdigest().encode()
    return base64.b64encode(hmac.new(api_key.encode(), digest, hashlib.sha1).digest()).decode()


def text(start: int, end: int) -> str:
    """Characters start..end of the fake's endless transcript."""
    return "".join(TEXT[i % len(TEXT)] for i in range(start, end))


def _result(seg_id: int, begin_ms: int, end_ms: int, chars: str, ms_per_char: int, definitive: bool) -> str:
    words = [
        {"wb": i * ms_per_char // 10, "we": (i + 1) * ms_per_char // 10, "cw": [{"w": char, "wp": "n"}]}
        for i, char in enumerate(chars)
    ]
    data = {
        "seg_id": seg_id,
        "cn": {
            "st": {
                "bg": str(begin_ms),
                "ed": str(end_ms if definitive else 0),
                "type": "0" if definitive else "1",
                "rt": [{"ws": words}],
            }
        },
        "ls": False,
    }
    return json.dumps(
        {"action": "result", "code": "0", "data": json.dumps(data, ensure_ascii=False), "desc": "success"},
        ensure_ascii=False,
    )


class FakeIflytek:
    def __init__(self, switches: Switches | None = None) -> None:
        self.switches = switches or Switches()
        self.stats = Stats()
        self.url = ""

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self.url = await nursery.start(serve_on_loopback, self._handle, "/v1/ws")
            task_status.started(self.url)

    def _authorised(self, path: str) -> bool:
        query = {key: values[0] for key, values in parse_qs(urlsplit(path).query).items()}
        self.stats.queries.append(query)
        ts = query.get("ts", "")
        if query.get("appid") != self.switches.app_id or not ts.isdigit():
            return False
        if abs(time.time() - int(ts)) > 300:
            return False
        expected = signature(self.switches.app_id, self.switches.api_key, ts)
        return hmac.compare_digest(query.get("signa", ""), expected)

    async def _handle(self, request: trio_websocket.WebSocketRequest) -> None:
        self.stats.connections += 1
        connection = await request.accept()
        self.stats.open_connections += 1
        try:
            if not self._authorised(request.path):
                self.stats.refused += 1
                refusal = {
                    "action": "error",
                    "code": "10105",
                    "desc": "illegal access|illegal signa",
                    "sid": "",
                }
                await connection.send_message(json.dumps(refusal))
                await connection.aclose()
                return
            if self.switches.ignore_start:
                await trio.sleep_forever()
            started = {"action": "started", "code": "0", "data": "", "desc": "success", "sid": "rta-fake"}
            await connection.send_message(json.dumps(started))
            self.stats.started += 1
            async with trio.open_nursery() as keepalive:
                if self.switches.ping_every is not None:
                    keepalive.start_soon(ping_until_closed, connection, self.switches.ping_every)
                try:
                    await self._recognise(connection, keepalive)
                except* trio_websocket.ConnectionClosed:
                    pass  # the client left mid-task (from inside a nursery too): its connection's end only
                keepalive.cancel_scope.cancel()
        except trio_websocket.ConnectionClosed:
            pass
        finally:
            self.stats.open_connections -= 1

    async def _recognise(
        self, connection: trio_websocket.WebSocketConnection, keepalive: trio.Nursery
    ) -> None:
        switches = self.switches
        ms_per_char = switches.chars_every_bytes * 1000 // 32000
        frames = received = chars = sentence_start = seg_id = 0
        while True:
            message = await connection.get_message()
            if message == END_OF_AUDIO:
                if switches.ping_while_closing:
                    keepalive.start_soon(ping_until_closed, connection, 0.001)
                break
            if isinstance(message, str):
                continue
            frames += 1
            self.stats.frames += 1
            self.stats.bytes += len(message)
            self.stats.frame_sizes.add(len(message))
            if frames == switches.drop_after_frames:
                await connection._stream.aclose()  # no close frame: the TCP connection goes away
                return
            if frames == switches.close_after_frames:
                await connection.aclose()
                return
            if frames == switches.fail_after_frames:
                error = {
                    "action": "error",
                    "code": switches.fail_code,
                    "desc": "engine error",
                    "sid": "rta-fake",
                }
                await connection.send_message(json.dumps(error))
                await connection.aclose()
                return
            received += len(message)
            heard = received // switches.chars_every_bytes
            if heard <= chars:
                continue
            chars = heard
            definitive = chars - sentence_start >= switches.sentence_chars
            begin_ms = sentence_start * ms_per_char
            await connection.send_message(
                _result(
                    seg_id,
                    begin_ms,
                    chars * ms_per_char,
                    text(sentence_start, chars),
                    ms_per_char,
                    definitive,
                )
            )
            seg_id += 1
            if definitive:
                sentence_start = chars
        if switches.ignore_end:
            await trio.sleep_forever()
        tail_end = (
            max(chars, sentence_start + 1)
            if received > sentence_start * switches.chars_every_bytes
            else chars
        )
        if tail_end > sentence_start:
            end_ms = received * 1000 // 32000
            await connection.send_message(
                _result(
                    seg_id,
                    sentence_start * ms_per_char,
                    end_ms,
                    text(sentence_start, tail_end),
                    ms_per_char,
                    True,
                )
            )
        self.stats.finished += 1
        await connection.aclose()


def main() -> None:
    """Serve the fake on a free loopback port and print its URL."""
    import argparse

    defaults = Switches()
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--app-id", default=defaults.app_id)
    parser.add_argument("--api-key", default=defaults.api_key)
    arguments = parser.parse_args()

    async def serve() -> None:
        fake = FakeIflytek(Switches(app_id=arguments.app_id, api_key=arguments.api_key))
        async with trio.open_nursery() as nursery:
            print(await nursery.start(fake.serve), flush=True)

    trio.run(serve)


if __name__ == "__main__":
    main()
