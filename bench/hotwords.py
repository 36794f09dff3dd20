"""Hot words on the local engine: speech with rare names, recognised with and without the names as hot words.

    .venv/bin/python bench/hotwords.py [--voices en-us en-gb]

The speech is made here with espeak-ng (`testing.speech.synthesized`; installed for the e2e tests):
sentences that each hold an invented name, so the references are known and no model has seen the names.
Every sentence is one session on the local engine in this process (its default config: Whisper tiny.en
finals), once with no options and once
with the names as hot words (`{"hotwords": [...]}`, all names of the list, as a domain's vocabulary
would be given). Printed side by side: WER of the finals, and the share of names spelled exactly.
"""

from __future__ import annotations

import argparse
import time

import jiwer
import trio

from asr_actors.config import LocalEngineConfig
from asr_actors.engines.base import Final, Hotword, SessionOptions, StreamSpec
from asr_actors.engines.local import LocalEngine
from asr_actors.testing.speech import engine_events, synthesized
from asr_actors.testing.textnorm import normalize

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


async def recognise(engine: LocalEngine, pcm: bytes, options: SessionOptions) -> str:
    events = await engine_events(engine, StreamSpec("bench", "en", 16000, options), pcm)
    return " ".join(event.text for event in events if isinstance(event, Final))


def name_heard(hypothesis: str, sentence: str) -> bool:
    name = next(name for name in NAMES if name in sentence)
    return normalize(name) in normalize(hypothesis)


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
    speech = [(sentence, synthesized(sentence, voice)) for voice in args.voices for sentence in SENTENCES]
    print(f"{len(speech)} sentences ({', '.join(args.voices)}), {len(NAMES)} names")
    print("| case | WER | names spelled exactly | CPU s |")
    print("|---|---|---|---|")
    for label, options in cases.items():
        references, hypotheses, found = [], [], 0
        started = time.process_time()
        for sentence, pcm in speech:
            hypothesis = await recognise(engine, pcm + SILENCE, options)
            references.append(normalize(sentence))
            hypotheses.append(normalize(hypothesis))
            found += name_heard(hypothesis, sentence)
        cpu = time.process_time() - started
        wer = jiwer.wer(references, hypotheses)
        print(f"| {label} | {wer:.1%} | {found} / {len(speech)} | {cpu:.1f} |")
        for reference, hypothesis in zip(references, hypotheses, strict=True):
            if reference != hypothesis:
                print(f"|   | {hypothesis!r} (said: {reference!r}) | | |")


if __name__ == "__main__":
    trio.run(main)
