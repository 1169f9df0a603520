"""Where the train loop's batches come from: this process's rows of each global batch, as host arrays."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from diabetica_jax.configuration import ConfigFileError, InputError
from diabetica_jax.data.batch import Batch
from diabetica_jax.data.chat import UnsupportedTemplate
from diabetica_jax.data.loader import plan_for, training_batches
from diabetica_jax.data.shards import check_curated
from diabetica_jax.data.synthetic import SyntheticSource
from diabetica_jax.data.token_store import TokenView, open_token_store
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


def _token_store(cfg: TrainConfig) -> TokenView:
    """The curated records of data.kinds, tokenized as the config asks (seq_len, overlong, loss_on): the token
    store of data.path for this tokenizer (built once, on first use: data/token_store.py), memory-mapped.
    A data.path that is no curated directory (missing, without shards, shards that disagree with its data
    card, records of another version's schema) is an InputError naming data.path and the file."""
    data = cfg.data
    try:
        check_curated(data.path)
        corpus = open_token_store(data.path, load_tokenizer(cfg.model.path))
        return corpus.select(data.seq_len, data.overlong, kinds=data.kinds, loss_on=data.loss_on)
    except (FileNotFoundError, InputError) as e:
        raise InputError(f"data.path: {e}") from e
    except UnsupportedTemplate as e:
        raise ConfigFileError(f"data.path={data.path} with the tokenizer of "
                              f"{cfg.model.path or 'the embedded Qwen2'}: {e}") from None


class CuratedFeed:
    """Batches of curated records through Grain, packed or one example per row (data.packing); its iterator
    state is checkpointed."""

    def __init__(self, cfg: TrainConfig, rows: range, vocab: int, run_dir: Path | None):
        store = _token_store(cfg)
        self.stats = store.stats
        if store.max_token >= vocab:  # from the stored per-record maxima, not a pass over the tokens
            raise ConfigFileError(
                f"data.path={cfg.data.path}: token id {store.max_token} is outside the model's vocabulary of "
                f"{vocab}; the tokenizer ({cfg.model.path or 'embedded Qwen2'}) does not match the model")
        log.info("curated data: %s", store.stats)
        stats = dict(vars(store.stats))
        plan = plan_for(store, cfg.data)
        stats["buckets" if cfg.data.packing == "none" else "packing"] = plan.summary()
        log.info("packing %s: %s", cfg.data.packing, plan.summary())
        if run_dir is not None:
            (run_dir / "data_stats.json").write_text(json.dumps(stats, indent=2) + "\n")
        self.iterator = iter(training_batches(store, cfg.data, rows, plan))

    def next(self, step: int) -> Batch:
        return next(self.iterator)  # StopIteration when the epochs are used up


def count_steps(cfg: TrainConfig, rows: range) -> int:
    """Optimizer steps that data.epochs of the curated data fill: the global plan's length, the same on every
    process (a packing plan is cached beside the token store, so the feed reuses it)."""
    count = len(plan_for(_token_store(cfg), cfg.data))
    if count == 0:  # a remainder still makes a (filled-up) batch: there is no example at all
        raise ConfigFileError(f"data.path={cfg.data.path}: no examples to train on"
                              + (f" of data.kinds {cfg.data.kinds}" if cfg.data.kinds else ""))
    return count


def make_feed(cfg: TrainConfig, rows: range, vocab: int, run_dir: Path | None):
    if cfg.data.source == "curated":
        return CuratedFeed(cfg, rows, vocab, run_dir)
    return SyntheticFeed(cfg, rows, vocab)
