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

from diabetica_jax.data.curate.config import DecontaminationSection, DedupSection, QualitySection, RelevanceSection
from diabetica_jax.data.records import Record, Reject
from diabetica_jax.data.text import ngrams, normalize, units

Result = tuple[list[Record], list[Reject]]


def _reject(stage: str, record: Record, reason: str) -> Reject:
    return Reject(stage, reason, record.provenance, record=record.to_json())


# ---- relevance -----------------------------------------------------------------------------------

def relevance(records: Iterable[Record], cfg: RelevanceSection) -> Result:
    kept, rejects = [], []
    positive = {normalize(t): w for t, w in cfg.positive.items()}
    negative = {normalize(t): w for t, w in cfg.negative.items()}
    for record in records:
        text = normalize(record.content())
        hits_pos = sorted(t for t in positive if _contains(text, t))
        hits_neg = sorted(t for t in negative if _contains(text, t))
        score = sum(positive[t] for t in hits_pos) - sum(negative[t] for t in hits_neg)
        if score >= cfg.min_score:
            kept.append(record)
        else:
            why = f"low diabetes relevance: score {score:g} < {cfg.min_score:g}"
            detail = f" (positive: {', '.join(hits_pos[:5]) or 'none'}; negative: {', '.join(hits_neg[:5]) or 'none'})"
            rejects.append(_reject("relevance", record, why + detail))
    return kept, rejects


def _contains(text: str, term: str) -> bool:
    if re.search(r"[\u4e00-\u9fff]", term):
        return term in text
    return re.search(rf"(?<![a-z0-9]){re.escape(term)}(?![a-z0-9])", text) is not None


# ---- quality -------------------------------------------------------------------------------------

_MOJIBAKE = re.compile(r"[\ufffd]|锟斤拷|烫烫烫|Ã.|â€|Â")
_ALLOWED = re.compile(r"[\w\s\u3000-\u303f\uff00-\uffef.,;:!?()\[\]{}'\"%/+\-*=<>≥≤~·–—…“”‘’#@&^|\\]")


def quality(records: Iterable[Record], cfg: QualitySection) -> Result:
    kept, rejects = [], []
    for record in records:
        reason = _quality_problem(record.content(), cfg)
        if reason:
            rejects.append(_reject("quality", record, reason))
        else:
            kept.append(record)
    return kept, rejects


def _quality_problem(text: str, cfg: QualitySection) -> str | None:
    n = len(text)
    if n < cfg.min_chars:
        return f"too short: {n} characters < {cfg.min_chars}"
    if n > cfg.max_chars:
        return f"too long: {n} characters > {cfg.max_chars}"
    mojibake = sum(len(m) for m in _MOJIBAKE.findall(text))
    garbage = sum(1 for ch in text if not _ALLOWED.match(ch)) + mojibake
    if garbage / n > cfg.max_garbage_ratio:
        return f"garbage or mojibake characters: {garbage / n:.0%} > {cfg.max_garbage_ratio:.0%}"
    u = units(text)
    if len(u) >= 20:
        grams = [tuple(u[i : i + 3]) for i in range(len(u) - 2)]
        repeated = 1 - len(set(grams)) / len(grams)
        if repeated > cfg.max_repetition:
            return f"repetitive: {repeated:.0%} of 3-grams repeat > {cfg.max_repetition:.0%}"
    return None


# ---- duplicates ------------------------------------------------------------------------------------

def exact_dedup(records: Iterable[Record]) -> Result:
    kept, rejects, first = [], [], {}
    for record in records:
        key = hashlib.sha1(normalize(record.content()).encode()).hexdigest()
        if key in first:
            rejects.append(_reject("exact_dedup", record, f"exact duplicate of {first[key]}"))
        else:
            first[key] = record.id
            kept.append(record)
    return kept, rejects


_PRIME = (1 << 31) - 1  # Mersenne prime: a * x stays below 2**63 for 32-bit x, so uint64 never overflows
_MINHASH_SEED = 0  # fixed: the same records give the same signatures in every run


def minhash(text: str, shingle: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """MinHash signature of the text's shingles (runs of `shingle` units) under (a x + b) mod p."""
    u = units(text)
    grams = {" ".join(u[i : i + shingle]) for i in range(max(len(u) - shingle + 1, 1))}
    hashes = np.fromiter((int.from_bytes(hashlib.blake2b(g.encode(), digest_size=4).digest(), "little") for g in grams),
                         dtype=np.uint64, count=len(grams))
    return ((a[:, None] * hashes[None, :] + b[:, None]) % _PRIME).min(axis=1)


def near_dedup(records: Iterable[Record], cfg: DedupSection) -> Result:
    rng = np.random.default_rng(_MINHASH_SEED)
    a = rng.integers(1, _PRIME, cfg.num_perm, dtype=np.uint64)
    b = rng.integers(0, _PRIME, cfg.num_perm, dtype=np.uint64)
    rows = cfg.num_perm // cfg.bands
    buckets: dict[tuple[int, bytes], list[int]] = defaultdict(list)
    signatures: list[np.ndarray] = []
    kept, rejects, kept_ids = [], [], []
    for record in records:
        signature = minhash(record.content(), cfg.shingle, a, b)
        candidates = set()
        for band in range(cfg.bands):
            key = (band, signature[band * rows : (band + 1) * rows].tobytes())
            candidates.update(buckets.get(key, ()))
        best, best_sim = None, 0.0
        for index in candidates:
            similarity = float(np.mean(signatures[index] == signature))
            if similarity > best_sim:
                best, best_sim = index, similarity
        if best is not None and best_sim >= cfg.near_threshold:
            rejects.append(_reject("near_dedup", record, f"near duplicate of {kept_ids[best]} (Jaccard ~{best_sim:.2f})"))
            continue
        index = len(signatures)
        signatures.append(signature)
        kept_ids.append(record.id)
        for band in range(cfg.bands):
            buckets[(band, signature[band * rows : (band + 1) * rows].tobytes())].append(index)
        kept.append(record)
    return kept, rejects


# ---- benchmark decontamination -------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class BenchmarkItem:
    id: str  # "file:row"
    text: str


def decontaminate(records: Iterable[Record], items: list[BenchmarkItem], cfg: DecontaminationSection) -> Result:
    index: dict[tuple[str, ...], list[int]] = defaultdict(list)
    sizes = []
    for i, item in enumerate(items):
        grams = ngrams(item.text, cfg.n)
        sizes.append(len(grams))
        for g in grams:
            index[g].append(i)
    kept, rejects = [], []
    for record in records:
        counts: Counter[int] = Counter()
        for g in ngrams(record.content(), cfg.n):
            for i in index.get(g, ()):
                counts[i] += 1
        hit = max(((c / sizes[i], i) for i, c in counts.items() if sizes[i]), default=(0.0, -1))
        if hit[0] >= cfg.threshold:
            rejects.append(_reject("decontaminate", record,
                                   f"benchmark overlap: {items[hit[1]].id} ({hit[0]:.0%} of its {cfg.n}-grams)"))
        else:
            kept.append(record)
    return kept, rejects
