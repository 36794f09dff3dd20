"""The Redis bus's messages and key names (engine protocol v2), sans-IO: what gateways and workers say.

Keys and channels (prefix `asr:v2:`; docs/engine-protocol.md is the contract):

| name | kind | written by | meaning |
|---|---|---|---|
| `asr:v2:queue:<engine>` | list | gateway LPUSH, worker BRPOP | session requests; one worker claims each |
| `asr:v2:worker:<id>` | string with TTL | worker, every heartbeat | the worker is alive (`<engine>`) |
| `asr:v2:inbox:<process id>` | pub/sub channel | anyone | record batches for one gateway or worker process |
| `asr:v2:claims:<session>` | counter | worker | times the session was claimed (one more per failover) |

A session is not a channel: it is the id in the records of the inboxes of the two processes serving it.
A PUBLISH carries a batch of records, so that the cost on both ends is per batch and not per frame or per
session. Each record names its session and placement attempt and has a sequence number, so that a
receiver detects gaps and duplicates (pub/sub is at-most-once: a lagging subscriber loses messages).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Iterator
from typing import Any

import attrs

from asr_actors.engines.base import EngineEvent, EngineFailed, Final, Partial, Word

PREFIX = "asr:v2:"
# The engine protocol's version (docs/engine-protocol.md). Requests carry it; a worker refuses others.
PROTOCOL_VERSION = 2
# Record kinds. Gateway to worker: audio, end of audio, cancel. Worker to gateway: a result (JSON).
AUDIO = b"A"
END = b"E"
CANCEL = b"C"
RESULT = b"R"
KINDS = (AUDIO, END, CANCEL, RESULT)
# kind, attempt, sequence number, session id length, payload length; then the session id and payload.
HEADER = struct.Struct(">cIQBI")
MAX_SESSION_ID_BYTES = 255


def queue_key(engine: str) -> str:
    return f"{PREFIX}queue:{engine}"


def worker_key(worker_id: str) -> str:
    return f"{PREFIX}worker:{worker_id}"


def gateway_key(process_id: str) -> str:
    return f"{PREFIX}gateway:{process_id}"


def inbox_channel(process_id: str) -> str:
    """The one channel a gateway or worker process subscribes to; every session it serves shares it."""
    return f"{PREFIX}inbox:{process_id}"


def claims_key(session_id: str) -> str:
    return f"{PREFIX}claims:{session_id}"


class BusProtocolError(Exception):
    """A message on the bus is malformed (a peer's fault)."""


@attrs.frozen
class Request:
    """A session waiting for a worker. `attempt` counts placements (failover re-places); `reply_to` is the
    gateway process whose inbox gets the session's results. On the wire the id's field is `session`."""

    session_id: str
    engine: str
    language: str
    sample_rate: int
    reply_to: str
    attempt: int = 0
    version: int = PROTOCOL_VERSION
    # The session's options, as protocol v1's start frame has them (docs/protocol.md); {} when none.
    options: dict[str, Any] = attrs.field(factory=dict, hash=False)

    def encode(self) -> bytes:
        fields = attrs.asdict(self)
        fields["session"] = fields.pop("session_id")
        return json.dumps(fields).encode()

    @classmethod
    def decode(cls, data: bytes) -> Request:
        try:
            fields = json.loads(data)
            request = cls(
                session_id=str(fields["session"]),
                engine=str(fields["engine"]),
                language=str(fields["language"]),
                sample_rate=int(fields["sample_rate"]),
                reply_to=str(fields.get("reply_to", "")),
                attempt=int(fields.get("attempt", 0)),
                version=int(fields.get("version", 1)),
                options=dict(fields.get("options") or {}),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BusProtocolError(f"bad session request: {exc}") from None
        if len(request.session_id.encode()) > MAX_SESSION_ID_BYTES:
            raise BusProtocolError("bad session request: session id too long")
        return request


@attrs.frozen
class Record:
    """One message of one session inside a batch."""

    kind: bytes
    session_id: str
    attempt: int
    seq: int
    payload: bytes = b""

    @property
    def route(self) -> tuple[str, int]:
        """Which placement the record belongs to: a session id and attempt."""
        return (self.session_id, self.attempt)


def encode_record(record: Record) -> bytes:
    session_id = record.session_id.encode()
    header = HEADER.pack(record.kind, record.attempt, record.seq, len(session_id), len(record.payload))
    # One copy of the payload (an audio frame), not one per `+`.
    return b"".join((header, session_id, record.payload))


def encode_batch(records: Iterable[Record]) -> bytes:
    return b"".join(encode_record(record) for record in records)


def decode_batch(data: bytes) -> Iterator[Record]:
    """The records of one PUBLISH, in order. A record of an unknown kind is yielded (its session is told
    it broke the protocol); framing that does not add up raises BusProtocolError after the records before
    it, since nothing after it can be trusted."""
    view = memoryview(data)
    offset = 0
    while offset < len(view):
        if len(view) - offset < HEADER.size:
            raise BusProtocolError("record shorter than its header")
        kind, attempt, seq, session_length, payload_length = HEADER.unpack_from(view, offset)
        start = offset + HEADER.size
        payload_start = start + session_length
        offset = payload_start + payload_length
        if offset > len(view):
            raise BusProtocolError("record longer than its batch")
        try:
            session_id = bytes(view[start:payload_start]).decode()
        except UnicodeDecodeError:
            raise BusProtocolError("record session id is not UTF-8") from None
        yield Record(kind, session_id, attempt, seq, bytes(view[payload_start:offset]))


def audio(session_id: str, attempt: int, seq: int, pcm: bytes) -> Record:
    return Record(AUDIO, session_id, attempt, seq, pcm)


def end_of_audio(session_id: str, attempt: int, seq: int) -> Record:
    return Record(END, session_id, attempt, seq)


def cancel(session_id: str, attempt: int) -> Record:
    """The gateway gave the placement up (client gone, session failed or moved): stop without results.
    It needs no sequence number: it is obeyed wherever it arrives."""
    return Record(CANCEL, session_id, attempt, 0)


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


def result_record(session_id: str, attempt: int, seq: int, result: Result) -> Record:
    fields: dict[str, Any]
    if isinstance(result, Claimed):
        fields = {"type": "claim", "worker": result.worker}
    elif isinstance(result, Refused):
        fields = {"type": "refused", "message": result.message, "unavailable": result.unavailable}
    elif isinstance(result, StreamEnded):
        fields = {"type": "end"}
    elif isinstance(result, EngineFailed):
        fields = {"type": "failed", "message": result.message}
    else:
        kind = "final" if isinstance(result, Final) else "partial"
        fields = {"type": kind, "text": result.text, "begin_ms": result.begin_ms, "end_ms": result.end_ms}
        if isinstance(result, Final) and result.words:
            fields["words"] = [[word.text, word.begin_ms, word.end_ms] for word in result.words]
    return Record(RESULT, session_id, attempt, seq, json.dumps(fields, ensure_ascii=False).encode())


def decode_result(record: Record) -> Result:
    if record.kind != RESULT:
        raise BusProtocolError(f"{record.kind!r} is not a result record")
    try:
        fields = json.loads(record.payload)
        kind = fields["type"]
        if kind == "claim":
            return Claimed(str(fields["worker"]))
        if kind == "refused":
            return Refused(str(fields["message"]), bool(fields.get("unavailable", False)))
        if kind == "end":
            return StreamEnded()
        if kind == "failed":
            return EngineFailed(str(fields["message"]))
        if kind == "partial":
            return Partial(str(fields["text"]), int(fields["begin_ms"]), int(fields["end_ms"]))
        if kind == "final":
            words = tuple(
                Word(str(text), int(begin), int(end)) for text, begin, end in fields.get("words", ())
            )
            return Final(str(fields["text"]), int(fields["begin_ms"]), int(fields["end_ms"]), words)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BusProtocolError(f"bad result: {exc}") from None
    raise BusProtocolError(f"unknown result type {kind!r}")
