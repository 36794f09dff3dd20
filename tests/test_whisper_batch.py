"""The local engine's Whisper queue: passes of all streams batched, finals first, nothing lost or stuck.

The queue's tests use a stand-in decoder (a gate the test opens decides when a batch ends: no model is
needed to test the scheduling); the decoder's own tests run real Whisper tiny.en. The threads make these
real-clock tests, each with an absolute `fail_after`.
"""

from __future__ import annotations

import threading

import pytest
import trio

from asr_actors.engines.local import load_whisper
from asr_actors.engines.whisper_batch import (
    BatchFailed,
    Decoded,
    Decoder,
    QueueStatistics,
    WhisperPass,
    WhisperQueue,
    whisper_words,
    window_seconds,
)
from asr_actors.testing.speech import librivox
from asr_actors.testing.textnorm import normalize

GUARD_S = 30


class GatedDecoder:
    """Decodes a pass to its pcm's text once the test opens the gate; records each batch."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        # started[i] is set when batch i begins.
        self.started = [trio.Event() for _ in range(8)]
        self.gate = threading.Semaphore(0)
        self.failure: Exception | None = None

    def prompt(self, job: WhisperPass) -> list[int]:
        return [0] * len((job.prompt or "").split())

    def decode(self, jobs: list[WhisperPass], prompts: list[list[int]]) -> list[Decoded]:
        assert prompts == [self.prompt(job) for job in jobs]
        self.batches.append([job.pcm.decode() for job in jobs])
        trio.from_thread.run_sync(self.started[len(self.batches) - 1].set)
        self.gate.acquire()
        if self.failure is not None:
            raise self.failure
        return [Decoded(job.pcm.decode()) for job in jobs]


def draft(name: str) -> WhisperPass:
    return WhisperPass(name.encode(), 1, final=False)


def final(name: str) -> WhisperPass:
    return WhisperPass(name.encode(), 5, final=True)


async def started_batches(decoder: GatedDecoder, count: int) -> None:
    await decoder.started[count - 1].wait()


async def behind_a_busy_slot(max_batch: int, *jobs: WhisperPass) -> tuple[list[list[str]], dict[str, str]]:
    """One slot: the first pass runs, the others arrive while it does; then every batch may end. The
    batches in the order they ran, and each pass's text."""
    decoder = GatedDecoder()
    queue = WhisperQueue(decoder, slots=1, max_batch=max_batch)  # type: ignore[arg-type]
    results: dict[str, str] = {}

    async def ask(job: WhisperPass) -> None:
        results[job.pcm.decode()] = (await queue.decode(job)).text

    first, *others = jobs
    with trio.fail_after(GUARD_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask, first)
            await started_batches(decoder, 1)
            for job in others:
                nursery.start_soon(ask, job)
                await trio.sleep(0.01)  # it waits in the queue before the next arrives
            for _ in jobs:
                decoder.gate.release()
    return decoder.batches, results


async def test_waiting_passes_share_a_batch_and_finals_go_first() -> None:
    batches, results = await behind_a_busy_slot(
        8, draft("a"), draft("b"), final("f1"), draft("c"), final("f2")
    )
    assert batches == [["a"], ["f1", "f2"], ["b", "c"]]
    assert results == {name: name for name in ("a", "b", "c", "f1", "f2")}


async def test_a_batch_takes_passes_of_one_shape_only() -> None:
    """One beam size and one prompt length per generate call (CTranslate2's rule), up to max_batch."""
    prompted = WhisperPass(b"p", 1, final=False, prompt="two words")
    batches, _ = await behind_a_busy_slot(2, draft("a"), draft("b"), prompted, draft("c"), draft("d"))
    assert batches == [["a"], ["b", "c"], ["p"], ["d"]]


