"""One check shared by the token-store and curation tests: two token stores hold the same bytes."""

import numpy as np


def assert_same_token_store(root, store, other_root, other) -> None:
    """`store` (under `root`) and `other` (under `other_root`) have the same key, token and mask bytes, offsets,
    columns and metadata, bar the build time."""
    assert store.meta["key"] == other.meta["key"]
    for name in ("tokens", "loss_mask"):
        assert (root / "tokens" / store.meta["key"] / name).read_bytes() == \
            (other_root / "tokens" / other.meta["key"] / name).read_bytes()
    np.testing.assert_array_equal(store.offsets, other.offsets)
    assert store.columns.keys() == other.columns.keys()
    for name, column in store.columns.items():
        np.testing.assert_array_equal(other.columns[name], column)
    assert {k: v for k, v in store.meta.items() if k != "built_seconds"} == \
        {k: v for k, v in other.meta.items() if k != "built_seconds"}
