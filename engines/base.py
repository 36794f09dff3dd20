"""The engine interface: a stream consumes PCM from one channel and emits events on another.

The mapping to the usual verbs: *open* is `run_stream` starting, *feed* is a send on `audio`, *finish*
is closing `audio` (the engine then flushes: every sentence it heard becomes a `Final` before it returns),
*close* is cancellation. Events come out in order: a sentence's partials, then its final, then the next
sentence's. The engine closes `events` when it returns.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Protocol

import attrs
import trio

from asr_actors.groups import first_leaf

log = logging.getLogger(__name__)


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


async def run_engine(
    engine: Engine,
    spec: StreamSpec,
    audio: trio.MemoryReceiveChannel[bytes],
    events: trio.MemorySendChannel[EngineEvent],
) -> None:
    """Run one engine stream; its failure becomes an EngineFailed event (in-process bus and workers alike)."""
    # The engine gets a clone of `events`, so that a failure can still be reported after it closed its own.
    async with events, audio:
        failure: EngineFailed | None = None
        # Engines run tasks of their own, so their errors may arrive grouped.
        try:
            await engine.run_stream(spec, audio, events.clone())
        except* EngineError as group:
            first = first_leaf(group)
            log.warning("engine %s failed: %s", engine.name, first)
            failure = EngineFailed(str(first))
        except* Exception:
            # A bug in an engine must end its own session only, with a coded error, not the gateway.
            log.exception("engine %s crashed", engine.name)
            failure = failure or EngineFailed("Engine failure")
        if failure is not None:
            await _report(events, failure)


async def _report(events: trio.MemorySendChannel[EngineEvent], failure: EngineFailed) -> None:
    # BrokenResourceError: the relay is gone already, nobody is left to tell.
    with contextlib.suppress(trio.BrokenResourceError):
        await events.send(failure)
