"""Wire protocol v1, sans-IO: handshake targets and client frames in, events out; server events to text.

Compatible with the ASRWebSocketServer clients (JSON frames with base64 audio) and extended with binary
PCM frames. Nothing here touches a socket or a clock; `docs/protocol.md` is the prose version.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import struct
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import parse_qs

import attrs

from asr_actors.engines.base import NO_OPTIONS, SessionOptions

PATH = "/v1/asr"
PONG = "pong"
SUPPORTED_CONTAINERS = ("pcm", "wav")


class ErrorCode(enum.IntEnum):
    UNAUTHORIZED = 401
    BAD_INPUT = 403
    NOT_FOUND = 404
    TIMEOUT = 408
    TOO_LARGE = 413
    TOO_MANY = 429
    ENGINE_FAILURE = 500
    UNAVAILABLE = 503

    @property
    def close_code(self) -> int:
        """The WebSocket close code that goes with this error."""
        return 4000 + self.value


class ProtocolError(Exception):
    """The peer broke the protocol; `code` and `message` are what the client is told."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{int(code)} {message}")
        self.code = code
        self.message = message


# Messages the old server used, kept byte-identical for its clients.
UNAUTHORIZED = "Unauthorized or Timeout"
NOT_JSON = "The data must be json format"
IDLE = "Connection Timeout"
NOT_READING = "Client is not reading results"
ENGINE_STALLED = "Engine stopped taking audio"


def missing(name: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_INPUT, f"Parameters '{name}' is missing")


# --- handshake -------------------------------------------------------------------------------------


@attrs.frozen
class Handshake:
    path: str
    appkey: str
    date: str
    signature: str
    nonce: str | None
    language: str | None
    sample_rate: int | None


def parse_handshake(target: str) -> Handshake:
    """Parse the request target of the WebSocket handshake, e.g. `/v1/asr?appkey=..&date=..&signature=..`."""
    # A request target is a path and a query, not a URL: urlsplit would read `//host[...` as an address
    # and raise ValueError on it (found by the fuzzer).
    path, _, query_string = target.partition("?")
    if path != PATH:
        raise ProtocolError(ErrorCode.NOT_FOUND, f"No WebSocket endpoint at {path}")
    # parse_qs turns a literal `+` into a space; signing.verify accepts that for the old clients.
    query = {name: values[-1] for name, values in parse_qs(query_string, keep_blank_values=True).items()}
    try:
        appkey, date, signature = query["appkey"], query["date"], query["signature"]
    except KeyError:
        raise ProtocolError(ErrorCode.UNAUTHORIZED, UNAUTHORIZED) from None
    sample_rate = None
    if "sample_rate" in query:
        sample_rate = _parse_rate(query["sample_rate"], "sample_rate")
    return Handshake(
        path=path,
        appkey=appkey,
        date=date,
        signature=signature,
        nonce=query.get("nonce"),
        language=query.get("lang") or None,
        sample_rate=sample_rate,
    )


def _parse_rate(text: str, name: str) -> int:
    if not text.isdigit() or not 0 < int(text) <= 192000:
        raise ProtocolError(ErrorCode.BAD_INPUT, f"Parameters '{name}' is invalid: {text!r}")
    return int(text)


# --- client frames -> events ----------------------------------------------------------------------


@attrs.frozen
class StreamOpened:
    """Emitted once, before the first audio: the stream's language and rate are now fixed."""

    language: str
    sample_rate: int
    options: SessionOptions = NO_OPTIONS


@attrs.frozen
class AudioReceived:
    pcm: bytes


@attrs.frozen
class EndOfAudio:
    pass


@attrs.frozen
class PingReceived:
    pass


@attrs.frozen
class Reply:
    """A message of the dialect's own for the client (an acknowledgement, a non-fatal error): the decoder
    makes it, the receiver passes it to the sender, the dialect's encoder writes it as it is."""

    text: str


ClientEvent = StreamOpened | AudioReceived | EndOfAudio | PingReceived | Reply


class Decoder(Protocol):
    """What the receiver needs of a wire dialect's decoder."""

    @property
    def ended(self) -> bool: ...

    def receive(self, message: str | bytes) -> list[ClientEvent]: ...


class _State(enum.Enum):
    AWAITING_AUDIO = "awaiting audio"
    STREAMING = "streaming"
    ENDED = "ended"


