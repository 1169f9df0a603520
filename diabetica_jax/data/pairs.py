"""Preference pairs packed into rows: each pair's chosen and rejected replies as two adjacent documents.

A pair is (prompt ids, chosen ids, rejected ids). In a row, pair p's chosen document (prompt + chosen
reply) is segment 2p+1 and its rejected one segment 2p+2, each with positions from 0, so attention
keeps them apart exactly as two separate sequences; only reply tokens are loss tokens, so a
segment's summed log-prob is log p(reply | prompt). Rows hold a fixed number of pair slots; a row
with fewer pairs leaves the rest empty (train/preference.py counts only the pairs present).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from diabetica_jax.data.batch import Batch

Pair = tuple[Sequence[int], Sequence[int], Sequence[int]]


def pair_length(pair: Pair) -> int:
    """Tokens the pair takes in a row: the prompt twice and both replies."""
    prompt, chosen, rejected = pair
    return 2 * len(prompt) + len(chosen) + len(rejected)


def pack_pairs(pairs: Sequence[Pair], pairs_per_row: int, seq_len: int, rows: int | None = None) -> Batch:
    """Rows [rows, seq_len] of `pairs_per_row` pairs each, in order; fields as data.batch.Batch.

    `rows` pads the result with empty rows (all zeros) up to a fixed count. A pair longer than a
    row's share, or a reply without tokens, is a ValueError naming the pair's index: the feed
    decides beforehand what to cut, nothing is cut here.
    """
    needed = -(-len(pairs) // pairs_per_row)
    rows = needed if rows is None else rows
    if rows < needed:
        raise ValueError(f"{len(pairs)} pairs need {needed} rows of {pairs_per_row}, not {rows}")
    fields = np.zeros((4, rows, seq_len), np.int32)
    tokens, loss_mask, segment_ids, positions = fields
    filled = np.zeros(rows, np.int64)  # each row's next free position
    for index, pair in enumerate(pairs):
        prompt, chosen, rejected = pair
        if not len(chosen) or not len(rejected):
            raise ValueError(f"pair {index}: its {'chosen' if not len(chosen) else 'rejected'} reply has no tokens")
        row, slot = divmod(index, pairs_per_row)
        start = int(filled[row])
        if start + pair_length(pair) > seq_len:
            raise ValueError(f"pair {index}: {pair_length(pair)} tokens (prompt twice and both replies) do not "
                             f"fit row {row} from position {start} of {seq_len}")
        for side, reply in enumerate((chosen, rejected)):
            doc = np.concatenate([np.asarray(prompt, np.int32), np.asarray(reply, np.int32)])
            end = start + len(doc)
            tokens[row, start:end] = doc
            loss_mask[row, start + len(prompt):end] = 1
            segment_ids[row, start:end] = 2 * slot + side + 1
            positions[row, start:end] = np.arange(len(doc))
            start = end
        filled[row] = start
    return Batch(tokens, loss_mask, segment_ids, positions)
