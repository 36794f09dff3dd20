"""Transcript normalisation for word error rates (tests and benchmarks score text this way)."""

from __future__ import annotations

import re

_ABBREVIATIONS = {"mr.": "mister", "mrs.": "missus", "dr.": "doctor"}


def normalize(text: str) -> str:
    """Lower case, abbreviations spelt out, punctuation and hyphens removed, spaces collapsed."""
    text = text.lower()
    for short, full in _ABBREVIATIONS.items():
        text = text.replace(short, full)
    text = re.sub(r"[^a-z' ]", " ", text.replace("-", " "))
    return " ".join(text.split())


def agreement(partial: str, final: str) -> float:
    """Recall: the share of the final's words already in the partial, in order (their longest common
    subsequence over the final's length): how much of what a person read on the live line the final kept."""
    kept = normalize(final).split()
    return _common_words(partial, final) / len(kept) if kept else 1.0


def precision(partial: str, final: str) -> float:
    """The share of the partial's words the final kept, in order: a partial full of words the final then
    took back reads badly however much of the final it also held."""
    shown = normalize(partial).split()
    return _common_words(partial, final) / len(shown) if shown else 1.0


def _common_words(partial: str, final: str) -> int:
    """The longest common subsequence of the two texts' normalised words."""
    shown, kept = normalize(partial).split(), normalize(final).split()
    # Longest common subsequence of words, row by row.
    previous = [0] * (len(kept) + 1)
    for word in shown:
        current = [0]
        for index, final_word in enumerate(kept):
            current.append(
                previous[index] + 1 if word == final_word else max(previous[index + 1], current[index])
            )
        previous = current
    return previous[-1]
