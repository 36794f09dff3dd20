"""`serve --workers K`: K gateway processes on one port (SO_REUSEPORT), so that a host's cores are used.

The parent fixes the port (binding, without listening, a SO_REUSEPORT socket when the port is 0), starts K
`serve --reuse-port` children, prints one URL when every child listens, and forwards SIGTERM/SIGINT so that
every child drains. If one child dies the parent stops the others and exits non-zero: a supervisor
(systemd) restarts the whole set, rather than running on silently with fewer processes.

Only on the Redis bus: single-use links, app limits and routes must be shared by every process, and the
Redis bus is where they are shared (the embedded bus keeps them per process).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence

import trio

from asr_actors.backend import DEMO_SECRET_ENV
from asr_actors.config import Config, ConfigError
from asr_actors.processes import read_line, stop

CHILD_STARTUP_TIMEOUT = 120
# Seconds a child has to exit after its own drain_timeout (closing, keeping records) before it is killed.
CHILD_EXIT_GRACE_S = 5


def _reserve_port(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    reserved = socket.socket(family, socket.SOCK_STREAM)
    reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reserved.bind((host, port))
    return reserved


async def serve_processes(config: Config, count: int, child_arguments: Sequence[str]) -> int:
    """Run `count` gateway processes; `child_arguments` are the serve options each child gets."""
    if config.bus.kind != "redis":
        raise ConfigError(
            'serve --workers needs [bus] kind = "redis": links must be single-use across processes'
        )
    host = config.server.host
    with _reserve_port(host, config.server.port) as reserved:
        port = reserved.getsockname()[1]
        environment = {
            **os.environ,
            DEMO_SECRET_ENV: os.environ.get(DEMO_SECRET_ENV) or secrets.token_urlsafe(32),
        }
        arguments = [
            sys.executable,
            "-m",
            "asr_actors",
            "serve",
            *child_arguments,
            "--host",
            host,
            "--port",
            str(port),
            "--reuse-port",
        ]
        children: list[trio.Process] = []
        metrics_port = config.server.metrics_port
        try:
            for index in range(count):
                # Each process's own metrics port, so that a scrape reaches every process.
                own = ["--metrics-port", str(metrics_port + index)] if metrics_port else []
                child = await trio.lowlevel.open_process(
                    [*arguments, *own], stdout=subprocess.PIPE, env=environment
                )
                children.append(child)
            with trio.fail_after(CHILD_STARTUP_TIMEOUT):
                for child in children:
                    try:
                        await read_line(child, bytearray())
                    except RuntimeError as exc:
                        raise ConfigError(f"a gateway process did not start: {exc}") from None
            shown_host = f"[{host}]" if ":" in host else host
            print(
                f"asr-actors is listening: open http://{shown_host}:{port}/ ({count} processes)", flush=True
            )
            return await _supervise(children)
        finally:
            for child in children:
                await stop(child, grace_s=config.server.drain_timeout + CHILD_EXIT_GRACE_S)


async def _supervise(children: list[trio.Process]) -> int:
    """Until a signal (forwarded: every child drains) or a child's death (the caller stops the others)."""
    died: list[int] = []
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as watchers:

            async def watch(child: trio.Process) -> None:
                died.append(await child.wait())
                watchers.cancel_scope.cancel()

            for child in children:
                watchers.start_soon(watch, child)
            async for received in signals:
                watchers.cancel_scope.cancel()
                for child in children:
                    child.send_signal(received)
                break
    if died:
        print(f"a gateway process exited with {died[0]}; stopping the others", file=sys.stderr)
        return 1
    # Every child drains on its own; the set ends when the last one has.
    for child in children:
        await child.wait()
    return 0
