"""The curated directory written by tasks (shards by ShardTask, rejects and token store parts by FinishUnit) is
the one the driver's writers make from the same records: same shards, same token store, same card numbers."""

from __future__ import annotations

import json
import shutil

import grain
import numpy as np
import pytest
from store_checks import assert_same_token_store

from diabetica_jax.curate import pipeline
from diabetica_jax.curate.config import load_curate_config
from diabetica_jax.curate.write import plan_shards, write_shard_lines
from diabetica_jax.data.shards import check_curated
from diabetica_jax.data.token_store import build_token_store, open_token_store
from diabetica_jax.demo import CORPUS_DIR, DEMO_FILES
from diabetica_jax.hf.tokenizer import load_tokenizer


def _shard_lines(directory) -> list[list[bytes]]:
    return [list(grain.sources.ArrayRecordDataSource([str(p)])) for p in check_curated(directory)]


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    out = tmp_path_factory.mktemp("parts") / "curated"
    cfg = load_curate_config(None, ["output.shards=3", "output.hf_dataset=false"],
                             [str(CORPUS_DIR / name) for name in DEMO_FILES])
    card = pipeline.curate(cfg, out, progress=False)
    assert len(pipeline.plan_units(list(cfg.inputs))) > 1  # several units, so several parts of each file
    return out, card


def test_shards_are_cut_as_the_driver_cut_them(curated, tmp_path):
    out, card = curated
    shards = _shard_lines(out)
    lines = [line.decode() for shard in shards for line in shard]
    write_shard_lines(tmp_path, iter(lines), len(lines), 3)
    assert _shard_lines(tmp_path) == shards and len(lines) == card["kept"]
    assert [str(p.relative_to(tmp_path)) for p in check_curated(tmp_path)] == card["shards"]


@pytest.mark.parametrize("count", [1, 3, 8, 40])
def test_the_shard_plan_matches_write_shard_lines(count):
    kept = [0, 7, 0, 3, 12, 1, 0]
    plan = plan_shards(kept, count)
    owner = [unit for unit, k in enumerate(kept) for _ in range(k)]
    rank = [r for k in kept for r in range(k)]
    per = -(-sum(kept) // len(plan))
    for shard, pieces in plan:
        expected = list(zip(owner, rank))[shard * per:(shard + 1) * per]
        assert [(u, r) for u, lo, hi in pieces for r in range(lo, hi)] == expected
    assert len(plan) == min(count, sum(kept))
    assert plan_shards([0, 0], 4) == [(0, [])]  # nothing kept: still one (empty) shard


def test_assembled_token_store_is_the_one_built_from_the_shards(curated, tmp_path):
    out, card = curated
    tokenizer = load_tokenizer(None)
    assembled = open_token_store(out, tokenizer, build=False)  # the parts made it: nothing to build
    copy = tmp_path / "copy"
    shutil.copytree(out / "shards", copy / "shards", copy_function=shutil.copy2)  # same mtimes: same key
    built = build_token_store(copy, tokenizer, workers=1, progress=False)
    assert_same_token_store(copy, built, out, assembled)
    lengths = np.asarray(built.lengths)
    assert card["tokens"] == {"total": int(lengths.sum()), "mean": float(lengths.mean()),
                              "p50": float(np.percentile(lengths, 50)), "p95": float(np.percentile(lengths, 95)),
                              "max": int(lengths.max())}
    saved = json.loads((out / "data_card.json").read_text())
    assert saved["tokens"] == card["tokens"] and not (out / "work").exists()
