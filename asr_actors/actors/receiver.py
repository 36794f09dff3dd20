"""The receiver actor: reads client messages, decodes them, sends audio on (at the engines' 16 kHz, whatever
rate the client sends) and answers pings.

Readiness (`task_status.started`) carries the stream's language and rate, known once the first audio
frame arrives; the supervisor then opens the engine. Only the receiver sees audio arrive: it moves the idle
deadline (`actors/idle.py`) on each audio frame (pings do not move it) and stops the idle watch when the
client's audio ends.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from asr_actors.actors.idle import Idle
from asr_actors.audio import ENGINE_RATE, Resampler
from asr_actors.limits import AudioAllowance
from asr_actors.protocol import (
    AudioReceived,
    Decoder,
    PingReceived,
    Pong,
    Reply,
    ServerEvent,
    StreamOpened,
)
from asr_actors.records import SessionLedger
from asr_actors.transport import Transport


class _AudioPath:
    """The session's audio on its way to the engine: counted against the ledger and the allowance,
    converted to the engines' rate, handed on."""

    def __init__(
        self,
        channel: trio.MemorySendChannel[bytes],
        ledger: SessionLedger,
        allowance: AudioAllowance | None,
        idle: Idle,
    ) -> None:
        self._channel = channel
        self._ledger = ledger
        self._allowance = allowance
        self._allowed_bytes = float("inf")
        # The client's rate converted to the engines' (every engine takes 16 kHz): one resampler per
        # stream, so that its filter carries across frames.
        self._resampler: Resampler | None = None
        # Once the engine stream has ended (a failure, which its events report) further audio is dropped.
        self._engine_listening = True
        self._idle = idle

    def opened(self, event: StreamOpened) -> StreamOpened:
        """The stream as the engine sees it."""
        if event.sample_rate != ENGINE_RATE:
            self._resampler = Resampler(event.sample_rate, ENGINE_RATE)
            event = StreamOpened(event.language, ENGINE_RATE)
        if self._allowance is not None:
            self._allowed_bytes = self._allowance.seconds * 2 * event.sample_rate
        return event

    def deliver(self, pcm: bytes, now: float) -> bytes | None:
        """Count the audio, convert it, and put it in the engine's channel without a wait (a frame's path
        costs neither a coroutine nor a trip through the scheduler); what the full channel did not take
        is returned, for `wait_for_engine`."""
        if self._resampler is not None:
            pcm = self._resampler.feed(pcm)
        return self._deliver_now(pcm, now)

    async def end(self) -> None:
        if self._resampler is not None:
            pending = self._deliver_now(self._resampler.flush(), trio.current_time())
            if pending is not None:
                await self.wait_for_engine(pending)

    def _deliver_now(self, pcm: bytes, now: float) -> bytes | None:
        self._ledger.heard(len(pcm), now)
        if self._ledger.audio_bytes > self._allowed_bytes and self._allowance is not None:
            raise self._allowance.exceeded
        if self._engine_listening and pcm:
            try:
                self._channel.send_nowait(pcm)
            except trio.WouldBlock:
                return pcm
            except trio.BrokenResourceError:
                self._engine_listening = False
        return None

    async def wait_for_engine(self, pcm: bytes) -> None:
        self._idle.waiting_for_engine = True
        try:
            await self._channel.send(pcm)
        except trio.BrokenResourceError:
            self._engine_listening = False
        self._idle.waiting_for_engine = False


async def run(
    connection: Transport,
    decoder: Decoder,
    first_message: str | bytes,
    idle: Idle,
    audio: trio.MemorySendChannel[bytes],
    outbound: trio.MemorySendChannel[ServerEvent],
    ledger: SessionLedger,
    audio_ended: Callable[[], None],
    allowance: AudioAllowance | None,
    *,
    task_status: trio.TaskStatus[StreamOpened] = trio.TASK_STATUS_IGNORED,
) -> None:
    """`first_message` is the client's first, read by the supervisor; `idle` is moved by each audio frame
    and stopped once the audio has ended. `audio_ended` is called once the client has ended its audio (it
    starts the engine's flush); `allowance` is the audio its app may still send today (None: unlimited)."""
    async with audio, outbound:
        path = _AudioPath(audio, ledger, allowance, idle)
        message = first_message
        while True:
            for event in decoder.receive(message):
                if isinstance(event, AudioReceived):
                    now = trio.current_time()
                    idle.heard(now)
                    pending = path.deliver(event.pcm, now)
                    if pending is not None:
                        await path.wait_for_engine(pending)
                elif isinstance(event, StreamOpened):
                    task_status.started(path.opened(event))
                elif isinstance(event, PingReceived):
                    await outbound.send(Pong())
                elif isinstance(event, Reply):
                    await outbound.send(event)
            if decoder.ended:
                break
            message = await connection.get_message()
        await path.end()
        idle.stop()
        audio_ended()
