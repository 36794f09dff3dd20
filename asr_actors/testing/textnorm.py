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
    """The share of the final's words already in the partial, in order (their longest common subsequence
    over the final's length): how much of what a person read on the live line the final kept."""
    shown, kept = normalize(partial).split(), normalize(final).split()
    if not kept:
        return 1.0
    # Longest common subsequence of words, row by row.
    previous = [0] * (len(kept) + 1)
    for word in shown:
        current = [0]
        for index, final_word in enumerate(kept):
            current.append(
                previous[index] + 1 if word == final_word else max(previous[index + 1], current[index])
            )
        previous = current
    return previous[-1] / len(kept)
