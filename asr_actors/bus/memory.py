"""The in-process bus: the engine stream runs as a Trio task beside the session (the embedded default)."""

from __future__ import annotations

import collections
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import trio

from asr_actors.bus.base import BusStatistics
from asr_actors.engines.base import (
    Engine,
    EngineBusy,
    EngineEvent,
    StreamSpec,
    UnsupportedStream,
    run_engine,
)

log = logging.getLogger(__name__)


class MemoryBus:
    def __init__(self, engines: Mapping[str, Engine], *, events_capacity: int) -> None:
        self._engines = engines
        self._events_capacity = events_capacity
        self._streams_by_engine: collections.Counter[str] = collections.Counter()

    @asynccontextmanager
    async def open_stream(
        self, engine: str, spec: StreamSpec, audio: trio.MemoryReceiveChannel[bytes]
    ) -> AsyncIterator[trio.MemoryReceiveChannel[EngineEvent]]:
        chosen = self._engines.get(engine)
        if chosen is None:
            raise UnsupportedStream(f"Engine {engine!r} is not available")
        chosen.check(spec)
        if self._streams_by_engine[engine] >= chosen.max_streams:
            raise EngineBusy(f"All {chosen.max_streams} {engine} streams are busy")
        self._streams_by_engine[engine] += 1
        try:
            events_tx, events_rx = trio.open_memory_channel[EngineEvent](self._events_capacity)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run_engine, chosen, spec, audio, events_tx)
                async with events_rx:
                    yield events_rx
        finally:
            self._streams_by_engine[engine] -= 1

    async def engine_problem(self, engine: str) -> str | None:
        return None if engine in self._engines else "not configured in this gateway"

    def overload(self) -> str | None:
        return None  # in-process: the gateway's own loop lag is the measure (`server.Gateway`)

    def statistics(self) -> BusStatistics:
        return BusStatistics(streams_open=sum(self._streams_by_engine.values()))
