"""A transcription in each `response_format` of OpenAI's API. Sans-IO: sentences in, a response out.

`json` is `{"text"}`; `text` the text; `srt` and `vtt` subtitles (a cue per sentence, `transcripts`);
`verbose_json` adds the language, the duration, a segment per sentence and, when asked for with
`timestamp_granularities[]=word` and the engine gives word times, the words. Fields OpenAI fills from
Whisper's decoder (tokens, log probabilities, compression ratio) are left out: no engine here has them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from asr_actors import http, transcripts
from asr_actors.transcripts import Sentence

FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("segment", "word")
# What `verbose_json` calls a language: OpenAI answers with the English name.
LANGUAGE_NAMES = {"en": "english", "zh": "chinese"}


def text_of(sentences: Sequence[Sentence]) -> str:
    return str(transcripts.to_json(sentences)["text"])


def render(
    sentences: Sequence[Sentence],
    form: str,
    *,
    language: str,
    duration: float,
    granularities: Sequence[str] = ("segment",),
) -> http.Response:
    spoken = [sentence for sentence in sentences if sentence.text]
    if form == "json":
        return _json({"text": text_of(spoken)})
    if form == "text":
        return http.Response(200, (text_of(spoken) + "\n").encode())
    if form == "srt":
        return http.Response(200, transcripts.render(spoken, "srt").encode())
    if form == "vtt":
        return http.Response(200, transcripts.render(spoken, "vtt").encode(), "text/vtt; charset=utf-8")
    verbose: dict[str, object] = {
        "task": "transcribe",
        "language": LANGUAGE_NAMES.get(language, language),
        "duration": round(duration, 3),
        "text": text_of(spoken),
    }
    if "segment" in granularities or not granularities:
        verbose["segments"] = [
            {"id": index, "start": round(s.start, 3), "end": round(s.end, 3), "text": s.text}
            for index, s in enumerate(spoken)
        ]
    if "word" in granularities:
        verbose["words"] = [
            {"word": w.text, "start": round(w.start, 3), "end": round(w.end, 3)}
            for s in spoken
            for w in s.words
        ]
    return _json(verbose)


def _json(payload: object) -> http.Response:
    return http.Response(200, json.dumps(payload, ensure_ascii=False).encode(), "application/json")
