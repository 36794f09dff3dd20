"""Alibaba Cloud DashScope realtime recognition (paraformer-realtime-v2 and friends).

Two transports, `[engines.dashscope] transport`: "sdk" (the default), through the official SDK, and
"native", the service's WebSocket protocol spoken on Trio (`dashscope_native.py`). Both share the
protocol's messages and the client-facing reasons for failures (`dashscope_wire.py`).

The SDK (`dashscope.audio.asr.Recognition`, docs/dependencies.md) is blocking and thread-based; this module is
the only one that imports it, and the boundary where its behaviour is tamed:

- `start()` and `stop()` run in worker threads under their own capacity limiter, each bounded by a cancel
  scope (`stop()` has no timeout of its own and waits forever on a silent upstream). A call that overruns
  is abandoned and the session fails with a coded error; the gateway never waits on it.
- Callbacks run in the SDK's thread and must never raise (a raising callback silently kills it): each one
  only schedules a plain event into Trio (`TrioToken.run_sync_soon`, no round trip: the SDK's loop never
  waits for Trio) and swallows the failure to do so once the session is gone. Events beyond the
  session's `event_queue` end it with a coded error rather than being dropped.
- The SDK reads its socket only between the items its input generator yields, and that generator polled
  every 10 ms and restarted a timer thread per frame: `_import_sdk` replaces both (see there), so that
  results keep arriving while the client is quiet (at most `pump_interval` late) without any audio
  invented and without a thread per frame.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import attrs
import trio

from asr_actors.config import DashScopeEngineConfig
from asr_actors.engines import dashscope_wire as wire
from asr_actors.engines.base import (
    EngineError,
    EngineEvent,
    EngineUnavailable,
    Final,
    Partial,
    StreamSpec,
    UnsupportedStream,
    refuse_unhonoured,
)
from asr_actors.engines.service_wire import WireError

log = logging.getLogger(__name__)

SAMPLE_RATES = frozenset({8000, 16000})


@attrs.frozen
class _Failed:
    code: str
    message: str


@attrs.frozen
class _Completed:
    pass


_SdkEvent = Partial | Final | _Failed | _Completed


class _Callback:
    """Receives the SDK's callbacks in its thread; schedules each into Trio; never raises."""

    def __init__(self, events: trio.MemorySendChannel[_SdkEvent], token: trio.lowlevel.TrioToken) -> None:
        self._events = events
        self._token = token
        # Set (in Trio) when an event found the session's queue full: the session then fails.
        self.overflowed = False

    def _deliver(self, event: _SdkEvent) -> None:
        try:
            self._token.run_sync_soon(self._put, event)
        except trio.RunFinishedError:
            pass  # the gateway is gone; nobody is waiting for this event
        except BaseException:
            log.exception("could not deliver a DashScope event")

    def _put(self, event: _SdkEvent) -> None:
        """Runs in Trio's thread, where an exception would end the whole run: it must not raise."""
        try:
            self._events.send_nowait(event)
        except trio.WouldBlock:
            self.overflowed = True
            self._events.close()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the session is over
        except BaseException:
            log.exception("could not deliver a DashScope event")

    # The SDK's RecognitionCallback interface:
    def on_open(self) -> None:
        return

    def on_close(self) -> None:
        return  # may be called twice; stop() returning is what ends the session

    def on_complete(self) -> None:
        self._deliver(_Completed())

    def on_error(self, result: Any) -> None:
        code, message = str(getattr(result, "code", "") or ""), str(getattr(result, "message", "") or "")
        log.warning("DashScope error %s: %s", code, message)
        self._deliver(_Failed(code, message))

    def on_event(self, result: Any) -> None:
        try:
            sentence = result.get_sentence()
            event = wire.sentence_event(sentence) if isinstance(sentence, dict) else None
        except WireError:
            log.exception("unreadable DashScope result")
            return
        if event is not None:
            self._deliver(event)


