"""Child processes, as `serve --workers` runs them: read what one prints, stop one cleanly."""

from __future__ import annotations

import trio


async def read_line(process: trio.Process, pending: bytearray) -> str:
    """The next line the child prints; `pending` keeps what was read past it, for the next call."""
    assert process.stdout is not None
    while b"\n" not in pending:
        chunk = await process.stdout.receive_some()
        if not chunk:
            raise RuntimeError(f"{process.args!r} exited with {await process.wait()}")
        pending += chunk
    line, _, rest = bytes(pending).partition(b"\n")
    pending[:] = rest
    return line.decode()


async def stop(process: trio.Process, grace_s: float = 10) -> None:
    """SIGTERM, and SIGKILL if the process has not exited after `grace_s`; always reaped."""
    with trio.CancelScope(shield=True):
        process.terminate()
        with trio.move_on_after(grace_s):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
