"""Preference pairs packed into rows: layout, empty slots, and the errors that name the pair."""

import numpy as np
import pytest

from diabetica_jax.data.pairs import pack_pairs


def test_pairs_take_adjacent_segments_with_reply_loss_tokens():
    rows = pack_pairs([([1, 2], [3], [4, 5]), ([6], [7, 8], [9])], pairs_per_row=2, seq_len=16, rows=2)
    assert rows.tokens.shape == (2, 16)
    np.testing.assert_array_equal(rows.tokens[0, :12], [1, 2, 3, 1, 2, 4, 5, 6, 7, 8, 6, 9])
    np.testing.assert_array_equal(rows.segment_ids[0, :12], [1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 4, 4])
    np.testing.assert_array_equal(rows.loss_mask[0, :12], [0, 0, 1, 0, 0, 1, 1, 0, 1, 1, 0, 1])
    np.testing.assert_array_equal(rows.positions[0, :12], [0, 1, 2, 0, 1, 2, 3, 0, 1, 2, 0, 1])
    assert not rows.segment_ids[0, 12:].any() and not rows.tokens[1].any()  # padding, and an empty row


def test_a_pair_that_does_not_fit_or_has_an_empty_reply_is_named():
    with pytest.raises(ValueError, match="pair 1: 9 tokens"):
        pack_pairs([([1], [2], [3]), ([1, 2, 3], [4, 5], [6])], pairs_per_row=2, seq_len=10)
    with pytest.raises(ValueError, match="pair 0: its rejected reply has no tokens"):
        pack_pairs([([1], [2], [])], pairs_per_row=1, seq_len=10)
    with pytest.raises(ValueError, match="3 pairs need 2 rows"):
        pack_pairs([([1], [2], [3])] * 3, pairs_per_row=2, seq_len=10, rows=1)
