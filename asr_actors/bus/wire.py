"""The Redis bus's messages and key names, sans-IO: what gateways and engine workers say to each other.

Keys and channels (prefix `asr:`):

| name | kind | written by | meaning |
|---|---|---|---|
| `asr:queue:<engine>` | list | gateway LPUSH, worker BRPOP | session requests; one worker claims each |
| `asr:worker:<id>` | string with TTL | worker, every heartbeat | the worker is alive (`<engine>`) |
| `asr:audio:<session>:<attempt>` | pub/sub channel | gateway | audio frames and end of audio |
| `asr:results:<session>` | pub/sub channel | worker | claim, partial, final, failed, end |
| `asr:claims:<session>` | counter | worker | times the session was claimed (one more per failover) |

Every message carries the session id and a sequence number, so a receiver detects gaps and duplicates
(pub/sub is at-most-once: a lagging subscriber loses messages silently, docs/dependencies.md).
"""

from __future__ import annotations

import json
import struct
from typing import Any

import attrs

from asr_actors.engines.base import EngineEvent, EngineFailed, Final, Partial

PREFIX = "asr:"
# The engine protocol's version (docs/engine-protocol.md). Requests carry it; a worker refuses others.
PROTOCOL_VERSION = 1
_AUDIO = b"A"
_END = b"E"
_CANCEL = b"C"
_HEADER = struct.Struct(">cQB")  # kind, sequence number, session id length


def queue_key(engine: str) -> str:
    return f"{PREFIX}queue:{engine}"


def worker_key(worker_id: str) -> str:
    return f"{PREFIX}worker:{worker_id}"


def audio_channel(session: str, attempt: int) -> str:
    """Each placement has its own audio channel: a worker presumed dead that is in fact alive (after a
    Redis restart, say) never hears the audio replayed to its successor."""
    return f"{PREFIX}audio:{session}:{attempt}"


def results_channel(session: str) -> str:
    return f"{PREFIX}results:{session}"


def claims_key(session: str) -> str:
    return f"{PREFIX}claims:{session}"


class BusProtocolError(Exception):
    """A message on the bus is malformed (a peer's fault)."""


@attrs.frozen
class Request:
    """A session waiting for a worker. `attempt` counts placements (failover re-places)."""

    session: str
    engine: str
    language: str
    sample_rate: int
    attempt: int = 0
    version: int = PROTOCOL_VERSION

    def encode(self) -> bytes:
        return json.dumps(attrs.asdict(self)).encode()

    @classmethod
    def decode(cls, data: bytes) -> Request:
        try:
            fields = json.loads(data)
            return cls(
                session=str(fields["session"]),
                engine=str(fields["engine"]),
                language=str(fields["language"]),
                sample_rate=int(fields["sample_rate"]),
                attempt=int(fields.get("attempt", 0)),
                version=int(fields.get("version", PROTOCOL_VERSION)),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise BusProtocolError(f"bad session request: {exc}") from None


@attrs.frozen
class AudioFrame:
    session: str
    seq: int
    pcm: bytes  # empty with `end` and `cancel`
    end: bool = False
    # The gateway gave the placement up (client gone, session failed or moved): stop without results.
    cancel: bool = False


def encode_audio(frame: AudioFrame) -> bytes:
    session = frame.session.encode()
    kind = _CANCEL if frame.cancel else _END if frame.end else _AUDIO
    return _HEADER.pack(kind, frame.seq, len(session)) + session + frame.pcm


def decode_audio(data: bytes) -> AudioFrame:
    if len(data) < _HEADER.size:
        raise BusProtocolError("audio message shorter than its header")
    kind, seq, length = _HEADER.unpack_from(data)
    if kind not in (_AUDIO, _END, _CANCEL):
        raise BusProtocolError(f"unknown audio message kind {kind!r}")
    start = _HEADER.size + length
    try:
        session = data[_HEADER.size : start].decode()
    except UnicodeDecodeError:
        raise BusProtocolError("audio message session id is not UTF-8") from None
    return AudioFrame(session, seq, bytes(data[start:]), end=kind == _END, cancel=kind == _CANCEL)


@attrs.frozen
class Claimed:
    worker: str


@attrs.frozen
class Refused:
    """Sent instead of a claim when the worker's engine cannot run the stream: the client asked for what
    it lacks (language, rate), or it is `unavailable` (not configured on that worker)."""

    message: str
    unavailable: bool = False


@attrs.frozen
class StreamEnded:
    pass


Result = Claimed | Refused | StreamEnded | EngineEvent


@attrs.frozen
class ResultMessage:
    session: str
    seq: int
    result: Result
    # The placement that produced it; a gateway ignores results of placements it gave up on.
    attempt: int = 0


def encode_result(message: ResultMessage) -> bytes:
    result = message.result
    fields: dict[str, Any] = {"session": message.session, "seq": message.seq, "attempt": message.attempt}
    if isinstance(result, Claimed):
        fields.update(type="claim", worker=result.worker)
    elif isinstance(result, Refused):
        fields.update(type="refused", message=result.message, unavailable=result.unavailable)
    elif isinstance(result, StreamEnded):
        fields.update(type="end")
    elif isinstance(result, EngineFailed):
        fields.update(type="failed", message=result.message)
    else:
        kind = "final" if isinstance(result, Final) else "partial"
        fields.update(type=kind, text=result.text, begin_ms=result.begin_ms, end_ms=result.end_ms)
    return json.dumps(fields, ensure_ascii=False).encode()


def decode_result(data: bytes) -> ResultMessage:
    try:
        fields = json.loads(data)
        kind = fields["type"]
        result: Result
        if kind == "claim":
            result = Claimed(str(fields["worker"]))
        elif kind == "refused":
            result = Refused(str(fields["message"]), bool(fields.get("unavailable", False)))
        elif kind == "end":
            result = StreamEnded()
        elif kind == "failed":
            result = EngineFailed(str(fields["message"]))
        elif kind in ("partial", "final"):
            event_class = Final if kind == "final" else Partial
            result = event_class(str(fields["text"]), int(fields["begin_ms"]), int(fields["end_ms"]))
        else:
            raise BusProtocolError(f"unknown result type {kind!r}")
        return ResultMessage(
            str(fields["session"]), int(fields["seq"]), result, int(fields.get("attempt", 0))
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise BusProtocolError(f"bad result message: {exc}") from None
