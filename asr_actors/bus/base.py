"""The bus interface: open a stream on a named engine and get a pair of channels to it."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Protocol

import attrs
import trio

from engines.base import EngineEvent, StreamSpec


@attrs.frozen
class BusStatistics:
    """Counted since the bus started (trio's `statistics()` convention)."""

    # Sessions moved to another worker after theirs died (Redis bus).
    failovers: int = 0
    # Results from engine workers that broke the engine protocol (each ended its session with 500).
    malformed_results: int = 0


@attrs.frozen
class EngineLink:
    """Send PCM on `audio` (close it at end of audio); read events until `events` ends."""

    audio: trio.MemorySendChannel[bytes]
    events: trio.MemoryReceiveChannel[EngineEvent]


class Bus(Protocol):
    def open_stream(self, engine: str, spec: StreamSpec) -> AbstractAsyncContextManager[EngineLink]:
        """Open a stream; raises UnsupportedStream if the engine cannot take it, EngineBusy if it is full.

        An engine failure arrives as an `EngineFailed` event, never as an exception out of the link;
        sending audio after the stream has ended may raise trio.BrokenResourceError.
        Leaving the context cancels the stream if it is still running.
        """
        ...

    def statistics(self) -> BusStatistics: ...

    async def engine_problem(self, engine: str) -> str | None:
        """Why `engine` cannot take sessions now, or None if it can (for /readyz)."""
        ...
