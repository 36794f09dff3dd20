"""`POST /v1/audio/transcriptions`: a file, as OpenAI's API takes it, through an engine as one session.

The upload is parsed as it streams in (`form`), the file decoded and resampled by PyAV (`audio`) in a
worker thread, then its audio goes to the engine the model or the language routes to, through the same
bus as live sessions, as fast as the engine takes it. Per-app limits and records apply as for live
sessions. `prompt` and word timestamps become session options, as hints (an engine that cannot use them
runs without); a temperature is accepted and not used (docs/openai.md).
"""

from __future__ import annotations

import functools
import logging
import uuid

import attrs
import trio

from asr_actors import audio, http, logs, transcripts
from asr_actors.engines.base import (
    NO_OPTIONS,
    EngineEvent,
    EngineFailed,
    EngineUnavailable,
    Final,
    SessionOptions,
    StreamSpec,
    UnsupportedStream,
)
from asr_actors.limits import LimitReached
from asr_actors.openai_api import formats
from asr_actors.openai_api.errors import ApiError
from asr_actors.openai_api.form import TranscriptionForm, boundary_of
from asr_actors.openai_api.keys import ApiKeys
from asr_actors.records import FinalRecord, SessionRecord
from asr_actors.session import Shared, keep

log = logging.getLogger(__name__)


# The file's audio goes to the engine in pieces of this many bytes (100 ms at 16 kHz), as a stream does.
PIECE_BYTES = 3200
# Room for the form's other fields and the multipart framing beside the largest file.
FORM_OVERHEAD_BYTES = 1 << 20


class Transcriptions:
    def __init__(self, shared: Shared, keys: ApiKeys) -> None:
        self._shared = shared
        self._keys = keys
        self._settings = shared.config.openai

    async def answer(self, head: http.RequestHead, body: http.RequestBody) -> http.Response:
        try:
            return await self._transcribe(head, body)
        except ApiError as exc:
            log.info("transcription refused: %d %s", exc.status, exc.message)
            return exc.response()

    async def _transcribe(self, head: http.RequestHead, body: http.RequestBody) -> http.Response:
        app = await self._keys.app_for(head.headers.get("authorization"))
        logs.current_app.set(app)
        boundary = boundary_of(head.headers.get("content-type"))
        settings = self._settings
        limit = settings.max_file_bytes + FORM_OVERHEAD_BYTES
        if body.declared_length is not None and body.declared_length > limit:
            raise ApiError(413, f"The request is larger than {limit} bytes", code="file_too_large")
        form = TranscriptionForm(boundary, settings.max_file_bytes)
        try:
            while chunk := await body.receive():
                form.feed(chunk)
            form.finish()
            request = self._request(form)
            engine = await self._engine(request.model, request.language)
            limits = self._shared.limits
            try:
                allowance = await limits.audio.allowance(app)
                async with limits.slots.hold(app):
                    pcm = await trio.to_thread.run_sync(self._decode, form)
                    return await self._run(
                        app, engine, request, pcm, allowance.seconds if allowance else None
                    )
            except LimitReached as exc:
                raise ApiError(429, str(exc), code="rate_limit_exceeded") from None
        finally:
            form.close()

    def _request(self, form: TranscriptionForm) -> _Request:
        model = form.field("model")
        if not model:
            raise ApiError(400, "you must provide a model parameter", param="model")
        response_format = form.field("response_format") or "json"
        if response_format not in formats.FORMATS:
            raise ApiError(
                400,
                f"response_format must be one of {', '.join(formats.FORMATS)}, not {response_format!r}",
                param="response_format",
            )
        granularities = tuple(form.fields.get("timestamp_granularities[]", ()))
        for granularity in granularities:
            if granularity not in formats.GRANULARITIES:
                raise ApiError(
                    400, f"unknown timestamp granularity {granularity!r}", param="timestamp_granularities"
                )
        temperature = form.field("temperature")
        if temperature is not None:
            try:
                float(temperature)
            except ValueError:
                raise ApiError(400, "temperature must be a number", param="temperature") from None
        language = form.field("language") or self._settings.language
        options = SessionOptions(
            prompt=(form.field("prompt") or "").strip()[: self._shared.config.session.max_prompt_chars],
            words="word" in granularities,
            advisory=frozenset({"prompt", "words"}),
        )
        return _Request(model, language, response_format, granularities or ("segment",), options)

    async def _engine(self, model: str, language: str) -> str:
        named = self._settings.models.get(model)
        if named is None:
            raise ApiError(
                400,
                f"The model {model!r} does not exist here (one of: {', '.join(self._settings.models)})",
                param="model",
                code="model_not_found",
            )
        engine = named or await self._shared.directory.engine_for(language)
        if engine is None:
            raise ApiError(400, f"Language {language!r} is not supported", param="language")
        return engine

    def _decode(self, form: TranscriptionForm) -> bytes:
        assert form.file is not None
        try:
            return audio.decode_file(form.file, max_seconds=self._settings.max_file_seconds)
        except audio.UnreadableAudio as exc:
            raise ApiError(
                400, f"Invalid file format: {exc}", param="file", code="invalid_file_format"
            ) from None
        except audio.AudioTooLong as exc:
            raise ApiError(400, f"The file is too long: {exc}", param="file") from None

    async def _run(
        self, app: str, engine: str, request: _Request, pcm: bytes, allowed_seconds: float | None
    ) -> http.Response:
        shared, config = self._shared, self._shared.config
        seconds = len(pcm) / (2 * audio.ENGINE_RATE)
        if allowed_seconds is not None and seconds > allowed_seconds:
            raise ApiError(
                429,
                f"Daily audio limit reached for app {app!r}: {allowed_seconds:.0f} s left",
                code="rate_limit_exceeded",
            )
        session_id = uuid.uuid4().hex
        logs.current_session_id.set(session_id)
        spec = StreamSpec(
            session_id=session_id,
            language=request.language,
            sample_rate=audio.ENGINE_RATE,
            options=request.options,
        )
        started_at = shared.wall_clock()
        log.info(
            "file opened: lang=%s engine=%s audio=%.1fs model=%s",
            request.language,
            engine,
            seconds,
            request.model,
        )
        finals: list[Final] = []
        error: ApiError | None = None
        try:
            finals = await _through_engine(shared, engine, spec, pcm)
        except ApiError as exc:
            error = exc
        if shared.records is not None:
            record = SessionRecord(
                session_id=session_id,
                app=app,
                language=request.language,
                engine=engine,
                started_at=started_at,
                ended_at=shared.wall_clock(),
                audio_bytes=len(pcm),
                sample_rate=audio.ENGINE_RATE,
                error_code=error.status if error else None,
                finals=tuple(
                    FinalRecord(
                        f.text, f.begin_ms, f.end_ms, tuple((w.text, w.begin_ms, w.end_ms) for w in f.words)
                    )
                    for f in finals
                ),
            )
            await keep(
                "the session record",
                functools.partial(shared.records.save, record),
                config.session.record_timeout,
            )
        if seconds:
            charge = functools.partial(shared.limits.audio.charge, app, seconds)
            await keep("the session's audio count", charge, config.session.record_timeout)
        if error is not None:
            raise error
        log.info("file transcribed: %d sentence(s)", len(finals))
        sentences = [
            transcripts.from_milliseconds(
                f.text, f.begin_ms, f.end_ms, ((w.text, w.begin_ms, w.end_ms) for w in f.words)
            )
            for f in finals
        ]
        return formats.render(
            sentences,
            request.response_format,
            language=request.language,
            duration=seconds,
            granularities=request.granularities,
        )


