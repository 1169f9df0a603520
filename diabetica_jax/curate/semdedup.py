"""Semantic deduplication (the SemDeDup idea): records whose embeddings nearly coincide say the same thing.

MinHash (filters.near_dedup) catches copies that share word runs; it misses a record whose words were
reordered or partly swapped. This stage embeds every record, clusters the embeddings with k-means and,
inside each cluster, drops a record whose cosine similarity to an earlier kept record is at or above
`threshold`. The reject names the kept record and the similarity.

Embedding: the JAX model's mean-pooled final hidden states (padding masked out), L2-normalised. Records are
tokenized in chunks, cut to `max_tokens`, and grouped by length into power-of-two buckets; each batch is
padded to `batch_size` rows, so the jitted function compiles once per bucket (a handful of shapes), never per
batch. Memory stays bounded: one chunk of text, at most `batch_size` pending records per bucket and the
[records, hidden] float32 embedding matrix.

Search: spherical k-means (seeded, a few Lloyd iterations) into about sqrt(n) clusters; clusters much larger
than the average are split again, so no cluster makes the pairwise step quadratic in n. Within a cluster,
records are visited in record order and pairwise cosines come from blocked matrix products; a record is kept
unless an earlier *kept* record of its cluster reaches the threshold (greedy keep-first), so the same input
and seed give the same result. A near pair that k-means puts in different clusters is missed, the price of
not comparing everything with everything (SemDeDup accepts the same).

A preset model (`tiny`) has random weights: it embeds roughly a bag of tokens, enough to catch reordered or
lightly edited copies but not real paraphrases. A trained checkpoint is what finds those.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from diabetica_jax.curate.config import SemanticDedupSection
from diabetica_jax.data.records import Record, Reject

log = logging.getLogger(__name__)

MIN_BUCKET = 16  # shortest padded length: shorter records share one shape
TOKENIZE_CHUNK = 2048  # records tokenized together
CHARS_PER_TOKEN_CAP = 8  # text cut to max_tokens * this many characters before tokenizing (speed only)
PAIRWISE_BLOCK = 1 << 22  # largest similarity block, in floats (16 MiB)
ASSIGN_BLOCK = 16384  # records per k-means assignment product
MIN_SPLIT = 2048  # clusters up to this size are never split again

MAX_IN_FLIGHT = 32  # batches dispatched but not yet read back (tokenizing overlaps with the model)
TRACES = {"embed": 0}  # how often the embedding function was traced (compiled); tests read it


def bucket_length(n: int, max_tokens: int) -> int:
    """The padded length for a record of n tokens: the next power of two (at least MIN_BUCKET, at most
    max_tokens's own power of two)."""
    top = max(MIN_BUCKET, 1 << max(max_tokens - 1, 0).bit_length())
    return min(top, max(MIN_BUCKET, 1 << max(n - 1, 0).bit_length()))


@functools.cache
def _embed_fn(graphdef):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    @jax.jit
    def run(state, tokens, segment_ids):
        TRACES["embed"] += 1  # Python runs only while tracing
        hidden = nnx.merge(graphdef, state).hidden_states(tokens, None, segment_ids).astype(jnp.float32)
        mask = (segment_ids > 0).astype(jnp.float32)[..., None]
        pooled = (hidden * mask).sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1.0)
        return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)

    return run


