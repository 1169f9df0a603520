"""How much of a reference answer a generated one keeps (grounding and refinement checks)."""

from __future__ import annotations

from collections import Counter

from diabetica_jax.data.text import units


def recall(reference: str, candidate: str) -> float:
    """Fraction of the reference's distinct units (Chinese characters, words) present in the candidate."""
    ref = set(units(reference))
    if not ref:
        return 1.0
    return len(ref & set(units(candidate))) / len(ref)


def unigram_f1(reference: str, candidate: str) -> float:
    """ROUGE-1 F1 (no stemming) between two texts over their units, counted with multiplicity."""
    ref, cand = Counter(units(reference)), Counter(units(candidate))
    overlap = sum((ref & cand).values())
    if not overlap:
        return 1.0 if not ref and not cand else 0.0
    precision, recall_ = overlap / sum(cand.values()), overlap / sum(ref.values())
    return 2 * precision * recall_ / (precision + recall_)
