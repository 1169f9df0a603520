"""The packing plan's cap on examples per row (data.max_segments_per_row)."""

import dataclasses

import numpy as np
import pytest

from diabetica_jax.configuration import FieldError
from diabetica_jax.data.config import DataSection
from diabetica_jax.data.loader import PackPlan

TINY = np.random.RandomState(3).randint(1, 5, 300)  # examples of 1-4 tokens: dozens fit a row of 64


def _examples_per_row(plan: PackPlan) -> np.ndarray:
    return np.diff(plan.row_offsets)


def _same_plan(a: PackPlan, b: PackPlan) -> bool:
    return all(np.array_equal(x, y) for x, y in zip((a.row_offsets, a.row_examples, a.epoch_rows),
                                                     (b.row_offsets, b.row_examples, b.epoch_rows)))


@pytest.mark.parametrize("packing", ["first_fit", "best_fit"])
def test_no_row_holds_more_examples_than_the_cap_and_every_example_is_still_packed_once(packing):
    data = DataSection(packing=packing, seq_len=64, packing_bins=4, epochs=2, global_batch=4, seed=1)
    uncapped = PackPlan(TINY, dataclasses.replace(data, max_segments_per_row=len(TINY)))
    assert _examples_per_row(uncapped).max() > 3  # so the cap below has rows to cut
    plan = PackPlan(TINY, dataclasses.replace(data, max_segments_per_row=3))
    assert _examples_per_row(plan).max() <= 3
    row_tokens = np.add.reduceat(TINY[plan.row_examples], plan.row_offsets[:-1])
    assert row_tokens.max() <= 64
    for epoch in range(2):
        rows = slice(plan.row_offsets[plan.epoch_rows[epoch]], plan.row_offsets[plan.epoch_rows[epoch + 1]])
        assert sorted(plan.row_examples[rows].tolist()) == list(range(len(TINY)))
    assert plan.tokens == 2 * TINY.sum()


@pytest.mark.parametrize("packing", ["first_fit", "best_fit"])
def test_a_cap_no_row_reaches_leaves_the_plan_as_it_was(packing):
    data = DataSection(packing=packing, seq_len=64, packing_bins=4, epochs=2, seed=1)
    uncapped = PackPlan(TINY, dataclasses.replace(data, max_segments_per_row=len(TINY)))
    most = int(_examples_per_row(uncapped).max())
    assert _same_plan(PackPlan(TINY, dataclasses.replace(data, max_segments_per_row=most)), uncapped)
    tighter = PackPlan(TINY, dataclasses.replace(data, max_segments_per_row=most - 1))
    assert not _same_plan(tighter, uncapped) and _examples_per_row(tighter).max() == most - 1


def test_the_cap_is_part_of_the_cached_plan_key(tmp_path, monkeypatch):
    data = DataSection(seq_len=64, packing_bins=4, max_segments_per_row=3)
    PackPlan(TINY, data, tmp_path)
    monkeypatch.setattr("diabetica_jax.data.loader._pack", lambda *a: pytest.fail("packed again"))
    PackPlan(TINY, data, tmp_path)  # the same cap: loaded
    with pytest.raises(pytest.fail.Exception, match="packed again"):
        PackPlan(TINY, dataclasses.replace(data, max_segments_per_row=4), tmp_path)


def test_the_cap_must_be_positive():
    with pytest.raises(FieldError, match="max_segments_per_row"):
        DataSection(max_segments_per_row=0)
