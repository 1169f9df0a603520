"""The Grain input pipeline: curated shards -> token ids and loss masks -> batches of rows, sharded by process.

    records (ArrayRecord shards)
      -> tokenized once through the chat template into a token store beside the shards (data/token_store.py,
         memory-mapped; rebuilt only when the shards or the tokenizer change)
      -> selected at open time (TokenView): kinds in data.kinds (all when empty; the others are counted), loss on
         the assistant turns or on every token (data.loss_on), over-long examples truncated or dropped (data.overlong),
         all counted; from the stored per-example lengths and counts, without a pass over the tokens
      -> a global plan from the lengths alone, the same on every process: a seeded shuffle per epoch, then
         data.packing first_fit / best_fit: examples packed into rows of seq_len tokens, rows grouped into global
         batches of global_batch rows (`PackPlan`, cached beside the store)
         data.packing none: one example per row, rows grouped by length bucket into global batches of
         global_batch examples (`BucketPlan`)
      -> each process takes its rows of each global batch (`packed_batches`, `bucketed_batches`): [grad_accum,
         rows_per_process, seq] batches, assembled into global arrays by the loop

Both plans end with at most a few short global batches filled up with filler rows (all padding, no loss, counted
in data_stats.json), so no example is skipped, and the number of steps is the plan's length: no pass over the
data to count them. A batch's content does not depend on the number of processes.

The iterator's state (the next global batch index) goes into the same Orbax checkpoint as the model, so a resumed
run sees exactly the batches an uninterrupted one would have. Since every process iterates the same plan, the
state is the same on every process, and a run saved by N processes resumes on M (train/checkpoint.py
restore_data): the next step gets the same global batch it would have had, and within the epochs no example is
repeated or skipped. (Across a change of data.workers, seq_len, packing settings or data the plan differs and the
index means something else: those are config changes, not restarts.)

Loss definition (both modes; train/step.py): the sum of next-token cross-entropies over the loss tokens
of the whole global batch (all its micro-batches) divided by the number of those tokens, a token mean.
Filler rows carry no loss tokens, so they change neither sum nor count.
With packing none that is the mean over the global batch's examples' loss tokens, each example on its
own row, attending only to itself: what one would compute example by example. Packed, attention stays within
each example (segment ids), so it is the same token mean over the examples packed into the batch's rows.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import uuid
from pathlib import Path

import grain
import numpy as np

from diabetica_jax.data.batch import Batch
from diabetica_jax.data.config import DataSection
from diabetica_jax.data.records import Record
from diabetica_jax.data.token_store import TokenCorpus, TokenStats, TokenView, _check_choices

log = logging.getLogger(__name__)

__all__ = ["TokenStats", "TokenStore", "TokenView", "PackPlan", "BucketPlan", "packed_batches", "bucketed_batches",
           "training_batches", "count_batches", "store_for", "read_records", "FrozenIteratorState"]


class TokenStore(TokenView):
    """Records tokenized in memory (small sets, tests): the same selection as a token store's `TokenView`, with
    the kept examples' tokens and masks as flat arrays (`tokens`, `loss_mask` int32, `offsets`)."""

    def __init__(self, records: list[Record], tokenizer, seq_len: int, overlong: str = "truncate",
                 kinds: list[str] | tuple[str, ...] = (), loss_on: str = "assistant"):
        _check_choices(overlong, loss_on)
        super().__init__(TokenCorpus.from_records(records, tokenizer), seq_len, overlong, kinds, loss_on)
        items = [TokenView.__getitem__(self, i) for i in range(len(self.index))]
        self.tokens = np.concatenate([x["tokens"] for x in items]) if items else np.zeros(0, np.int32)
        self.loss_mask = np.concatenate([x["loss_mask"] for x in items]) if items else np.zeros(0, np.int32)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        lo, hi = self.offsets[index], self.offsets[index + 1]
        return {"tokens": self.tokens[lo:hi], "loss_mask": self.loss_mask[lo:hi]}


