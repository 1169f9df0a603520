"""Left padding of token prompts: the one batch layout for running prompts through the model.

Prompts are right-aligned so every row's last token sits in the last column, where the next token's
logits are read and where the KV cache continues. Padding is masked out (`valid`), and real tokens
get positions counted from 0 at their first token, so a padded row computes exactly what it would
alone.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import chex
import numpy as np

MIN_BUCKET = 16


def bucket(n: int, minimum: int = MIN_BUCKET) -> int:
    """n rounded up to a power of two (at least `minimum`), so mixed sizes share compiled programs."""
    return max(minimum, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


class LeftPadded(NamedTuple):
    tokens: np.ndarray  # [batch, width] int32; pad_id in padding
    valid: np.ndarray  # [batch, width] bool; True on real tokens
    positions: np.ndarray  # [batch, width] int32; 0 .. len-1 on real tokens, 0 in padding


def left_pad(prompts: list[list[int]], pad_id: int, *, bucketed: bool = False) -> LeftPadded:
    """Right-align `prompts` in one [batch, width] array.

    Exact size by default; `bucketed` rounds the batch up to a power of two and the width to a power
    of two of at least MIN_BUCKET. Rows added by the rounding are filler: their last column counts
    as one real token, so no row is fully masked (attention over no keys at all is undefined).
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    batch, width = len(prompts), max(len(p) for p in prompts)
    if bucketed:
        batch, width = bucket(batch, 1), bucket(width)
    tokens = np.full((batch, width), pad_id, np.int32)
    valid = np.zeros((batch, width), bool)
    for row, prompt in enumerate(prompts):
        tokens[row, width - len(prompt):] = prompt
        valid[row, width - len(prompt):] = True
    valid[len(prompts):, -1] = True
    positions = np.maximum(np.cumsum(valid, axis=1) - 1, 0).astype(np.int32)
    chex.assert_equal_shape([tokens, valid, positions])
    return LeftPadded(tokens, valid, positions)