class Embedder:
    """Texts -> L2-normalised mean-pooled hidden states [n, hidden] float32, in fixed-shape jitted batches."""

    def __init__(self, model: str = "tiny", max_tokens: int = 128, batch_size: int = 32, seed: int = 0):
        from flax import nnx

        from diabetica_jax import hf

        opened = hf.open(model if Path(model).is_dir() else None, preset=model, seed=seed, progress=False)
        loaded, self.tokenizer = opened.model, opened.tokenizer
        self.name = model
        self.graphdef, self.state = nnx.split(loaded)
        self._run = _embed_fn(self.graphdef)
        self.dim = loaded.config.hidden_size
        self.max_tokens, self.batch_size = max_tokens, batch_size
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else (self.tokenizer.eos_token_id or 0))
        self.tokens = 0  # real tokens embedded so far
        self.batches = 0

    def embed(self, texts: Iterable[str], count: int | None = None) -> np.ndarray:
        """Embeddings of `texts` in their order; `count` (needed for a generator) sizes the output."""
        if count is None:
            texts = list(texts)
            count = len(texts)
        out = np.zeros((count, self.dim), np.float32)
        pending: dict[int, list[tuple[int, list[int]]]] = {}
        in_flight: list[tuple[list[int], object]] = []

        def dispatch(length: int, items: list[tuple[int, list[int]]]) -> None:
            tokens = np.full((self.batch_size, length), self.pad_id, np.int32)
            segments = np.zeros((self.batch_size, length), np.int32)
            for row, (_, ids) in enumerate(items):
                tokens[row, : len(ids)] = ids
                segments[row, : len(ids)] = 1
            # dispatch is asynchronous: the next chunk is tokenized while this batch runs
            in_flight.append(([i for i, _ in items], self._run(self.state, tokens, segments)))
            self.batches += 1
            while len(in_flight) > MAX_IN_FLIGHT:
                collect()

        def collect() -> None:
            rows, result = in_flight.pop(0)
            out[rows] = np.asarray(result)[: len(rows)]

        index = 0
        for chunk in _chunks(texts, TOKENIZE_CHUNK):
            for one in self._tokenize(chunk):
                one = one or [self.pad_id]  # an empty text still gets a (meaningless but defined) vector
                self.tokens += len(one)
                length = bucket_length(len(one), self.max_tokens)
                queue = pending.setdefault(length, [])
                queue.append((index, one))
                index += 1
                if len(queue) == self.batch_size:
                    dispatch(length, queue)
                    pending[length] = []
        if index != count:
            raise ValueError(f"embed: got {index} texts, expected {count}")
        for length, queue in sorted(pending.items()):
            if queue:
                dispatch(length, queue)
        while in_flight:
            collect()
        return out

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, no special tokens added, cut to max_tokens."""
        cut = [t[: self.max_tokens * CHARS_PER_TOKEN_CAP] for t in texts]
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None and backend.padding is None and backend.truncation is None:
            # a fast tokenizer without padding or truncation set in its tokenizer.json: its Rust batch encoder,
            # without the Python wrapping (which would first switch such settings off)
            return [e.ids[: self.max_tokens] for e in backend.encode_batch(cut, add_special_tokens=False)]
        return [ids[: self.max_tokens] for ids in self.tokenizer(cut, add_special_tokens=False)["input_ids"]]


def _chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# ---- clustering and within-cluster search ---------------------------------------------------------

def _assign(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    labels = np.empty(len(x), np.int64)
    for start in range(0, len(x), ASSIGN_BLOCK):
        labels[start : start + ASSIGN_BLOCK] = np.argmax(x[start : start + ASSIGN_BLOCK] @ centroids.T, axis=1)
    return labels


def kmeans(x: np.ndarray, k: int, seed: int = 0, iterations: int = 10) -> np.ndarray:
    """Spherical k-means labels [n] for unit vectors x [n, d]: k distinct records as the first centroids
    (seeded), then Lloyd iterations with renormalised means; an emptied cluster keeps its centroid."""
    n = len(x)
    k = max(1, min(k, n))
    rng = np.random.default_rng(seed)
    centroids = x[np.sort(rng.choice(n, size=k, replace=False))].astype(np.float32, copy=True)
    labels = _assign(x, centroids)
    for _ in range(iterations):
        order = np.argsort(labels, kind="stable")
        present, starts = np.unique(labels[order], return_index=True)
        sums = np.add.reduceat(x[order], starts, axis=0)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        ok = norms[:, 0] > 0
        centroids[present[ok]] = sums[ok] / norms[ok]
        new = _assign(x, centroids)
        if np.array_equal(new, labels):
            break
        labels = new
    return labels


def partition(x: np.ndarray, clusters: int | None = None, seed: int = 0, iterations: int = 10,
              max_cluster: int | None = None) -> list[np.ndarray]:
    """Groups of record indices (each sorted) covering every record once: k-means into `clusters` (default
    about sqrt(n)); a cluster over `max_cluster` (default max(MIN_SPLIT, 4 n / clusters)) is clustered again,
    at most three levels deep, so that one dense region cannot make the pairwise search quadratic in n.
    Points k-means cannot separate (identical embeddings) stay one group."""
    n = len(x)
    if n == 0:
        return []
    k = clusters or max(1, round(math.sqrt(n)))
    cap = max_cluster or max(MIN_SPLIT, 4 * math.ceil(n / k))
    groups: list[np.ndarray] = []

    def split(indices: np.ndarray, k: int, depth: int) -> None:
        labels = kmeans(x[indices], k, seed + depth, iterations)
        order = np.argsort(labels, kind="stable")  # stable: indices stay sorted inside each group
        parts = np.split(indices[order], np.flatnonzero(np.diff(labels[order])) + 1)
        if len(parts) == 1 and depth > 0:  # nothing to separate
            groups.append(indices)
            return
        for part in parts:
            if len(part) > cap and depth < 3:
                split(part, math.ceil(2 * len(part) / cap), depth + 1)
            else:
                groups.append(part)

    split(np.arange(n), k, 0)
    return groups


def greedy_within(x: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Greedy keep-first over rows of x (unit vectors, in the order to keep them): row j is dropped when an
    earlier kept row i has x_i . x_j >= threshold. Returns (by [m]: the keeping row's index or -1 when kept,
    sim [m]: that similarity or nan). Similarities come in row blocks, never the full m x m matrix at once."""
    m = len(x)
    by = np.full(m, -1, np.int64)
    sim = np.full(m, np.nan, np.float32)
    removed = np.zeros(m, bool)
    block = max(1, min(m, PAIRWISE_BLOCK // max(m, 1)))
    for start in range(0, m, block):
        stop = min(start + block, m)
        s = x[start:stop] @ x[start:].T  # rows i in [start, stop) against columns j >= start
        hits = np.triu(s >= threshold, k=1)  # only j > i
        for r in np.flatnonzero(hits.any(axis=1)):
            i = start + r
            if removed[i]:
                continue  # a dropped record removes nothing: its neighbours are judged by kept ones only
            js = start + np.flatnonzero(hits[r])
            js = js[~removed[js]]
            removed[js] = True
            by[js] = i
            sim[js] = s[r, js - start]
    return by, sim


def dedup_embeddings(x: np.ndarray, threshold: float, clusters: int | None = None, seed: int = 0,
                     iterations: int = 10) -> tuple[np.ndarray, np.ndarray, dict]:
    """For unit vectors x [n, d] in record order: (kept_by [n]: the index of the kept record a record
    duplicates, -1 for kept records; sim [n]: that cosine; stats). A record is only ever dropped in favour of
    an earlier kept record of its own cluster."""
    x = np.ascontiguousarray(x, np.float32)
    kept_by = np.full(len(x), -1, np.int64)
    sim = np.full(len(x), np.nan, np.float32)
    groups = partition(x, clusters, seed, iterations)
    for group in groups:
        if len(group) < 2:
            continue
        by, s = greedy_within(x[group], threshold)
        dropped = by >= 0
        kept_by[group[dropped]] = group[by[dropped]]
        sim[group[dropped]] = s[dropped]
    sizes = [len(g) for g in groups]
    stats = {"clusters": len(groups), "largest_cluster": max(sizes, default=0),
             "pairs_compared": int(sum(s * (s - 1) // 2 for s in sizes))}
    return kept_by, sim, stats


# ---- the stage --------------------------------------------------------------------------------------

def _reject(record: Record, kept: Record, similarity: float) -> Reject:
    return Reject("semantic_dedup", f"semantic duplicate of {kept.id} (cosine {similarity:.3f})", record.provenance,
                  record=record.to_json())


def semantic_dedup(records: Sequence[Record], cfg: SemanticDedupSection, stats: dict | None = None,
                   embedder: Embedder | None = None) -> tuple[list[Record], list[Reject]]:
    """The curation stage: (kept, rejects), every record in exactly one of them; `stats` (when given) is
    filled with what the data card reports."""
    records = list(records)
    if len(records) < 2:  # nothing to compare: no model to load
        if stats is not None:
            stats.update(model=cfg.model, threshold=cfg.threshold, records=len(records), tokens=0, clusters=0,
                         largest_cluster=0, pairs_compared=0, load_seconds=0.0, embed_seconds=0.0,
                         search_seconds=0.0, dropped=0)
        return records, []
    started = time.perf_counter()
    if embedder is None:
        embedder = Embedder(cfg.model, cfg.max_tokens, cfg.batch_size, cfg.seed)
    loaded = time.perf_counter()
    x = embedder.embed((r.content() for r in records), count=len(records))
    embedded = time.perf_counter()
    kept_by, sim, search = dedup_embeddings(x, cfg.threshold, cfg.clusters, cfg.seed, cfg.iterations)
    searched = time.perf_counter()
    kept, rejects = [], []
    for record, by, s in zip(records, kept_by, sim):
        if by < 0:
            kept.append(record)
        else:
            rejects.append(_reject(record, records[by], float(s)))
    if stats is not None:
        stats.update(model=embedder.name, threshold=cfg.threshold, records=len(records), tokens=embedder.tokens,
                     **search, load_seconds=round(loaded - started, 2), embed_seconds=round(embedded - loaded, 2),
                     search_seconds=round(searched - embedded, 2), dropped=len(rejects))
    log.info("semantic_dedup: %d records embedded in %.1f s, searched in %.1f s (%d clusters), %d dropped",
             len(records), embedded - loaded, searched - embedded, search["clusters"], len(rejects))
    return kept, rejects
