"""The engine interface: a stream consumes PCM from one channel and emits events on another.

The mapping to the usual verbs: *open* is `run_stream` starting, *feed* is a send on `audio`, *finish*
is closing `audio` (the engine then flushes: every sentence it heard becomes a `Final` before it returns),
*close* is cancellation. Events come out in order: a sentence's partials, then its final, then the next
sentence's. The engine closes `events` when it returns.
"""

from __future__ import annotations

from typing import Protocol

import attrs
import trio


@attrs.frozen
class StreamSpec:
    session_id: str
    language: str
    sample_rate: int


@attrs.frozen
class Partial:
    """The text so far of the sentence being spoken; replaces the previous partial."""

    text: str
    begin_ms: int
    end_ms: int


@attrs.frozen
class Word:
    """One word of a final, with its times in the stream (ms from the start of its audio)."""

    text: str
    begin_ms: int
    end_ms: int


@attrs.frozen
class Final:
    """A finished sentence; `words` with their times where the engine gives them (else empty)."""

    text: str
    begin_ms: int
    end_ms: int
    words: tuple[Word, ...] = ()


@attrs.frozen
class EngineFailed:
    """The engine broke; the stream is over. Carried as an event so that it can cross a bus."""

    message: str


EngineEvent = Partial | Final | EngineFailed


class EngineError(Exception):
    """The engine cannot go on with this stream; the message may be shown to the client."""


class UnsupportedStream(EngineError):
    """The engine does not handle this language or sample rate (the client's choice, so code 403)."""


class EngineUnavailable(EngineError):
    """The engine cannot take streams now (code 503): not configured, or no capacity left."""


class EngineBusy(EngineUnavailable):
    """The engine already runs as many streams as it may (the client may retry later)."""


class Engine(Protocol):
    name: str
    # Streams this engine may run at once in one process; the bus refuses more with EngineBusy.
    max_streams: int

    async def prepare(self) -> None:
        """Load models before the first session, so that it is not the one that waits."""

    def check(self, spec: StreamSpec) -> None:
        """Raise UnsupportedStream if this engine cannot run `spec`."""

    async def run_stream(
        self,
        spec: StreamSpec,
        audio: trio.MemoryReceiveChannel[bytes],
        events: trio.MemorySendChannel[EngineEvent],
    ) -> None:
        """Recognise `audio` until it ends, emit events, close `events`; raise EngineError on failure."""
