"""Run a real `python -m asr_actors serve` on a free port, as a user would: for tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from asr_actors.processes import read_line, stop

STARTUP_TIMEOUT = 120


@asynccontextmanager
async def running_server(
    config_path: Path,
    env: Mapping[str, str] | None = None,
    arguments: Sequence[str] = (),
    log: Path | None = None,
) -> AsyncIterator[tuple[str, trio.Process]]:
    """Start the gateway with `config_path` on a free port; yield its http:// URL and process; stop it after.

    `env` replaces the environment variables it names (an empty value removes one); `arguments` are more
    `serve` options; `log` receives the server's stderr (default: this process's).
    """
    environment = {**os.environ, **(env or {})}
    with log.open("ab") if log else contextlib.nullcontext() as errors:
        process = await trio.lowlevel.open_process(
            [
                sys.executable,
                "-m",
                "asr_actors",
                "serve",
                "--config",
                str(config_path),
                "--port",
                "0",
                *arguments,
            ],
            stdout=subprocess.PIPE,
            stderr=errors,
            env={name: value for name, value in environment.items() if value},
        )
    assert process.stdout is not None
    try:
        with trio.fail_after(STARTUP_TIMEOUT):
            first = await read_line(process, bytearray())
        match = re.search(r"open (http://\S+)", first)
        assert match is not None, first
        yield match.group(1), process
    finally:
        await stop(process)
        await process.stdout.aclose()
