"""Checks on generated answers: which option an answer picks, and how much of a reference it keeps."""

from __future__ import annotations

import re
import unicodedata

from diabetica_jax.data.text import units

_PICK = [
    re.compile(r"(?:answer|答案|正确答案|最佳答案|选择|选)\s*(?:is|为|是|应为|应选)?\s*[:：]?\s*[(（]?\s*([A-H])(?![A-Za-z])", re.I),
    re.compile(r"^\s*[(（]?([A-H])[)）]?\s*(?:[.:：、．)]|$)"),
]


def picked_option(text: str) -> str | None:
    """The option letter an answer commits to: `Answer: B`, `答案：B`, or a leading `B.`; None if none."""
    text = unicodedata.normalize("NFKC", text)
    for pattern in _PICK:
        match = pattern.search(text)
        if match:
            return match.group(1).upper()
    return None


def recall(reference: str, candidate: str) -> float:
    """Fraction of the reference's distinct units (Chinese characters, words) present in the candidate."""
    ref = set(units(reference))
    if not ref:
        return 1.0
    return len(ref & set(units(candidate))) / len(ref)
