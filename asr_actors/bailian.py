"""The Bailian web demo's protocol, sans-IO, so that its page runs unmodified (docs/protocol.md).

Client: binary frames of Int16 PCM, 16 kHz mono (100 ms each from that page); the text `stop` ends the
audio. Server: `{"text": ..., "is_end": bool}` for each partial (`is_end` false, replaces the current line)
and final (`is_end` true, the next text starts a new line), then the plain text `asr stopped`, then a
close. Unlike that demo's server, errors do reach the client: a last `{"text": "", "is_end": true,
"code": C, "message": M}` (a page that reads only text and is_end ends its line cleanly) and a close with
4000 + C.
"""

from __future__ import annotations

import json

from asr_actors.protocol import (
    AudioReceived,
    ClientEvent,
    EndOfAudio,
    ErrorCode,
    ProtocolError,
    Result,
    ResultStatus,
    ServerEvent,
    StreamOpened,
)

SAMPLE_RATE = 16000
STOP = "stop"
STOPPED = "asr stopped"


class Decoder:
    def __init__(self, *, max_frame_bytes: int, language: str, sample_rate: int) -> None:
        self._max_frame_bytes = max_frame_bytes
        self._language = language
        self._sample_rate = sample_rate
        self._opened = False
        self._ended = False

    @property
    def ended(self) -> bool:
        return self._ended

    def receive(self, message: str | bytes) -> list[ClientEvent]:
        if self._ended:
            raise ProtocolError(ErrorCode.BAD_INPUT, "Audio after stop")
        if isinstance(message, str):
            if message.strip() != STOP:
                raise ProtocolError(ErrorCode.BAD_INPUT, f"Unknown text message {message[:40]!r}")
            self._ended = True
            return [*self._opening(), EndOfAudio()]
        if len(message) > self._max_frame_bytes:
            raise ProtocolError(
                ErrorCode.TOO_LARGE, f"Frame of {len(message)} bytes exceeds {self._max_frame_bytes}"
            )
        if len(message) % 2:
            raise ProtocolError(
                ErrorCode.BAD_INPUT, f"Audio frame of {len(message)} bytes: 16-bit samples need an even count"
            )
        events = self._opening()
        if message:
            events.append(AudioReceived(message))
        return events

    def _opening(self) -> list[ClientEvent]:
        if self._opened:
            return []
        self._opened = True
        return [StreamOpened(language=self._language, sample_rate=self._sample_rate)]


def encode(event: ServerEvent) -> str | None:
    if not isinstance(event, Result) or event.status is ResultStatus.START:  # pongs, replies: none here
        return None
    if event.status is ResultStatus.END:
        return STOPPED
    return json.dumps({"text": event.text, "is_end": event.status is ResultStatus.FINAL}, ensure_ascii=False)


def encode_error(error: ProtocolError) -> str:
    return json.dumps(
        {"text": "", "is_end": True, "code": int(error.code), "message": error.message}, ensure_ascii=False
    )
