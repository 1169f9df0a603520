"""The order-dependent half of curation: which records are duplicates of an earlier kept one.

Runs once, on the driver, over the compact arrays every unit's scan returned (scan.py), in input
order: the first of a group of exact or near duplicates is kept, whichever process scanned it.

exact     `np.unique` over the 20-byte keys: a record whose key occurred earlier is a duplicate of
          the first record with that key.
near      MinHash LSH among the survivors (filters.near_duplicates).
leaks     the benchmark verdicts the scan computed, applied to the records that survive dedup.

Memory: the signatures (num_perm x 4 bytes per record reaching dedup: 512 MB at 1M records with
the default 128), the keys (20 bytes) and ids; the records themselves stay in the spill files.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

from diabetica_jax.data.curate.config import DedupSection
from diabetica_jax.data.curate.filters import near_duplicates
from diabetica_jax.data.records import reason_class

if TYPE_CHECKING:
    from diabetica_jax.data.curate.scan import UnitSummary

KEPT = ""


@dataclasses.dataclass
class Decisions:
    """The fate of every record that reached dedup, in input order: `stage[i]` is "" (kept) or the stage
    that dropped it, `reason[i]` why; `records` is how many reached dedup."""

    stage: list[str]
    reason: dict[int, str]
    ids: list[str]
    labels: list[tuple[str, str, str]]
    leaks: dict[int, str]
    signatures: np.ndarray

    def kept(self) -> np.ndarray:
        return np.asarray([s == KEPT for s in self.stage], dtype=bool)


def gather(summaries: list["UnitSummary"]) -> Decisions:
    """One view over all units' arrays, in unit order, everything still kept."""
    ids, labels, leaks, offset = [], [], {}, 0
    for s in summaries:
        ids += s.ids
        labels += s.labels
        leaks.update({offset + i: reason for i, reason in s.leaks.items()})
        offset += len(s.ids)
    signatures = np.concatenate([s.signatures for s in summaries]) if summaries else np.zeros((0, 0), np.uint32)
    return Decisions([KEPT] * len(ids), {}, ids, labels, leaks, signatures)


def exact_and_near(summaries: list["UnitSummary"], dedup: DedupSection) -> Decisions:
    """Exact dedup, then near dedup among the survivors; leaks are not applied yet (see `apply_leaks`)."""
    decisions = gather(summaries)
    keys = np.concatenate([s.keys for s in summaries]) if summaries else np.zeros(0, "S20")
    first = _first_of_equal(keys)
    for i in np.flatnonzero(first != np.arange(len(keys))).tolist():
        decisions.stage[i] = "exact_dedup"
        decisions.reason[i] = f"exact duplicate of {decisions.ids[first[i]]}"
    survivors = np.flatnonzero(decisions.kept())
    if len(survivors):
        for j, (first_kept, similarity) in near_duplicates(decisions.signatures[survivors], dedup).items():
            i = int(survivors[j])
            decisions.stage[i] = "near_dedup"
            decisions.reason[i] = (f"near duplicate of {decisions.ids[survivors[first_kept]]} "
                                   f"(Jaccard ~{similarity:.2f})")
    decisions.signatures = np.zeros((0, 0), np.uint32)  # not needed any more: free the largest array
    return decisions


def _first_of_equal(keys: np.ndarray) -> np.ndarray:
    """For each 20-byte key, the index of its first occurrence: a stable sort of the keys read as integers
    (five uint32 columns), far faster than np.unique over byte strings."""
    n = len(keys)
    if n == 0:
        return np.zeros(0, np.int64)
    columns = np.frombuffer(keys.tobytes(), dtype=">u4").reshape(n, 5)
    order = np.lexsort(columns.T[::-1])  # stable: equal keys stay in input order
    ordered = columns[order]
    starts = np.concatenate([[True], np.any(ordered[1:] != ordered[:-1], axis=1)])
    run_first = order[np.flatnonzero(starts)]  # the first (lowest) index of each run of equal keys
    first = np.empty(n, np.int64)
    first[order] = run_first[np.cumsum(starts) - 1]
    return first


def drop(decisions: Decisions, dropped: dict[int, str], stage: str) -> None:
    """Mark records (by index) dropped by `stage`, e.g. semantic dedup run on the survivors."""
    for i, reason in dropped.items():
        decisions.stage[i] = stage
        decisions.reason[i] = reason


def apply_leaks(decisions: Decisions) -> None:
    """Benchmark decontamination of the records still kept."""
    for i, reason in decisions.leaks.items():
        if decisions.stage[i] == KEPT:
            decisions.stage[i] = "decontaminate"
            decisions.reason[i] = reason


def stage_reasons(decisions: Decisions, stage: str) -> Counter:
    return Counter(reason_class(decisions.reason[i]) for i, s in enumerate(decisions.stage) if s == stage)


def labels_kept_after(decisions: Decisions, stages_so_far: set[str]) -> Counter:
    """(source, kind, language) counts of the records not dropped by any of `stages_so_far`."""
    return Counter(label for label, s in zip(decisions.labels, decisions.stage) if s not in stages_so_far)