class DashScopeEngine:
    name = "dashscope"
    # Results carry word times; the rest are run-task parameters (hot words are a vocabulary made with
    # DashScope's customization API, named by `dashscope.vocabulary_id`).
    options = frozenset(
        {"words", "punctuation", "language_hints", "dashscope.vocabulary_id", "dashscope.disfluency_removal"}
    )

    def __init__(self, config: DashScopeEngineConfig) -> None:
        self._config = config
        self.max_streams = config.max_sessions
        # Threads for start() and stop(); abandoned overrunning calls keep theirs until they return.
        self._limiter = trio.CapacityLimiter(config.max_sessions * 2)
        self._api_key = ""
        self._recognition_class: Any = None

    async def prepare(self) -> None:
        """Read the key and, for the SDK transport, import the SDK (0.6 s, 70 MB: only when this engine is
        configured)."""
        key = os.environ.get(self._config.api_key_env, "")
        if not key:
            raise EngineUnavailable(f"DashScope needs an API key in ${self._config.api_key_env}")
        self._api_key = key
        if self._config.transport == "sdk":
            self._recognition_class = await trio.to_thread.run_sync(_import_sdk, self._config.pump_interval)

    def check(self, spec: StreamSpec) -> None:
        if not self._api_key:
            raise EngineUnavailable(f"DashScope needs an API key in ${self._config.api_key_env}")
        if spec.language not in self._config.languages:
            raise UnsupportedStream(f"Language {spec.language!r} is not configured for DashScope")
        if spec.sample_rate not in SAMPLE_RATES:
            raise UnsupportedStream(f"DashScope takes 8000 or 16000 Hz audio, not {spec.sample_rate} Hz")
        refuse_unhonoured(spec, self.name, self.options)

    def _new_recognition(self, spec: StreamSpec, callback: _Callback) -> Any:
        # One Recognition per session: its task_id is fixed at construction. The SDK only calls the
        # callback's methods, so _Callback need not inherit its RecognitionCallback.
        options: dict[str, Any] = {"api_key": self._api_key}
        if self._config.url:
            options["base_address"] = self._config.url
        return self._recognition_class(
            model=self._config.model,
            callback=callback,
            format="pcm",
            sample_rate=spec.sample_rate,
            **wire.task_parameters(spec.options, spec.language, self._config.language_hints),
            **options,
        )

    async def run_stream(
        self,
        spec: StreamSpec,
        audio: trio.MemoryReceiveChannel[bytes],
        events: trio.MemorySendChannel[EngineEvent],
    ) -> None:
        self.check(spec)
        if self._config.transport == "native":
            from asr_actors.engines import dashscope_native

            await dashscope_native.run_stream(self._config, self._api_key, spec, audio, events)
            return
        await self._run_sdk_stream(spec, audio, events)

    async def _run_sdk_stream(
        self,
        spec: StreamSpec,
        audio: trio.MemoryReceiveChannel[bytes],
        events: trio.MemorySendChannel[EngineEvent],
    ) -> None:
        config = self._config
        sdk_tx, sdk_rx = trio.open_memory_channel[_SdkEvent](config.event_queue)
        callback = _Callback(sdk_tx, trio.lowlevel.current_trio_token())
        recognition = self._new_recognition(spec, callback)
        async with events, sdk_rx:
            started = False
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_translate, sdk_rx, events, callback)
                    await self._blocking(recognition.start, config.start_timeout, "did not start")
                    started = True
                    if not await _feed(recognition, audio):
                        # The SDK ended the task by itself; its callback is about to say why, else:
                        await trio.sleep(config.stop_timeout)
                        raise EngineError("DashScope ended the task")
                    await self._blocking(recognition.stop, config.stop_timeout, "did not finish")
                    started = False
                    # stop() returns after the SDK's worker has scheduled every callback, and its return
                    # reaches this task through the same first-in, first-out queue: all are in.
                    await sdk_tx.aclose()
            finally:
                if started:
                    await self._abandon(recognition)

    async def _blocking(self, call: Any, limit_s: float, what: str) -> None:
        with trio.move_on_after(limit_s) as overrun:
            try:
                await trio.to_thread.run_sync(call, limiter=self._limiter, abandon_on_cancel=True)
            except Exception as exc:
                raise EngineError(f"DashScope {what}: {exc}") from exc
        if overrun.cancelled_caught:
            raise EngineError(f"DashScope {what} within {limit_s:g} s")

    async def _abandon(self, recognition: Any) -> None:
        """A session that ends early still stops its SDK task; bounded, and shielded from the cancel."""
        with trio.CancelScope(shield=True), trio.move_on_after(self._config.stop_timeout):
            try:
                await trio.to_thread.run_sync(recognition.stop, limiter=self._limiter, abandon_on_cancel=True)
            except Exception:
                log.debug("DashScope stop after failure", exc_info=True)


def _import_sdk(frame_wait_s: float) -> Any:
    """The SDK's `Recognition`, with the two habits that cost most CPU per session taken out.

    The SDK iterates `_input_stream_cycle` inside its event loop: while no frame is queued, that generator
    sleeps 10 ms at a time, blocking the loop (a hundred wake-ups a second per session, and results are
    read only between them), and it replaces its 23 s silence `Timer` thread with a new one for every
    frame or batch (docs/performance.md measured ~1,000 thread starts a second at 100 sessions). Here the
    generator waits on its queue, up to `frame_wait_s`, and hands back an empty item when nothing came
    (the SDK sends nothing for it and reads results meanwhile: no pump from the Trio side is needed); the
    silence timer is cancelled at start, since the session's own idle timeout ends silent clients.
    """
    import queue

    from dashscope.audio.asr import Recognition

    class TamedRecognition(Recognition):
        def start(self, *args: Any, **kwargs: Any) -> None:
            super().start(*args, **kwargs)
            timer, self._silence_timer = self._silence_timer, None
            if timer is not None:
                timer.cancel()

        def end_audio(self) -> None:
            """No more frames: the generator ends at once (and the SDK sends `finish-task`), rather than
            when `stop()`'s flag is next looked at."""
            self._stream_data.put(None)

        def _input_stream_cycle(self) -> Any:
            while self._running or not self._stream_data.empty():
                try:
                    frame = self._stream_data.get(timeout=frame_wait_s)
                except queue.Empty:
                    yield b""  # lets the SDK's loop read results while the client is quiet
                    continue
                if frame is None:
                    return
                yield frame if isinstance(frame, dict) else bytes(frame)

    return TamedRecognition


async def _feed(recognition: Any, audio: trio.MemoryReceiveChannel[bytes]) -> bool:
    """Client audio to the SDK (a queue put: never blocks). Returns True at the end of the client's audio,
    False if the SDK stopped taking frames."""
    async for pcm in audio:
        try:
            recognition.send_audio_frame(pcm)
        except Exception:
            return False
    recognition.end_audio()
    return True


async def _translate(
    sdk: trio.MemoryReceiveChannel[_SdkEvent],
    events: trio.MemorySendChannel[EngineEvent],
    callback: _Callback,
) -> None:
    async for event in sdk:
        if isinstance(event, _Failed):
            raise EngineError(wire.describe_failure(event.code, event.message))
        if isinstance(event, Partial | Final):
            await events.send(event)
    if callback.overflowed:
        raise EngineError("DashScope results came faster than the session could take them")
