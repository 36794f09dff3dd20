"""DashScope's realtime recognition protocol, sans-IO: the client's messages out, the service's events in.

Both transports of the `dashscope` engine use it: the SDK one for what its callbacks hand over (a sentence,
a failure), the native one for every message on its own WebSocket. The protocol (docs/dependencies.md, and the
SDK's own client): the client connects with `Authorization: Bearer KEY`, sends `run-task`, gets
`task-started`, streams binary PCM, sends `finish-task`; the service answers `result-generated` events
(`payload.output.sentence`), then `task-finished`, or `task-failed` with `header.error_code` and
`header.error_message` at any point.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from asr_actors.engines.base import Final, Partial, SessionOptions, Word
from asr_actors.engines.service_wire import Failed, Finished, Started, WireError

# The public realtime endpoint (the SDK's default for the Chinese mainland region).
DEFAULT_URL = "wss://dashscope.aliyuncs.com/api-ws/v1/inference"


def task_parameters(
    options: SessionOptions, language: str, configured_hints: Sequence[str]
) -> dict[str, Any]:
    """A session's options as run-task parameters (the SDK takes the same names as keyword arguments):
    its language hints, else the configured ones, else its language; the rest only when asked for."""
    parameters: dict[str, Any] = {
        "language_hints": list(options.language_hints or configured_hints or (language,))
    }
    vocabulary = options.extra("dashscope.vocabulary_id")
    if vocabulary is not None:
        parameters["vocabulary_id"] = vocabulary
    disfluency = options.extra("dashscope.disfluency_removal")
    if disfluency is not None:
        parameters["disfluency_removal_enabled"] = disfluency
    if options.punctuation is not None:
        parameters["punctuation_prediction_enabled"] = options.punctuation
    return parameters


def run_task(task_id: str, model: str, sample_rate: int, parameters: dict[str, Any]) -> str:
    return json.dumps(
        {
            "header": {"action": "run-task", "task_id": task_id, "streaming": "duplex"},
            "payload": {
                "task_group": "audio",
                "task": "asr",
                "function": "recognition",
                "model": model,
                "parameters": {"format": "pcm", "sample_rate": sample_rate, **parameters},
                "input": {},
            },
        }
    )


def finish_task(task_id: str) -> str:
    return json.dumps(
        {
            "header": {"action": "finish-task", "task_id": task_id, "streaming": "duplex"},
            "payload": {"input": {}},
        }
    )


ServiceEvent = Started | Finished | Failed | Partial | Final


# What reading a malformed message raises: a value of the wrong type or shape anywhere in it. Each becomes
# WireError, the parser's one documented error (the session's "broke its protocol").
_MALFORMED = (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, RecursionError)


def parse_event(text: str) -> ServiceEvent | None:
    """One text message of the service; None for what carries nothing to act on (heartbeats, an empty
    partial, events this client does not use)."""
    try:
        return _event(json.loads(text))
    except _MALFORMED as exc:
        raise WireError(f"not a DashScope event ({type(exc).__name__}): {text[:80]!r}") from None


def _event(message: Any) -> ServiceEvent | None:
    header = message["header"]
    event = header["event"]
    if event == "task-started":
        return Started()
    if event == "task-finished":
        return Finished()
    if event == "task-failed":
        code, detail = str(header.get("error_code") or ""), str(header.get("error_message") or "")
        return Failed(code, detail, describe_failure(code, detail))
    if event == "result-generated":
        payload = message.get("payload") or {}
        sentence = (payload.get("output") or {}).get("sentence")
        return _sentence(sentence) if isinstance(sentence, dict) else None
    return None


def sentence_event(sentence: dict[str, Any]) -> Partial | Final | None:
    """A `sentence` of a result: a final at its end, else a partial (None for a heartbeat or no text);
    WireError if it is malformed."""
    try:
        return _sentence(sentence)
    except _MALFORMED as exc:
        raise WireError(f"not a DashScope sentence ({type(exc).__name__}): {str(sentence)[:80]!r}") from None


def _sentence(sentence: dict[str, Any]) -> Partial | Final | None:
    if sentence.get("heartbeat"):
        return None
    text = str(sentence.get("text") or "")
    begin_ms = int(sentence.get("begin_time") or 0)
    end_time = sentence.get("end_time")
    flag = sentence.get("sentence_end")
    # The documented flag, falling back to end_time for models that do not send it.
    ended = bool(flag) if flag is not None else end_time is not None
    if ended:
        return Final(text, begin_ms, int(end_time) if end_time is not None else begin_ms, _words(sentence))
    if not text:
        return None
    return Partial(text, begin_ms, int(end_time) if end_time is not None else begin_ms)


def _words(sentence: dict[str, Any]) -> tuple[Word, ...]:
    """The sentence's `words` ({begin_time, end_time, text, punctuation}), punctuation kept on its word."""
    words = []
    try:
        for word in sentence.get("words") or ():
            text = f"{word.get('text') or ''}{word.get('punctuation') or ''}"
            words.append(Word(text, int(word["begin_time"]), int(word["end_time"])))
    except _MALFORMED:
        return ()  # malformed word times are dropped, not the sentence
    return tuple(words)


def describe_failure(code: str, message: str) -> str:
    """The client-facing reason for a failure of the service (the full text goes to the log)."""
    if code == "InvalidApiKey" or "api-key" in message.lower():
        return "DashScope refused the API key"
    if code == "ClientConnectorError":
        return "DashScope is unreachable"
    if code in ("Unknown", "-1"):
        # The SDK reports a dropped or broken connection as an "Unknown" error with its exception text.
        return "DashScope connection failed"
    return f"DashScope failed: {code}: {message}"
