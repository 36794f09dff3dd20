"""OpenAI's Realtime API, transcription sessions, as a dialect: `GET /v1/realtime?intent=transcription`
(what the SDK's `client.realtime.connect(extra_query={"intent": "transcription"})` opens). Sans-IO.

Client events: `session.update` (a session of `"type": "transcription"`; the beta
`transcription_session.update` too), `input_audio_buffer.append` (base64 audio: PCM16 at 24 kHz, G.711
μ-law or A-law at 8 kHz; converted here to the engines' 16 kHz), `.commit` and `.clear`. Server events:
`session.created` at once, `session.updated`, and per sentence the engine hears
`input_audio_buffer.speech_started`, `conversation.item.input_audio_transcription.delta` (the words two
partials in a row agree on, once: deltas only ever append, and a draft's guess that the next partial
rewrites is not sent; the `completed` transcript is the one to keep), then `speech_stopped`,
`committed` and `conversation.item.input_audio_transcription.completed` with the final. Mistakes in an
event are `error` events and the session goes on, as with OpenAI; docs/openai.md says what is ignored.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
import numpy as np
import numpy.typing as npt

from asr_actors import audio
from asr_actors.config import Config
from asr_actors.dialects import Admission, Admitted
from asr_actors.engines.base import NO_OPTIONS, SessionOptions
from asr_actors.openai_api import client_secrets
from asr_actors.openai_api.client_secrets import ClientSecrets
from asr_actors.openai_api.errors import ApiError
from asr_actors.openai_api.keys import ApiKeys, bearer, digest
from asr_actors.protocol import (
    AudioReceived,
    ClientEvent,
    Encoded,
    ErrorCode,
    Pong,
    ProtocolError,
    Reply,
    ResultStatus,
    ServerEvent,
    StreamOpened,
)

PATH = "/v1/realtime"
# Input formats: the GA name and the beta name of each, its rate, and its G.711 table (None: PCM16).
_FORMATS: dict[str, tuple[int, npt.NDArray[np.int16] | None]] = {
    "audio/pcm": (24000, None),
    "audio/pcmu": (8000, audio.ULAW),
    "audio/pcma": (8000, audio.ALAW),
}
_BETA_FORMATS = {"pcm16": "audio/pcm", "g711_ulaw": "audio/pcmu", "g711_alaw": "audio/pcma"}
DEFAULT_TURN_DETECTION: dict[str, Any] = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
}


def error_event(message: str, *, code: str | None = None, param: str | None = None, kind: str = "") -> str:
    return json.dumps(
        {
            "type": "error",
            "error": {
                "type": kind or "invalid_request_error",
                "code": code,
                "message": message,
                "param": param,
                "event_id": None,
            },
        },
        ensure_ascii=False,
    )


@attrs.define
class _Settings:
    """The session as the client configured it (and as `session.created` / `.updated` report it)."""

    session_id: str
    format: str = "audio/pcm"
    model: str = "gpt-4o-transcribe"
    language: str = ""
    prompt: str = ""
    turn_detection: dict[str, Any] | None = attrs.field(factory=lambda: dict(DEFAULT_TURN_DETECTION))

    def session(self, beta: bool) -> dict[str, Any]:
        transcription = {"model": self.model, "language": self.language or None, "prompt": self.prompt}
        if beta:
            return {
                "id": f"sess_{self.session_id}",
                "object": "realtime.transcription_session",
                "input_audio_format": {v: k for k, v in _BETA_FORMATS.items()}[self.format],
                "input_audio_transcription": transcription,
                "turn_detection": self.turn_detection,
            }
        rate = _FORMATS[self.format][0]
        audio_format: dict[str, Any] = {
            "type": self.format,
            **({"rate": rate} if self.format == "audio/pcm" else {}),
        }
        return {
            "type": "transcription",
            "id": f"sess_{self.session_id}",
            "object": "realtime.transcription_session",
            "audio": {
                "input": {
                    "format": audio_format,
                    "transcription": transcription,
                    "turn_detection": self.turn_detection,
                    "noise_reduction": None,
                }
            },
            "include": None,
        }


class RealtimeDecoder:
    """Client events in, the session's events out (audio at 16 kHz; replies for the client)."""

    def __init__(
        self,
        settings: _Settings,
        *,
        default_language: str,
        max_frame_bytes: int,
        max_prompt_chars: int = 1000,
    ) -> None:
        self._settings = settings
        self._default_language = default_language
        self._max_frame_bytes = max_frame_bytes
        self._max_prompt_chars = max_prompt_chars
        self._resampler: audio.Resampler | None = None
        self._g711: npt.NDArray[np.int16] | None = None
        self._commits = itertools.count()

    @property
    def ended(self) -> bool:
        return False  # the client ends a realtime session by closing it

    def receive(self, message: str | bytes) -> list[ClientEvent]:
        handlers: dict[str, Callable[[dict[str, Any]], list[ClientEvent]]] = {
            "input_audio_buffer.append": self._append,
            "session.update": lambda event: [Reply(self._update(event, beta=False))],
            "transcription_session.update": lambda event: [Reply(self._update(event, beta=True))],
            "input_audio_buffer.commit": lambda _event: [Reply(self._commit())],
            "input_audio_buffer.clear": lambda _event: [Reply(_event_json("input_audio_buffer.cleared"))],
        }
        try:
            event = _parse(message)
            handler = handlers.get(event["type"])
            if handler is None:
                raise ApiError(
                    400, f"Unsupported event type {str(event['type'])[:60]!r}", code="invalid_event"
                )
            return handler(event)
        except ApiError as exc:
            return [Reply(error_event(exc.message, code=exc.code, param=exc.param))]

    def _append(self, event: dict[str, Any]) -> list[ClientEvent]:
        try:
            data = base64.b64decode(event["audio"], validate=True)
        except (KeyError, TypeError, ValueError, binascii.Error):
            raise ApiError(
                400, "input_audio_buffer.append needs audio: base64 of the session's format", param="audio"
            ) from None
        if len(data) > self._max_frame_bytes:
            raise ProtocolError(
                ErrorCode.TOO_LARGE, f"Audio of {len(data)} bytes exceeds {self._max_frame_bytes}"
            )
        events: list[ClientEvent] = []
        if self._resampler is None:
            rate, self._g711 = _FORMATS[self._settings.format]
            self._resampler = audio.Resampler(rate)
            language = self._settings.language or self._default_language
            # The transcription's prompt, as a hint: an engine that takes none runs without it.
            prompt = self._settings.prompt.strip()[: self._max_prompt_chars]
            options = SessionOptions(prompt=prompt, advisory=frozenset({"prompt"})) if prompt else NO_OPTIONS
            events.append(StreamOpened(language=language, sample_rate=audio.ENGINE_RATE, options=options))
        pcm = audio.g711_to_pcm(data, self._g711) if self._g711 is not None else data
        converted = self._resampler.feed(pcm)
        if converted:
            events.append(AudioReceived(converted))
        return events

    def _update(self, event: dict[str, Any], *, beta: bool) -> str:
        session = event.get("session")
        if not isinstance(session, dict):
            raise ApiError(400, "The update has no session object", param="session")
        if beta:
            fields = {
                "format": _BETA_FORMATS.get(str(session.get("input_audio_format", "pcm16")), ""),
                "transcription": session.get("input_audio_transcription"),
                "turn_detection": session.get("turn_detection", ...),
            }
        else:
            if session.get("type", "transcription") != "transcription":
                raise ApiError(400, "Only transcription sessions are served here", param="session.type")
            audio_in = (session.get("audio") or {}).get("input") or {}
            fmt = audio_in.get("format")
            fields = {
                "format": fmt.get("type") if isinstance(fmt, dict) else "audio/pcm" if fmt is None else "",
                "transcription": audio_in.get("transcription"),
                "turn_detection": audio_in.get("turn_detection", ...),
            }
            if isinstance(fmt, dict) and fmt.get("type") == "audio/pcm" and fmt.get("rate", 24000) != 24000:
                raise ApiError(400, "audio/pcm is 24000 Hz", param="session.audio.input.format.rate")
        self._apply(fields)
        kind = "transcription_session.updated" if beta else "session.updated"
        return json.dumps({"type": kind, "session": self._settings.session(beta)}, ensure_ascii=False)

    def _apply(self, fields: dict[str, Any]) -> None:
        settings = self._settings
        if fields["format"] not in _FORMATS:
            raise ApiError(400, "Unsupported input audio format", param="format")
        transcription = fields["transcription"]
        if transcription is not None and not isinstance(transcription, dict):
            raise ApiError(400, "transcription must be an object", param="transcription")
        language = str((transcription or {}).get("language") or settings.language)
        if self._resampler is not None and (
            fields["format"] != settings.format or language != settings.language
        ):
            raise ApiError(400, "The audio format and language cannot change once audio has arrived")
        settings.format = fields["format"]
        settings.language = language
        settings.model = str((transcription or {}).get("model") or settings.model)
        settings.prompt = str((transcription or {}).get("prompt") or "")
        if fields["turn_detection"] is not ...:
            detection = fields["turn_detection"]
            if detection is not None and not isinstance(detection, dict):
                raise ApiError(400, "turn_detection must be an object or null", param="turn_detection")
            settings.turn_detection = detection

    def _commit(self) -> str:
        # The engines end sentences themselves (their VAD); a commit is acknowledged, and the sentences in
        # the audio so far complete as the engine ends them.
        return json.dumps(
            {
                "type": "input_audio_buffer.committed",
                "item_id": f"commit_{next(self._commits)}",
                "previous_item_id": None,
            }
        )


