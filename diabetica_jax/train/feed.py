"""Where the train loop's batches come from: this process's rows of each global batch, as host arrays."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

from diabetica_jax.configuration import ConfigFileError
from diabetica_jax.data.batch import Batch
from diabetica_jax.data.chat import UnsupportedTemplate
from diabetica_jax.data.loader import (
    BucketPlan,
    bucketed_batches,
    count_batches,
    packed_batches,
    process_shard,
    read_records,
    store_for,
)
from diabetica_jax.data.synthetic import SyntheticSource
from diabetica_jax.hf.tokenizer import load_tokenizer
from diabetica_jax.train.config import TrainConfig

log = logging.getLogger(__name__)


class SyntheticFeed:
    """Deterministic synthetic rows: a pure function of the step, so there is no iterator to save."""

    iterator = None

    def __init__(self, cfg: TrainConfig, rows: range, vocab: int):
        self.source = SyntheticSource(cfg.data.seq_len, cfg.data.global_batch, cfg.data.grad_accum, cfg.data.seed,
                                      vocab=min(64, vocab))
        self.rows = rows

    def next(self, step: int) -> Batch:
        return self.source.batch(step, self.rows)


def _token_store(cfg: TrainConfig):
    """The curated records of data.kinds, tokenized as the config asks (seq_len, overlong, loss_on)."""
    try:
        return store_for(read_records(cfg.data.path), load_tokenizer(cfg.model.hf_path), cfg.data)
    except UnsupportedTemplate as e:
        raise ConfigFileError(f"data.path={cfg.data.path} with the tokenizer of "
                              f"{cfg.model.hf_path or 'the embedded Qwen2'}: {e}") from None


class CuratedFeed:
    """Batches of curated records through Grain, packed or one example per row (data.packing); its iterator
    state is checkpointed."""

    def __init__(self, cfg: TrainConfig, rows: range, vocab: int, run_dir: Path | None):
        store = _token_store(cfg)
        self.stats = store.stats
        if store.tokens.size and int(store.tokens.max()) >= vocab:
            raise ConfigFileError(
                f"data.path={cfg.data.path}: token id {int(store.tokens.max())} is outside the model's vocabulary of "
                f"{vocab}; the tokenizer ({cfg.model.hf_path or 'embedded Qwen2'}) does not match the model")
        log.info("curated data: %s", store.stats)
        stats = dict(vars(store.stats))
        if cfg.data.packing == "none":
            plan = BucketPlan(store.lengths, cfg.data)
            stats["buckets"] = plan.summary()
            log.info("packing none: %s", stats["buckets"])
            batches = bucketed_batches(store, cfg.data, rows, plan)
        else:
            batches = packed_batches(store, cfg.data, len(rows), *process_shard())
        if run_dir is not None:
            (run_dir / "data_stats.json").write_text(json.dumps(stats, indent=2) + "\n")
        self.iterator = iter(batches)

    def next(self, step: int) -> Batch:
        return next(self.iterator)  # StopIteration when the epochs are used up


def count_steps(cfg: TrainConfig, rows: range) -> int:
    """Optimizer steps that data.epochs of the curated data fill (the smallest count over processes)."""
    count = count_batches(_token_store(cfg), cfg.data, rows, *process_shard())
    if jax.process_count() > 1:
        count = int(np.min(multihost_utils.process_allgather(np.int32(count))))
    if count == 0:
        if cfg.data.packing == "none":  # a remainder still makes a (filled-up) batch: there is no example at all
            raise ConfigFileError(f"data.path={cfg.data.path}: no examples to train on"
                                  + (f" of data.kinds {cfg.data.kinds}" if cfg.data.kinds else ""))
        raise ConfigFileError(f"data.path={cfg.data.path}: too little data for one step of "
                              f"{cfg.data.global_batch} x {cfg.data.seq_len} tokens")
    return count


def make_feed(cfg: TrainConfig, rows: range, vocab: int, run_dir: Path | None):
    if cfg.data.source == "curated":
        return CuratedFeed(cfg, rows, vocab, run_dir)
    return SyntheticFeed(cfg, rows, vocab)
