"""The Grain input pipeline: curated shards -> token ids and loss masks -> batches of rows, sharded by process.

    records (ArrayRecord shards)
      -> kept when their kind is one of data.kinds (all when empty; the others are counted)
      -> tokenized once through the chat template (TokenStore: loss on the assistant turns, or on every
         token with data.loss_on: all; over-long examples truncated or dropped per config, and counted)
      -> data.packing first_fit / best_fit: Grain's seeded shuffle and epochs, this process's shard
         (ShardByJaxProcess), packed into rows of seq_len tokens with segment ids and per-segment
         positions (`packed_batches`)
         data.packing none: a seeded shuffle per epoch, one example per row, rows grouped by length bucket
         into global batches of global_batch examples, each process taking its rows of each
         (`BucketPlan`, `bucketed_batches`)
      -> [grad_accum, rows_per_process, seq] batches, assembled into global arrays by the loop

The iterator's state goes into the same Orbax checkpoint as the model, so a resumed run sees
exactly the batches an uninterrupted one would have.

Loss definition (both modes; train/step.py): the sum of next-token cross-entropies over the loss tokens
of the whole global batch (all its micro-batches) divided by the number of those tokens, a token mean.
With packing none that is the mean over the global batch's examples' loss tokens, each example on its
own row, attending only to itself: what one would compute example by example.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from pathlib import Path

import grain
import numpy as np

from diabetica_jax.data.batch import Batch
from diabetica_jax.data.chat import EmptyLossMask, encode_record
from diabetica_jax.data.config import LOSS_ON, OVERLONG, DataSection
from diabetica_jax.data.records import Record


@dataclasses.dataclass
class TokenStats:
    examples: int = 0
    truncated: int = 0
    dropped_overlong: int = 0
    dropped_empty_mask: int = 0
    skipped_kind: int = 0  # records of a kind that data.kinds leaves out
    tokens: int = 0
    loss_tokens: int = 0
    by_kind: dict[str, int] = dataclasses.field(default_factory=dict)  # examples kept, per record kind


class TokenStore:
    """Every record tokenized up front into flat arrays: random access costs two slices.

    `kinds`: the record kinds to keep (empty: all; the rest count as skipped_kind); `loss_on`: assistant
    (chat records train on their assistant turns, text records on all their tokens) or all (every token).
    """

    def __init__(self, records: list[Record], tokenizer, seq_len: int, overlong: str = "truncate",
                 kinds: list[str] | tuple[str, ...] = (), loss_on: str = "assistant"):
        if overlong not in OVERLONG:
            raise ValueError(f"overlong must be one of {OVERLONG}, got {overlong!r}")
        if loss_on not in LOSS_ON:
            raise ValueError(f"loss_on must be one of {LOSS_ON}, got {loss_on!r}")
        self.stats = TokenStats()
        keep = set(kinds)
        by_kind = collections.Counter()
        ids_parts, mask_parts, lengths = [], [], []
        for record in records:
            if keep and record.kind not in keep:
                self.stats.skipped_kind += 1
                continue
            try:
                ids, mask = encode_record(tokenizer, record, loss_on)
            except EmptyLossMask:
                self.stats.dropped_empty_mask += 1
                continue
            if len(ids) > seq_len:
                if overlong == "drop":
                    self.stats.dropped_overlong += 1
                    continue
                ids, mask = ids[:seq_len], mask[:seq_len]
                if not mask.any():  # the answer was cut off entirely
                    self.stats.dropped_overlong += 1
                    continue
                self.stats.truncated += 1
            ids_parts.append(ids)
            mask_parts.append(mask)
            lengths.append(len(ids))
            by_kind[record.kind] += 1
        self.tokens = np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.int32)
        self.loss_mask = np.concatenate(mask_parts) if mask_parts else np.zeros(0, np.int32)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.stats.examples = len(lengths)
        self.stats.tokens = int(self.tokens.size)
        self.stats.loss_tokens = int(self.loss_mask.sum())
        self.stats.by_kind = dict(sorted(by_kind.items()))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        lo, hi = self.offsets[index], self.offsets[index + 1]
        return {"tokens": self.tokens[lo:hi], "loss_mask": self.loss_mask[lo:hi]}

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def store_for(records: list[Record], tokenizer, data: DataSection) -> TokenStore:
    """The TokenStore a data section asks for (seq_len, overlong, kinds, loss_on)."""
    return TokenStore(records, tokenizer, data.seq_len, data.overlong, kinds=data.kinds, loss_on=data.loss_on)


def read_records(directory: str | Path) -> list[Record]:
    """All records of a curated output directory's ArrayRecord shards, in shard order."""
    from diabetica_jax.data.curate.write import shard_paths

    source = grain.sources.ArrayRecordDataSource([str(p) for p in shard_paths(directory)])
    return [Record.from_json(json.loads(source[i])) for i in range(len(source))]