class RealtimeEncoder:
    """The session's results as the Realtime API's transcription events: one conversation item per
    sentence (`speech_id`)."""

    def __init__(self, session_id: str) -> None:
        self._session_id = session_id
        self._item: str | None = None
        self._previous: str | None = None
        # The text sent as deltas for the current item, and the item's last partial.
        self._sent = ""
        self._previous_partial = ""

    def __call__(self, event: ServerEvent) -> Encoded:
        if isinstance(event, Reply):
            return event.text
        if isinstance(event, Pong) or event.status in (ResultStatus.START, ResultStatus.END):
            return None
        messages: list[str] = []
        item = f"item_{event.speech_id}"
        if item != self._item:
            self._item, self._sent, self._previous_partial = item, "", ""
            messages.append(
                _event_json("input_audio_buffer.speech_started", audio_start_ms=event.begin_ms, item_id=item)
            )
        if event.status is ResultStatus.PARTIAL:
            # Words go out once two partials in a row agree on them: a draft's guess that the next one
            # rewrites is never sent, and what was sent is never taken back.
            agreed = _agreed(self._previous_partial, event.text)
            self._previous_partial = event.text
            if agreed.startswith(self._sent) and len(agreed) > len(self._sent):
                messages.append(self._delta(item, agreed[len(self._sent) :]))
                self._sent = agreed
            return messages or None
        if event.text.startswith(self._sent) and len(event.text) > len(self._sent):
            messages.append(self._delta(item, event.text[len(self._sent) :]))
        messages += [
            _event_json("input_audio_buffer.speech_stopped", audio_end_ms=event.end_ms, item_id=item),
            _event_json("input_audio_buffer.committed", item_id=item, previous_item_id=self._previous),
            _event_json(
                "conversation.item.input_audio_transcription.completed",
                item_id=item,
                content_index=0,
                transcript=event.text,
                **(
                    {"words": [{"word": w, "start": b / 1000, "end": e / 1000} for w, b, e in event.words]}
                    if event.words
                    else {}
                ),
            ),
        ]
        self._previous, self._item = item, None
        return messages

    @staticmethod
    def _delta(item: str, text: str) -> str:
        return _event_json(
            "conversation.item.input_audio_transcription.delta", item_id=item, content_index=0, delta=text
        )


