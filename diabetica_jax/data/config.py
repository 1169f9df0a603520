"""The `data:` section of a training config: where batches come from, which records, how they become rows."""

from __future__ import annotations

import dataclasses
from typing import Literal

from diabetica_jax.configuration import FieldError, field, require_at_most, require_positive, shown
from diabetica_jax.data.records import KINDS

PACKING = ("none", "first_fit", "best_fit")
OVERLONG = ("truncate", "drop")
LOSS_ON = ("assistant", "all")
# Sizes past these are typos (100000000000 for 1000), refused before the run allocates anything: 2**31 tokens per
# optimizer step is a hundred times the largest published batch (16M tokens, Llama 3 405B), 2**20 tokens the longest
# context of any Qwen model (Qwen2.5-1M), and no host runs a thousand loader processes.
MAX_TOKENS_PER_STEP = 2**31
MAX_SEQ_LEN = 2**20
MAX_WORKERS = 1024
MAX_PACKING_BINS = 2**16


@dataclasses.dataclass(frozen=True)
class DataSection:
    source: Literal["synthetic", "curated"] = field(
        "synthetic", "batch source: curated (the shards `diabetica-jax curate` wrote) or synthetic sequences")
    path: str | None = field(None, "curated output directory (data.source: curated)", path=True)
    epochs: int = field(1, "passes over the curated data (training stops when they are used up)")
    kinds: list[str] = field([], "record kinds to train on (" + ", ".join(KINDS) + "); records of other kinds are "
                             "skipped and counted (empty: all kinds)")
    loss_on: Literal[LOSS_ON] = field(
        "assistant", "tokens that carry loss: assistant (the assistant turns of chat records; passages: all their "
        "tokens) or all (every token of every example, the whole rendered conversation of chat records)")
    packing: Literal[PACKING] = field(
        "first_fit", "how examples become rows: none (one example per row, padded to its length bucket; global_batch "
        "counts examples) or first_fit / best_fit (packed into rows of seq_len tokens; global_batch counts rows)")
    pack: Literal[PACKING] | None = field(None, "deprecated old name of packing (still read from older configs and "
                                          "run directories)")
    min_bucket: int = field(128, "packing none: shortest row; rows are padded to min_bucket, 2 x min_bucket, ... "
                            "up to seq_len (one compiled train step per bucket)")
    overlong: Literal[OVERLONG] = field("truncate", "what happens to examples longer than seq_len")
    packing_bins: int = field(16, "rows filled at once while packing (more: less padding)")
    max_segments_per_row: int = field(32, "packing first_fit / best_fit: most examples in one row (a row holding this "
                                      "many closes like a full one); packed attention on GPU is compiled for this "
                                      "many documents per row")
    workers: int = field(0, "Grain worker processes (0: in the training process)")
    seq_len: int = field(128, "tokens per sequence (packing none: the longest bucket)")
    global_batch: int = field(8, "sequences per optimizer step, over all devices and accumulation steps (packing "
                              "none: examples; packed: rows of seq_len tokens)")
    grad_accum: int = field(1, "micro-batches per optimizer step (global_batch must divide by it)")
    seed: int = field(0, "seed of the data order / synthetic data")

    def __post_init__(self):
        require_positive(self, "seq_len", "global_batch", "grad_accum", "epochs", "packing_bins", "min_bucket",
                         "max_segments_per_row")
        require_at_most(self, MAX_SEQ_LEN, "seq_len", "min_bucket", why="2**20 tokens, the longest context of any "
                        "Qwen model")
        require_at_most(self, MAX_TOKENS_PER_STEP // self.seq_len, "global_batch",
                        why=f"at seq_len={self.seq_len}: at most 2**31 tokens per step")
        require_at_most(self, MAX_WORKERS, "workers")
        require_at_most(self, MAX_PACKING_BINS, "packing_bins")
        if self.pack is not None:  # the deprecated name: fold it into packing so the rest of the code sees one
            if self.packing != "first_fit" and self.packing != self.pack:
                raise FieldError("pack", f"{shown(self.pack)} contradicts packing={shown(self.packing)} (pack is the old name "
                                         "of packing: set only packing)")
            object.__setattr__(self, "packing", self.pack)
            object.__setattr__(self, "pack", None)
        unknown = sorted(set(self.kinds) - set(KINDS))
        if unknown:
            raise FieldError("kinds", f"{shown(unknown)} are not record kinds; choose from {list(KINDS)}")
        if self.workers < 0:
            raise FieldError("workers", f"must be >= 0, got {self.workers}")
        if self.global_batch % self.grad_accum:
            raise FieldError("global_batch", f"{self.global_batch} does not divide into grad_accum={self.grad_accum} "
                                             "micro-batches")
        if self.source == "curated" and not self.path:
            raise FieldError("path", "source: curated needs the curated output directory")

    def buckets(self) -> list[int]:
        """Row lengths with packing none: min_bucket doubling up to seq_len (seq_len always the last)."""
        lengths, length = [], min(self.min_bucket, self.seq_len)
        while length < self.seq_len:
            lengths.append(length)
            length *= 2
        return lengths + [self.seq_len]
