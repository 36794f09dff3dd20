"""Transcripts as people take them away: plain text, JSON with sentence and word times, SRT and WebVTT.

Sans-IO: sentences in, text out. Times are seconds from the start of the audio. Subtitle cues are one per
sentence; a sentence longer than MAX_CUE_SECONDS or MAX_CUE_CHARS is split at its word times (where the
engine gave them) into cues that each stay within both.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import attrs

FORMATS = ("txt", "json", "srt", "vtt")
# Subtitle conventions: about two lines of 42 characters, on screen for at most ~7 s.
MAX_CUE_SECONDS = 7.0
MAX_CUE_CHARS = 84


@attrs.frozen
class TimedWord:
    text: str
    start: float
    end: float


@attrs.frozen
class Sentence:
    text: str
    start: float
    end: float
    words: tuple[TimedWord, ...] = ()


def from_milliseconds(
    text: str, begin_ms: int, end_ms: int, words: Iterable[tuple[str, int, int]] = ()
) -> Sentence:
    return Sentence(
        text, begin_ms / 1000, end_ms / 1000, tuple(TimedWord(w, b / 1000, e / 1000) for w, b, e in words)
    )


def render(sentences: Sequence[Sentence], form: str) -> str:
    if form == "txt":
        return "".join(f"{sentence.text}\n" for sentence in sentences if sentence.text)
    if form == "json":
        return json.dumps(to_json(sentences), ensure_ascii=False, indent=2) + "\n"
    if form == "srt":
        return "".join(
            f"{index}\n{_clock(start, ',')} --> {_clock(end, ',')}\n{text}\n\n"
            for index, (start, end, text) in enumerate(cues(sentences), 1)
        )
    if form == "vtt":
        body = "".join(
            f"{_clock(start, '.')} --> {_clock(end, '.')}\n{text}\n\n" for start, end, text in cues(sentences)
        )
        return "WEBVTT\n\n" + body
    raise ValueError(f"unknown transcript format {form!r} (one of {', '.join(FORMATS)})")


def to_json(sentences: Sequence[Sentence]) -> dict[str, object]:
    spoken = [sentence for sentence in sentences if sentence.text]
    return {
        "text": _join([sentence.text for sentence in spoken], spoken),
        "sentences": [
            {
                "text": sentence.text,
                "start": round(sentence.start, 3),
                "end": round(sentence.end, 3),
                "words": [
                    {"text": word.text, "start": round(word.start, 3), "end": round(word.end, 3)}
                    for word in sentence.words
                ],
            }
            for sentence in spoken
        ],
    }


def cues(sentences: Sequence[Sentence]) -> list[tuple[float, float, str]]:
    """(start, end, text) per cue: a sentence each, long ones split at word times."""
    out: list[tuple[float, float, str]] = []
    for sentence in sentences:
        if not sentence.text:
            continue
        too_long = sentence.end - sentence.start > MAX_CUE_SECONDS or len(sentence.text) > MAX_CUE_CHARS
        if not too_long or not sentence.words:
            out.append((sentence.start, max(sentence.end, sentence.start), sentence.text))
            continue
        spaced = " " in sentence.text
        group: list[TimedWord] = []
        for word in sentence.words:
            candidate = [*group, word]
            text = _words_text(candidate, spaced)
            if group and (word.end - group[0].start > MAX_CUE_SECONDS or len(text) > MAX_CUE_CHARS):
                out.append((group[0].start, group[-1].end, _words_text(group, spaced)))
                candidate = [word]
            group = candidate
        if group:
            out.append((group[0].start, max(group[-1].end, sentence.end), _words_text(group, spaced)))
    return out


def _words_text(words: Sequence[TimedWord], spaced: bool) -> str:
    return (" " if spaced else "").join(word.text for word in words)


def _join(texts: list[str], sentences: Sequence[Sentence]) -> str:
    """Sentences joined as the language writes them: spaces between them unless it uses none."""
    spaced = any(" " in sentence.text for sentence in sentences)
    return (" " if spaced else "").join(texts)


def _clock(seconds: float, separator: str) -> str:
    milliseconds = max(0, round(seconds * 1000))
    hours, rest = divmod(milliseconds, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"