def _agreed(previous: str, current: str) -> str:
    """The whole words `current` begins with that `previous` began with too."""
    end = 0
    for index, (before, now) in enumerate(zip(previous, current, strict=False)):
        if before != now:
            return current[:end]
        if now == " ":
            end = index
    shorter = min(len(previous), len(current))
    longer = previous if len(previous) > len(current) else current
    return current[: shorter if longer[shorter : shorter + 1] in ("", " ") else end]


def _parse(message: str | bytes) -> dict[str, Any]:
    if isinstance(message, bytes):
        raise ApiError(400, "Binary frames are not events: send JSON text", code="invalid_event")
    try:
        event = json.loads(message)
    except ValueError:
        event = None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise ApiError(400, "The event is not a JSON object with a type", code="invalid_event")
    return event


def _event_json(kind: str, **fields: Any) -> str:
    return json.dumps({"type": kind, **fields}, ensure_ascii=False)


# A browser cannot set headers on a WebSocket: it offers its key as a subprotocol beside this one.
SUBPROTOCOL = "realtime"
KEY_SUBPROTOCOL = "openai-insecure-api-key."


@attrs.frozen
class Realtime:
    """The dialect: an app's API key (`Authorization: Bearer`), or a client secret it had issued for a
    browser (`ek_...`, used once), either also as the subprotocol `openai-insecure-api-key.<key>`."""

    keys: ApiKeys
    client_secrets: ClientSecrets
    name: str = "openai-realtime"
    subprotocols: tuple[str, ...] = (SUBPROTOCOL,)

    async def admit(self, admission: Admission, config: Config) -> Admitted:
        query = parse_qs(urlsplit(admission.target).query)
        appkey = await self._app(admission)
        if query.get("intent", ["transcription"])[0] != "transcription" or (
            query.get("model") and not query.get("intent")
        ):
            raise ProtocolError(
                ErrorCode.BAD_INPUT,
                "Only transcription sessions are served here: connect with ?intent=transcription",
            )
        # The id the session's events show (the dialect does not see the gateway's session id here).
        settings = _Settings(uuid.uuid4().hex[:24])
        decoder = RealtimeDecoder(
            settings,
            default_language=config.openai.language,
            max_frame_bytes=config.session.max_frame_bytes,
            max_prompt_chars=config.session.max_prompt_chars,
        )
        created = json.dumps({"type": "session.created", "session": settings.session(beta=False)})
        return Admitted(appkey, decoder, greeting=(created,))

    async def _app(self, admission: Admission) -> str:
        key = bearer(admission.headers.get("authorization"))
        for offered in admission.headers.get("sec-websocket-protocol", "").split(","):
            if offered.strip().startswith(KEY_SUBPROTOCOL):
                key = key or offered.strip()[len(KEY_SUBPROTOCOL) :]
        if key is not None and key.startswith(client_secrets.PREFIX):
            app = await self.client_secrets.redeem(digest(key))
            if app is None:
                raise ProtocolError(ErrorCode.UNAUTHORIZED, "The client secret is unknown, used or expired")
            return app
        try:
            return await self.keys.app_for_key(key)
        except ApiError as exc:
            raise ProtocolError(ErrorCode.UNAUTHORIZED, exc.message) from None

    def encoder(self, session_id: str) -> Callable[[ServerEvent], Encoded]:
        return RealtimeEncoder(session_id)

    def encode_error(self, error: ProtocolError) -> str:
        kind = "server_error" if error.code >= 500 else "invalid_request_error"
        return error_event(error.message, code=str(int(error.code)), kind=kind)
