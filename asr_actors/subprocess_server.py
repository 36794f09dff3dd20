"""Run a real `python -m asr_actors serve` on a free port, as a user would: for tests and benchmarks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import trio

STARTUP_TIMEOUT = 120


@asynccontextmanager
async def running_server(
    config_path: Path, env: Mapping[str, str] | None = None
) -> AsyncIterator[tuple[str, trio.Process]]:
    """Start the gateway with `config_path` on a free port; yield its http:// URL and process; stop it after.

    `env` replaces the environment variables it names (an empty value removes one).
    """
    environment = {**os.environ, **(env or {})}
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "asr_actors", "serve", "--config", str(config_path), "--port", "0"],
        stdout=subprocess.PIPE,
        env={name: value for name, value in environment.items() if value},
    )
    assert process.stdout is not None
    try:
        printed = b""
        with trio.fail_after(STARTUP_TIMEOUT):
            while b"\n" not in printed:
                chunk = await process.stdout.receive_some()
                if not chunk:
                    raise RuntimeError(f"server exited with {await process.wait()} before listening")
                printed += chunk
        match = re.search(rb"open (http://\S+)", printed)
        assert match is not None, printed
        yield match.group(1).decode(), process
    finally:
        await stop(process)
        await process.stdout.aclose()


async def stop(process: trio.Process, grace_s: float = 10) -> None:
    """SIGTERM, and SIGKILL if the process has not exited after `grace_s`; always reaped."""
    with trio.CancelScope(shield=True):
        process.terminate()
        with trio.move_on_after(grace_s):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
