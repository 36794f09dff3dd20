"""Whisper passes of all local streams, cut to their audio and decoded together.

Two costs made a draft of a 2 s sentence as dear as a 30 s one, and each stream pay for it alone:

- faster-whisper pads every segment to Whisper's 30 s window before the encoder (362 ms of tiny.en on one
  thread, of a ~450 ms pass). CTranslate2's encoder takes any shorter window: a pass gets its audio and at
  least `WINDOW_PAD_S` of padding after it, in a window of at least its `window` seconds (10 s: 47 ms).
  A window fitted to the audio alone loses words (the model was trained on padded windows: clean WER
  27.4 % against 12.5 % over 40 clips with no floor); with a 10 s floor the WER is the 30 s window's
  (`bench/whisper_window.py`: 40 clips, clean to 5 dB), though not always its text (one LibriVox
  sentence reads "an old supposed young man" in a 10 s window). `[engines.local] draft_window` and
  `final_window` set the floors (10 s; 30 s gives faster-whisper's own text).
- Each pass ran on its own. `WhisperQueue` decodes the passes that are waiting together, one batched
  `generate`, finals before drafts.

`Decoder` is blocking (call it from a worker thread); `WhisperQueue` is the Trio side.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np
import trio

SAMPLE_RATE = 16000
# Silence after the audio in the encoder's window, and the window's floor (see the module's docstring).
WINDOW_PAD_S = 2.0
MAX_WINDOW_S = 30.0
# A pass writes at most this many tokens per second of audio, and this many more: read speech is ~4 a
# second, and the bound ends the repetition loops Whisper falls into on a short window (a 2 s draft once
# ran to 448 tokens, 0.9 s).
TOKENS_PER_SECOND = 6
EXTRA_TOKENS = 10
# faster-whisper's defaults: a pass the model thinks holds no speech, written with little confidence,
# is dropped (Whisper's "Thank you." on a cough), and its text too repetitive to be speech is dropped.
NO_SPEECH_THRESHOLD = 0.6
LOG_PROB_THRESHOLD = -1.0
COMPRESSION_RATIO_THRESHOLD = 2.4
# On a window cut to the audio Whisper writes "you" on silence with some confidence; what it is sure holds
# no speech is dropped whatever it wrote (2 s of silence: 0.99; the LibriVox and cards clips, clean and
# noisy down to 0 dB, whole and halved: at most 0.84).
NO_SPEECH_CERTAIN = 0.9


@attrs.frozen
class WhisperPass:
    """One decode: `pcm` with the session's hints; a final goes before every draft."""

    pcm: bytes
    beam_size: int
    final: bool
    # The encoder's window is at least this long (seconds; 30: Whisper's own, whatever the audio).
    window: float = MAX_WINDOW_S
    prompt: str | None = None
    hotwords: str | None = None
    # Word times need faster-whisper's alignment, which runs on the full window, one pass at a time.
    word_times: bool = False
    # Whisper's code of the language spoken (an English-only model has "en" only).
    language: str = "en"


@attrs.frozen
class Decoded:
    text: str
    # Each word as Whisper spells it (leading space included) with its start and end in seconds.
    words: tuple[tuple[str, float, float], ...] = ()


def whisper_words(
    model: Any,
    pcm: bytes,
    beam_size: int,
    prompt: str | None = None,
    *,
    word_times: bool = True,
    hotwords: str | None = None,
    language: str = "en",
) -> tuple[str, list[tuple[str, float, float]]]:
    """Whisper's text for `pcm`, and (with `word_times`) each word with its start and end in seconds;
    `hotwords` are phrases faster-whisper puts before the prompt, which steers the spelling of names."""
    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0
    segments, _info = model.transcribe(
        samples,
        language=language,
        beam_size=beam_size,
        vad_filter=False,
        condition_on_previous_text=False,
        without_timestamps=not word_times,
        word_timestamps=word_times,
        initial_prompt=prompt or None,
        hotwords=hotwords or None,
    )
    segments = list(segments)
    text = " ".join(segment.text.strip() for segment in segments).strip()
    # Each word as Whisper spells it, its leading space included ("ill", "-disposed"): joined, they give
    # the text back.
    words = [
        (word.word, float(word.start), float(word.end))
        for segment in segments
        for word in (segment.words or ())
        if word.word.strip()
    ]
    return text, words


