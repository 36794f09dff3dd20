"""Prometheus metrics of one gateway process, served at /metrics (each gateway has its own registry).

By the conventions: cumulative counts are counters (exposed with `_total`), levels are gauges, latencies
are histograms in seconds, and the process collector adds the process's CPU, memory and open files.
With `serve --workers` every process has its own registry: give `[server] metrics_port` and process i
also serves /metrics on metrics_port + i, so that each is scraped on its own (docs/deploy.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from asr_actors import __version__, http

if TYPE_CHECKING:
    from asr_actors.engines.whisper_batch import QueueStatistics
    from asr_actors.worker import Worker

CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST
# Latency buckets (seconds) for results: a partial should follow its audio within a fraction of a second,
# a final within a second or two of its sentence's end.
RESULT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0)


class _CountReader(Collector):
    """A counter whose value someone else keeps (the bus's failover count): read at scrape time."""

    def __init__(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        self._name = name
        self._documentation = documentation
        self._read = read

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self._name, self._documentation, value=self._read())


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.sessions_active = Gauge("asr_sessions_active", "Sessions running now", registry=self.registry)
        Gauge("asr_build_info", "The running release (always 1)", ["version"], registry=self.registry).labels(
            version=__version__
        ).set(1)
        # `engine` and `language` are the session's route ("none" before one was chosen): values from the
        # configuration, never from what a client sends, so the label sets stay bounded.
        self.sessions = Counter(
            "asr_sessions",
            "Sessions ended, by outcome, engine and language",
            ["outcome", "engine", "language"],
            registry=self.registry,
        )
        self.errors = Counter(
            "asr_session_errors",
            "Sessions ended with an error, by code, engine and language",
            ["code", "engine", "language"],
            registry=self.registry,
        )
        self.audio_seconds = Counter("asr_audio_seconds", "Seconds of audio received", registry=self.registry)
        self.duration = Histogram(
            "asr_session_duration_seconds",
            "Session lengths",
            buckets=(1, 5, 15, 30, 60, 120, 300, 900, 1800, 3600),
            registry=self.registry,
        )
        self.first_partial = Histogram(
            "asr_first_partial_seconds",
            "From a session's first audio frame to its first partial result",
            ["engine", "language"],
            buckets=RESULT_BUCKETS,
            registry=self.registry,
        )
        self.final_latency = Histogram(
            "asr_final_latency_seconds",
            "From the arrival of the audio that ends a sentence to that sentence's final result",
            ["engine", "language"],
            buckets=RESULT_BUCKETS,
            registry=self.registry,
        )
        self.handshakes_refused = Counter(
            "asr_handshakes_refused",
            "WebSocket upgrades refused before a session, by reason: origin, rate, malformed, timeout",
            ["reason"],
            registry=self.registry,
        )
        self.faults = Counter(
            "asr_faults",
            "Connections ended by an unexpected exception (a bug of ours or a library's; the traceback is "
            "in the log), by where it was caught: http, session or connection",
            ["stage"],
            registry=self.registry,
        )
        self.draining = Gauge(
            "asr_draining", "1 while the gateway drains for shutdown", registry=self.registry
        )

    def watch(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """A gauge read at scrape time (open streams, engine availability)."""
        Gauge(name, documentation, registry=self.registry).set_function(read)

    def watch_count(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """A counter read at scrape time (the bus's cumulative counts); exposed as `name_total`."""
        self.registry.register(_CountReader(name, documentation, read))

    def exposition(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)


def watch_whisper_queue(registry: CollectorRegistry, read: Callable[[], QueueStatistics]) -> None:
    """The local engine's Whisper queue (engines/whisper_batch.py), read at scrape time."""
    Gauge("asr_local_whisper_waiting", "Whisper passes waiting for a slot", registry=registry).set_function(
        lambda: read().waiting
    )
    Gauge(
        "asr_local_whisper_slots_busy", "Whisper slots in use (whisper_threads at most)", registry=registry
    ).set_function(lambda: read().slots_busy)
    registry.register(
        _CountReader("asr_local_whisper_passes", "Whisper passes decoded", lambda: read().passes)
    )
    registry.register(
        _CountReader("asr_local_whisper_batches", "Whisper generate calls (batches)", lambda: read().batches)
    )
    registry.register(
        _CountReader(
            "asr_local_whisper_decode_seconds",
            "Wall time of the Whisper batches (divided by batches: the mean batch time)",
            lambda: read().decode_seconds,
        )
    )


class WorkerMetrics:
    """An engine worker's registry, served on its operator port ([worker] metrics_port) with its health."""

    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        Gauge("asr_build_info", "The running release (always 1)", ["version"], registry=self.registry).labels(
            version=__version__
        ).set(1)
        engine = worker.engine.name
        Gauge(
            "asr_worker_sessions_active", "Sessions running now", ["engine"], registry=self.registry
        ).labels(engine=engine).set_function(lambda: worker.sessions_active)
        self.sessions = Counter(
            "asr_worker_sessions", "Sessions claimed", ["engine"], registry=self.registry
        ).labels(engine=engine)
        self.gateway_gone = Counter(
            "asr_worker_sessions_gateway_gone",
            "Sessions ended because their gateway's liveness key expired (the gateway died)",
            ["engine"],
            registry=self.registry,
        ).labels(engine=engine)
        Gauge(
            "asr_worker_ready", "1 while the worker claims sessions (/readyz)", registry=self.registry
        ).set_function(lambda: float(self.ready()))
        Gauge(
            "asr_event_loop_lag_seconds",
            "How late this process's event loop runs (the largest of its last samples)",
            registry=self.registry,
        ).set_function(lambda: worker.loop_lag)
        if worker.engine.name == "local":
            # Imported here: only a local engine worker loads the engine's module.
            from asr_actors.engines.local import LocalEngine

            if isinstance(worker.engine, LocalEngine):
                watch_whisper_queue(self.registry, worker.engine.whisper_statistics)

    def ready(self) -> bool:
        return all(state == "ok" for state in self._worker.readiness().values())

    def routes(self) -> Mapping[str, Callable[[], Awaitable[http.Response]]]:
        async def metrics() -> http.Response:
            return http.Response(200, prometheus_client.generate_latest(self.registry), CONTENT_TYPE)

        async def healthz() -> http.Response:
            return http.json_response(200, {"status": "ok", "engine": self._worker.engine.name})

        async def readyz() -> http.Response:
            ready = self.ready()
            return http.json_response(
                200 if ready else 503, {"ready": ready, "checks": self._worker.readiness()}
            )

        return {"/metrics": metrics, "/healthz": healthz, "/readyz": readyz}
