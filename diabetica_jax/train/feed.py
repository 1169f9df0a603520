"""Where the train loop's batches come from: this process's rows of each global batch, as host arrays."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

from diabetica_jax.configuration import ConfigFileError
from diabetica_jax.data.batch import Batch
from diabetica_jax.data.chat import UnsupportedTemplate
from diabetica_jax.data.loader import TokenStore, packed_batches, process_shard, read_records
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
    """The curated records, tokenized as the config asks."""
    try:
        return TokenStore(read_records(cfg.data.path), load_tokenizer(cfg.model.hf_path), cfg.data.seq_len,
                          cfg.data.overlong)
    except UnsupportedTemplate as e:
        raise ConfigFileError(f"data.path={cfg.data.path} with the tokenizer of "
                              f"{cfg.model.hf_path or 'the embedded Qwen2'}: {e}") from None


class CuratedFeed:
    """Packed batches of curated records through Grain; its iterator state is checkpointed."""

    def __init__(self, cfg: TrainConfig, rows: range, vocab: int, run_dir: Path | None):
        store = _token_store(cfg)
        self.stats = store.stats
        if store.tokens.size and int(store.tokens.max()) >= vocab:
            raise ConfigFileError(
                f"data.path={cfg.data.path}: token id {int(store.tokens.max())} is outside the model's vocabulary of "
                f"{vocab}; the tokenizer ({cfg.model.hf_path or 'embedded Qwen2'}) does not match the model")
        log.info("curated data: %s", store.stats)
        if run_dir is not None:
            (run_dir / "data_stats.json").write_text(json.dumps(vars(store.stats), indent=2) + "\n")
        self.iterator = iter(packed_batches(store, cfg.data, len(rows), *process_shard()))

    def next(self, step: int) -> Batch:
        return next(self.iterator)  # StopIteration when the epochs are used up


def count_steps(cfg: TrainConfig, rows: range) -> int:
    """Optimizer steps that data.epochs of the curated data fill (the smallest count over processes)."""
    counting = dataclasses.replace(cfg.data, workers=0)  # a pass over lengths needs no worker processes
    count = sum(1 for _ in packed_batches(_token_store(cfg), counting, len(rows), *process_shard()))
    if jax.process_count() > 1:
        count = int(np.min(multihost_utils.process_allgather(np.int32(count))))
    if count == 0:
        raise ConfigFileError(f"data.path={cfg.data.path}: too little data for one step of "
                              f"{cfg.data.global_batch} x {cfg.data.seq_len} tokens")
    return count


def make_feed(cfg: TrainConfig, rows: range, vocab: int, run_dir: Path | None):
    if cfg.data.source == "curated":
        return CuratedFeed(cfg, rows, vocab, run_dir)
    return SyntheticFeed(cfg, rows, vocab)
