"""The jitted preference step: DPO-family loss on packed pairs, accumulated exactly over micro-batches, one update.

Each micro-batch's loss is its share of the whole batch's (its pairs' losses over the batch's pair
count; ORPO's NLL over the batch's token count), so the shares add up to the loss of the batch taken
at once, as in the SFT step. The reference's log-probs arrive with the batch (train/pair_feed.py):
no reference forward runs here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from diabetica_jax.data.batch import Batch
from diabetica_jax.train import preference as pref
from diabetica_jax.train.config import PreferenceSection
from diabetica_jax.train.pair_feed import PairBatch

# metrics that add up over micro-batches; the others are means, weighted by each micro-batch's pairs
SUMMED = ("loss", "pairs")


def batch_totals(batch: Batch, pairs_per_row: int) -> dict:
    """Pairs present, their chosen reply tokens and chosen document positions, over the whole batch."""
    flat = Batch(*(x.reshape((-1,) + x.shape[2:]) for x in batch))
    zeros = jnp.zeros(flat.tokens.shape, jnp.float32)
    scores = pref.pair_scores(zeros, pref.reply_weights(flat.loss_mask, flat.segment_ids), flat.segment_ids,
                              pairs_per_row)
    return {"pairs": jnp.sum(scores.present), "reply_tokens": jnp.sum(scores.chosen_tokens * scores.present),
            "sequence_tokens": pref.chosen_sequence_tokens(flat.segment_ids, pairs_per_row)}


def make_preference_step(graphdef, optimizer, schedule, settings: PreferenceSection, *, loss_chunk: int,
                         dropout: bool, shardings, frozen_shardings, batch_sharding: NamedSharding):
    """`step(state, frozen, pair_batch) -> (state, metrics)`, jitted with explicit shardings; `state` is donated."""
    per_row = settings.pairs_per_row

    def micro_loss(params, frozen, micro: Batch, reference, totals, rng):
        model = nnx.merge(graphdef, params, frozen)
        logp = pref.row_token_logps(model, micro.tokens, micro.positions, micro.segment_ids, loss_chunk,
                                    dropout_rng=rng if dropout else None)
        policy = pref.pair_scores(logp, pref.reply_weights(micro.loss_mask, micro.segment_ids), micro.segment_ids,
                                  per_row)
        ref = None
        if settings.uses_reference:
            ref = pref.PairScores(reference[:, 0::2].reshape(-1), reference[:, 1::2].reshape(-1),
                                  policy.chosen_tokens, policy.rejected_tokens, policy.present)
        nll = None
        if settings.loss == "orpo" and settings.orpo_nll == "sequence":
            nll = pref.chosen_sequence_nll(logp, micro.segment_ids, per_row, totals["sequence_tokens"])
        loss, metrics = pref.pair_loss(settings.loss, policy, ref, beta=settings.beta,
                                       simpo_gamma=settings.simpo_gamma, label_smoothing=settings.label_smoothing,
                                       orpo_nll=nll, total_pairs=totals["pairs"],
                                       total_reply_tokens=totals["reply_tokens"])
        weight = metrics["pairs"] / jnp.maximum(totals["pairs"], 1.0)
        return loss, {k: v if k in SUMMED else v * weight for k, v in metrics.items()}

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def step(state, frozen, batch: PairBatch):
        step_rng = jax.random.fold_in(state.rng, state.step)
        totals = batch_totals(batch.batch, per_row)

        def micro_sums(micro, reference, index):
            (_, metrics), grads = grad_fn(state.params, frozen, micro, reference, totals,
                                          jax.random.fold_in(step_rng, index))
            return grads, metrics

        n_micro = batch.batch.tokens.shape[0]
        if n_micro == 1:
            grads, metrics = micro_sums(jax.tree.map(lambda x: x[0], batch.batch), batch.reference[0], 0)
        else:
            def accumulate(sums, inputs):
                return jax.tree.map(jnp.add, sums, micro_sums(*inputs)), None

            shapes = jax.eval_shape(micro_sums, jax.tree.map(lambda x: x[0], batch.batch), batch.reference[0], 0)
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
            (grads, metrics), _ = jax.lax.scan(accumulate, zeros,
                                               (batch.batch, batch.reference, jnp.arange(n_micro)))
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params, grad_norm=grad_norm)
        new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                                  opt_state=opt_state)
        return new_state, {**metrics, "grad_norm": grad_norm, "lr": schedule(state.step)}

    replicated = NamedSharding(batch_sharding.mesh, PartitionSpec())
    batch_shardings = PairBatch(Batch(*(batch_sharding,) * 4), batch_sharding)
    return jax.jit(step, in_shardings=(shardings, frozen_shardings, batch_shardings),
                   out_shardings=(shardings, replicated), donate_argnums=(0,))