def _to_batch(rows: dict[str, np.ndarray], grad_accum: int) -> Batch:
    def shape(x):
        return x.reshape((grad_accum, -1) + x.shape[1:]).astype(np.int32)

    # padding (segment 0) carries no loss
    return Batch(tokens=shape(rows["tokens"]), loss_mask=shape(rows["loss_mask"] * (rows["tokens_segment_ids"] > 0)),
                 segment_ids=shape(rows["tokens_segment_ids"]), positions=shape(rows["tokens_positions"]))


def packed_batches(store: TokenStore, data: DataSection, rows: int, shard_index: int = 0, shard_count: int = 1):
    """A Grain IterDataset of Batch tuples ([data.grad_accum, rows, data.seq_len] int32 each) for this process.

    `data` is the train config's data section (order, epochs, packing, workers); `rows` the rows per
    micro-batch on this process.
    """
    if data.packing == "none":
        raise ValueError("packed_batches packs; data.packing: none takes bucketed_batches")
    ds = grain.MapDataset.source(store).shuffle(seed=data.seed).repeat(data.epochs)
    ds = ds[shard_index::shard_count]
    length = {"tokens": data.seq_len, "loss_mask": data.seq_len}
    pack_cls = {"first_fit": grain.experimental.FirstFitPackIterDataset,
                "best_fit": grain.experimental.BestFitPackIterDataset}[data.packing]
    packed = pack_cls(ds.to_iter_dataset(), length_struct=length, num_packing_bins=data.packing_bins,
                      seed=data.seed, shuffle_bins=True)
    batches = packed.batch(rows * data.grad_accum, drop_remainder=True)
    batches = batches.map(lambda batch_rows: _to_batch(batch_rows, data.grad_accum))
    if data.workers > 0:
        batches = _in_workers(batches, data.workers)
    return batches


class BucketPlan:
    """Which examples make each global batch with data.packing: none, and how long its rows are.

    The examples, in a seeded shuffle's order (a fresh permutation each epoch, the same on every process),
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
        order = np.concatenate([np.zeros(0, np.int64)] + [
            np.random.default_rng([data.seed, epoch]).permutation(len(lengths)) for epoch in range(data.epochs)])
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

    def __init__(self, store: TokenStore, grad_accum: int, rows: range):
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


def bucketed_batches(store: TokenStore, data: DataSection, rows: range, plan: BucketPlan | None = None):
    """data.packing: none. A Grain IterDataset of Batch tuples ([data.grad_accum, len(rows), bucket] int32 each):
    every row one example (segment 1, positions from 0, then padding), every global batch global_batch
    examples of one length bucket (`BucketPlan`). `rows` are this process's rows of each micro-batch
    (train/global_batch.py local_rows): all processes read the same plan, so their batches agree in
    length, and the data does not depend on the number of processes.

    The dataset maps over the plan, so the iterator's state is the next batch index: it checkpoints
    and restores exactly.
    """
    plan = plan if plan is not None else BucketPlan(store.lengths, data)
    batches = grain.MapDataset.source(plan).map(_BucketRows(store, data.grad_accum, rows)).to_iter_dataset()
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


def training_batches(store: TokenStore, data: DataSection, rows: range, shard_index: int = 0, shard_count: int = 1):
    """The batches the trainer reads, as data.packing says: `bucketed_batches` (none) or `packed_batches`."""
    if data.packing == "none":
        return bucketed_batches(store, data, rows)
    return packed_batches(store, data, len(rows), shard_index, shard_count)


def count_batches(store: TokenStore, data: DataSection, rows: range, shard_index: int = 0, shard_count: int = 1) -> int:
    """How many batches `training_batches` yields for this process (packing: a pass over the lengths)."""
    if data.packing == "none":
        return len(BucketPlan(store.lengths, data))
    counting = dataclasses.replace(data, workers=0)  # a pass over lengths needs no worker processes
    return sum(1 for _ in packed_batches(store, counting, len(rows), shard_index, shard_count))


def process_shard() -> tuple[int, int]:
    """(index, count) of this JAX process among all, as Grain's ShardByJaxProcess reports it."""
    options = grain.sharding.ShardByJaxProcess(drop_remainder=True)
    return options.shard_index, options.shard_count


class FrozenIteratorState:
    """An iterator state captured at save time, so an asynchronous checkpoint cannot see later steps."""

    def __init__(self, state: dict):
        self._state = state

    def get_state(self) -> bytes:
        return json.dumps(self._state).encode()