async def test_the_queue_counts_what_it_decodes() -> None:
    """Its statistics (the local engine's /metrics): waiting passes and busy slots now, passes, batches
    and decode time since it started."""
    decoder = GatedDecoder()
    queue = WhisperQueue(decoder, slots=1, max_batch=8)  # type: ignore[arg-type]
    assert queue.statistics() == QueueStatistics()
    with trio.fail_after(GUARD_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(queue.decode, draft("a"))
            await started_batches(decoder, 1)
            nursery.start_soon(queue.decode, draft("b"))
            nursery.start_soon(queue.decode, draft("c"))
            await trio.sleep(0.01)
            busy = queue.statistics()
            decoder.gate.release()
            decoder.gate.release()
    assert (busy.waiting, busy.slots_busy, busy.passes, busy.batches) == (2, 1, 0, 0)
    done = queue.statistics()
    assert (done.waiting, done.slots_busy, done.passes, done.batches) == (0, 0, 3, 2)
    assert done.decode_seconds > 0


async def test_two_slots_decode_two_batches_at_once() -> None:
    decoder = GatedDecoder()
    queue = WhisperQueue(decoder, slots=2, max_batch=8)  # type: ignore[arg-type]
    with trio.fail_after(GUARD_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(queue.decode, draft("a"))
            await started_batches(decoder, 1)
            nursery.start_soon(queue.decode, final("f"))
            await started_batches(decoder, 2)
            decoder.gate.release()
            decoder.gate.release()
    assert decoder.batches == [["a"], ["f"]]


async def test_a_cancelled_pass_leaves_the_queue_and_its_slot_goes_on() -> None:
    decoder = GatedDecoder()
    queue = WhisperQueue(decoder, slots=1, max_batch=8)  # type: ignore[arg-type]
    with trio.fail_after(GUARD_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(queue.decode, draft("a"))
            await started_batches(decoder, 1)
            with trio.move_on_after(0.05):
                await queue.decode(draft("gone"))
            decoder.gate.release()
        # The slot was freed: a later pass runs at once.
        decoder.gate.release()
        assert (await queue.decode(final("later"))).text == "later"
    assert decoder.batches == [["a"], ["later"]]


async def test_a_cancelled_runner_still_hands_its_batch_their_results() -> None:
    """The caller whose slot decodes a batch is cancelled mid-batch: the batch is not abandoned and
    every caller in it gets its result."""
    decoder = GatedDecoder()
    queue = WhisperQueue(decoder, slots=1, max_batch=8)  # type: ignore[arg-type]
    results: list[str] = []

    async def ask(job: WhisperPass, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            results.append((await queue.decode(job)).text)

    with trio.fail_after(GUARD_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(ask, draft("a"))
            await started_batches(decoder, 1)
            runner = await nursery.start(ask, draft("b"))  # gets the slot when "a" is done
            await nursery.start(ask, draft("c"))
            await trio.sleep(0.01)
            decoder.gate.release()
            await started_batches(decoder, 2)
            runner.cancel()
            await trio.sleep(0.01)
            decoder.gate.release()
    assert decoder.batches == [["a"], ["b", "c"]]
    # "b" was cancelled while its batch ran: the batch ran to its end, and every caller got its result.
    assert sorted(results) == ["a", "b", "c"]


async def test_a_failure_reaches_every_caller_of_the_batch() -> None:
    """Each caller of a failed batch gets an exception of its own (one object raised in two tasks would
    mix their tracebacks), caused by the decoder's."""
    decoder = GatedDecoder()
    queue = WhisperQueue(decoder, slots=1, max_batch=8)  # type: ignore[arg-type]
    failures: list[str] = []
    raised: list[BatchFailed] = []

    async def ask(job: WhisperPass) -> None:
        try:
            await queue.decode(job)
        except BatchFailed as exc:
            failures.append(f"{job.pcm.decode()}: {exc}")
            raised.append(exc)

    with trio.fail_after(GUARD_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask, draft("a"))
            await started_batches(decoder, 1)
            nursery.start_soon(ask, draft("b"))
            nursery.start_soon(ask, draft("c"))
            await trio.sleep(0.01)
            decoder.gate.release()
            await started_batches(decoder, 2)
            decoder.failure = RuntimeError("out of memory")
            decoder.gate.release()
    assert sorted(failures) == ["b: out of memory", "c: out of memory"]
    assert raised[0] is not raised[1]
    assert raised[0].__cause__ is raised[1].__cause__ is decoder.failure


def test_the_window_fits_the_audio_with_room_after_it() -> None:
    assert window_seconds(16000, 10) == 10
    assert window_seconds(16000 * 9, 10) == 11
    assert window_seconds(16000 * 40, 10) == 30
    assert window_seconds(16000, 30) == 30


@pytest.fixture(scope="module")
def whisper() -> object:
    return load_whisper()


def test_a_batch_writes_what_each_pass_alone_writes(whisper: object) -> None:
    """Real Whisper: two LibriVox sentences of different lengths decoded together give each the text
    it gets alone, and the text of faster-whisper's own 30 s pipeline."""
    pcm, _ = librivox(pause_s=0)
    first, second = pcm[: 16000 * 2 * 4], pcm[16000 * 2 * 5 : 16000 * 2 * 7]
    decoder = Decoder(whisper)
    jobs = [WhisperPass(first, 5, final=True), WhisperPass(second, 5, final=True)]
    # The 30 s window (finals' default) writes what faster-whisper's pipeline writes.
    together = decoder.decode(jobs)
    alone = [decoder.decode([job])[0] for job in jobs]
    assert together == alone
    for job, decoded in zip(jobs, together, strict=True):
        reference, _ = whisper_words(whisper, job.pcm, 5, word_times=False)
        assert normalize(decoded.text) == normalize(reference)


def test_silence_writes_nothing(whisper: object) -> None:
    decoder = Decoder(whisper)
    assert decoder.decode([WhisperPass(bytes(16000 * 2 * 2), 1, final=False, window=10)]) == [Decoded("")]
