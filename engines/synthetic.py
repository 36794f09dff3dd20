"""The synthetic engine: no decoding cost, so that a benchmark measures the gateway and the bus, not a model.

It emits a partial every `partial_frames` audio frames and ends a sentence every `final_frames` frames,
with deterministic text: ``s<sentence> f<frames received>``.

Benchmark clients stamp each frame's first bytes (`stamp`): a magic, the frame's number in its stream
and the time it was sent. For stamped streams each event's text carries, after ``|``, the time the event
was emitted, the client→engine delay of every frame since the previous event, and the count of frames
missing from the numbering (`Timing`), so that a client can measure both directions of added latency
through any bus and any server that speaks the protocol. The core (`SyntheticScript`) is sans-IO: the
Trio engine below and the benchmark's asyncio reference relay run the very same code.
"""

from __future__ import annotations

import struct
import time

import attrs
import trio

from asr_actors.engines.base import (
    EngineEvent,
    Final,
    Partial,
    StreamSpec,
    UnsupportedStream,
    refuse_unhonoured,
)

MAGIC = b"SYNB"
_STAMP = struct.Struct("<4sIQ")  # magic, frame number, time.time_ns() when sent
STAMP_BYTES = _STAMP.size


def stamp(frame: bytearray, number: int, sent_ns: int) -> None:
    """Write the stamp into the first bytes of a PCM frame (the benchmark's audio carries no speech)."""
    _STAMP.pack_into(frame, 0, MAGIC, number, sent_ns)


@attrs.frozen
class Timing:
    """What a stamped event tells a benchmark client."""

    emitted_ns: int
    uplink_us: tuple[int, ...]
    missing_frames: int

    @classmethod
    def parse(cls, text: str) -> Timing | None:
        _words, bar, timing = text.partition("|")
        if not bar:
            return None
        emitted, uplinks, missing = timing.split(" ")
        return cls(int(emitted), tuple(int(u) for u in uplinks.split(",") if u), int(missing))


@attrs.define
class SyntheticScript:
    """One stream's script: feed it frames, get at most one event per frame."""

    partial_frames: int
    final_frames: int
    sample_rate: int
    frames: int = 0
    audio_bytes: int = 0
    sentence: int = 0
    sentence_frames: int = 0
    sentence_start_bytes: int = 0
    missing_frames: int = 0
    next_number: int = 0
    stamped: bool = False
    uplinks_us: list[int] = attrs.field(factory=list)

    def feed(self, frame: bytes, now_ns: int) -> Partial | Final | None:
        self.frames += 1
        self.sentence_frames += 1
        self.audio_bytes += len(frame)
        if len(frame) >= STAMP_BYTES and frame.startswith(MAGIC):
            _magic, number, sent_ns = _STAMP.unpack_from(frame)
            self.stamped = True
            self.missing_frames += max(0, number - self.next_number)
            self.next_number = number + 1
            self.uplinks_us.append((now_ns - sent_ns) // 1000)
        if self.sentence_frames >= self.final_frames:
            return self._final(now_ns)
        if self.sentence_frames % self.partial_frames == 0:
            return Partial(self._text(now_ns), *self._span())
        return None

    def flush(self, now_ns: int) -> Final | None:
        """The end of the audio: the unfinished sentence, if any, becomes a final."""
        return self._final(now_ns) if self.sentence_frames else None

    def _final(self, now_ns: int) -> Final:
        final = Final(self._text(now_ns), *self._span())
        self.sentence += 1
        self.sentence_frames = 0
        self.sentence_start_bytes = self.audio_bytes
        return final

    def _span(self) -> tuple[int, int]:
        bytes_per_ms = self.sample_rate * 2 / 1000
        return round(self.sentence_start_bytes / bytes_per_ms), round(self.audio_bytes / bytes_per_ms)

    def _text(self, now_ns: int) -> str:
        words = f"s{self.sentence} f{self.frames}"
        if not self.stamped:
            return words
        uplinks = ",".join(map(str, self.uplinks_us))
        self.uplinks_us.clear()
        return f"{words}|{now_ns} {uplinks} {self.missing_frames}"


class SyntheticEngine:
    name = "synthetic"
    options: frozenset[str] = frozenset()

    def __init__(self, *, partial_frames: int, final_frames: int, max_streams: int) -> None:
        self.partial_frames = partial_frames
        self.final_frames = final_frames
        self.max_streams = max_streams

    async def prepare(self) -> None:
        return

    def check(self, spec: StreamSpec) -> None:
        if spec.sample_rate <= 0:
            raise UnsupportedStream(f"sample rate {spec.sample_rate} Hz")
        refuse_unhonoured(spec, self.name, self.options)

    async def run_stream(
        self,
        spec: StreamSpec,
        audio: trio.MemoryReceiveChannel[bytes],
        events: trio.MemorySendChannel[EngineEvent],
    ) -> None:
        script = SyntheticScript(self.partial_frames, self.final_frames, spec.sample_rate)
        async with events:
            async for frame in audio:
                event = script.feed(frame, time.time_ns())
                if event is not None:
                    await events.send(event)
            last = script.flush(time.time_ns())
            if last is not None:
                await events.send(last)
