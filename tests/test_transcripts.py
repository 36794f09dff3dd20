"""Transcript formats, sans-IO: plain text, JSON with word times, SRT and WebVTT cues."""

from __future__ import annotations

import json

from asr_actors import protocol, transcripts
from asr_actors.client import parse_result
from asr_actors.records import FinalRecord, SessionRecord
from asr_actors.transcripts import Sentence, TimedWord, from_milliseconds

TWO = [
    from_milliseconds("Hello there.", 500, 1800, [("Hello", 500, 900), ("there.", 950, 1800)]),
    from_milliseconds("General Kenobi.", 2500, 4100),
]


def test_txt_is_a_line_per_sentence() -> None:
    assert "Hello there.\nGeneral Kenobi.\n" == transcripts.render(TWO, "txt")


def test_json_has_sentences_and_words_in_seconds() -> None:
    document = json.loads(transcripts.render(TWO, "json"))
    assert "Hello there. General Kenobi." == document["text"]
    first = document["sentences"][0]
    assert (0.5, 1.8) == (first["start"], first["end"])
    assert [{"text": "Hello", "start": 0.5, "end": 0.9}, {"text": "there.", "start": 0.95, "end": 1.8}] == (
        first["words"]
    )
    assert [] == document["sentences"][1]["words"]


def test_srt_and_vtt_have_a_cue_per_sentence() -> None:
    assert (
        "1\n00:00:00,500 --> 00:00:01,800\nHello there.\n\n"
        "2\n00:00:02,500 --> 00:00:04,100\nGeneral Kenobi.\n\n"
    ) == transcripts.render(TWO, "srt")
    assert transcripts.render(TWO, "vtt").startswith(
        "WEBVTT\n\n00:00:00.500 --> 00:00:01.800\nHello there.\n\n00:00:02.500 --> 00:00:04.100\n"
    )


def test_long_sentences_are_split_at_word_times() -> None:
    """A 12 s sentence of 24 words becomes cues of at most 7 s and 84 characters, cut between words."""
    words = tuple(TimedWord(f"word{n:02d}", n * 0.5, n * 0.5 + 0.4) for n in range(24))
    sentence = Sentence(" ".join(w.text for w in words), 0.0, 12.0, words)
    cues = transcripts.cues([sentence])
    assert len(cues) >= 2
    assert all(end - start <= transcripts.MAX_CUE_SECONDS for start, end, _ in cues[:-1])
    assert all(len(text) <= transcripts.MAX_CUE_CHARS for _, _, text in cues)
    assert sentence.text == " ".join(text for _, _, text in cues)
    assert 12.0 == cues[-1][1]


def test_chinese_is_joined_without_spaces() -> None:
    words = tuple(
        TimedWord(char, n * 0.3, n * 0.3 + 0.3)
        for n, char in enumerate("今天天气很好我们一起去公园散步吧" * 4)
    )
    sentence = Sentence("".join(w.text for w in words), 0.0, 19.2, words)
    cues = transcripts.cues([sentence])
    assert len(cues) > 2
    assert sentence.text == "".join(text for _, _, text in cues)
    assert (
        "今天天气很好。"
        == json.loads(transcripts.render([from_milliseconds("今天天气很好。", 0, 900)], "json"))["text"]
    )


def test_clock_formats() -> None:
    late = [from_milliseconds("x", 3_723_004, 3_723_005)]
    assert "01:02:03,004 --> 01:02:03,005" in transcripts.render(late, "srt")


def test_words_are_an_optional_field_of_protocol_v1() -> None:
    """A final with words carries them; one without has no `words` key (old clients see what they saw)."""
    with_words = protocol.Result(protocol.ResultStatus.FINAL, "s-0", "Hi you.", 0, 900, (("Hi", 0, 300),))
    encoded = json.loads(protocol.encode("task", with_words))
    assert [{"word": "Hi", "begin_time": 0, "end_time": 300}] == encoded["data"]["words"]
    without = json.loads(
        protocol.encode("task", protocol.Result(protocol.ResultStatus.FINAL, "s-0", "Hi.", 0, 900))
    )
    assert "words" not in without["data"]
    assert (("Hi", 0, 300),) == parse_result(json.dumps(encoded), 0.0).words


def test_records_keep_words_and_read_records_kept_before_them() -> None:
    record = SessionRecord(
        "s",
        "app",
        "en",
        "local",
        1.0,
        2.0,
        3200,
        16000,
        None,
        (FinalRecord("Hi.", 0, 900, (("Hi.", 0, 300),)),),
    )
    assert record == SessionRecord.from_json(record.to_json())
    old = json.loads(record.to_json())
    del old["finals"][0]["words"]
    assert () == SessionRecord.from_json(json.dumps(old)).finals[0].words
