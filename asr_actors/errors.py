"""Failures of what the gateway depends on, as every store and bus reports them.

A dependency's own exceptions (coredis, sockets, SQLite) are converted into `DependencyUnavailable` once,
where the dependency is called (`redis_client.py`), as httpcore's `map_exceptions` does; only the session
and the HTTP front turn it into what a client is told (503 with the reason).
"""

from __future__ import annotations


class DependencyUnavailable(Exception):
    """A service the gateway needs (Redis) did not answer; the message says which and why."""
