"""The whole system with the real offline engine: a real `serve`, a real client, real speech.

Prints the measured word error rate and latencies (they are measurements, not assertions, except for a WER
bound with margin); the figures also go to tests/artifacts/local_engine.json.
"""

from __future__ import annotations

import json
import re
import statistics
import urllib.request
from pathlib import Path

import jiwer
import numpy as np
import pytest
import trio

from asr_actors import client
from asr_actors.testing.speech import librivox, synthesized, whole_file_text, with_noise
from asr_actors.testing.subprocess_server import running_server
from asr_actors.testing.textnorm import agreement, normalize

DATA = Path(__file__).resolve().parent.parent / "data" / "librivox"
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
APPKEY, SECRET = "e2e", "e2e-secret"
HTTP_TIMEOUT_S = 30
# The real-time test streams 25 s of speech in five sessions; this bounds it whatever happens.
REALTIME_GUARD_S = 300
# Measured 4.2% on this speech (Whisper tiny.en finals); the bound leaves room for model and library updates.
LIBRIVOX_WER_BOUND = 0.12
# The share of each final's words already on the live line just before it (issue #18's target: 0.8).
AGREEMENT_BOUND = 0.8
# Streaming finals against the same model on the whole file: within 1.5 times its WER (issue #19), plus
# two words, so that a whole-file WER of 0 does not demand perfection. (Two words of the clips' 71: the
# slack was written as 2 / 95, which is 1.5 words.)
WHOLE_FILE_RATIO, WHOLE_FILE_SLACK_WORDS = 1.5, 2
# espeak-ng's robotic voice is harder for Whisper (measured 12.9%).
ESPEAK_WER_BOUND = 0.30
ESPEAK_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please call me back tomorrow morning.",
    "The weather is cold and windy today.",
    "She opened the window and looked at the garden.",
]


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[apps.{APPKEY}]\nsecret = "{SECRET}"\n')
    return path


async def transcribe(http_url: str, pcm: bytes, *, realtime: bool) -> list[client.Received]:
    ws_url = http_url.replace("http://", "ws://") + "v1/asr"
    url = client.sign_url(ws_url, APPKEY, SECRET, nonce=client.fresh_nonce())
    return await client.stream_pcm(url, pcm, realtime=realtime)


def report(name: str, figures: dict[str, object], capsys: pytest.CaptureFixture[str]) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"{name}.json").write_text(json.dumps(figures, indent=2))
    with capsys.disabled():
        print(f"\n[{name}] " + ", ".join(f"{key}={value}" for key, value in figures.items()))


def read_url(url: str) -> str:
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
        return str(response.read().decode())


def check_sentence_order(results: list[client.Received], *, partials_required: bool) -> None:
    """Each sentence: partials first, then its final, all with one speech_id; start first, end last.
    Audio sent faster than it is spoken may get a sentence's final with no partial: partials are Whisper
    drafts, and a draft with newer audio behind it is skipped (bounded work per stream)."""
    assert "start" == results[0].status
    assert "end" == results[-1].status
    finals = [r for r in results if r.status == "final"]
    assert finals, "no final"
    for final in finals:
        partials = [r for r in results if r.status == "partial" and r.speech_id == final.speech_id]
        assert partials or not partials_required, (
            f"sentence {final.speech_id} had no partial before its final"
        )
        assert all(p.at <= final.at for p in partials)
    assert len({f.speech_id for f in finals}) == len(finals)


