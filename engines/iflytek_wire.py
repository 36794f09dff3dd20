"""iFlytek real-time transcription (rtasr v1), sans-IO: the signed URL, the service's messages, its codes.

Protocol (docs/dependencies.md): connect to `wss://rtasr.xfyun.cn/v1/ws?appid=A&ts=T&signa=S` with
`S = Base64(HMAC-SHA1(api_key, MD5hex(A + T)))`; the service answers `{"action": "started"}`; the client
sends binary 16 kHz 16-bit PCM (1,280 bytes per 40 ms advised) and, at the end, the bytes `{"end": true}`;
the service sends `{"action": "result", "data": "<JSON>"}` messages, intermediate (`type` "1", the
sentence so far) and definitive (`type` "0"), then closes. Errors: `{"action": "error", "code": "10105",
"desc": "illegal access"}` and a close.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any
from urllib.parse import urlencode

from asr_actors.engines.base import Final, Partial, SessionOptions, Word
from asr_actors.engines.service_wire import Failed, Started, WireError

DEFAULT_URL = "wss://rtasr.xfyun.cn/v1/ws"
# The audio piece the service advises: 40 ms of 16 kHz 16-bit mono.
CHUNK_BYTES = 1280
END_OF_AUDIO = b'{"end": true}'
# What a client is told for the codes it can act on; the rest say the code.
_REASONS = {
    "10105": "iFlytek refused the credentials (10105 illegal access: app id, key or clock)",
    "10106": "iFlytek refused a parameter (10106)",
    "10107": "iFlytek refused a parameter value (10107)",
    "10110": "iFlytek has no licence for this app (10110)",
    "10700": "iFlytek's engine failed (10700)",
    "10800": "iFlytek is at this app's connection limit (10800)",
    "16003": "iFlytek failed (16003)",
}


def signature(app_id: str, api_key: str, ts: str) -> str:
    # MD5 and SHA-1: the service's signature scheme, not a choice made here.
    digest = hashlib.md5((app_id + ts).encode()).hexdigest().encode()
    return base64.b64encode(hmac.new(api_key.encode(), digest, hashlib.sha1).digest()).decode()


def query_options(options: SessionOptions) -> dict[str, str]:
    """A session's options as the connection's query parameters: `pd` (the vertical domain) and `punc=0`
    (no punctuation); nothing when not asked for."""
    query: dict[str, str] = {}
    domain = options.extra("iflytek.pd")
    if domain is not None:
        query["pd"] = str(domain)
    if options.punctuation is False:
        query["punc"] = "0"
    return query


def signed_url(base: str, app_id: str, api_key: str, now: float, extra: dict[str, str] | None = None) -> str:
    ts = str(int(now))
    query = {"appid": app_id, "ts": ts, "signa": signature(app_id, api_key, ts), **(extra or {})}
    return f"{base}?{urlencode(query)}"


ServiceMessage = Started | Partial | Final | Failed


# What reading a malformed message raises: a value of the wrong type or shape anywhere in it. Each becomes
# WireError, the parser's one documented error (the session's "broke its protocol").
_MALFORMED = (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, RecursionError)


def parse_message(text: str) -> ServiceMessage | None:
    """One message from the service; None for one that carries nothing for the session."""
    try:
        message = json.loads(text)
        action = message["action"]
        if action == "started":
            return Started(str(message.get("sid", "")))
        if action == "error":
            return _failed(str(message.get("code", "")), str(message.get("desc", "")))
        if action != "result":
            return None
        if str(message.get("code", "0")) != "0":
            return _failed(str(message["code"]), str(message.get("desc", "")))
        return _sentence(json.loads(message["data"])["cn"]["st"])
    except _MALFORMED as exc:
        raise WireError(f"not an rtasr message ({type(exc).__name__}): {text[:80]!r}") from None


def _failed(code: str, description: str) -> Failed:
    return Failed(code, description, _REASONS.get(code, f"iFlytek failed ({code})"))


def _sentence(st: dict[str, Any]) -> Partial | Final:
    words = [word for rt in st.get("rt", []) for word in rt.get("ws", [])]
    text = "".join(str(word["cw"][0]["w"]) for word in words if word.get("cw"))
    begin_ms = int(st["bg"])
    if str(st["type"]) == "0":
        # Word times are in 10 ms frames from the sentence's begin; punctuation (wp "p") joins its word.
        timed: list[Word] = []
        for word in words:
            if not word.get("cw"):
                continue
            piece = str(word["cw"][0]["w"])
            start, end = begin_ms + int(word.get("wb", 0)) * 10, begin_ms + int(word.get("we", 0)) * 10
            if word["cw"][0].get("wp") == "p" and timed:
                timed[-1] = Word(timed[-1].text + piece, timed[-1].begin_ms, max(timed[-1].end_ms, end))
            elif piece:
                timed.append(Word(piece, start, max(start, end)))
        return Final(text, begin_ms, max(int(st["ed"]), begin_ms), tuple(timed))
    # An intermediate result's `ed` is 0: it ends where its last word does (word times in 10 ms frames).
    last = max((int(word.get("we", 0)) for word in words), default=0)
    return Partial(text, begin_ms, begin_ms + last * 10)


class Rechunker:
    """The client's frames in the pieces the service asks for (the remainder waits for more audio)."""

    def __init__(self, size: int = CHUNK_BYTES) -> None:
        self._size = size
        self._pending = bytearray()

    def feed(self, pcm: bytes) -> list[bytes]:
        self._pending += pcm
        whole = len(self._pending) - len(self._pending) % self._size
        pieces = [bytes(self._pending[start : start + self._size]) for start in range(0, whole, self._size)]
        del self._pending[:whole]
        return pieces

    def flush(self) -> list[bytes]:
        rest, self._pending = bytes(self._pending), bytearray()
        return [rest] if rest else []
