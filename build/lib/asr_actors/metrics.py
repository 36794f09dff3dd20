"""Prometheus metrics of one gateway process, served at /metrics (each gateway has its own registry)."""

from __future__ import annotations

from collections.abc import Callable

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.sessions_active = Gauge("asr_sessions_active", "Sessions running now", registry=self.registry)
        self.sessions = Counter(
            "asr_sessions", "Sessions ended, by outcome", ["outcome"], registry=self.registry
        )
        self.errors = Counter(
            "asr_session_errors", "Sessions ended with an error, by code", ["code"], registry=self.registry
        )
        self.audio_seconds = Counter("asr_audio_seconds", "Seconds of audio received", registry=self.registry)
        self.duration = Histogram(
            "asr_session_duration_seconds",
            "Session lengths",
            buckets=(1, 5, 15, 30, 60, 120, 300, 900, 1800, 3600),
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
        """A gauge read at scrape time (bus counters, engine availability)."""
        Gauge(name, documentation, registry=self.registry).set_function(read)

    def exposition(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)
