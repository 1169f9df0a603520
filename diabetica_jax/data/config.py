"""The `data:` section of a training config: where batches come from and how they are packed."""

from __future__ import annotations

import dataclasses
from typing import Literal

from diabetica_jax.configuration import FieldError, field, require_positive

PACKING = ("first_fit", "best_fit")
OVERLONG = ("truncate", "drop")


@dataclasses.dataclass(frozen=True)
class DataSection:
    source: Literal["synthetic", "curated"] = field(
        "synthetic", "batch source: curated (the shards `diabetica-jax curate` wrote) or synthetic sequences")
    path: str | None = field(None, "curated output directory (data.source: curated)", path=True)
    epochs: int = field(1, "passes over the curated data (training stops when they are used up)")
    pack: Literal[PACKING] = field("first_fit", "how examples are packed into rows")
    overlong: Literal[OVERLONG] = field("truncate", "what happens to examples longer than seq_len")
    packing_bins: int = field(16, "rows filled at once while packing (more: less padding)")
    workers: int = field(0, "Grain worker processes (0: in the training process)")
    seq_len: int = field(128, "tokens per sequence")
    global_batch: int = field(8, "sequences per optimizer step, over all devices and accumulation steps")
    grad_accum: int = field(1, "micro-batches per optimizer step (global_batch must divide by it)")
    seed: int = field(0, "seed of the data order / synthetic data")

    def __post_init__(self):
        require_positive(self, "seq_len", "global_batch", "grad_accum", "epochs", "packing_bins")
        if self.workers < 0:
            raise FieldError("workers", f"must be >= 0, got {self.workers}")
        if self.global_batch % self.grad_accum:
            raise FieldError("global_batch", f"{self.global_batch} does not divide into grad_accum={self.grad_accum} "
                                             "micro-batches")
        if self.source == "curated" and not self.path:
            raise FieldError("path", "source: curated needs the curated output directory")
