"""The official `openai` Python SDK, unmodified, against a real `serve` with the local engine and real
speech: a base URL changed, nothing else. Files in three containers and sample rates, every response
format, and the API's errors as the SDK raises them."""

from __future__ import annotations

import base64
import subprocess
import threading
import time
import wave
from pathlib import Path

import jiwer
import openai
import pytest
import trio

from asr_actors.testing.subprocess_server import running_server
from asr_actors.testing.textnorm import agreement, normalize
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


def stream_realtime(base_url: str, pcm24: bytes) -> list[tuple[float, str, str]]:
    """The SDK's realtime transcription session, its audio sent as a microphone would (frame i of 100 ms
    when its time has passed); every event's time (s since the start), type and text."""
    client = openai.OpenAI(api_key=API_KEY, base_url=f"{base_url}v1", max_retries=0)
    got: list[tuple[float, str, str]] = []
    with client.realtime.connect(extra_query={"intent": "transcription"}) as connection:
        connection.session.update(
            session={
                "type": "transcription",
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcm", "rate": 24000},
                        "transcription": {"model": "gpt-4o-transcribe", "language": "en"},
                        "turn_detection": {"type": "server_vad"},
                    }
                },
            }
        )
        start = time.monotonic()

        def microphone() -> None:
            for index, offset in enumerate(range(0, len(pcm24), 4800)):
                time.sleep(max(0.0, start + (index + 1) * 0.1 - time.monotonic()))
                connection.input_audio_buffer.append(
                    audio=base64.b64encode(pcm24[offset : offset + 4800]).decode()
                )

        sender = threading.Thread(target=microphone, daemon=True)
        sender.start()
        for event in connection:
            text = getattr(event, "delta", None) or getattr(event, "transcript", None) or ""
            got.append((time.monotonic() - start, event.type, text))
            if sum(kind.endswith("transcription.completed") for _, kind, _ in got) == len(CLIPS):
                break
        sender.join()
    return got


async def test_the_openai_sdk_transcribes_a_realtime_session(tmp_path: Path) -> None:
    """Two sentences at 24 kHz, streamed at real time through the SDK's realtime client: two completed
    transcripts of the speech, and before the first, deltas whose words its transcript keeps."""
    pcm24 = tmp_path / "speech.raw"
    sources = [str(DATA / f"{clip}.wav") for clip in CLIPS]
    command = ["sox", *sources, "-r", "24000", "-b", "16", "-c", "1", str(pcm24), "pad", "0.5", "2.5"]
    await trio.run_process(command)
    with trio.fail_after(GUARD):
        async with running_server(write_config(tmp_path), env={"TESTER_API_KEY": API_KEY}) as (url, _process):
            got = await trio.to_thread.run_sync(stream_realtime, url, pcm24.read_bytes())
    kinds = [kind for _, kind, _ in got]
    assert kinds[:2] == ["session.created", "session.updated"]
    completed = [text for _, kind, text in got if kind.endswith("transcription.completed")]
    assert jiwer.wer(normalize(references()), normalize(" ".join(completed))) <= 0.15, completed
    deltas = "".join(text for _, kind, text in got if kind.endswith("transcription.delta"))
    assert deltas, "no deltas before the transcripts completed"
    first_sentence_deltas = ""
    for _, kind, text in got:
        if kind.endswith("transcription.completed"):
            break
        if kind.endswith("transcription.delta"):
            first_sentence_deltas += text
    # The deltas are words two partials agreed on; the engine may still change one in its final (under load
    # the local engine's first guess "and Mr." can repeat before Whisper's "And Mr. John ..." replaces it):
    # of the words sent as deltas, the final keeps nearly all, in order.
    assert agreement(completed[0], first_sentence_deltas) >= 0.8, (first_sentence_deltas, completed[0])


BROWSER_SESSION_JS = """async ([url, secret, pcm]) => {
  const ws = new WebSocket(url, ["realtime", "openai-insecure-api-key." + secret]);
  const events = [];
  const done = new Promise((resolve, reject) => {
    ws.onmessage = (m) => {
      events.push(JSON.parse(m.data));
      if (events.some(e => e.type.endsWith("transcription.completed"))) resolve();
    };
    ws.onerror = () => reject(new Error("websocket error"));
    ws.onclose = (c) => resolve();
  });
  await new Promise((resolve) => { ws.onopen = resolve; });
  for (let i = 0; i < pcm.length; i += 6400) {
    ws.send(JSON.stringify({type: "input_audio_buffer.append", audio: pcm.slice(i, i + 6400)}));
    await new Promise((r) => setTimeout(r, 100));
  }
  await done;
  const protocol = ws.protocol;
  ws.close();
  return [protocol, events.map(e => [e.type, e.transcript || ""])];
}"""


def browser_session(base_url: str, secret: str, pcm24: bytes, microphone: Path) -> list[object]:
    """A page in Chromium opens a realtime session with a client secret, as OpenAI's browser examples do:
    the secret as a subprotocol beside `realtime` (a browser sets no headers on a WebSocket)."""
    from tests.e2e.browser import open_page

    ws_url = base_url.replace("http://", "ws://") + "v1/realtime?intent=transcription"
    encoded = base64.b64encode(pcm24).decode()
    with open_page(base_url, microphone) as page:
        result: list[object] = page.evaluate(BROWSER_SESSION_JS, [ws_url, secret, encoded])
    return result


async def test_a_browser_opens_a_realtime_session_with_a_client_secret(tmp_path: Path) -> None:
    """The app's server asks for a client secret with the SDK (`client.realtime.client_secrets.create`);
    a page in Chromium uses it once: `realtime` is the accepted subprotocol and the sentence comes back."""
    pcm24 = tmp_path / "speech.raw"
    source = str(DATA / f"{CLIPS[0]}.wav")
    await trio.run_process(
        ["sox", source, "-r", "24000", "-b", "16", "-c", "1", str(pcm24), "pad", "0.3", "2"]
    )
    with trio.fail_after(GUARD):
        async with running_server(write_config(tmp_path), env={"TESTER_API_KEY": API_KEY}) as (url, _process):

            def issue() -> str:
                sdk = openai.OpenAI(api_key=API_KEY, base_url=f"{url}v1", max_retries=0)
                return sdk.realtime.client_secrets.create(session={"type": "transcription"}).value

            secret = await trio.to_thread.run_sync(issue)
            protocol, events = await trio.to_thread.run_sync(
                browser_session, url, secret, pcm24.read_bytes(), DATA / f"{CLIPS[0]}.wav"
            )
    assert "realtime" == protocol
    completed = [text for kind, text in events if kind.endswith("transcription.completed")]
    reference = dict(
        line.split("\t", 1) for line in (DATA / "transcripts.tsv").read_text().splitlines() if line.strip()
    )
    assert jiwer.wer(normalize(reference[CLIPS[0]]), normalize(completed[0])) <= 0.15, completed