def store_for(records: list[Record], tokenizer, data: DataSection) -> TokenStore:
    """The TokenStore a data section asks for (seq_len, overlong, kinds, loss_on)."""
    return TokenStore(records, tokenizer, data.seq_len, data.overlong, kinds=data.kinds, loss_on=data.loss_on)


def read_records(directory: str | Path) -> list[Record]:
    """All records of a curated output directory's ArrayRecord shards, in shard order."""
    from diabetica_jax.data.shards import shard_paths

    source = grain.sources.ArrayRecordDataSource([str(p) for p in shard_paths(directory)])
    return [Record.from_json(json.loads(source[i])) for i in range(len(source))]


# Batches assembled ahead of the step that takes them: the trainer takes one per step, and Grain's default (16
# threads, 500 batches) would hold hundreds of full batches (and the token store pages behind them) in memory.
READ_AHEAD = grain.ReadOptions(num_threads=2, prefetch_buffer_size=8)


def epoch_orders(n: int, data: DataSection) -> list[np.ndarray]:
    """The examples' order in each epoch: a seeded permutation, drawn afresh each epoch (both plans use it)."""
    return [np.random.default_rng([data.seed, epoch]).permutation(n) for epoch in range(data.epochs)]


def _pack(order: np.ndarray, lengths: np.ndarray, capacity: int, bins: int, best: bool,
          max_examples: int) -> list[list[int]]:
    """Rows of example indices, in the order they are closed (see PackPlan)."""
    closed: list[list[int]] = []
    rows: list[list[int]] = []
    room: list[int] = []
    sizes = lengths.tolist()
    for index in order.tolist():
        n = sizes[index]
        j = -1
        if best:
            fit = capacity + 1
            for i, r in enumerate(room):
                if n <= r < fit:
                    j, fit = i, r
                    if r == n:
                        break
        else:
            for i, r in enumerate(room):
                if r >= n:
                    j = i
                    break
        if j < 0:
            if len(rows) == bins:  # no room anywhere: the fullest row goes
                f = room.index(min(room))
                closed.append(rows.pop(f))
                room.pop(f)
            rows.append([index])
            room.append(capacity - n)
            j = len(rows) - 1
        else:
            rows[j].append(index)
            room[j] -= n
        if room[j] == 0 or len(rows[j]) == max_examples:
            closed.append(rows.pop(j))
            room.pop(j)
    closed += [rows[i] for i in sorted(range(len(rows)), key=room.__getitem__)]  # fullest first
    return closed


