"""A real redis-server on a free loopback port, started and stopped by its user (tests, the benchmark)."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import trio

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
STARTUP_TIMEOUT = 20


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@attrs.define
class RedisServer:
    port: int
    folder: Path
    process: trio.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.process = await trio.lowlevel.open_process(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
        )
        with trio.fail_after(STARTUP_TIMEOUT):
            while not await self._answers():  # noqa: ASYNC110 -- another process gives no event to wait on
                await trio.sleep(0.05)

    async def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            with trio.CancelScope(shield=True):
                await self.process.wait()
            self.process = None

    async def _answers(self) -> bool:
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        except OSError:
            return False
        async with stream:
            await stream.send_all(b"PING\r\n")
            return (await stream.receive_some()).startswith(b"+PONG")


@asynccontextmanager
async def redis_server(folder: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(free_port(), folder)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
