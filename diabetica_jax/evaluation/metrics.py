"""Metrics, each small enough to check by hand.

accuracy + 95% Wilson interval (the benchmarks are small: 235 and 77 items), character-level
ROUGE-1/2/L F1 and BLEU for Chinese fill-in-the-blank answers (BLEU as the paper computed it: nltk
sentence_bleu over characters with smoothing method 4), and robust judge-score parsing.
"""

from __future__ import annotations

import math
import re
from collections import Counter


def wilson_interval(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    if total == 0:
        return (float("nan"), float("nan"))
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    # At 0% and 100% centre and half are equal in exact arithmetic, but float rounding can leave
    # the bound a hair on the wrong side of p (0.0 < 3e-17); the interval always contains p.
    return (min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half)))


def _chars(text: str) -> list[str]:
    return [c for c in text if not c.isspace()]


def _f1(overlap: int, candidate: int, reference: int) -> float:
    if overlap == 0 or candidate == 0 or reference == 0:
        return 0.0
    precision, recall = overlap / candidate, overlap / reference
    return 2 * precision * recall / (precision + recall)


def rouge_n(candidate: str, reference: str, n: int) -> float:
    def grams(chars):
        return Counter(tuple(chars[i : i + n]) for i in range(len(chars) - n + 1))

    c, r = grams(_chars(candidate)), grams(_chars(reference))
    return _f1(sum((c & r).values()), sum(c.values()), sum(r.values()))


def rouge_l(candidate: str, reference: str) -> float:
    c, r = _chars(candidate), _chars(reference)
    if not c or not r:
        return 0.0
    previous = [0] * (len(r) + 1)
    for a in c:
        current = [0]
        for j, b in enumerate(r):
            current.append(previous[j] + 1 if a == b else max(previous[j + 1], current[j]))
        previous = current
    return _f1(previous[-1], len(c), len(r))


def bleu(candidate: str, reference: str) -> float:
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    c, r = _chars(candidate), _chars(reference)
    if not c or not r:
        return 0.0
    return float(sentence_bleu([r], c, smoothing_function=SmoothingFunction().method4))


_SCORE_PATTERNS = [
    re.compile(r"(?:score|评分|得分|分数)\s*[:：]?\s*(\d+(?:\.\d+)?)\s*(?:/\s*10|分)?", re.I),
    re.compile(r"(\d+(?:\.\d+)?)\s*/\s*10\b"),
]


def parse_score(reply: str, low: float = 1.0, high: float = 10.0) -> float | None:
    """The judge's score: the last `Score: 8` / `评分：7.5` / `8/10` in the reply; None when there is
    none or it is out of range (recorded as unparsed, never as zero)."""
    for pattern in _SCORE_PATTERNS:
        found = pattern.findall(reply or "")
        if found:
            value = float(found[-1])
            return value if low <= value <= high else None
    return None
