"""What the encoder's window costs a Whisper pass, and what cutting it does to the text.

    .venv/bin/python bench/whisper_window.py [--windows 10 30] [--snr clean 10 5] [--beams 5 1]

faster-whisper pads every pass to Whisper's 30 s window; the local engine's passes get their audio plus
2 s in a window of at least `[engines.local] draft_window` / `final_window` seconds
(engines/whisper_batch.py). This decodes 40 clips, one pass each and unprompted, with each window floor:
the five LibriVox sentences and the five CMU cards recordings (real speech, tests/data) and 15 sentences
spoken by espeak-ng in two voices (five read sentences, ten of two or three words), clean and mixed with
pink noise at the given SNRs. Prints, per SNR, beam and window: the WER over all clips, the clips not
transcribed exactly, and the mean wall and CPU time of a pass on one thread (`whisper_cpu_threads = 1`;
`--blas-threads` leaves numpy's OpenBLAS its threads, as before the engine held it to one).
"""

from __future__ import annotations

import argparse
import time

import jiwer

from asr_actors.config import LocalEngineConfig
from asr_actors.engines.local import LocalEngine, load_whisper
from asr_actors.engines.whisper_batch import Decoder, WhisperPass
from asr_actors.testing.speech import (
    SHORT_SENTENCES,
    cards,
    librivox_sentences,
    synthesized,
    with_noise,
)
from asr_actors.testing.textnorm import normalize

READ_SENTENCES = (
    "The weather will turn cold again by the end of the week.",
    "Please close the window before you leave the office tonight.",
    "Seven hundred people came to the concert in the park.",
    "He asked whether the train to Boston was running late.",
    "Turn left at the second light and park behind the library.",
)
SHORT_SPOKEN = (*SHORT_SENTENCES, "Call my sister.", "What time is it?")


def clips() -> list[tuple[bytes, str]]:
    spoken = librivox_sentences() + cards()
    for voice in ("en-us", "en-gb"):
        spoken += [(synthesized(text, voice), text) for text in (*READ_SENTENCES, *SHORT_SPOKEN)]
    return spoken


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--windows", type=float, nargs="+", default=[10.0, 30.0])
    parser.add_argument("--snr", nargs="+", default=["clean", "10", "5"])
    parser.add_argument("--beams", type=int, nargs="+", default=[5, 1])
    parser.add_argument(
        "--blas-threads",
        action="store_true",
        help="leave numpy's BLAS its threads (the engine holds it to one)",
    )
    args = parser.parse_args()
    if not args.blas_threads:
        LocalEngine(LocalEngineConfig())  # the engine's process settings (one BLAS thread)
    decoder = Decoder(load_whisper(1, 1))
    speech = clips()
    print(f"{len(speech)} clips, {sum(len(pcm) for pcm, _ in speech) / 32000:.0f} s of speech")
    print("\n| audio | beam | window floor s | WER | clips not exact | wall ms per pass | CPU ms per pass |")
    print("|---|---|---|---|---|---|---|")
    for snr in args.snr:
        noisy = [(pcm if snr == "clean" else with_noise(pcm, float(snr)), text) for pcm, text in speech]
        reference = " ".join(normalize(text) for _, text in noisy)
        for beam in args.beams:
            for window in args.windows:
                wall, cpu = time.perf_counter(), time.process_time()
                texts = [
                    normalize(decoder.decode([WhisperPass(pcm, beam, final=True, window=window)])[0].text)
                    for pcm, _ in noisy
                ]
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                wrong = sum(text != normalize(said) for text, (_, said) in zip(texts, noisy, strict=True))
                audio = "clean" if snr == "clean" else f"{snr} dB SNR"
                wer = jiwer.wer(reference, " ".join(texts))
                per_pass = f"{wall / len(noisy) * 1000:.0f} | {cpu / len(noisy) * 1000:.0f}"
                print(f"| {audio} | {beam} | {window:g} | {wer:.1%} | {wrong} / {len(noisy)} | {per_pass} |")


if __name__ == "__main__":
    main()
