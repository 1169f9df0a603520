"""The order-dependent half of curation: which records are duplicates of an earlier kept one, decided by
tasks over files, so that the driver holds nothing per record.

Every record that passed the per-record stages has a global row: its unit's offset (records of the
earlier units) plus its row in the unit. The scan saves per unit (`save_unit`, files in the work dir):

    unit-N.sig.npy     [n, num_perm] uint32 MinHash signatures     (read by row, memory-mapped)
    unit-N.keys.npy    [n] S20 exact keys (SHA-1 of the normalised text)
    unit-N.ids.npy     [n] record ids, UTF-8                        (for the reasons naming the kept record)
    unit-N.labels.npy  [n] codes into the label table of unit-N.json, which also holds the unit's leaks
    unit-N.bands.npy   [n * bands] (hash, band, row), sorted by hash: one entry per record and LSH band

Then, through the same engine as the scan (`exact_and_near`):

1. band tasks, one per range of band hashes (`partition_count`): each reads its hash range of every
   unit's band file (a binary search, no full read), groups entries by (band, hash), and in each group
   of two or more:
   exact  records with the same exact key have the same signature, so all copies of a text meet in
          every group of theirs: the first of a key in its band-0 group is the first in the corpus,
          and the others are its exact duplicates (written to exact-P.npy)
   pairs  among exact survivors, each pair (i < j) whose band really is equal (hashes may collide) and
          whose estimated Jaccard (equal signature entries / num_perm) reaches the threshold, reported
          only by the first band the two share, so once (pairs-P.npy)
2. one decision task: pairs in order of j; j is dropped iff a partner i < j is still kept, naming the
   most similar one (ties: the earliest) - exactly filters.near_duplicates over the exact survivors,
   because a pair below the threshold can never drop anything. Its memory is the pairs', not the corpus'.
3. `unit_stages`, per unit (in the write tasks): each record's stage and reason from the sorted
   exact.npy and near.npy (binary searches), semantic dedup's drops if any, and the unit's leaks,
   applied to the survivors.

Cost: per record num_perm x 4 bytes of signature, 20 of key and bands x 14 of band entries on disk; a band
task sorts about records x bands / partitions entries and reads the signatures of the rows in its shared
groups, a chunk of groups at a time; a group of g copies costs g^2 / 2 comparisons, in vectorised blocks.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np

from diabetica_jax.curate.config import DedupSection

KEPT, EXACT, NEAR, SEMANTIC, LEAK = range(5)
STAGES = ("", "exact_dedup", "near_dedup", "semantic_dedup", "decontaminate")  # by code

BAND_ENTRY = np.dtype([("hash", "<u8"), ("band", "<u2"), ("row", "<u4")])
EXACT_DROP = np.dtype([("dup", "<i8"), ("first", "<i8")])
PAIR = np.dtype([("i", "<i8"), ("j", "<i8"), ("count", "<u2")])  # count: equal signature entries

ENTRIES_PER_PARTITION = 4 << 20  # band entries a task sorts (~60 MB with its sort): sets the partition count
MIN_ENTRIES_PER_PARTITION = 1 << 16  # below this a task costs more to start than it saves
MAX_PARTITIONS = 1024
CHUNK_ENTRIES = 1 << 18  # shared-group entries whose signatures a band task holds at once
PAIR_BLOCK = 1 << 16  # pairs compared at once: [PAIR_BLOCK, num_perm] bools


def unit_file(work: str | Path, index: int, kind: str) -> Path:
    return Path(work) / f"unit-{index:06d}.{kind}"


def dedup_dir(work: str | Path) -> Path:
    return Path(work) / "dedup"


# ---- what the scan saves per unit -------------------------------------------------------------------

def save_unit(work: str | Path, index: int, ids: list[str], labels: list[tuple[str, str, str]], keys: list[bytes],
              signatures: np.ndarray, leaks: dict[int, str], bands: int) -> None:
    """A scanned unit's per-record arrays, as the module docstring lists them."""
    np.save(unit_file(work, index, "sig.npy"), signatures)
    np.save(unit_file(work, index, "keys.npy"), np.asarray(keys, dtype="S20").reshape(-1))
    np.save(unit_file(work, index, "ids.npy"), np.asarray([i.encode() for i in ids], dtype="S"))
    table = list(dict.fromkeys(labels))  # first appearance order: the card's counts keep their order
    code = {label: k for k, label in enumerate(table)}
    np.save(unit_file(work, index, "labels.npy"), np.asarray([code[label] for label in labels], dtype=np.uint32))
    np.save(unit_file(work, index, "bands.npy"), band_entries(signatures, bands))
    side = {"labels": table, "leaks": {str(row): reason for row, reason in leaks.items()}}
    unit_file(work, index, "json").write_text(json.dumps(side, ensure_ascii=False), encoding="utf-8")


