"""Hot words on the local engine: speech with rare names, recognised with and without the names as hot words.

    .venv/bin/python bench/hotwords.py [--voices en-us en-gb] [--runs 1]

The speech is made here with espeak-ng (installed for the e2e tests): sentences that each hold an invented
name, so the references are known and no model has seen the names. Every sentence is one session on the
local engine in this process (its default config: Whisper tiny.en finals), once with no options and once
with the names as hot words (`{"hotwords": [...]}`, all names of the list, as a domain's vocabulary
would be given). Printed side by side: WER of the finals, and the share of names spelled exactly.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
import time
import wave
from pathlib import Path

import jiwer
import trio

from asr_actors.config import LocalEngineConfig
from asr_actors.engines.base import EngineEvent, Final, Hotword, SessionOptions, StreamSpec
from asr_actors.engines.local import LocalEngine

NAMES = [
    "Zorbulon Quettle",
    "Marisanthe Voyd",
    "Kelbrook Ostrander",
    "Tavish Pellucid",
    "Ondrea Flaxmoor",
    "Quillon Varga",
    "Bexley Thornquist",
    "Ysolde Carrowick",
]
SENTENCES = [
    "Please send the quarterly report to Zorbulon Quettle before Friday.",
    "Marisanthe Voyd will chair the meeting on Tuesday morning.",
    "The contract was signed by Kelbrook Ostrander last week.",
    "Ask Tavish Pellucid about the new delivery schedule.",
    "Ondrea Flaxmoor has moved to the London office.",
    "Our guest speaker tonight is Quillon Varga from Lisbon.",
    "The invoice from Bexley Thornquist is still unpaid.",
    "Ysolde Carrowick approved the budget for next year.",
]
SILENCE = bytes(32000)  # 1 s after each sentence, so that the engine ends it


def synthesize(text: str, voice: str, directory: Path) -> bytes:
    raw, resampled = directory / "raw.wav", directory / "16k.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(raw), text], check=True)
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(resampled)], check=True)
    with wave.open(str(resampled)) as reader:
        return reader.readframes(reader.getnframes())


async def recognise(engine: LocalEngine, pcm: bytes, options: SessionOptions) -> str:
    audio_tx, audio_rx = trio.open_memory_channel[bytes](len(pcm) // 3200 + 2)
    events_tx, events_rx = trio.open_memory_channel[EngineEvent](1000)
    async with audio_tx:
        for offset in range(0, len(pcm), 3200):
            audio_tx.send_nowait(pcm[offset : offset + 3200])
    await engine.run_stream(StreamSpec("bench", "en", 16000, options), audio_rx, events_tx)
    return " ".join(event.text for event in [e async for e in events_rx] if isinstance(event, Final))


def normalized(text: str) -> str:
    return " ".join(re.sub(r"[^\w' ]", " ", text.lower()).split())


def names_found(hypothesis: str, sentence: str) -> tuple[int, int]:
    name = next(name for name in NAMES if name in sentence)
    return int(normalized(name) in normalized(hypothesis)), 1


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voices", nargs="+", default=["en-us", "en-gb"])
    args = parser.parse_args()
    engine = LocalEngine(LocalEngineConfig())
    await engine.prepare()
    cases = {
        "no options": SessionOptions(),
        "names as hot words": SessionOptions(hotwords=tuple(Hotword(name) for name in NAMES)),
    }
    with tempfile.TemporaryDirectory() as scratch:
        speech = [
            (voice, sentence, synthesize(sentence, voice, Path(scratch)))
            for voice in args.voices
            for sentence in SENTENCES
        ]
    print(f"{len(speech)} sentences ({', '.join(args.voices)}), {len(NAMES)} names")
    print("| case | WER | names spelled exactly | CPU s |")
    print("|---|---|---|---|")
    for label, options in cases.items():
        references, hypotheses, found, total = [], [], 0, 0
        started = time.process_time()
        for _voice, sentence, pcm in speech:
            hypothesis = await recognise(engine, pcm + SILENCE, options)
            references.append(normalized(sentence))
            hypotheses.append(normalized(hypothesis))
            hit, count = names_found(hypothesis, sentence)
            found, total = found + hit, total + count
        cpu = time.process_time() - started
        wer = jiwer.wer(references, hypotheses)
        print(f"| {label} | {wer:.1%} | {found} / {total} | {cpu:.1f} |")
        for reference, hypothesis in zip(references, hypotheses, strict=True):
            if reference != hypothesis:
                print(f"|   | {hypothesis!r} (said: {reference!r}) | | |")


if __name__ == "__main__":
    trio.run(main)
