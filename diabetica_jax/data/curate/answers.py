"""How much of a reference answer a generated one keeps (grounding and refinement checks)."""

from __future__ import annotations

from diabetica_jax.data.text import units


def recall(reference: str, candidate: str) -> float:
    """Fraction of the reference's distinct units (Chinese characters, words) present in the candidate."""
    ref = set(units(reference))
    if not ref:
        return 1.0
    return len(ref & set(units(candidate))) / len(ref)
