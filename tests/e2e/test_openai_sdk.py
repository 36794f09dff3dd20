"""The official `openai` Python SDK, unmodified, against a real `serve` with the local engine and real
speech: a base URL changed, nothing else. Files in three containers and sample rates, every response
format, and the API's errors as the SDK raises them."""

from __future__ import annotations

import subprocess
import wave
from pathlib import Path

import jiwer
import openai
import pytest
import trio

from asr_actors.testing.subprocess_server import running_server
from asr_actors.testing.textnorm import normalize
from tests.e2e.browser import speech_file

DATA = Path(__file__).resolve().parent.parent / "data" / "librivox"
CLIPS = ["sense_and_sensibility_01_austen_64kb-0870", "sense_and_sensibility_01_austen_64kb-0880"]
API_KEY = "sk-e2e-0123456789abcdef0123"
GUARD = 300


def references() -> str:
    rows = dict(
        line.split("\t", 1) for line in (DATA / "transcripts.tsv").read_text().splitlines() if line.strip()
    )
    return " ".join(rows[clip] for clip in CLIPS)


def convert(source: Path, target: Path) -> Path:
    subprocess.run(["sox", str(source), str(target)], check=True)
    return target


@pytest.fixture
def speech(tmp_path: Path) -> dict[str, Path]:
    """The two sentences with a pause between: WAV at 16 kHz, FLAC at 44.1 kHz, Ogg Vorbis at 48 kHz."""
    sources = [DATA / f"{clip}.wav" for clip in CLIPS]
    return {
        "wav": speech_file(tmp_path, sources, 16000),
        "flac": convert(speech_file(tmp_path, sources, 44100), tmp_path / "speech.flac"),
        "ogg": convert(speech_file(tmp_path, sources, 48000), tmp_path / "speech.ogg"),
    }


def write_config(folder: Path) -> Path:
    path = folder / "config.toml"
    path.write_text(
        f'[records]\npath = "{folder / "records.sqlite3"}"\n'
        '[apps.tester]\napi_key_env = "TESTER_API_KEY"\n'
        "[openai]\nmax_file_bytes = 2000000\n"
    )
    return path


def run_sdk(base_url: str, speech: dict[str, Path], tmp_path: Path) -> dict[str, object]:
    client = openai.OpenAI(api_key=API_KEY, base_url=f"{base_url}v1", max_retries=0)
    got: dict[str, object] = {}
    with speech["wav"].open("rb") as wav:
        got["json"] = client.audio.transcriptions.create(file=wav, model="whisper-1").text
    with speech["flac"].open("rb") as flac:
        got["verbose"] = client.audio.transcriptions.create(
            file=flac, model="gpt-4o-transcribe", response_format="verbose_json", language="en"
        )
    with speech["ogg"].open("rb") as ogg:
        got["srt"] = client.audio.transcriptions.create(
            file=ogg, model="gpt-4o-mini-transcribe", response_format="srt"
        )
    with speech["wav"].open("rb") as wav:
        got["text"] = client.audio.transcriptions.create(file=wav, model="whisper-1", response_format="text")
    errors: dict[str, object] = {}
    with speech["wav"].open("rb") as wav:
        try:
            openai.OpenAI(
                api_key="sk-wrong-key-000000000000", base_url=f"{base_url}v1", max_retries=0
            ).audio.transcriptions.create(file=wav, model="whisper-1")
        except openai.AuthenticationError as exc:
            errors["bad key"] = (exc.status_code, exc.code)
    with speech["wav"].open("rb") as wav:
        try:
            client.audio.transcriptions.create(file=wav, model="no-such-model")
        except openai.BadRequestError as exc:
            errors["unknown model"] = (exc.status_code, exc.code)
    try:
        client.audio.transcriptions.create(
            file=("notes.txt", b"these are not sounds\n" * 50), model="whisper-1"
        )
    except openai.BadRequestError as exc:
        errors["not audio"] = (exc.status_code, exc.code)
    big = tmp_path / "big.wav"
    subprocess.run(
        ["sox", "-n", "-r", "16000", "-c", "1", "-b", "16", str(big), "trim", "0", "80"], check=True
    )
    with big.open("rb") as too_large:
        try:
            client.audio.transcriptions.create(file=too_large, model="whisper-1")
        except openai.APIStatusError as exc:
            errors["too large"] = (exc.status_code, exc.code)
    got["errors"] = errors
    return got


async def test_the_openai_sdk_transcribes_files_unmodified(tmp_path: Path, speech: dict[str, Path]) -> None:
    with trio.fail_after(GUARD):
        async with running_server(write_config(tmp_path), env={"TESTER_API_KEY": API_KEY}) as (url, _process):
            got = await trio.to_thread.run_sync(run_sdk, url, speech, tmp_path)
    reference = normalize(references())
    for name in ("json", "text"):
        assert jiwer.wer(reference, normalize(str(got[name]))) <= 0.15, got[name]
    verbose = got["verbose"]
    assert isinstance(verbose, openai.types.audio.TranscriptionVerbose)
    assert jiwer.wer(reference, normalize(verbose.text)) <= 0.15, verbose.text
    assert verbose.language == "english"
    with wave.open(str(speech["wav"])) as wav:
        seconds = wav.getnframes() / wav.getframerate()
    assert verbose.duration == pytest.approx(seconds, abs=0.05)
    assert verbose.segments is not None
    assert len(verbose.segments) == 2
    assert verbose.segments[0].end <= verbose.segments[1].start
    srt = str(got["srt"])
    assert srt.startswith("1\n00:00:")
    assert "\n\n2\n00:00:" in srt
    assert {
        "bad key": (401, "invalid_api_key"),
        "unknown model": (400, "model_not_found"),
        "not audio": (400, "invalid_file_format"),
        "too large": (413, "file_too_large"),
    } == got["errors"]