class ClientDecoder:
    """Turns client WebSocket messages into events; raises ProtocolError for anything malformed.

    The language is the handshake's `lang`, else the first JSON frame's `language_code`, else the
    default; the sample rate likewise from `sample_rate`, else `audio_format` (`wav/16000`), else the
    default. A RIFF/WAV header at the start of the audio is checked against that rate and skipped.
    """

    def __init__(
        self,
        *,
        max_frame_bytes: int,
        default_language: str,
        default_sample_rate: int,
        language: str | None = None,
        sample_rate: int | None = None,
        read_options: Callable[[object], SessionOptions] | None = None,
    ) -> None:
        """`read_options` checks a start frame's `options` (`session_options.parse` with the config's caps);
        without it a frame that has options is refused."""
        self._max_frame_bytes = max_frame_bytes
        self._read_options = read_options
        self._options = NO_OPTIONS
        self._language = language
        self._sample_rate = sample_rate
        self._default_language = default_language
        self._default_sample_rate = default_sample_rate
        self._state = _State.AWAITING_AUDIO
        # Whether binary frames carry JSON messages (the Java client's way), decided by the first frame.
        self._binary_json: bool | None = None

    @property
    def ended(self) -> bool:
        return self._state is _State.ENDED

    def receive(self, message: str | bytes) -> list[ClientEvent]:
        if self._state is _State.ENDED:
            raise ProtocolError(ErrorCode.BAD_INPUT, "Audio after end of stream")
        if isinstance(message, bytes):
            if self._binary_json is None:
                self._binary_json = _json_message(message) is not None
            if self._binary_json and (frame := _json_message(message)) is not None:
                return self._json_frame(frame)
            # PCM, or in a JSON session a frame that is no JSON message: raw PCM as the Java client sends
            # its last, short piece of audio.
            return self._audio(message, container=None)
        self._binary_json = bool(self._binary_json)
        if message == "ping":
            return [PingReceived()]
        try:
            frame = json.loads(message)
        except ValueError:
            raise ProtocolError(ErrorCode.BAD_INPUT, NOT_JSON) from None
        if not isinstance(frame, dict):
            raise ProtocolError(ErrorCode.BAD_INPUT, NOT_JSON)
        return self._json_frame(frame)

    def _json_frame(self, frame: dict[str, Any]) -> list[ClientEvent]:
        status = frame.get("status")
        if status is None:
            raise missing("status")
        if status not in ("start", "partial", "end"):
            raise ProtocolError(ErrorCode.BAD_INPUT, f"Parameters 'status' is invalid: {status!r}")
        container = self._frame_format(frame)
        if "options" in frame:
            self._take_options(frame["options"])
        if self._state is _State.AWAITING_AUDIO and self._language is None:
            language = frame.get("language_code")
            if language is not None and not isinstance(language, str):
                raise ProtocolError(ErrorCode.BAD_INPUT, "Parameters 'language_code' is invalid")
            self._language = language or None
        if status == "end":
            # Its `data` is ignored, whatever it holds: the old clients send "", "none" or nothing there.
            return self._end()
        data = frame.get("data")
        if data is None:
            raise missing("data")
        if data == "":
            return []  # the page's `start`, sent (twice) before any audio
        return self._audio(_decode_base64(data, self._max_frame_bytes), container)

    def _take_options(self, raw: object) -> None:
        if self._state is not _State.AWAITING_AUDIO:
            raise ProtocolError(ErrorCode.BAD_INPUT, "Options come in the first frame, before any audio")
        if self._read_options is None:
            raise ProtocolError(ErrorCode.BAD_INPUT, "This endpoint takes no options")
        self._options = self._read_options(raw)

    def _frame_format(self, frame: dict[str, Any]) -> str | None:
        audio_format = frame.get("audio_format")
        if audio_format is None:
            return None
        if not isinstance(audio_format, str) or "/" not in audio_format:
            raise ProtocolError(ErrorCode.BAD_INPUT, f"Unsupported audio_format {audio_format!r}")
        container, _, rate_text = audio_format.partition("/")
        if container not in SUPPORTED_CONTAINERS:
            raise ProtocolError(ErrorCode.BAD_INPUT, f"Unsupported audio_format {audio_format!r}")
        rate = _parse_rate(rate_text, "audio_format")
        if self._sample_rate is None:
            self._sample_rate = rate
        elif rate != self._sample_rate:
            raise ProtocolError(
                ErrorCode.BAD_INPUT, f"audio_format {audio_format!r} does not match {self._sample_rate} Hz"
            )
        return container

    def _opening(self) -> list[ClientEvent]:
        if self._state is not _State.AWAITING_AUDIO:
            return []
        self._state = _State.STREAMING
        self._language = self._language or self._default_language
        self._sample_rate = self._sample_rate or self._default_sample_rate
        return [StreamOpened(language=self._language, sample_rate=self._sample_rate, options=self._options)]

    def _audio(self, payload: bytes, container: str | None) -> list[ClientEvent]:
        if len(payload) > self._max_frame_bytes:
            raise ProtocolError(
                ErrorCode.TOO_LARGE, f"Frame of {len(payload)} bytes exceeds {self._max_frame_bytes}"
            )
        events = self._opening()
        # `wav/<rate>` with no RIFF header is raw PCM at that rate, as the old clients label their PCM.
        if events and payload[:4] == b"RIFF":
            payload = _strip_wav_header(payload, self._sample_rate or self._default_sample_rate)
        if len(payload) % 2:
            raise ProtocolError(
                ErrorCode.BAD_INPUT, f"Audio frame of {len(payload)} bytes: 16-bit samples need an even count"
            )
        if payload:
            events.append(AudioReceived(payload))
        return events

    def _end(self) -> list[ClientEvent]:
        events = self._opening()
        self._state = _State.ENDED
        events.append(EndOfAudio())
        return events


