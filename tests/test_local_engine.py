"""The local engine's own contract, on real speech: ordered events, sentence ends, flush at end of audio.

These run real pocketsphinx (and Whisper in the e2e tests) in worker threads, so they use the real clock.
"""

from __future__ import annotations

import wave
from pathlib import Path

import pytest
import trio

from asr_actors.config import LocalEngineConfig
from asr_actors.engines.base import EngineEvent, Final, Partial, StreamSpec, UnsupportedStream
from asr_actors.engines.local import LocalEngine, SentenceDecoder

DATA = Path(__file__).resolve().parent / "data" / "librivox"
GUARD = 120


def speech(name: str) -> bytes:
    with wave.open(str(DATA / f"sense_and_sensibility_01_austen_64kb-{name}.wav")) as reader:
        return reader.readframes(reader.getnframes())


def chunks(pcm: bytes, size: int = 3200) -> list[bytes]:
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]


def test_decoder_partials_grow_then_sentence_closes() -> None:
    """pocketsphinx partials come while speaking; the Endpointer closes the sentence with its audio."""
    decoder = SentenceDecoder(LocalEngineConfig())
    events = [event for chunk in chunks(speech("0880") + bytes(32000)) for event in decoder.feed(chunk)]
    events += decoder.finish()
    partials = [e for e in events if isinstance(e, Partial)]
    sentences = [e for e in events if not isinstance(e, Partial)]
    assert len(partials) >= 3
    assert 1 == len(sentences)
    sentence = sentences[0]
    assert "young man" in sentence.text
    assert sentence.had_partial
    assert 0 <= sentence.begin_ms < 500 < sentence.end_ms <= 3500
    assert len(sentence.audio) > 32000


def test_decoder_finish_closes_a_sentence_cut_mid_speech() -> None:
    """Audio that stops mid-word still yields its sentence at finish(): the tail is never lost."""
    decoder = SentenceDecoder(LocalEngineConfig())
    cut = speech("0870")[: 16000 * 2 * 3 + 7 * 2]  # 3 s and 7 samples: not a whole endpointer frame
    for chunk in chunks(cut):
        assert all(isinstance(e, Partial) for e in decoder.feed(chunk))
    sentences = [e for e in decoder.finish() if not isinstance(e, Partial)]
    assert 1 == len(sentences)
    assert "john" in sentences[0].text


@pytest.mark.parametrize(("language", "rate"), [("zh", 16000), ("en", 8000)])
def test_unsupported_streams_are_refused(language: str, rate: int) -> None:
    """The local engine is English at 16 kHz; anything else is UnsupportedStream (a 403 for the client)."""
    with pytest.raises(UnsupportedStream):
        LocalEngine(LocalEngineConfig()).check(StreamSpec("s", language, rate))


async def test_pocketsphinx_only_stream_gives_one_final_per_sentence() -> None:
    """finals = "pocketsphinx": two sentences with a pause give two finals, each after its partials."""
    engine = LocalEngine(LocalEngineConfig(finals="pocketsphinx"))
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
    assert "himself" in finals[1].text
    first_final = received.index(finals[0])
    assert all(isinstance(e, Partial) for e in received[:first_final])
    assert finals[0].end_ms < finals[1].begin_ms
