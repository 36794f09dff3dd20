"""The engine interface: a stream consumes PCM from one channel and emits events on another.

The mapping to the usual verbs: *open* is `run_stream` starting, *feed* is a send on `audio`, *finish*
is closing `audio` (the engine then flushes: every sentence it heard becomes a `Final` before it returns),
*close* is cancellation. Events come out in order: a sentence's partials, then its final, then the next
sentence's. The engine closes `events` when it returns.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Protocol

import attrs
import trio

from asr_actors.groups import first_leaf

log = logging.getLogger(__name__)


@attrs.frozen
class Hotword:
    """A phrase the session expects (a name, a product, a drug); `weight` how strongly, where the engine
    can weigh (1 = plain)."""

    text: str
    weight: float = 1.0


@attrs.frozen
class SessionOptions:
    """What a session asks of its engine beyond language and rate (protocol v1's start `options`,
    docs/protocol.md). The defaults are a session that asks nothing: the engine's own behaviour."""

    hotwords: tuple[Hotword, ...] = ()
    # Text that comes before the audio and steers the decoder (OpenAI's `prompt`, Whisper's prompt).
    prompt: str = ""
    # Word times in finals, for this session.
    words: bool = False
    # Punctuation in the text: None leaves it to the engine.
    punctuation: bool | None = None
    language_hints: tuple[str, ...] = ()
    # An engine's own named options ("dashscope.vocabulary_id", "iflytek.pd"), checked when parsed.
    extras: tuple[tuple[str, str | bool], ...] = ()
    # Options the session's API treats as hints (OpenAI's `prompt`, word timestamps): an engine that cannot
    # honour them runs without them instead of refusing the session.
    advisory: frozenset[str] = frozenset()

    def asked(self) -> frozenset[str]:
        """The names of the options this session sets (what an engine must honour to run it)."""
        names = {name for name, _ in self.extras}
        names.update(
            name
            for name, value in (
                ("hotwords", self.hotwords),
                ("prompt", self.prompt),
                ("words", self.words),
                ("punctuation", self.punctuation is not None),
                ("language_hints", self.language_hints),
            )
            if value
        )
        return frozenset(names)

    def extra(self, name: str) -> str | bool | None:
        return next((value for key, value in self.extras if key == name), None)


NO_OPTIONS = SessionOptions()


@attrs.frozen
class StreamSpec:
    session_id: str
    language: str
    sample_rate: int
    options: SessionOptions = NO_OPTIONS


def refuse_unhonoured(spec: StreamSpec, engine: str, honoured: frozenset[str]) -> None:
    """UnsupportedStream (code 403, before any audio is recognised) for options `engine` cannot honour
    (advisory ones excepted): an option asked for is never dropped without a word."""
    missing = sorted(spec.options.asked() - spec.options.advisory - honoured)
    if missing:
        names = ", ".join(repr(name) for name in missing)
        raise UnsupportedStream(f"The {engine} engine does not take the option(s) {names}")


@attrs.frozen
class Partial:
    """The text so far of the sentence being spoken; replaces the previous partial."""

    text: str
    begin_ms: int
    end_ms: int


@attrs.frozen
class Word:
    """One word of a final, with its times in the stream (ms from the start of its audio)."""

    text: str
    begin_ms: int
    end_ms: int


@attrs.frozen
class Final:
    """A finished sentence; `words` with their times where the engine gives them (else empty)."""

    text: str
    begin_ms: int
    end_ms: int
    words: tuple[Word, ...] = ()


@attrs.frozen
class EngineFailed:
    """The engine broke; the stream is over. Carried as an event so that it can cross a bus."""

    message: str


EngineEvent = Partial | Final | EngineFailed


class EngineError(Exception):
    """The engine cannot go on with this stream; the message may be shown to the client."""


class UnsupportedStream(EngineError):
    """The engine does not handle this language or sample rate (the client's choice, so code 403)."""


class EngineUnavailable(EngineError):
    """The engine cannot take streams now (code 503): not configured, or no capacity left."""


class EngineBusy(EngineUnavailable):
    """The engine already runs as many streams as it may (the client may retry later)."""


class Engine(Protocol):
    name: str
    # Streams this engine may run at once in one process; the bus refuses more with EngineBusy.
    max_streams: int
    # The session options (`SessionOptions.asked` names) it honours; `check` refuses the others.
    options: frozenset[str]

    async def prepare(self) -> None:
        """Load models before the first session, so that it is not the one that waits."""

    def check(self, spec: StreamSpec) -> None:
        """Raise UnsupportedStream if this engine cannot run `spec`."""

    async def run_stream(
        self,
        spec: StreamSpec,
        audio: trio.MemoryReceiveChannel[bytes],
        events: trio.MemorySendChannel[EngineEvent],
    ) -> None:
        """Recognise `audio` until it ends, emit events, close `events`; raise EngineError on failure."""


async def run_engine(
    engine: Engine,
    spec: StreamSpec,
    audio: trio.MemoryReceiveChannel[bytes],
    events: trio.MemorySendChannel[EngineEvent],
) -> None:
    """Run one engine stream; its failure becomes an EngineFailed event (in-process bus and workers alike)."""
    # The engine gets a clone of `events`, so that a failure can still be reported after it closed its own.
    async with events, audio:
        failure: EngineFailed | None = None
        # Engines run tasks of their own, so their errors may arrive grouped.
        try:
            await engine.run_stream(spec, audio, events.clone())
        except* EngineError as group:
            first = first_leaf(group)
            log.warning("engine %s failed: %s", engine.name, first)
            failure = EngineFailed(str(first))
        except* Exception:
            # A bug in an engine must end its own session only, with a coded error, not the gateway.
            log.exception("engine %s crashed", engine.name)
            failure = failure or EngineFailed("Engine failure")
        if failure is not None:
            await _report(events, failure)


async def _report(events: trio.MemorySendChannel[EngineEvent], failure: EngineFailed) -> None:
    # BrokenResourceError: the relay is gone already, nobody is left to tell.
    with contextlib.suppress(trio.BrokenResourceError):
        await events.send(failure)
