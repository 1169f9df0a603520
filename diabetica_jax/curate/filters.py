"""Filter stages. Each takes the records that reached it and returns (kept, rejects), a reason per drop.

relevance      bilingual weighted term lists: score = sum of positive weights - sum of negative weights
               over the distinct terms present; kept when score >= min_score (not any-match)
quality        length bounds, garbage / mojibake character ratio, repetition
exact_dedup    identical after normalisation (NFKC, case, punctuation, whitespace)
near_dedup     MinHash over character-level shingles with LSH banding; Jaccard >= threshold
decontaminate  n-gram overlap with evaluation items: a record containing most of a benchmark
               question's n-grams (also after light edits) is dropped
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections import Counter, defaultdict
from collections.abc import Iterable

import numpy as np

from diabetica_jax.curate.config import DecontaminationSection, DedupSection, QualitySection, RelevanceSection
from diabetica_jax.data.records import Record, Reject
from diabetica_jax.data.text import ngrams, normalize, units

Result = tuple[list[Record], list[Reject]]


def _reject(stage: str, record: Record, reason: str) -> Reject:
    return Reject(stage, reason, record.provenance, record=record.to_json())


# ---- relevance -----------------------------------------------------------------------------------

class RelevanceScorer:
    """The relevance verdict of one normalised text: None when kept, else the reject reason."""

    def __init__(self, cfg: RelevanceSection):
        self.min_score = cfg.min_score
        self.positive = {normalize(t): w for t, w in cfg.positive.items()}
        self.negative = {normalize(t): w for t, w in cfg.negative.items()}

    def problem(self, text: str) -> str | None:
        # a substring test first (C speed): the word-boundary regex runs only for terms that occur at all
        hits_pos = sorted(t for t in self.positive if t in text and _contains(text, t))
        hits_neg = sorted(t for t in self.negative if t in text and _contains(text, t))
        score = sum(self.positive[t] for t in hits_pos) - sum(self.negative[t] for t in hits_neg)
        if score >= self.min_score:
            return None
        why = f"low diabetes relevance: score {score:g} < {self.min_score:g}"
        return why + f" (positive: {', '.join(hits_pos[:5]) or 'none'}; negative: {', '.join(hits_neg[:5]) or 'none'})"


def relevance(records: Iterable[Record], cfg: RelevanceSection) -> Result:
    kept, rejects = [], []
    scorer = RelevanceScorer(cfg)
    for record in records:
        reason = scorer.problem(normalize(record.content()))
        if reason is None:
            kept.append(record)
        else:
            rejects.append(_reject("relevance", record, reason))
    return kept, rejects


def _contains(text: str, term: str) -> bool:
    if re.search(r"[\u4e00-\u9fff]", term):
        return term in text
    return re.search(rf"(?<![a-z0-9]){re.escape(term)}(?![a-z0-9])", text) is not None


# ---- quality -------------------------------------------------------------------------------------

_MOJIBAKE = re.compile(r"[\ufffd]|锟斤拷|烫烫烫|Ã.|â€|Â")
_DISALLOWED = re.compile(r"[^\w\s\u3000-\u303f\uff00-\uffef.,;:!?()\[\]{}'\"%/+\-*=<>≥≤~·–—…“”‘’#@&^|\\]")


_ALLOWED_ASCII = bytes(c for c in range(128) if not _DISALLOWED.match(chr(c)))


def quality(records: Iterable[Record], cfg: QualitySection) -> Result:
    kept, rejects = [], []
    for record in records:
        reason = quality_problem(record.content(), units(record.content()), cfg)
        if reason:
            rejects.append(_reject("quality", record, reason))
        else:
            kept.append(record)
    return kept, rejects


def quality_problem(text: str, u: list[str], cfg: QualitySection) -> str | None:
    """The quality verdict of a record's text (and its comparison units): None when kept, else the reason."""
    n = len(text)
    if n < cfg.min_chars:
        return f"too short: {n} characters < {cfg.min_chars}"
    if n > cfg.max_chars:
        return f"too long: {n} characters > {cfg.max_chars}"
    if text.isascii():  # no mojibake pattern is ASCII; count the refused bytes at C speed
        raw = text.encode()
        garbage = len(raw.translate(None, _ALLOWED_ASCII))
    else:
        garbage = len(_DISALLOWED.findall(text)) + sum(len(m) for m in _MOJIBAKE.findall(text))
    if garbage / n > cfg.max_garbage_ratio:
        return f"garbage or mojibake characters: {garbage / n:.0%} > {cfg.max_garbage_ratio:.0%}"
    if len(u) >= 20:
        grams = [tuple(u[i : i + 3]) for i in range(len(u) - 2)]
        repeated = 1 - len(set(grams)) / len(grams)
        if repeated > cfg.max_repetition:
            return f"repetitive: {repeated:.0%} of 3-grams repeat > {cfg.max_repetition:.0%}"
    return None


