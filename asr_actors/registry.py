"""The sessions a gateway runs now: each one's lifetime, how many, their metrics, and the drain."""

from __future__ import annotations

import trio

from asr_actors import session
from asr_actors.dialects import Admission, Dialect
from asr_actors.metrics import Metrics
from asr_actors.protocol import ErrorCode, ProtocolError
from asr_actors.session import Shared
from asr_actors.transport import Transport


class SessionRegistry:
    def __init__(self, shared: Shared, metrics: Metrics) -> None:
        self._shared = shared
        self._metrics = metrics
        self.active = 0
        self.draining = False
        self._lifetimes: set[session.Lifetime] = set()
        self._all_ended = trio.Event()
        self._all_ended.set()

    async def run(self, connection: Transport, admission: Admission, dialect: Dialect) -> None:
        """One session, from its accepted WebSocket to its close, counted while it runs."""
        lifetime = session.Lifetime()
        self._lifetimes.add(lifetime)
        self._all_ended = trio.Event()
        self.active += 1
        self._metrics.sessions_active.inc()
        started = trio.current_time()
        try:
            outcome = await session.run(connection, admission, dialect, self._shared, lifetime)
            self._count(outcome, trio.current_time() - started)
        finally:
            self._lifetimes.discard(lifetime)
            self.active -= 1
            self._metrics.sessions_active.dec()
            if not self._lifetimes:
                self._all_ended.set()

    def _count(self, outcome: session.Outcome, seconds: float) -> None:
        metrics = self._metrics
        metrics.duration.observe(seconds)
        metrics.audio_seconds.inc(outcome.audio_seconds)
        route = {"engine": outcome.engine or "none", "language": outcome.language or "none"}
        if outcome.first_partial_s is not None:
            metrics.first_partial.labels(**route).observe(outcome.first_partial_s)
        for latency in outcome.final_latencies:
            metrics.final_latency.labels(**route).observe(latency)
        if outcome.fault:
            metrics.faults.labels(stage="session").inc()
        if outcome.error is not None:
            metrics.sessions.labels(outcome="error", **route).inc()
            metrics.errors.labels(code=str(int(outcome.error.code)), **route).inc()
        else:
            outcome_name = "client_gone" if outcome.client_gone else "ok"
            metrics.sessions.labels(outcome=outcome_name, **route).inc()

    async def drain(self, grace_s: float) -> None:
        """Let running sessions finish for up to `grace_s`, then end the rest with 503 (the caller has
        stopped accepting connections)."""
        self.draining = True
        self._metrics.draining.set(1)
        with trio.move_on_after(grace_s):
            await self._all_ended.wait()
        shutdown = ProtocolError(ErrorCode.UNAVAILABLE, "Server is shutting down; reconnect")
        for lifetime in list(self._lifetimes):
            lifetime.end(shutdown)
        # Each cancelled session still closes (close_timeout) and keeps its record (record_timeout).
        settings = self._shared.config.session
        with trio.move_on_after(settings.close_timeout + settings.record_timeout):
            await self._all_ended.wait()