def _json_message(frame: bytes) -> dict[str, Any] | None:
    """The JSON message a binary frame holds, if it is one: a JSON object (UTF-8) with a `status`.

    Audio is never taken for one: a session's binary frames are read as JSON only if its very first frame
    is such a message (docs/protocol.md says why PCM cannot be), and the first byte test keeps the JSON
    parser off PCM frames.
    """
    if frame.lstrip()[:1] != b"{":
        return None
    try:
        message = json.loads(frame)
    except ValueError:  # UnicodeDecodeError included
        return None
    return message if isinstance(message, dict) and "status" in message else None


def _decode_base64(data: object, max_frame_bytes: int) -> bytes:
    if not isinstance(data, str):
        raise ProtocolError(ErrorCode.BAD_INPUT, "Parameters 'data' must be a base64 string")
    # Refuse before decoding, so a huge string costs no decode.
    if len(data) > (max_frame_bytes + 2) // 3 * 4 + 4:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"Frame exceeds {max_frame_bytes} bytes")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(ErrorCode.BAD_INPUT, "Parameters 'data' is not valid base64") from None


_WAV_PCM = 1
_WAV_EXTENSIBLE = 0xFFFE


def _strip_wav_header(payload: bytes, sample_rate: int) -> bytes:
    """Check a RIFF/WAV header at the start of the stream and return the audio after it."""
    if payload[8:12] != b"WAVE":
        raise ProtocolError(ErrorCode.BAD_INPUT, "RIFF data is not WAVE")
    offset = 12
    seen_format = False
    while offset + 8 <= len(payload):
        chunk_id = payload[offset : offset + 4]
        (size,) = struct.unpack_from("<I", payload, offset + 4)
        body = offset + 8
        if chunk_id == b"fmt ":
            if body + 16 > len(payload):
                break
            tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", payload, body)
            if tag not in (_WAV_PCM, _WAV_EXTENSIBLE) or channels != 1 or bits != 16 or rate != sample_rate:
                raise ProtocolError(
                    ErrorCode.BAD_INPUT,
                    f"Unsupported WAV: need 16-bit PCM mono at {sample_rate} Hz, "
                    f"got {bits}-bit, {channels} channel(s) at {rate} Hz",
                )
            seen_format = True
        elif chunk_id == b"data":
            if not seen_format:
                raise ProtocolError(ErrorCode.BAD_INPUT, "WAV data chunk before its fmt chunk")
            return payload[body:]
        offset = body + size + (size & 1)
    raise ProtocolError(ErrorCode.BAD_INPUT, "WAV header must fit in the first audio frame")


# --- server events -> frames ----------------------------------------------------------------------


class ResultStatus(enum.StrEnum):
    START = "start"
    PARTIAL = "partial"
    FINAL = "final"
    END = "end"


@attrs.frozen
class Result:
    status: ResultStatus
    speech_id: str = ""
    text: str = ""
    begin_ms: int = 0
    end_ms: int = 0
    # Finals only, where the engine gives them: (text, begin_ms, end_ms) per word.
    words: tuple[tuple[str, int, int], ...] = ()


@attrs.frozen
class Pong:
    pass


ServerEvent = Result | Pong | Reply
# What a dialect's encoder makes of a server event: nothing, one message, or several.
Encoded = str | list[str] | None


def messages(encoded: Encoded) -> list[str]:
    """The messages to send for what an encoder made of an event."""
    if encoded is None:
        return []
    return encoded if isinstance(encoded, list) else [encoded]


def encode(session_id: str, event: ServerEvent) -> str | None:
    if isinstance(event, Pong):
        return PONG
    if isinstance(event, Reply):
        return None  # protocol v1 has none
    data = {
        "task_id": session_id,  # the wire's name for the session id
        "speech_id": event.speech_id,
        "status": str(event.status),
        "result": event.text,
        "begin_time": event.begin_ms,
        "end_time": event.end_ms,
    }
    if event.words:
        # An optional field of protocol v1 (docs/protocol.md): clients that do not know it ignore it.
        data["words"] = [
            {"word": text, "begin_time": begin, "end_time": end} for text, begin, end in event.words
        ]
    return json.dumps(
        {"code": 200, "message": "SUCCESS", "task_id": session_id, "data": data}, ensure_ascii=False
    )


def encode_error(code: ErrorCode, message: str) -> str:
    return json.dumps({"code": int(code), "message": message, "data": ""}, ensure_ascii=False)


def close_reason(message: str) -> str:
    """A close reason must fit in 123 bytes of UTF-8."""
    encoded = message.encode()[:123]
    return encoded.decode("utf-8", errors="ignore")