async def _through_engine(shared: Shared, engine: str, spec: StreamSpec, pcm: bytes) -> list[Final]:
    """The file's audio through one engine stream, as fast as it takes it; its finals (partials dropped)."""
    audio_tx, audio_rx = trio.open_memory_channel[bytes](shared.config.channels.audio)
    finals: list[Final] = []
    try:
        async with shared.bus.open_stream(engine, spec, audio_rx) as events, trio.open_nursery() as nursery:
            nursery.start_soon(_feed, audio_tx, pcm)
            await _collect(events, finals)
    except UnsupportedStream as exc:
        raise ApiError(400, str(exc), param="language") from None
    except EngineUnavailable as exc:
        raise ApiError(503, f"No engine available: {exc}") from None
    return finals


async def _feed(audio_tx: trio.MemorySendChannel[bytes], pcm: bytes) -> None:
    async with audio_tx:
        for offset in range(0, len(pcm), PIECE_BYTES):
            await audio_tx.send(pcm[offset : offset + PIECE_BYTES])


async def _collect(events: trio.MemoryReceiveChannel[EngineEvent], finals: list[Final]) -> None:
    async for event in events:
        if isinstance(event, EngineFailed):
            raise ApiError(500, f"The engine failed: {event.message}")
        if isinstance(event, Final):
            finals.append(event)


@attrs.frozen
class _Request:
    model: str
    language: str
    response_format: str
    granularities: tuple[str, ...]
    # `prompt` and word timestamps, as hints: an engine that takes neither runs without them.
    options: SessionOptions = NO_OPTIONS