class PackPlan:
    """Which examples make each row of each global batch with data.packing first_fit / best_fit.

    Each epoch's examples, in the seeded order BucketPlan uses too (`epoch_orders`), are packed into rows of
    seq_len tokens with packing_bins rows open at once: an example goes to the first open row it fits
    (first_fit) or to the one it leaves least room in (best_fit); when it fits none and packing_bins rows are
    open, the fullest is closed and a new row opened; a full row closes at once, and so does a row holding
    max_segments_per_row examples (fused attention kernels take a fixed number of documents per row); at the end
    of the epoch the open rows close, fullest first. Rows never mix epochs. The closed rows, in order, make the global
    batches, global_batch rows each; a short last batch is filled up with filler rows (all padding, no loss):
    no example is skipped, and the fillers are counted (`filler_rows`).

    A plan is a pure function of the lengths and the data section (so a batch index is all the state an
    iterator over it needs, on any number of processes). Computing it is a Python loop over the examples
    (about a second per million on one core), so with `cache_dir` (beside the token store) it is saved
    under a hash of everything it depends on and loaded on the next start.
    """

    VERSION = 2  # 2: rows hold at most max_segments_per_row examples

    def __init__(self, lengths: np.ndarray, data: DataSection, cache_dir: Path | None = None):
        if data.packing == "none":
            raise ValueError("PackPlan packs; data.packing: none takes BucketPlan")
        lengths = np.asarray(lengths, dtype=np.int64)
        if len(lengths) and lengths.max() > data.seq_len:
            raise ValueError(f"an example of {int(lengths.max())} tokens does not fit a row of {data.seq_len}")
        self.global_batch, self.seq_len = data.global_batch, data.seq_len
        key = hashlib.sha256(lengths.tobytes() + json.dumps(
            [self.VERSION, data.packing, data.packing_bins, data.max_segments_per_row, data.seed, data.epochs,
             data.seq_len]).encode()).hexdigest()
        cached = _load_plan(cache_dir, key[:24])
        if cached is None:
            rows, epoch_rows = [], [0]
            for order in epoch_orders(len(lengths), data):
                rows += _pack(order, lengths, data.seq_len, data.packing_bins, data.packing == "best_fit",
                              data.max_segments_per_row)
                epoch_rows.append(len(rows))
            sizes = np.fromiter((len(r) for r in rows), np.int64, len(rows))
            cached = {"row_offsets": np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
                      "row_examples": np.fromiter((i for r in rows for i in r), np.int64, int(sizes.sum())),
                      "epoch_rows": np.asarray(epoch_rows, np.int64)}
            _save_plan(cache_dir, key[:24], cached)
        # rows [epoch_rows[e], epoch_rows[e + 1]) hold epoch e: each example once
        self.row_offsets, self.row_examples, self.epoch_rows = (cached[k] for k in PLAN_ARRAYS)
        self.rows = len(self.row_offsets) - 1
        self.filler_rows = -self.rows % self.global_batch
        self.tokens = int(lengths[self.row_examples].sum())

    def __len__(self) -> int:
        return -(-self.rows // self.global_batch)

    def __getitem__(self, k: int) -> list[np.ndarray]:
        """Global batch k: global_batch arrays of example indices, one per row (empty: a filler row)."""
        if not 0 <= k < len(self):
            raise IndexError(k)
        out = []
        for row in range(k * self.global_batch, (k + 1) * self.global_batch):
            if row < self.rows:
                out.append(self.row_examples[self.row_offsets[row]:self.row_offsets[row + 1]])
            else:
                out.append(np.zeros(0, np.int64))
        return out

    def summary(self) -> dict:
        """Batches, rows, filler rows, and how full the rows are (real tokens over row slots)."""
        slots = len(self) * self.global_batch * self.seq_len
        return {"batches": len(self), "rows": self.rows, "partial_batches": int(self.filler_rows > 0),
                "filler_rows": self.filler_rows, "fill": round(self.tokens / slots, 4) if slots else 0.0}


PLAN_ARRAYS = ("row_offsets", "row_examples", "epoch_rows")


def _load_plan(cache_dir: Path | None, key: str) -> dict | None:
    if cache_dir is None:
        return None
    try:
        with np.load(cache_dir / f"pack-{key}.npz") as f:
            return {k: f[k] for k in PLAN_ARRAYS}
    except (OSError, KeyError, ValueError):
        return None


def _save_plan(cache_dir: Path | None, key: str, arrays: dict) -> None:
    """Written to a temporary file and renamed: a reader sees the whole plan or none."""
    if cache_dir is None:
        return
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache_dir / f".pack-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}.npz"
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, cache_dir / f"pack-{key}.npz")
    except OSError as e:  # a read-only store: recomputed next time
        log.info("packing plan not cached in %s (%s)", cache_dir, e)


