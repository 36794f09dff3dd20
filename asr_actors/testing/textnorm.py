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