def band_entries(signatures: np.ndarray, bands: int) -> np.ndarray:
    """(hash, band, row) for every row and LSH band of `signatures`, sorted by hash (stable: then band, row)."""
    n, num_perm = signatures.shape
    rows = num_perm // bands
    out = np.empty(n * bands, BAND_ENTRY)
    for band in range(bands):
        part = out[band * n:(band + 1) * n]
        part["hash"] = band_hash(signatures[:, band * rows:(band + 1) * rows], band)
        part["band"] = band
        part["row"] = np.arange(n, dtype=np.uint32)
    return out[np.argsort(out["hash"], kind="stable")]


_MIX = np.uint64(0x9E3779B97F4A7C15)


def band_hash(block: np.ndarray, band: int) -> np.ndarray:
    """A 64-bit hash of each row of a band's uint32 columns, mixed well enough that hash ranges split the
    entries evenly (splitmix64's finaliser). Equal hashes are only candidates: tasks compare the bands."""
    h = np.full(len(block), ((band + 1) * int(_MIX)) % (1 << 64), dtype=np.uint64)
    for column in block.T:
        h = (h ^ column.astype(np.uint64)) * _MIX
    h ^= h >> np.uint64(30)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def partition_count(records: int, bands: int, workers: int) -> int:
    """Band-hash partitions: enough that none sorts more than ENTRIES_PER_PARTITION entries, at least one per
    worker when there is enough work for them."""
    entries = records * bands
    by_size = -(-entries // ENTRIES_PER_PARTITION)
    by_workers = min(workers, entries // MIN_ENTRIES_PER_PARTITION)
    return int(max(1, min(MAX_PARTITIONS, max(by_size, by_workers))))


def _bounds(partition: int, partitions: int) -> tuple[int, int | None]:
    """[lo, hi) of the partition's band hashes (hi None: to the end of the uint64 range)."""
    lo = (partition << 64) // partitions
    return lo, None if partition == partitions - 1 else ((partition + 1) << 64) // partitions


class _Rows:
    """Per-record arrays of all units, read by global row through memory maps (opened once per unit)."""

    def __init__(self, work: str | Path, offsets: list[int], kind: str):
        self.work, self.offsets, self.kind = work, np.asarray(offsets, np.int64), kind
        self.maps: dict[int, np.ndarray] = {}

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        """The rows (sorted global rows) of the array."""
        units = np.searchsorted(self.offsets, rows, side="right") - 1
        parts = []
        for unit in np.unique(units).tolist():
            if unit not in self.maps:
                self.maps[unit] = np.load(unit_file(self.work, unit, self.kind), mmap_mode="r")
            parts.append(self.maps[unit][rows[units == unit] - self.offsets[unit]])
        return np.concatenate(parts) if parts else np.zeros(0)


# ---- band tasks ------------------------------------------------------------------------------------------

@dataclasses.dataclass
class BandTask:
    """Exact duplicates and above-threshold LSH pairs of one band-hash partition (see the module docstring)."""

    work: str
    offsets: list[int]  # global row of each unit's first record, and the total at the end
    dedup: DedupSection
    partitions: int

    def __call__(self, partition: int) -> dict:
        hashes, bands, rows = self._entries(partition)
        order = np.lexsort((rows, bands, hashes))
        hashes, bands, rows = hashes[order], bands[order], rows[order]
        group = np.cumsum(_starts(hashes, bands)) - 1
        shared = np.bincount(group)[group] > 1
        bands, rows, group = bands[shared], rows[shared], group[shared]
        exact, pairs = [], []
        signatures, keys = _Rows(self.work, self.offsets, "sig.npy"), _Rows(self.work, self.offsets, "keys.npy")
        for lo, hi in _chunks(group):
            e, p = self._chunk(bands[lo:hi], rows[lo:hi], group[lo:hi], signatures, keys)
            exact.append(e)
            pairs.append(p)
        exact = np.concatenate(exact) if exact else np.zeros(0, EXACT_DROP)
        pairs = np.concatenate(pairs) if pairs else np.zeros(0, PAIR)
        out = dedup_dir(self.work)
        out.mkdir(exist_ok=True)
        np.save(out / f"exact-{partition:05d}.npy", exact)
        np.save(out / f"pairs-{partition:05d}.npy", pairs)
        return {"entries": len(order), "shared": len(rows), "exact": len(exact), "pairs": len(pairs)}

    def _entries(self, partition: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """This partition's slice of every unit's band file: hash, band, global row."""
        lo, hi = _bounds(partition, self.partitions)
        parts = []
        for unit in range(len(self.offsets) - 1):
            if self.offsets[unit + 1] == self.offsets[unit]:
                continue
            entries = np.load(unit_file(self.work, unit, "bands.npy"), mmap_mode="r")
            a = int(np.searchsorted(entries["hash"], np.uint64(lo)))
            b = len(entries) if hi is None else int(np.searchsorted(entries["hash"], np.uint64(hi)))
            part = np.array(entries[a:b])
            parts.append((part["hash"], part["band"], part["row"].astype(np.int64) + self.offsets[unit]))
        if not parts:
            return np.zeros(0, np.uint64), np.zeros(0, np.uint16), np.zeros(0, np.int64)
        return tuple(np.concatenate(columns) for columns in zip(*parts))

    def _chunk(self, bands, rows, group, signatures: _Rows, keys: _Rows) -> tuple[np.ndarray, np.ndarray]:
        """Exact drops and pairs of whole groups (entries sorted by group, then row)."""
        unique, local = np.unique(rows, return_inverse=True)
        sig = np.asarray(signatures[unique])
        key = np.unique(np.asarray(keys[unique]), return_inverse=True)[1].reshape(-1)[local]
        # the first entry of each (group, key) is its text's first occurrence; the others copy it
        order = np.lexsort((rows, key, group))
        first_of_run = _starts(group[order], key[order])
        survivor, first_row = np.empty(len(rows), bool), np.empty(len(rows), np.int64)
        survivor[order] = first_of_run
        first_row[order] = rows[order][np.flatnonzero(first_of_run)][np.cumsum(first_of_run) - 1]
        copy = np.flatnonzero(~survivor & (bands == 0))  # each record has one band-0 entry: reported once
        exact = np.empty(len(copy), EXACT_DROP)
        exact["dup"], exact["first"] = rows[copy], first_row[copy]
        return exact, self._pairs(bands[survivor], local[survivor], group[survivor], unique, sig)

    def _pairs(self, bands, local, group, unique, sig) -> np.ndarray:
        """Every pair (i < j) of entries of a group that is an LSH candidate first in this band and reaches
        the threshold; `local` indexes `sig` and `unique` (the global rows)."""
        n = len(group)
        if n < 2:
            return np.zeros(0, PAIR)
        ends = np.append(np.flatnonzero(_starts(group))[1:], n)
        end = np.repeat(ends, np.diff(np.concatenate([[0], ends])))  # each entry's group end
        partners = end - np.arange(n) - 1  # the later entries of its group
        total = np.cumsum(partners)
        rows_per_band = self.dedup.num_perm // self.dedup.bands
        found, start = [], 0
        while start < n:  # blocks of about PAIR_BLOCK pairs (an entry's partners are never split)
            stop = max(start + 1, int(np.searchsorted(total, (total[start - 1] if start else 0) + PAIR_BLOCK,
                                                      side="right")))
            count = partners[start:stop]
            a = np.repeat(np.arange(start, stop), count)
            if len(a):
                b = a + 1 + np.arange(len(a)) - np.repeat(np.cumsum(count) - count, count)
                equal = sig[local[a]] == sig[local[b]]
                matches = equal.sum(axis=1)
                same_band = equal.reshape(len(a), self.dedup.bands, rows_per_band).all(axis=2)
                band = bands[a].astype(np.int64)
                keep = (same_band[np.arange(len(a)), band] & (np.argmax(same_band, axis=1) == band)
                        & (matches / self.dedup.num_perm >= self.dedup.near_threshold))
                pairs = np.empty(int(keep.sum()), PAIR)
                pairs["i"], pairs["j"] = unique[local[a[keep]]], unique[local[b[keep]]]
                pairs["count"] = matches[keep]
                found.append(pairs)
            start = stop
        return np.concatenate(found) if found else np.zeros(0, PAIR)


def _chunks(group: np.ndarray):
    """[lo, hi) ranges of whole groups, about CHUNK_ENTRIES entries each (a larger group alone)."""
    if not len(group):
        return
    bounds = np.append(np.flatnonzero(_starts(group)), len(group))  # where each group starts, and the end
    lo = 0
    while lo < len(group):
        hi = int(bounds[np.searchsorted(bounds, lo + CHUNK_ENTRIES, side="right") - 1])
        if hi <= lo:  # the group at lo alone is larger than a chunk
            hi = int(bounds[np.searchsorted(bounds, lo, side="right")])
        yield lo, hi
        lo = hi


def _starts(*columns: np.ndarray) -> np.ndarray:
    """True where a run of equal values (over all columns, sorted) begins."""
    starts = np.zeros(len(columns[0]), bool)
    starts[:1] = True
    for column in columns:
        starts[1:] |= column[1:] != column[:-1]
    return starts


# ---- the decision task -------------------------------------------------------------------------------------

@dataclasses.dataclass
class NearTask:
    """Exact drops merged, and near dedup decided from the pairs, in row order (the module docstring's step 2)."""

    work: str
    partitions: int

    def __call__(self, _unit=None) -> dict:
        out = dedup_dir(self.work)
        exact = _load_all(out, "exact", self.partitions, EXACT_DROP)
        np.save(out / "exact.npy", exact[np.argsort(exact["dup"], kind="stable")])
        pairs = _load_all(out, "pairs", self.partitions, PAIR)
        near = pairs[_decide(pairs)]
        np.save(out / "near.npy", near)
        return {"exact": len(exact), "pairs": len(pairs), "near": len(near)}


def _load_all(directory: Path, name: str, partitions: int, dtype) -> np.ndarray:
    parts = [np.load(directory / f"{name}-{p:05d}.npy") for p in range(partitions)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


def _decide(pairs: np.ndarray) -> np.ndarray:
    """Indices of the pairs (i, j) that drop their j, in order of j: the first kept partner of j in order of
    most equal entries, then earliest i. Walks records in order, so i's fate is known when j's is decided."""
    if not len(pairs):
        return np.zeros(0, np.int64)
    order = np.lexsort((pairs["i"], -pairs["count"].astype(np.int64), pairs["j"]))
    i, j = pairs["i"][order], pairs["j"][order]
    compact = np.unique(np.concatenate([i, j]), return_inverse=True)[1]
    ci, cj = compact[: len(i)].tolist(), compact[len(i):].tolist()
    starts = np.flatnonzero(_starts(j)).tolist() + [len(j)]
    dropped, chosen = bytearray(int(max(compact)) + 1), []
    for s, e in zip(starts, starts[1:]):
        for k in range(s, e):
            if not dropped[ci[k]]:
                dropped[cj[s]] = 1
                chosen.append(order[k])
                break
    return np.asarray(chosen, dtype=np.int64)


def exact_and_near(offsets: list[int], dedup: DedupSection, work: str | Path, partitions: int,
                   run: Callable[[Callable, list, str], list]) -> dict:
    """Steps 1 and 2 of the module docstring; `run(fn, items, name)` runs fn over items as tasks (the scan's
    engine). Returns counts for the log."""
    bands = run(BandTask(str(work), list(offsets), dedup, partitions), list(range(partitions)), "dedup-bands")
    stats = run(NearTask(str(work), partitions), [0], "dedup-decide")[0]
    stats.update(partitions=partitions, band_entries=sum(b["entries"] for b in bands),
                 shared_entries=sum(b["shared"] for b in bands))
    return stats


# ---- each unit's decisions ---------------------------------------------------------------------------------

class UnitDecisions:
    """Each record's stage code and reason, for the records of units read by global row range."""

    def __init__(self, work: str | Path, offsets: list[int], num_perm: int):
        self.work, self.offsets, self.num_perm = work, list(offsets), num_perm
        self.ids = _Rows(work, offsets, "ids.npy")
        directory = dedup_dir(work)
        self.exact = np.load(directory / "exact.npy", mmap_mode="r")
        self.near = np.load(directory / "near.npy", mmap_mode="r")
        semantic = directory / "semantic.json"
        self.semantic = ({int(k): v for k, v in json.loads(semantic.read_text(encoding="utf-8")).items()}
                         if semantic.exists() else {})

    def stages(self, unit: int, leaks: bool = True) -> tuple[np.ndarray, dict[int, str]]:
        """(stage code per row of the unit, {row: reason}); leaks apply to the records every dedup kept."""
        lo, hi = self.offsets[unit], self.offsets[unit + 1]
        code, reason = np.zeros(hi - lo, np.uint8), {}
        exact = _range(self.exact, "dup", lo, hi)
        for dup, name in zip(exact["dup"].tolist(), self._id(exact["first"])):
            code[dup - lo], reason[dup - lo] = EXACT, f"exact duplicate of {name}"
        near = _range(self.near, "j", lo, hi)
        for j, count, name in zip(near["j"].tolist(), near["count"].tolist(), self._id(near["i"])):
            code[j - lo] = NEAR
            reason[j - lo] = f"near duplicate of {name} (Jaccard ~{count / self.num_perm:.2f})"
        for row in range(lo, hi) if self.semantic else ():
            if row in self.semantic:
                code[row - lo], reason[row - lo] = SEMANTIC, self.semantic[row]
        if leaks:
            for row, why in unit_side(self.work, unit)["leaks"].items():
                if code[int(row)] == KEPT:
                    code[int(row)], reason[int(row)] = LEAK, why
        return code, reason

    def _id(self, rows: np.ndarray) -> list[str]:
        if not len(rows):
            return []
        rows = np.asarray(rows, np.int64)
        order = np.argsort(rows, kind="stable")
        names = np.empty(len(rows), object)
        names[order] = [b.decode() for b in self.ids[rows[order]].tolist()]
        return names.tolist()


def _range(array: np.ndarray, field: str, lo: int, hi: int) -> np.ndarray:
    a, b = np.searchsorted(array[field], [lo, hi])
    return np.array(array[a:b])


def unit_side(work: str | Path, unit: int) -> dict:
    return json.loads(unit_file(work, unit, "json").read_text(encoding="utf-8"))


def unit_labels(work: str | Path, unit: int) -> tuple[list[tuple[str, str, str]], np.ndarray]:
    """(the unit's label table, each record's code into it)."""
    table = [tuple(label) for label in unit_side(work, unit)["labels"]]
    return table, np.load(unit_file(work, unit, "labels.npy"))


def stage_counts(code: np.ndarray, reason: dict[int, str], table: list[tuple], labels: np.ndarray,
                 stages: tuple[int, ...]) -> dict[str, tuple[Counter, Counter]]:
    """For each stage code: the labels of the records kept after it and its reason classes, each Counter in
    the order of first appearance (added up over units in unit order, the order one pass would give)."""
    from diabetica_jax.data.records import reason_class

    out = {}
    for stage in stages:
        kept = labels[(code == KEPT) | (code > stage)]
        present, first = np.unique(kept, return_index=True)
        counts = np.bincount(kept, minlength=len(table))
        order = present[np.argsort(first)].tolist()
        reasons = Counter(reason_class(reason[row]) for row in np.flatnonzero(code == stage).tolist())
        out[STAGES[stage]] = (Counter({table[k]: int(counts[k]) for k in order}), reasons)
    return out