class _PackedRows:
    """Plan entry -> this process's rows of that global batch as a Batch [grad_accum, len(rows), seq_len]:
    each row's examples one after another (segment ids 1, 2, ..., positions restarting at 0), then padding."""

    def __init__(self, store: TokenView, grad_accum: int, rows: range, seq_len: int):
        self.store, self.grad_accum, self.rows, self.seq_len = store, grad_accum, rows, seq_len

    def __call__(self, entry: list[np.ndarray]) -> Batch:
        per = len(entry) // self.grad_accum
        fields = [np.zeros((self.grad_accum, len(self.rows), self.seq_len), np.int32) for _ in range(4)]
        tokens, loss_mask, segment_ids, positions = fields
        for a in range(self.grad_accum):
            for r, row in enumerate(self.rows):
                at = 0
                for segment, index in enumerate(entry[a * per + row].tolist(), 1):
                    item = self.store[index]
                    n = len(item["tokens"])
                    tokens[a, r, at:at + n] = item["tokens"]
                    loss_mask[a, r, at:at + n] = item["loss_mask"]
                    segment_ids[a, r, at:at + n] = segment
                    positions[a, r, at:at + n] = np.arange(n)
                    at += n
        return Batch(*fields)


def packed_batches(store: TokenView, data: DataSection, rows: range, plan: PackPlan | None = None):
    """data.packing first_fit / best_fit. A Grain IterDataset of Batch tuples ([data.grad_accum, len(rows),
    data.seq_len] int32 each): this process's rows (train/global_batch.py local_rows) of each global batch of
    the `PackPlan`. The dataset maps over the plan, so the iterator's state is the next batch index."""
    plan = plan if plan is not None else PackPlan(store.lengths, data, getattr(store, "cache_dir", None))
    batches = grain.MapDataset.source(plan).map(_PackedRows(store, data.grad_accum, rows, data.seq_len))
    batches = batches.to_iter_dataset(READ_AHEAD)
    if data.workers > 0:
        batches = _in_workers(batches, data.workers)
    return batches


class BucketPlan:
    """Which examples make each global batch with data.packing: none, and how long its rows are.

    The examples, in a seeded shuffle's order (`epoch_orders`: a fresh permutation each epoch, the same on every
    process),
    go to the shortest bucket that holds them (data.buckets(): min_bucket doubling up to seq_len); a bucket
    emits a global batch as soon as it holds global_batch examples. At the end of the data each bucket's
    remainder (fewer than global_batch examples) still becomes a batch, filled up with filler rows (all
    padding, no loss), shortest bucket first: no example is dropped, and the fillers are counted
    (`filler_rows`, `partial_batches`).

    Entry k is (row length, [global_batch] store indices, -1 for a filler row). A plan is a pure function
    of the lengths and the data section, so a batch index is all the state an iterator over it needs.
    """

    def __init__(self, lengths: np.ndarray, data: DataSection):
        self.buckets = data.buckets()
        self.global_batch = size = data.global_batch
        lengths = np.asarray(lengths, dtype=np.int64)
        order = np.concatenate([np.zeros(0, np.int64)] + epoch_orders(len(lengths), data))
        bucket = np.searchsorted(np.asarray(self.buckets), lengths)[order]  # of each position in the stream
        full, full_lengths, completed, partial = [], [], [], []
        for b, length in enumerate(self.buckets):
            where = np.flatnonzero(bucket == b)  # stream positions of this bucket's examples
            n_full = len(where) // size
            full.append(order[where[:n_full * size]].reshape(n_full, size))
            full_lengths.append(np.full(n_full, length, np.int64))
            completed.append(where[size - 1:n_full * size:size])  # a batch is emitted when its last example arrives
            rest = order[where[n_full * size:]]
            if len(rest):
                partial.append((length, np.concatenate([rest, np.full(size - len(rest), -1, np.int64)])))
        emitted = np.argsort(np.concatenate(completed), kind="stable")
        self.row_lengths = np.concatenate(full_lengths + [np.asarray([p[0] for p in partial], np.int64)])
        self.row_lengths[:len(emitted)] = self.row_lengths[emitted]
        self.examples = np.concatenate(full + [np.stack([p[1] for p in partial])] if partial else full)
        self.examples[:len(emitted)] = self.examples[emitted]
        self.partial_batches = len(partial)
        self.filler_rows = int(sum(size - int((p[1] >= 0).sum()) for p in partial))

    def __len__(self) -> int:
        return len(self.row_lengths)

    def __getitem__(self, k: int) -> tuple[int, np.ndarray]:
        return int(self.row_lengths[k]), self.examples[k]

    def summary(self) -> dict:
        """Batches per row length, and the filler rows that fill the last batch of each bucket."""
        counts = collections.Counter(self.row_lengths.tolist())
        return {"batches": len(self), "batches_per_bucket": {str(b): counts.get(b, 0) for b in self.buckets},
                "partial_batches": self.partial_batches, "filler_rows": self.filler_rows}


