"""Exact and near dedup as tasks over files (resolve.py) decide exactly what one pass over all the signatures
decides: filters.near_duplicates over the exact survivors, whatever the partitions, chunks and hash quality."""

from __future__ import annotations

import numpy as np
import pytest

from diabetica_jax.curate import resolve
from diabetica_jax.curate.config import DedupSection
from diabetica_jax.curate.filters import near_duplicates


def _corpus(cfg: DedupSection, n: int, seed: int):
    """Signatures with near-duplicate chains (A~B~C, A!~C), ties, exact copies (same key, same signature),
    unrelated records whose bands collide by chance, and leaks."""
    rng = np.random.default_rng(seed)
    p = cfg.num_perm
    step = int(p * (1 - cfg.near_threshold))  # entries changed per link: each link just reaches the threshold
    signatures, keys = [], []
    while len(signatures) < n:
        roll = rng.random()
        if roll < 0.25 and signatures:  # a chain link from an earlier record
            base = signatures[rng.integers(len(signatures))].copy()
            changed = rng.choice(p, size=rng.integers(1, step + 2), replace=False)
            base[changed] = rng.integers(1 << 20, 1 << 30, len(changed))
            signatures.append(base)
            keys.append(rng.bytes(20))
        elif roll < 0.3 and signatures and cfg.bands <= step:  # similar enough, yet no band in common: no pair
            base = signatures[rng.integers(len(signatures))].copy()
            rows = p // cfg.bands
            changed = np.arange(cfg.bands) * rows + rng.integers(0, rows, cfg.bands)
            base[changed] = rng.integers(1 << 20, 1 << 30, len(changed))
            signatures.append(base)
            keys.append(rng.bytes(20))
        elif roll < 0.35 and signatures:  # an exact copy
            k = rng.integers(len(signatures))
            signatures.append(signatures[k].copy())
            keys.append(keys[k])
        elif roll < 0.4:  # a tie: J as similar to X1 as to X2 (both kept: they differ in twice J's changes)
            x1 = rng.integers(0, 1 << 32, p, dtype=np.uint64).astype(np.uint32)
            differ = rng.choice(p, size=2 * (step - 1), replace=False)
            x2, j = x1.copy(), x1.copy()
            x2[differ] = rng.integers(1 << 20, 1 << 30, len(differ))
            j[differ[: step - 1]] = x2[differ[: step - 1]]
            signatures += [x1, x2, j]
            keys += [rng.bytes(20) for _ in range(3)]
        elif roll < 0.5:  # small values: bands of unrelated records collide, mostly below the threshold
            signatures.append(rng.integers(0, 3, p).astype(np.uint32))
            keys.append(rng.bytes(20))
        else:
            signatures.append(rng.integers(0, 1 << 32, p, dtype=np.uint64).astype(np.uint32))
            keys.append(rng.bytes(20))
    signatures = np.stack(signatures[:n]).astype(np.uint32)
    keys = keys[:n]
    leaks = {int(i): f"benchmark overlap: bench.csv:{i} (90% of its 8-grams)" for i in rng.choice(n, n // 20)}
    return signatures, keys, leaks


def _reference(signatures, keys, leaks, ids, cfg):
    """{row: (stage, reason)} as the driver decided it before the tasks."""
    decided, first = {}, {}
    for row, key in enumerate(keys):
        if key in first:
            decided[row] = ("exact_dedup", f"exact duplicate of {ids[first[key]]}")
        else:
            first[key] = row
    survivors = np.asarray([row for row in range(len(keys)) if row not in decided], dtype=np.int64)
    for j, (i, similarity) in near_duplicates(signatures[survivors], cfg).items():
        decided[int(survivors[j])] = ("near_dedup", f"near duplicate of {ids[survivors[i]]} (Jaccard ~{similarity:.2f})")
    for row, reason in leaks.items():
        decided.setdefault(row, ("decontaminate", reason))
    return decided


def _sharded(tmp_path, signatures, keys, leaks, ids, cfg, cuts, partitions):
    offsets = [0, *cuts, len(ids)]
    for unit, (lo, hi) in enumerate(zip(offsets, offsets[1:])):
        resolve.save_unit(tmp_path, unit, ids[lo:hi], [("s", "qa", "en")] * (hi - lo), keys[lo:hi],
                          signatures[lo:hi], {row - lo: r for row, r in leaks.items() if lo <= row < hi}, cfg.bands)
    stats = resolve.exact_and_near(offsets, cfg, tmp_path, partitions, lambda fn, items, name: [fn(x) for x in items])
    decisions = resolve.UnitDecisions(tmp_path, offsets, cfg.num_perm)
    decided = {}
    for unit, lo in enumerate(offsets[:-1]):
        code, reason = decisions.stages(unit)
        for row in np.flatnonzero(code).tolist():
            decided[lo + row] = (resolve.STAGES[code[row]], reason[row])
    return decided, stats


@pytest.mark.parametrize("cfg", CONFIGS := [DedupSection(), DedupSection(near_threshold=0.7, num_perm=64, bands=16)],
                         ids=["128x32@0.8", "64x16@0.7"])
@pytest.mark.parametrize("partitions", [1, 3, 16])
def test_tasks_decide_what_one_pass_decides(tmp_path, cfg, partitions):
    n = 1500
    signatures, keys, leaks = _corpus(cfg, n, seed=partitions)
    ids = [f"rec-{k}" for k in range(n)]
    reference = _reference(signatures, keys, leaks, ids, cfg)
    decided, stats = _sharded(tmp_path, signatures, keys, leaks, ids, cfg, [0, 200, 200, 777, 1400], partitions)
    assert decided == reference
    stages = [stage for stage, _ in reference.values()]
    assert stages.count("exact_dedup") > 50 and stages.count("near_dedup") > 100 and "decontaminate" in stages
    # chains: kept records similar only to a record dropped as similar to an earlier one
    pairs = np.concatenate([np.load(f) for f in sorted((tmp_path / "dedup").glob("pairs-*.npy"))])
    assert stats["pairs"] == len(pairs) > stats["near"]
    assert any(j not in reference and i in reference for i, j in zip(pairs["i"].tolist(), pairs["j"].tolist()))


@pytest.mark.parametrize("cfg", CONFIGS, ids=["128x32@0.8", "64x16@0.7"])
def test_small_chunks_weak_hashes_and_big_groups(tmp_path, monkeypatch, cfg):
    """Band hashes that collide for most bands (grouping only by one column mod 5), chunks and pair blocks of a
    few entries: groups hold many different bands, and still only true LSH candidates count (at 64x16@0.7 two
    records can reach the threshold without sharing a band)."""
    monkeypatch.setattr(resolve, "band_hash", lambda block, band: (block[:, 0] % 5).astype(np.uint64) << np.uint64(61))
    monkeypatch.setattr(resolve, "CHUNK_ENTRIES", 64)
    monkeypatch.setattr(resolve, "PAIR_BLOCK", 50)
    n = 600
    signatures, keys, leaks = _corpus(cfg, n, seed=7)
    ids = [f"r{k}" for k in range(n)]
    decided, _ = _sharded(tmp_path, signatures, keys, leaks, ids, cfg, [300], partitions=4)
    assert decided == _reference(signatures, keys, leaks, ids, cfg)


def test_partition_count_grows_with_the_corpus_and_not_past_the_work():
    assert resolve.partition_count(0, 32, 8) == 1
    assert resolve.partition_count(1000, 32, 8) == 1  # too little work to share
    assert resolve.partition_count(100_000, 32, 2) == 2
    assert resolve.partition_count(4_000_000, 32, 2) == 31
    assert resolve.partition_count(10 ** 9, 32, 2) == resolve.MAX_PARTITIONS
