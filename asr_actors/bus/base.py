"""The bus interface: open a stream on a named engine, hand it the session's audio, read its events."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Protocol

import attrs
import trio

from asr_actors.engines.base import EngineEvent, StreamSpec


@attrs.frozen
class BusStatistics:
    """The bus's state now and its counts since it started (trio's `statistics()` convention)."""

    # Engine streams open now (in-process: engine tasks; Redis: placements this gateway holds).
    streams_open: int = 0
    # Sessions moved to another worker after theirs died (Redis bus).
    failovers: int = 0
    # Results from engine workers that broke the engine protocol (each ended its session with 500).
    malformed_results: int = 0


class Bus(Protocol):
    def open_stream(
        self, engine: str, spec: StreamSpec, audio: trio.MemoryReceiveChannel[bytes]
    ) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[EngineEvent]]:
        """Open a stream that consumes `audio` until its senders close it (the end of audio); yield the
        stream's events, which end after its last final. Raises UnsupportedStream if the engine cannot take
        the stream, EngineBusy if it is full.

        The bus reads `audio` itself, so that a frame makes no extra channel hop on its way to the engine,
        and closes it when the stream ends early (the sender then gets trio.BrokenResourceError). An engine
        failure arrives as an `EngineFailed` event, never as an exception. Leaving the context cancels the
        stream if it is still running.
        """
        ...

    def statistics(self) -> BusStatistics: ...

    def overload(self) -> str | None:
        """Why the bus takes no new session now (it cannot keep up with those it has), or None."""
        ...

    async def engine_problem(self, engine: str) -> str | None:
        """Why `engine` cannot take sessions now, or None if it can (for /readyz)."""
        ...