class _BucketRows:
    """Plan entry -> this process's rows of that global batch as a Batch [grad_accum, len(rows), length]."""

    def __init__(self, store: TokenView, grad_accum: int, rows: range):
        self.store, self.grad_accum, self.rows = store, grad_accum, rows

    def __call__(self, entry: tuple[int, np.ndarray]) -> Batch:
        length, examples = entry
        mine = examples.reshape(self.grad_accum, -1)[:, self.rows.start:self.rows.stop]
        fields = [np.zeros(mine.shape + (length,), np.int32) for _ in range(4)]
        tokens, loss_mask, segment_ids, positions = fields
        for (a, r), index in np.ndenumerate(mine):
            if index < 0:  # a filler row: padding only
                continue
            item = self.store[int(index)]
            n = len(item["tokens"])
            tokens[a, r, :n] = item["tokens"]
            loss_mask[a, r, :n] = item["loss_mask"]
            segment_ids[a, r, :n] = 1
            positions[a, r, :n] = np.arange(n)
        return Batch(*fields)


def bucketed_batches(store: TokenView, data: DataSection, rows: range, plan: BucketPlan | None = None):
    """data.packing: none. A Grain IterDataset of Batch tuples ([data.grad_accum, len(rows), bucket] int32 each):
    every row one example (segment 1, positions from 0, then padding), every global batch global_batch
    examples of one length bucket (`BucketPlan`). `rows` are this process's rows of each micro-batch
    (train/global_batch.py local_rows): all processes read the same plan, so their batches agree in
    length, and the data does not depend on the number of processes.

    The dataset maps over the plan, so the iterator's state is the next batch index: it checkpoints
    and restores exactly.
    """
    plan = plan if plan is not None else BucketPlan(store.lengths, data)
    batches = grain.MapDataset.source(plan).map(_BucketRows(store, data.grad_accum, rows)).to_iter_dataset(READ_AHEAD)
    if data.workers > 0:
        batches = _in_workers(batches, data.workers)
    return batches


def _in_workers(batches, workers: int):
    """`batches` produced by Grain worker processes. Grain reads its absl flags while starting them, which
    fails unless something parsed the flags; nothing here uses absl's command line, so take the defaults."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    return batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))


def plan_for(store: TokenView, data: DataSection) -> PackPlan | BucketPlan:
    """The global batch plan data.packing asks for (a PackPlan is cached beside a token store)."""
    if data.packing == "none":
        return BucketPlan(store.lengths, data)
    return PackPlan(store.lengths, data, getattr(store, "cache_dir", None))


def training_batches(store: TokenView, data: DataSection, rows: range, plan: PackPlan | BucketPlan | None = None):
    """The batches the trainer reads, as data.packing says: `bucketed_batches` (none) or `packed_batches`."""
    plan = plan if plan is not None else plan_for(store, data)
    if data.packing == "none":
        return bucketed_batches(store, data, rows, plan)
    return packed_batches(store, data, rows, plan)


def count_batches(store: TokenView, data: DataSection, rows: range | None = None) -> int:
    """How many batches `training_batches` yields: the plan's length, the same on every process whatever its
    `rows`."""
    return len(plan_for(store, data))


class FrozenIteratorState:
    """An iterator state captured at save time, so an asynchronous checkpoint cannot see later steps."""

    def __init__(self, state: dict):
        self._state = state

    def get_state(self) -> bytes:
        return json.dumps(self._state).encode()