def window_seconds(samples: int, floor: float) -> float:
    return min(MAX_WINDOW_S, max(floor, math.ceil(samples / SAMPLE_RATE + WINDOW_PAD_S)))


class Decoder:
    """Batched Whisper decoding on one faster-whisper `WhisperModel` (its CTranslate2 model underneath).
    Blocking: call it from a worker thread; several threads may call it at once."""

    def __init__(self, model: Any, languages: Sequence[str] = ("en",)) -> None:
        """`languages`: those passes may ask for; a code Whisper does not know raises ValueError."""
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        self._model = model
        self._tokenizers = {
            language: Tokenizer(
                model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=language
            )
            for language in languages
        }
        self._tokenizer = next(iter(self._tokenizers.values()))
        self._suppress = get_suppressed_tokens(self._tokenizer, [-1])

    def prompt(self, job: WhisperPass) -> list[int]:
        tokenizer = self._tokenizers[job.language]
        previous = tokenizer.encode(" " + job.prompt.strip()) if job.prompt else []
        tokens: list[int] = self._model.get_prompt(
            tokenizer, previous, without_timestamps=True, hotwords=job.hotwords
        )
        return tokens

    def decode(
        self, jobs: Sequence[WhisperPass], prompts: Sequence[list[int]] | None = None
    ) -> list[Decoded]:
        """The text of each pass. Passes with word times go one at a time through faster-whisper; the
        others in one batch, so they must share a beam size, a prompt length and a window (`batch_key`)."""
        if any(job.word_times for job in jobs):
            return [self._whole_window(job) for job in jobs]
        import ctranslate2

        if prompts is None:
            prompts = [self.prompt(job) for job in jobs]
        window = max(window_seconds(len(job.pcm) // 2, job.window) for job in jobs)
        features = np.stack([self._features(job.pcm, window) for job in jobs])
        encoded = self._model.model.encode(ctranslate2.StorageView.from_array(features), to_cpu=False)
        longest = max(len(job.pcm) // 2 for job in jobs) / SAMPLE_RATE
        max_length = min(
            self._model.max_length,
            max(len(prompt) for prompt in prompts) + math.ceil(longest * TOKENS_PER_SECOND) + EXTRA_TOKENS,
        )
        results = self._model.model.generate(
            encoded,
            prompts,
            beam_size=jobs[0].beam_size,
            max_length=max_length,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppress,
        )
        return [self._text(result) for result in results]

    def _whole_window(self, job: WhisperPass) -> Decoded:
        """A pass through faster-whisper's own pipeline (the 30 s window): the one that gives word times."""
        text, words = whisper_words(
            self._model, job.pcm, job.beam_size, job.prompt, hotwords=job.hotwords, language=job.language
        )
        return Decoded(text, tuple(words))

    def _features(self, pcm: bytes, window: float) -> np.ndarray:
        """The log-Mel features of `pcm`, padded with zeros to `window` as faster-whisper pads them (so
        that a 30 s window writes what its own pipeline writes)."""
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
        frames = round(window * 100)
        # faster-whisper leaves out the last frame (half of it is its own padding).
        features: np.ndarray = self._model.feature_extractor(samples)[:, :-1][:, :frames]
        return np.pad(features, ((0, 0), (0, frames - features.shape[1])))

    def _text(self, result: Any) -> Decoded:
        tokens = result.sequences_ids[0]
        text = self._tokenizer.decode(tokens).strip()
        average_log_prob = result.scores[0] * len(tokens) / (len(tokens) + 1)
        if result.no_speech_prob > NO_SPEECH_CERTAIN or (
            result.no_speech_prob > NO_SPEECH_THRESHOLD and average_log_prob < LOG_PROB_THRESHOLD
        ):
            return Decoded("")
        if text and len(text) / len(zlib.compress(text.encode())) > COMPRESSION_RATIO_THRESHOLD:
            return Decoded("")
        return Decoded(text)


def batch_key(job: WhisperPass, prompt: list[int]) -> tuple[object, ...]:
    """Passes with equal keys may share a `generate` call (CTranslate2 needs one beam size and the
    start-of-transcript token at one position in every prompt; one window floor keeps a draft's window
    from growing to a final's)."""
    if job.word_times:
        return (id(job),)
    return (job.beam_size, len(prompt), job.window)


class BatchFailed(RuntimeError):
    """The batch a pass was decoded in failed; each of its callers gets its own, caused by the failure."""


@attrs.frozen
class QueueStatistics:
    """What the queue holds now, and what it has decoded since it started (for /metrics)."""

    waiting: int = 0  # passes waiting for a slot
    slots_busy: int = 0  # callers holding a slot (decoding, or about to)
    passes: int = 0  # passes decoded
    batches: int = 0  # generate calls (a batch holds one pass or more)
    decode_seconds: float = 0.0  # wall time of those calls


@attrs.define(eq=False)
class _Waiting:
    job: WhisperPass
    prompt: list[int]  # its tokens, made once (the batch key needs their length)
    key: tuple[object, ...]
    order: int
    # Set when the caller has something new to look at: its result, or a slot.
    woken: trio.Event = attrs.field(factory=trio.Event)
    has_slot: bool = False
    result: Decoded | Exception | None = None


class WhisperQueue:
    """Whisper passes of every stream of the engine, decoded `slots` batches at a time.

    No task of its own: a caller with a slot decodes what is waiting — the oldest final's batch, else the
    oldest draft's — in a worker thread and hands each caller of the batch its result, until it has its
    own; then it hands its slot to a waiting caller (or frees it), who carries on. A caller whose pass is
    in another's batch gives its slot away and waits. A caller cancelled while its pass waits takes it
    out of the queue; a batch under way is not abandoned (its callers wait for it)."""

    def __init__(self, decoder: Decoder, slots: int, max_batch: int) -> None:
        self._decoder = decoder
        self._slots = slots
        self._max_batch = max_batch
        self._waiting: list[_Waiting] = []
        self._running = 0
        self._order = 0
        self._passes = 0
        self._batches = 0
        self._decode_seconds = 0.0

    def statistics(self) -> QueueStatistics:
        return QueueStatistics(
            len(self._waiting), self._running, self._passes, self._batches, self._decode_seconds
        )

    async def decode(self, job: WhisperPass) -> Decoded:
        self._order += 1
        prompt = self._decoder.prompt(job)
        waiting = _Waiting(job, prompt, batch_key(job, prompt), self._order)
        self._waiting.append(waiting)
        if self._running < self._slots:
            self._running += 1
            waiting.has_slot = True
        try:
            while waiting.result is None:
                if waiting.has_slot:
                    if waiting in self._waiting:
                        await self._decode_next_batch()
                        continue
                    # Another caller's batch holds this pass: the slot goes where it can be used.
                    waiting.has_slot = False
                    self._hand_on()
                waiting.woken = trio.Event()
                await waiting.woken.wait()
        finally:
            if waiting in self._waiting:
                self._waiting.remove(waiting)
            if waiting.has_slot:
                self._hand_on()
        if isinstance(waiting.result, Exception):
            # One exception object is not raised in several tasks (their tracebacks would mix).
            raise BatchFailed(str(waiting.result)) from waiting.result
        return waiting.result

    async def _decode_next_batch(self) -> None:
        # Cancelled here, nothing has been taken from the queue.
        await trio.lowlevel.checkpoint_if_cancelled()
        first = min(self._waiting, key=lambda waiting: (not waiting.job.final, waiting.order))
        batch = [waiting for waiting in self._waiting if waiting.key == first.key][: self._max_batch]
        for waiting in batch:
            self._waiting.remove(waiting)
        began = time.perf_counter()
        try:
            # Not abandoned on cancel: the batch's other callers wait for what it computes.
            results: list[Decoded] | Exception = await trio.to_thread.run_sync(
                self._decoder.decode,
                [waiting.job for waiting in batch],
                [waiting.prompt for waiting in batch],
            )
        except Exception as exc:  # every caller of the batch gets the failure, to convert or report
            results = exc
        self._decode_seconds += time.perf_counter() - began
        self._batches += 1
        self._passes += len(batch)
        for index, waiting in enumerate(batch):
            waiting.result = results if isinstance(results, Exception) else results[index]
            waiting.woken.set()

    def _hand_on(self) -> None:
        # Any waiting caller will do: the one that runs next picks by priority, not by who it is.
        for waiting in self._waiting:
            if not waiting.has_slot:
                waiting.has_slot = True
                waiting.woken.set()
                return
        self._running -= 1
