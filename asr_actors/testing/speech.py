"""Speech for tests and benchmarks: the repository's LibriVox and cards clips, espeak-ng's synthetic
speech, pink noise mixed in at a chosen SNR, the whole-file transcript of the same Whisper model (the
streaming engine's best case), and an engine run over a recording in this process."""

from __future__ import annotations

import math
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np
import trio

from asr_actors.engines.base import Engine, EngineEvent, StreamSpec

SAMPLE_RATE = 16000
LIBRIVOX = Path(__file__).resolve().parents[2] / "tests" / "data" / "librivox"
CARDS = LIBRIVOX.parent / "cards"
# Sentences of one or two words (issue 28's example, and commands), for espeak-ng.
SHORT_SENTENCES = (
    "Ever tried.",
    "Ever failed.",
    "No matter.",
    "Try again.",
    "Fail again.",
    "Fail better.",
    "Open the door.",
    "Stop the music.",
)


def librivox_sentences() -> list[tuple[bytes, str]]:
    """The five LibriVox clips in order, each with its reference sentence."""
    clips = []
    for line in sorted((LIBRIVOX / "transcripts.tsv").read_text().splitlines()):
        if not line.strip():
            continue
        name, text = line.split("\t", 1)
        with wave.open(str(LIBRIVOX / f"{name}.wav")) as reader:
            clips.append((reader.readframes(reader.getnframes()), text))
    return clips


def librivox(pause_s: float = 1.0) -> tuple[bytes, list[str]]:
    """The five clips in order, `pause_s` of silence after each, and their reference sentences."""
    pause = bytes(int(SAMPLE_RATE * pause_s) * 2)
    clips = librivox_sentences()
    return b"".join(pcm + pause for pcm, _ in clips), [text for _, text in clips]


def cards() -> list[tuple[bytes, str]]:
    """The CMU cards recordings (one speaker naming playing cards) with their transcripts."""
    clips = []
    for line in (CARDS / "cards.transcription").read_text().splitlines():
        words, _, name = line.removeprefix("<s>").rpartition("</s>")
        with wave.open(str(CARDS / f"{name.strip().strip('()')}.wav")) as reader:
            clips.append((reader.readframes(reader.getnframes()), words.strip()))
    return clips


def short_utterances(pause_s: float = 1.0) -> tuple[bytes, list[str]]:
    """Sentences of two or three words, `pause_s` of silence after each: the cards recordings of up to three
    words (real speech), then `SHORT_SENTENCES` spoken by espeak-ng."""
    pause = bytes(int(SAMPLE_RATE * pause_s) * 2)
    spoken = [clip for clip in cards() if len(clip[1].split()) <= 3]
    spoken += [(synthesized(text), text) for text in SHORT_SENTENCES]
    return b"".join(pcm + pause for pcm, _ in spoken), [text for _, text in spoken]


def pink_noise(seconds: float) -> np.ndarray:
    """Pink noise made by sox (16 kHz, 16-bit), as floats."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "pink.wav"
        command = ["sox", "-n", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(path)]
        subprocess.run([*command, "synth", f"{seconds:.2f}", "pinknoise"], check=True)
        with wave.open(str(path)) as reader:
            return np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2").astype(np.float64)


def with_noise(pcm: bytes, snr_db: float) -> bytes:
    """`pcm` mixed with pink noise at `snr_db`, the speech's power measured where it speaks (20 ms frames
    above 1 % of the loudest), so that pauses do not flatter the ratio."""
    speech = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    noise = pink_noise(len(speech) / SAMPLE_RATE + 0.1)[: len(speech)]
    frames = speech[: len(speech) // 320 * 320].reshape(-1, 320)
    energies = (frames**2).mean(axis=1)
    speech_power = energies[energies > energies.max() * 0.01].mean()
    scale = np.sqrt(speech_power / (noise**2).mean() / 10 ** (snr_db / 10))
    mixed = np.clip(speech + noise * scale, -32768, 32767)
    return bytes(mixed.astype("<i2").tobytes())


def whole_file_text(pcm: bytes) -> str:
    """Whisper tiny.en (the local engine's model) on the whole audio at once, decoded as the engine's
    finals are (beam search of `whisper_beam_size`, each window prompted with the text before it), so
    that streaming is compared with the same decoder, not a greedier one."""
    from asr_actors.config import LocalEngineConfig
    from asr_actors.engines.local import load_whisper

    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0
    segments, _info = load_whisper().transcribe(
        samples,
        language="en",
        beam_size=LocalEngineConfig().whisper_beam_size,
        condition_on_previous_text=True,
        vad_filter=False,
    )
    return " ".join(segment.text.strip() for segment in segments)


def synthesized(text: str, voice: str = "en-us") -> bytes:
    """`text` spoken by espeak-ng (installed for the e2e tests), as 16 kHz mono PCM."""
    from asr_actors.client import load_audio

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "speech.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(path), text], check=True)
        return load_audio(str(path))


async def engine_events(engine: Engine, spec: StreamSpec, pcm: bytes) -> list[EngineEvent]:
    """Every event of one stream of `engine` over `pcm`, fed as fast as it takes it (100 ms chunks)."""
    audio_tx, audio_rx = trio.open_memory_channel[bytes](len(pcm) // 3200 + 1)
    events_tx, events_rx = trio.open_memory_channel[EngineEvent](math.inf)
    async with audio_tx:
        for offset in range(0, len(pcm), 3200):
            audio_tx.send_nowait(pcm[offset : offset + 3200])
    await engine.run_stream(spec, audio_rx, events_tx)
    return [event async for event in events_rx]
