"""The jitted GRPO step: group-relative advantages from the rollouts' rewards, the clipped policy loss, one update.

One optimizer step per rollout batch (TRL's num_iterations 1): the old log-probs are the current ones
held constant, so the ratio is 1 in value and its gradient is the policy gradient. The per-token
loss and its reductions are train/preference.py's `grpo_loss`; each micro-batch contributes its
share of the whole batch's loss (grpo: its completions' share, dr_grpo: the same over the fixed
length, dapo: token sums over the batch's completion tokens), so accumulation is exact. With a KL
penalty the reference weights (the stage's starting ones) arrive beside the frozen parameters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from diabetica_jax.data.batch import Batch
from diabetica_jax.train import preference as pref
from diabetica_jax.train.config import GRPOSection
from diabetica_jax.train.rollouts import RolloutBatch


def make_grpo_step(graphdef, optimizer, schedule, settings: GRPOSection, *, loss_chunk: int, dropout: bool,
                   shardings, frozen_shardings, batch_sharding: NamedSharding):
    """`step(state, (frozen, reference params or None), rollouts) -> (state, metrics)`; `state` is donated."""

    def logps_of(params, frozen, micro: Batch, rng):
        model = nnx.merge(graphdef, params, frozen)
        return pref.row_token_logps(model, micro.tokens, micro.positions, micro.segment_ids, loss_chunk,
                                    dropout_rng=rng)

    def micro_loss(params, frozen, reference, micro: Batch, advantages, totals, rng):
        logp = logps_of(params, frozen, micro, rng if dropout else None)
        mask = pref.reply_weights(micro.loss_mask, micro.segment_ids)
        ref = None if reference is None else jax.lax.stop_gradient(logps_of(reference, frozen, micro, None))
        loss, metrics = pref.grpo_loss(settings.loss, logp, jax.lax.stop_gradient(logp), advantages, mask,
                                       epsilon_low=settings.epsilon_low, epsilon_high=settings.epsilon_high,
                                       beta=settings.beta, ref_logps=ref,
                                       max_completion_length=settings.max_new_tokens, num_items=totals["tokens"])
        rows, tokens = micro.tokens.shape[0], jnp.sum(mask)
        if settings.loss != "dapo":  # grpo, dr_grpo: a mean over this micro-batch's completions
            loss = loss * rows / totals["rows"]
        token_share = tokens / jnp.maximum(totals["tokens"], 1.0)
        return loss, {k: loss if k == "loss" else v * token_share for k, v in metrics.items()}

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def step(state, frozen_and_reference, batch: RolloutBatch):
        frozen, reference = frozen_and_reference
        step_rng = jax.random.fold_in(state.rng, state.step)
        rewards = batch.rewards.reshape(-1)
        advantages = pref.group_advantages(rewards, settings.group_size, settings.scale_rewards)
        advantages = advantages.reshape(batch.rewards.shape)
        weights = pref.reply_weights(batch.batch.loss_mask.reshape((-1,) + batch.batch.loss_mask.shape[2:]),
                                     batch.batch.segment_ids.reshape((-1,) + batch.batch.segment_ids.shape[2:]))
        totals = {"rows": jnp.float32(rewards.shape[0]), "tokens": jnp.sum(weights)}

        def micro_sums(micro, adv, index):
            (_, metrics), grads = grad_fn(state.params, frozen, reference, micro, adv, totals,
                                          jax.random.fold_in(step_rng, index))
            return grads, metrics

        n_micro = batch.rewards.shape[0]
        if n_micro == 1:
            grads, metrics = micro_sums(jax.tree.map(lambda x: x[0], batch.batch), advantages[0], 0)
        else:
            shapes = jax.eval_shape(micro_sums, jax.tree.map(lambda x: x[0], batch.batch), advantages[0], 0)
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

            def accumulate(sums, inputs):
                return jax.tree.map(jnp.add, sums, micro_sums(*inputs)), None

            (grads, metrics), _ = jax.lax.scan(accumulate, zeros, (batch.batch, advantages, jnp.arange(n_micro)))
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params, grad_norm=grad_norm)
        new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                                  opt_state=opt_state)
        groups = rewards.reshape(-1, settings.group_size)
        metrics = {**metrics, "reward": jnp.mean(rewards), "reward/group_std": jnp.mean(jnp.std(groups, axis=1)),
                   "reward/solved_groups": jnp.mean(jnp.all(groups > 0.5, axis=1).astype(jnp.float32)),
                   "completion_tokens": totals["tokens"] / totals["rows"], "grad_norm": grad_norm,
                   "lr": schedule(state.step)}
        return new_state, metrics

    replicated = NamedSharding(batch_sharding.mesh, PartitionSpec())
    rewards_sharding = NamedSharding(batch_sharding.mesh, PartitionSpec(*batch_sharding.spec[:2]))
    batch_shardings = RolloutBatch(Batch(*(batch_sharding,) * 4), rewards_sharding)
    reference_shardings = shardings.params if settings.beta else None
    return jax.jit(step, in_shardings=(shardings, (frozen_shardings, reference_shardings), batch_shardings),
                   out_shardings=(shardings, replicated), donate_argnums=(0,))
