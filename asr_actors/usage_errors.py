"""What went wrong for the person at the command line, in one line: the problem and what to do about it.

A bad config, a busy port, a server or Redis that is not there are the user's to fix, not bugs: the
command prints one line and exits 2 (usage or configuration) or 1 (a failure at run time). Anything not
recognised here is a bug and keeps its traceback. Exceptions arrive as Trio raised them, often inside
exception groups: the first leaf that is recognised speaks for the whole.
"""

from __future__ import annotations

import errno

import attrs

from asr_actors.config import ConfigError
from asr_actors.engines.base import EngineUnavailable
from asr_actors.errors import DependencyUnavailable
from asr_actors.groups import leaves

USAGE = 2
RUNTIME = 1
# What `bench` needs beyond the server: the `bench` extra.
BENCH_EXTRA = frozenset({"psutil", "websockets", "matplotlib"})


@attrs.frozen
class UsageError:
    message: str
    exit_code: int


def explain(exc: BaseException, command: str) -> UsageError | None:
    """The one line for `exc`, or None if it is not the user's to fix (a bug: keep the traceback)."""
    for leaf in leaves(exc):
        explained = _explain_one(leaf, command)
        if explained is not None:
            return explained
    return None


def _explain_one(exc: BaseException, command: str) -> UsageError | None:  # noqa: PLR0911 -- a return per kind
    if isinstance(exc, ConfigError):
        return UsageError(f"config error: {exc}", USAGE)
    if isinstance(exc, ModuleNotFoundError) and command == "bench" and exc.name in BENCH_EXTRA:
        return UsageError(f"needs {exc.name}: pip install 'asr-actors[bench]'", USAGE)
    if isinstance(exc, EngineUnavailable):
        return UsageError(f"the engine cannot run: {exc}", RUNTIME)
    if _is_redis_error(exc):
        return UsageError(f"cannot reach Redis: {exc} (is redis-server running at [bus] url?)", RUNTIME)
    if isinstance(exc, DependencyUnavailable):
        return UsageError(f"{exc} (is redis-server running at [bus] url?)", RUNTIME)
    if isinstance(exc, OSError):
        if exc.errno == errno.EADDRINUSE:
            return UsageError(
                "cannot listen: the address is already in use (another process has the port: choose "
                "another with --port, or stop that process)",
                RUNTIME,
            )
        if command in ("transcribe", "conformance", "bench"):
            return UsageError(f"cannot connect: {exc} (is the server running there?)", RUNTIME)
    return None


def _is_redis_error(exc: BaseException) -> bool:
    # Recognised by its module, so that a command that never needed Redis does not import its client.
    return type(exc).__module__ == "asr_actors.redis_client"
