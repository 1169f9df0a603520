"""The Grain input pipeline: curated shards -> token ids and loss masks -> packed, sharded batches.

    records (ArrayRecord shards)
      -> tokenized once through the chat template (TokenStore: over-long examples truncated or
         dropped per config, and counted)
      -> Grain: seeded shuffle, epochs, this process's shard (ShardByJaxProcess)
      -> first-fit or best-fit packing to seq_len, with segment ids and per-segment positions
      -> [grad_accum, rows_per_process, seq_len] batches, assembled into global arrays by the loop

The iterator's state goes into the same Orbax checkpoint as the model, so a resumed run sees
exactly the batches an uninterrupted one would have.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import grain
import numpy as np

from diabetica_jax.data.batch import Batch
from diabetica_jax.data.chat import EmptyLossMask, encode_record
from diabetica_jax.data.config import OVERLONG, DataSection
from diabetica_jax.data.records import Record


@dataclasses.dataclass
class TokenStats:
    examples: int = 0
    truncated: int = 0
    dropped_overlong: int = 0
    dropped_empty_mask: int = 0
    tokens: int = 0
    loss_tokens: int = 0


class TokenStore:
    """Every record tokenized up front into flat arrays: random access costs two slices."""

    def __init__(self, records: list[Record], tokenizer, seq_len: int, overlong: str = "truncate"):
        if overlong not in OVERLONG:
            raise ValueError(f"overlong must be one of {OVERLONG}, got {overlong!r}")
        self.stats = TokenStats()
        ids_parts, mask_parts, lengths = [], [], []
        for record in records:
            try:
                ids, mask = encode_record(tokenizer, record)
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
        self.tokens = np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.int32)
        self.loss_mask = np.concatenate(mask_parts) if mask_parts else np.zeros(0, np.int32)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.stats.examples = len(lengths)
        self.stats.tokens = int(self.tokens.size)
        self.stats.loss_tokens = int(self.loss_mask.sum())

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        lo, hi = self.offsets[index], self.offsets[index + 1]
        return {"tokens": self.tokens[lo:hi], "loss_mask": self.loss_mask[lo:hi]}


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
    ds = grain.MapDataset.source(store).shuffle(seed=data.seed).repeat(data.epochs)
    ds = ds[shard_index::shard_count]
    length = {"tokens": data.seq_len, "loss_mask": data.seq_len}
    pack_cls = {"first_fit": grain.experimental.FirstFitPackIterDataset,
                "best_fit": grain.experimental.BestFitPackIterDataset}[data.pack]
    packed = pack_cls(ds.to_iter_dataset(), length_struct=length, num_packing_bins=data.packing_bins,
                      seed=data.seed, shuffle_bins=True)
    batches = packed.batch(rows * data.grad_accum, drop_remainder=True)
    batches = batches.map(lambda batch_rows: _to_batch(batch_rows, data.grad_accum))
    if data.workers > 0:
        batches = batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=data.workers))
    return batches


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
