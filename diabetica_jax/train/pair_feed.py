"""The preference stage's batches: rows of packed pairs, with the reference model's log-probs of each pair.

The order is a pure function of the step (a permutation of the pairs per epoch, seeded by data.seed
and the epoch), so a resumed run sees exactly the batches it would have seen: there is no iterator
state to checkpoint. The reference log-probs are computed once, before the first step, from the
reference model (preference.reference, or the stage's starting weights), and kept in
RUN_DIR/reference_logps.npz with a fingerprint of the pairs and the reference; a resumed run reads
them back, so the reference model is never in memory beside the policy while training.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from diabetica_jax.configuration import ConfigFileError, InputError
from diabetica_jax.data.batch import Batch
from diabetica_jax.data.chat import EmptyLossMask, UnsupportedTemplate
from diabetica_jax.data.pair_files import Rejected, encode_pair, read_pairs
from diabetica_jax.data.pairs import pack_pairs, pair_length
from diabetica_jax.hf.tokenizer import load_tokenizer
from diabetica_jax.train import preference as pref
from diabetica_jax.train.config import TrainConfig

log = logging.getLogger(__name__)

REFERENCE_FILE = "reference_logps.npz"
REJECTS_FILE = "pairs_rejects.jsonl"


class PairBatch(NamedTuple):
    """One step's rows: the packed pairs, and the reference's summed reply log-probs of each pair slot,
    [grad_accum, rows, 2 * pairs_per_row] float32 (slot p: chosen at 2p, rejected at 2p + 1; 0 where empty)."""

    batch: Batch
    reference: np.ndarray


def load_pairs(cfg: TrainConfig, vocab: int, run_dir: Path | None) -> list[tuple[np.ndarray, ...]]:
    """The pairs file tokenized; records that cannot be used (malformed, too long for a pair's share of a row)
    go to RUN_DIR/pairs_rejects.jsonl with their reason. None usable, or a tokenizer that does not fit the
    model, is an error before any work."""
    path = cfg.pairs_file
    try:
        records, rejected = read_pairs(path)
    except (FileNotFoundError, ValueError) as e:
        raise InputError(f"preference.pairs: {e}") from e
    tokenizer = load_tokenizer(cfg.model.path)
    share = cfg.data.seq_len // cfg.preference.pairs_per_row
    pairs = []
    for record in records:
        try:
            pair = encode_pair(tokenizer, record)
        except UnsupportedTemplate as e:
            raise ConfigFileError(f"preference.pairs={path}: {e}") from None
        except EmptyLossMask as e:
            rejected.append(Rejected(record.id, None, str(e)))
            continue
        if pair_length(pair) > share:
            rejected.append(Rejected(record.id, None, f"{pair_length(pair)} tokens (the prompt twice and both "
                                     f"replies) exceed a pair's {share} (data.seq_len / preference.pairs_per_row)"))
            continue
        top = max(int(x.max()) for x in pair)
        if top >= vocab:
            raise ConfigFileError(f"preference.pairs={path}: record {record.id} has token id {top}, outside the "
                                  f"model's vocabulary of {vocab}; the tokenizer does not match the model")
        pairs.append(pair)
    if run_dir is not None:
        with open(run_dir / REJECTS_FILE, "w", encoding="utf-8") as f:
            for r in rejected:
                f.write(json.dumps(r.to_json()) + "\n")
    log.info("preference pairs: %d usable, %d rejected (%s)", len(pairs), len(rejected),
             run_dir / REJECTS_FILE if run_dir else "not written")
    if not pairs:
        raise InputError(f"preference.pairs={path}: no usable pair ({len(rejected)} rejected"
                         + (f"; first: {rejected[0].id}: {rejected[0].reason}" if rejected else "") + ")")
    return pairs


def fingerprint(pairs, reference_source: str) -> str:
    digest = hashlib.sha256(reference_source.encode())
    for pair in pairs:
        for ids in pair:
            digest.update(np.asarray(ids, np.int32).tobytes())
            digest.update(b"|")
    return digest.hexdigest()


class PairFeed:
    """Global batches of `data.global_batch` rows, `pairs_per_row` pairs each; this process's `rows` of them."""

    iterator = None  # the order is a function of the step: nothing to checkpoint

    def __init__(self, cfg: TrainConfig, rows: range, pairs):
        self.cfg, self.rows, self.pairs = cfg, rows, pairs
        self.per_row = cfg.preference.pairs_per_row
        self.per_step = cfg.data.global_batch * self.per_row
        self.steps_per_epoch = -(-len(pairs) // self.per_step)
        self.total_steps = self.steps_per_epoch * cfg.data.epochs
        self.reference_chosen = self.reference_rejected = None

    def indices(self, step: int) -> np.ndarray:
        """The pairs of step `step` (the last step of an epoch may hold fewer)."""
        epoch, offset = divmod(step, self.steps_per_epoch)
        if epoch >= self.cfg.data.epochs:
            raise StopIteration
        order = np.random.default_rng([self.cfg.data.seed, epoch]).permutation(len(self.pairs))
        return order[offset * self.per_step:(offset + 1) * self.per_step]

    def rows_of(self, indices) -> Batch:
        """Global rows [grad_accum, micro_batch, seq] of these pairs."""
        d = self.cfg.data
        packed = pack_pairs([self.pairs[i] for i in indices], self.per_row, d.seq_len, rows=d.global_batch)
        return Batch(*(x.reshape(d.grad_accum, d.global_batch // d.grad_accum, d.seq_len) for x in packed))

    def next(self, step: int) -> PairBatch:
        indices = self.indices(step)
        d = self.cfg.data
        reference = np.zeros((d.global_batch * self.per_row, 2), np.float32)
        if self.reference_chosen is not None:
            reference[:len(indices), 0] = self.reference_chosen[indices]
            reference[:len(indices), 1] = self.reference_rejected[indices]
        reference = reference.reshape(d.grad_accum, d.global_batch // d.grad_accum, 2 * self.per_row)
        batch = self.rows_of(indices)
        return PairBatch(Batch(*(x[:, self.rows.start:self.rows.stop] for x in batch)),
                         reference[:, self.rows.start:self.rows.stop])


def pair_layout(layout, sharding: NamedSharding):
    """PairBatch of host rows -> global arrays (the batch through the run's BatchLayout)."""

    def to_device(local: PairBatch) -> PairBatch:
        g = layout.global_shape(int(local.batch.tokens.shape[2]))
        shape = (g[0], g[1], local.reference.shape[2])
        return PairBatch(layout(local.batch), jax.make_array_from_process_local_data(sharding, local.reference, shape))

    return to_device


def _reference_scores(feed: PairFeed, to_device, model, loss_chunk: int, mesh) -> tuple[np.ndarray, np.ndarray]:
    """Summed reply log-probs of every pair under `model`, in the pairs' own order."""
    graphdef, state = nnx.split(model)
    per_row = feed.per_row
    replicated = NamedSharding(mesh, PartitionSpec())

    @jax.jit
    def scores(state, batch: Batch):
        model = nnx.merge(graphdef, state)

        def one(micro):
            logp = pref.row_token_logps(model, micro.tokens, micro.positions, micro.segment_ids, loss_chunk)
            s = pref.pair_scores(logp, pref.reply_weights(micro.loss_mask, micro.segment_ids), micro.segment_ids,
                                 per_row)
            return s.chosen, s.rejected

        chosen, rejected = jax.lax.map(one, batch)
        return jax.lax.with_sharding_constraint((chosen.reshape(-1), rejected.reshape(-1)), replicated)

    n = len(feed.pairs)
    chosen, rejected = np.zeros(n, np.float32), np.zeros(n, np.float32)
    for start in range(0, n, feed.per_step):
        indices = np.arange(start, min(start + feed.per_step, n))
        rows = feed.rows_of(indices)
        local = PairBatch(Batch(*(x[:, feed.rows.start:feed.rows.stop] for x in rows)),
                          np.zeros(rows.tokens.shape[:2] + (2 * per_row,), np.float32)[:, feed.rows.start:feed.rows.stop])
        c, r = scores(state, to_device(local).batch)
        chosen[indices], rejected[indices] = np.asarray(c)[:len(indices)], np.asarray(r)[:len(indices)]
    return chosen, rejected


def attach_reference(feed: PairFeed, to_device, run_dir: Path, reference_model, source: str, loss_chunk: int,
                     mesh, writer: bool) -> bool:
    """Give the feed its reference log-probs: read from RUN_DIR/reference_logps.npz when they were computed for
    these pairs and this reference, else computed now (by `reference_model()`) and written. True if computed.
    A file for other pairs or another reference is an error: the run directory belongs to another stage."""
    path = run_dir / REFERENCE_FILE
    key = fingerprint(feed.pairs, source)
    if path.is_file():
        saved = np.load(path)
        if str(saved["fingerprint"]) != key:
            raise ConfigFileError(f"{path}: reference log-probs of other pairs or another reference model ({source} "
                                  "now); use a new run directory, or delete the file to recompute them")
        feed.reference_chosen, feed.reference_rejected = saved["chosen"], saved["rejected"]
        return False
    chosen, rejected = _reference_scores(feed, to_device, reference_model(), loss_chunk, mesh)
    if writer:
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, chosen=chosen, rejected=rejected, fingerprint=np.asarray(key))
        tmp.replace(path)
    log.info("reference log-probs of %d pairs computed (%s) into %s", len(chosen), source, path)
    feed.reference_chosen, feed.reference_rejected = chosen, rejected
    return True

