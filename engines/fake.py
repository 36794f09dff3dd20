"""A scripted engine for tests: deterministic text, no model, no threads (safe under MockClock).

It "hears" one word per `partial_bytes` of audio and ends a sentence every `sentence_bytes`; word k of a
stream is `w<k>`, so a test can tell exactly which audio produced which text and whether any was lost.
Failure switches reproduce the engine faults the gateway must survive.
"""

from __future__ import annotations

import trio

from asr_actors.engines.base import EngineError, EngineEvent, Final, Partial, StreamSpec, UnsupportedStream


class FakeEngine:
    name = "fake"
    # Every option, kept in `specs` so that tests can see what reached the engine.
    options = frozenset(
        {"hotwords", "prompt", "words", "punctuation", "language_hints"}
        | {"dashscope.vocabulary_id", "dashscope.disfluency_removal", "iflytek.pd"}
    )

    def __init__(
        self,
        *,
        partial_bytes: int = 3200,
        sentence_bytes: int = 32000,
        languages: frozenset[str] = frozenset({"en", "zh"}),
        fail_after_bytes: int | None = None,
        hang_on_finish: bool = False,
        max_streams: int = 64,
        fault_languages: frozenset[str] | None = None,
        stall_after_bytes: int | None = None,
    ) -> None:
        """`fault_languages`: the failure switches apply to streams in these languages only (all if None),
        so that one gateway can hold faulty and healthy sessions side by side."""
        self.partial_bytes = partial_bytes
        self.sentence_bytes = sentence_bytes
        self.languages = languages
        self.fail_after_bytes = fail_after_bytes
        self.hang_on_finish = hang_on_finish
        self.max_streams = max_streams
        self.fault_languages = fault_languages
        # Stops taking audio (and saying anything) after this much: an engine hung mid-stream.
        self.stall_after_bytes = stall_after_bytes
        self.streams_started = 0
        self.streams_finished = 0
        self.specs: list[StreamSpec] = []

    async def prepare(self) -> None:
        return

    def check(self, spec: StreamSpec) -> None:
        if spec.language not in self.languages:
            raise UnsupportedStream(f"fake engine has no language {spec.language!r}")

    async def run_stream(
        self,
        spec: StreamSpec,
        audio: trio.MemoryReceiveChannel[bytes],
        events: trio.MemorySendChannel[EngineEvent],
    ) -> None:
        self.streams_started += 1
        self.specs.append(spec)
        faulty = self.fault_languages is None or spec.language in self.fault_languages
        fail_after_bytes = self.fail_after_bytes if faulty else None
        ms_per_byte = 1000 / (spec.sample_rate * 2)
        received = 0
        sentence_start = 0
        words_heard = 0
        sentence: list[str] = []
        async with events:
            async for pcm in audio:
                received += len(pcm)
                if fail_after_bytes is not None and received > fail_after_bytes:
                    raise EngineError("fake engine failed on purpose")
                if faulty and self.stall_after_bytes is not None and received > self.stall_after_bytes:
                    await trio.sleep_forever()
                before = words_heard
                while (words_heard + 1) * self.partial_bytes <= received:
                    sentence.append(f"w{words_heard}")
                    words_heard += 1
                if words_heard > before:
                    await events.send(
                        Partial(
                            " ".join(sentence),
                            round(sentence_start * ms_per_byte),
                            round(received * ms_per_byte),
                        )
                    )
                if received - sentence_start >= self.sentence_bytes:
                    await events.send(
                        Final(
                            " ".join(sentence),
                            round(sentence_start * ms_per_byte),
                            round(received * ms_per_byte),
                        )
                    )
                    sentence_start, sentence = received, []
            if self.hang_on_finish and faulty:
                await trio.sleep_forever()
            if received > sentence_start:
                # The flush: the tail of the stream becomes a sentence, a started word counting as heard.
                if words_heard * self.partial_bytes < received:
                    sentence.append(f"w{words_heard}")
                await events.send(
                    Final(
                        " ".join(sentence), round(sentence_start * ms_per_byte), round(received * ms_per_byte)
                    )
                )
        self.streams_finished += 1