async def test_real_speech_realtime(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """LibriVox read speech, streamed at real time like a microphone: partials, then finals, low WER."""
    transcripts = dict(
        line.split("\t", 1) for line in (DATA / "transcripts.tsv").read_text().splitlines() if line.strip()
    )
    references, hypotheses, first_partial, final_latency, agreements = [], [], [], [], []
    with trio.fail_after(REALTIME_GUARD_S):
        async with running_server(write_config(tmp_path)) as (url, _pid):
            for name, reference in sorted(transcripts.items()):
                pcm = await trio.to_thread.run_sync(client.load_audio, str(DATA / f"{name}.wav"))
                results = await transcribe(url, pcm, realtime=True)
                check_sentence_order(results, partials_required=True)
                finals = [r for r in results if r.status == "final"]
                for final in finals:
                    partials = [
                        r for r in results if r.status == "partial" and r.speech_id == final.speech_id
                    ]
                    first_partial.append(partials[0].at - final.begin_ms / 1000)
                    final_latency.append(final.at - final.end_ms / 1000)
                    if final.text:
                        agreements.append(agreement(partials[-1].text, final.text))
                references.append(normalize(reference))
                hypotheses.append(normalize(" ".join(f.text for f in finals)))
            metrics = await trio.to_thread.run_sync(read_url, url + "metrics")
    # The Whisper queue's figures on /metrics: every final and draft went through it.
    passes = re.search(r"^asr_local_whisper_passes_total (\S+)$", metrics, re.MULTILINE)
    assert passes is not None, metrics
    assert float(passes.group(1)) >= len(final_latency), metrics
    assert re.search(r"^asr_local_whisper_waiting 0\.0$", metrics, re.MULTILINE), metrics
    wer = jiwer.wer(references, hypotheses)
    report(
        "local_engine_librivox",
        {
            "files": len(references),
            "sentences": len(final_latency),
            "wer": round(wer, 4),
            "first_partial_latency_median_s": round(statistics.median(first_partial), 3),
            "first_partial_latency_max_s": round(max(first_partial), 3),
            "final_latency_median_s": round(statistics.median(final_latency), 3),
            "final_latency_max_s": round(max(final_latency), 3),
            "last_partial_agreement_mean": round(statistics.mean(agreements), 3),
            "last_partial_agreement_min": round(min(agreements), 3),
        },
        capsys,
    )
    assert wer < LIBRIVOX_WER_BOUND, list(zip(references, hypotheses, strict=True))
    assert statistics.mean(agreements) >= AGREEMENT_BOUND, agreements


@pytest.mark.parametrize("snr_db", [None, 10.0], ids=["clean", "10dB-pink-noise"])
async def test_streaming_finals_near_the_whole_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], snr_db: float | None
) -> None:
    """The five clips in one session (1 s pauses), clean and mixed with sox pink noise at 10 dB SNR:
    the streaming finals' WER stays within 1.5 times the WER of the same model on the whole file, and
    the sentences are neither merged nor split much."""
    pcm, sentences = librivox()
    if snr_db is not None:
        pcm = await trio.to_thread.run_sync(with_noise, pcm, snr_db)
    reference = normalize(" ".join(sentences))
    async with running_server(write_config(tmp_path)) as (url, _pid):
        results = await transcribe(url, pcm, realtime=False)
    finals = [r.text for r in results if r.status == "final" and r.text]
    wer = jiwer.wer(reference, normalize(" ".join(finals)))
    whole = jiwer.wer(reference, normalize(await trio.to_thread.run_sync(whole_file_text, pcm)))
    name = "clean" if snr_db is None else f"snr{snr_db:g}dB"
    report(
        f"local_engine_whole_file_{name}",
        {
            "wer": round(wer, 4),
            "whole_file_wer": round(whole, 4),
            "finals": len(finals),
            "read": len(sentences),
        },
        capsys,
    )
    assert wer <= WHOLE_FILE_RATIO * whole + WHOLE_FILE_SLACK_WORDS / len(reference.split()), finals
    assert len(sentences) - 1 <= len(finals) <= len(sentences) + 2, finals


async def test_synthesized_sentences_become_separate_finals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """espeak-ng sentences with pauses, sent unpaced: one final per sentence, in order, none lost."""
    silence = np.zeros(16000, dtype="<i2").tobytes()  # 1 s between sentences
    pcm = b""
    for sentence in ESPEAK_SENTENCES:
        pcm += await trio.to_thread.run_sync(synthesized, sentence) + silence
    async with running_server(write_config(tmp_path)) as (url, _pid):
        results = await transcribe(url, pcm, realtime=False)
    check_sentence_order(results, partials_required=False)
    finals = [normalize(r.text) for r in results if r.status == "final" and r.text]
    reference = [normalize(s) for s in ESPEAK_SENTENCES]
    wer = jiwer.wer(" ".join(reference), " ".join(finals))
    report(
        "local_engine_espeak",
        {"sentences": len(reference), "finals": len(finals), "wer": round(wer, 4)},
        capsys,
    )
    assert len(reference) == len(finals), finals
    assert wer < ESPEAK_WER_BOUND, finals