# ---- duplicates ------------------------------------------------------------------------------------

def exact_key(normalized: str) -> bytes:
    """What exact dedup compares: the SHA-1 of the normalised text."""
    return hashlib.sha1(normalized.encode()).digest()


def exact_dedup(records: Iterable[Record]) -> Result:
    kept, rejects, first = [], [], {}
    for record in records:
        key = exact_key(normalize(record.content())).hex()
        if key in first:
            rejects.append(_reject("exact_dedup", record, f"exact duplicate of {first[key]}"))
        else:
            first[key] = record.id
            kept.append(record)
    return kept, rejects


_PRIME = (1 << 31) - 1  # Mersenne prime: a * x stays below 2**63 for 32-bit x, so uint64 never overflows
_MINHASH_SEED = 0  # fixed: the same records give the same signatures in every run and every worker
_BLOCK = 4096  # shingles hashed per vectorised pass: [4096, num_perm] uint64 temporaries stay in cache


def minhash_coefficients(num_perm: int) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) of the num_perm hash functions (a x + b) mod p."""
    rng = np.random.default_rng(_MINHASH_SEED)
    return rng.integers(1, _PRIME, num_perm, dtype=np.uint64), rng.integers(0, _PRIME, num_perm, dtype=np.uint64)


def _shingle_hashes(u: list[str], shingle: int) -> list[int]:
    """A stable 32-bit hash (BLAKE2b; Python's str hash is salted per process) of each distinct shingle:
    run of `shingle` units, or all the units as one when there are fewer."""
    grams = {" ".join(u[i : i + shingle]) for i in range(max(len(u) - shingle + 1, 1))}
    return [int.from_bytes(hashlib.blake2b(g.encode(), digest_size=4).digest(), "little") for g in grams]


def minhash_many(unit_lists: list[list[str]], shingle: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[len(unit_lists), num_perm] uint32 MinHash signatures of many texts (for each hash function, the
    minimum of (a x + b) mod p over a text's shingle hashes x), computed in vectorised blocks of shingles."""
    out = np.empty((len(unit_lists), len(a)), dtype=np.uint32)
    values = np.empty((_BLOCK, len(a)), dtype=np.uint64)
    scratch = np.empty_like(values)
    first = 0
    while first < len(unit_lists):
        hashes, starts, last = [], [], first
        while last < len(unit_lists) and len(hashes) < _BLOCK:
            text = _shingle_hashes(unit_lists[last], shingle)
            if hashes and len(hashes) + len(text) > _BLOCK:
                break
            starts.append(len(hashes))
            hashes += text
            last += 1
        n = len(hashes)
        if n > len(values):  # one text with more shingles than a block
            values, scratch = np.empty((n, len(a)), np.uint64), np.empty((n, len(a)), np.uint64)
        block = _mod_prime(np.asarray(hashes, dtype=np.uint64), a, b, values[:n], scratch[:n])
        out[first:last] = np.minimum.reduceat(block, np.asarray(starts), axis=0)
        first = last
    return out


def _mod_prime(x: np.ndarray, a: np.ndarray, b: np.ndarray, out: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """(a x + b) mod (2**31 - 1) as an [len(x), len(a)] block, in place in `out`: a Mersenne prime folds
    (v = (v & p) + (v >> 31), twice, then one conditional subtraction) instead of dividing."""
    p, shift = np.uint64(_PRIME), np.uint64(31)
    np.multiply.outer(x, a, out=out)
    np.add(out, b, out=out)
    for _ in range(2):
        np.right_shift(out, shift, out=scratch)
        np.bitwise_and(out, p, out=out)
        np.add(out, scratch, out=out)
    np.subtract(out, p, out=scratch)  # wraps around for values below p, so the minimum keeps those
    return np.minimum(out, scratch, out=out)


def near_duplicates(signatures: np.ndarray, cfg: DedupSection) -> dict[int, tuple[int, float]]:
    """{row: (earlier kept row it duplicates, estimated Jaccard)} for the rows of `signatures` ([n, num_perm])
    that are near duplicates of an earlier kept row, in row order.

    MinHash LSH: a row is compared with the earlier *kept* rows that share one of its bands (`bands` slices
    of `num_perm / bands` signature rows) and dropped when its estimated Jaccard with the most similar of
    them reaches the threshold (ties: the earliest). Band keys are grouped by a sort per band, and only rows
    in a group of two or more are visited one by one: the loop costs what the candidate pairs cost, not
    what the corpus costs."""
    n = len(signatures)
    rows = cfg.num_perm // cfg.bands
    groups, shared = [], np.zeros(n, dtype=bool)
    for band in range(cfg.bands):
        group, sizes = _group_rows(signatures[:, band * rows : (band + 1) * rows])
        in_shared = sizes[group] > 1
        shared |= in_shared
        groups.append(np.where(in_shared, group, -1))
    members: list[dict[int, list[int]]] = [defaultdict(list) for _ in range(cfg.bands)]  # kept rows per shared group
    dropped: dict[int, tuple[int, float]] = {}
    for j in np.flatnonzero(shared).tolist():
        candidates = set()
        for band in range(cfg.bands):
            g = groups[band][j]
            if g >= 0:
                candidates.update(members[band].get(g, ()))
        if candidates:
            earlier = np.fromiter(sorted(candidates), dtype=np.int64, count=len(candidates))
            similarity = (signatures[earlier] == signatures[j]).mean(axis=1)
            best = int(np.argmax(similarity))  # the first of the most similar
            if similarity[best] >= cfg.near_threshold:
                dropped[j] = (int(earlier[best]), float(similarity[best]))
                continue
        for band in range(cfg.bands):
            g = groups[band][j]
            if g >= 0:
                members[band][g].append(j)
    return dropped


_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd: multiplying by it is a bijection of uint64


def _group_rows(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(group of each row, size of each group) for the distinct rows of a uint32 array. The columns are packed
    in pairs into uint64 and the rows sorted by a 64-bit mix of them (one quicksort; np.unique over rows as bytes
    compares them one by one); rows that share a mix but differ, which no test corpus has produced, are caught and
    sorted exactly instead."""
    n = len(keys)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    keys = keys.astype(np.uint64)
    if keys.shape[1] % 2:
        keys = np.concatenate([keys, np.zeros((n, 1), np.uint64)], axis=1)
    packed = (keys[:, 0::2] << np.uint64(32)) | keys[:, 1::2]
    mix = np.zeros(n, np.uint64)
    for column in packed.T:
        mix = (mix ^ column) * _MIX
    order = np.argsort(mix)
    ordered = packed[order]
    rows_differ = np.any(ordered[1:] != ordered[:-1], axis=1)
    starts = np.concatenate([[True], mix[order][1:] != mix[order][:-1]])
    if np.any(rows_differ & ~starts[1:]):  # two different rows with the same mix
        order = np.lexsort(packed.T[::-1])
        ordered = packed[order]
        starts = np.concatenate([[True], np.any(ordered[1:] != ordered[:-1], axis=1)])
    group = np.empty(n, np.int64)
    group[order] = np.cumsum(starts) - 1
    return group, np.bincount(group)


def near_dedup(records: Iterable[Record], cfg: DedupSection) -> Result:
    """Keep the first of every group of near duplicates, in record order (`near_duplicates`)."""
    records = list(records)
    a, b = minhash_coefficients(cfg.num_perm)
    signatures = minhash_many([units(r.content()) for r in records], cfg.shingle, a, b)
    dropped = near_duplicates(signatures, cfg)
    kept, rejects = [], []
    for i, record in enumerate(records):
        if i in dropped:
            first, similarity = dropped[i]
            rejects.append(_reject("near_dedup", record,
                                   f"near duplicate of {records[first].id} (Jaccard ~{similarity:.2f})"))
        else:
            kept.append(record)
    return kept, rejects


# ---- benchmark decontamination -------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class BenchmarkItem:
    id: str  # "file:row"
    text: str


class BenchmarkIndex:
    """Benchmark items' n-grams, and the overlap verdict of one record's n-grams against them."""

    def __init__(self, items: list[BenchmarkItem], cfg: DecontaminationSection):
        self.items, self.n, self.threshold = items, cfg.n, cfg.threshold
        self.index: dict[tuple[str, ...], list[int]] = defaultdict(list)
        self.sizes = []
        for i, item in enumerate(items):
            grams = ngrams(item.text, cfg.n)
            self.sizes.append(len(grams))
            for g in grams:
                self.index[g].append(i)

    def overlap(self, grams: set[tuple[str, ...]]) -> str | None:
        """None, or the reject reason naming the benchmark item whose n-grams the record holds."""
        counts: Counter[int] = Counter()
        for g in grams:
            for i in self.index.get(g, ()):
                counts[i] += 1
        hit = max(((c / self.sizes[i], i) for i, c in counts.items() if self.sizes[i]), default=(0.0, -1))
        if hit[0] >= self.threshold:
            return f"benchmark overlap: {self.items[hit[1]].id} ({hit[0]:.0%} of its {self.n}-grams)"
        return None


def decontaminate(records: Iterable[Record], items: list[BenchmarkItem], cfg: DecontaminationSection) -> Result:
    index = BenchmarkIndex(items, cfg)
    kept, rejects = [], []
    for record in records:
        reason = index.overlap(ngrams(record.content(), cfg.n))
        if reason is not None:
            rejects.append(_reject("decontaminate", record, reason))
        else:
            kept.append(record)
    return kept, rejects
