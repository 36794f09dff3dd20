"""The idle watch: ends the session when no audio has come for `idle_timeout`.

The receiver notes each audio frame's arrival (`Idle.heard`: one attribute set); this task sleeps until the
deadline that leaves, and when it wakes with no audio since, ends the session: 408, or 500 if the receiver
was waiting for the engine to take audio (then the engine stalled, not the client). It wakes once per idle
period of a streaming session. The alternative, a cancel scope around the receiver whose deadline moves on
every frame, costs a deadline change in Trio's run loop per frame (docs/performance.md).
"""

from __future__ import annotations

import attrs
import trio

from asr_actors.protocol import ENGINE_STALLED, IDLE, ErrorCode, ProtocolError


@attrs.define(eq=False)
class Idle:
    """When the session times out if no more audio comes; the receiver moves it and stops the watch."""

    timeout: float
    deadline: float
    # True while a frame waits for room in the engine's channel: a timeout then is the engine's fault.
    waiting_for_engine: bool = False
    # The watch's scope, cancelled by `stop`.
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)

    def heard(self, now: float) -> None:
        self.deadline = now + self.timeout

    def stop(self) -> None:
        """The client's audio has ended: from here the flush deadline governs."""
        self.scope.cancel()

    def timed_out(self) -> ProtocolError:
        if self.waiting_for_engine:
            return ProtocolError(ErrorCode.ENGINE_FAILURE, ENGINE_STALLED)
        return ProtocolError(ErrorCode.TIMEOUT, IDLE)


async def run(idle: Idle, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    task_status.started()
    with idle.scope:
        while True:
            await trio.sleep_until(idle.deadline)
            if trio.current_time() >= idle.deadline:
                raise idle.timed_out()
