"""The jitted train step: gradient accumulation, masked mean loss over the global batch, one update."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from diabetica_jax.data.batch import Batch
from diabetica_jax.train.loss import chunked_cross_entropy, next_token_targets
from diabetica_jax.train.state import TrainState


def make_train_step(
    graphdef,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    *,
    loss_chunk: int,
    dropout: bool,
    shardings: TrainState,
    frozen_shardings: dict,
    batch_sharding: NamedSharding,
) -> Callable[[TrainState, dict, Batch], tuple[TrainState, dict]]:
    """`step(state, frozen, batch) -> (state, metrics)`, jitted with explicit shardings; `state` is donated.

    The loss is the sum of token losses over every micro-batch divided by the number of loss tokens
    in the whole global batch, so accumulation equals one big batch exactly (not a mean of means): a
    token mean over the batch's loss-masked tokens, whether rows are packed or hold one example each
    (data.packing: none), where it is the mean over all the batch's examples' loss tokens together,
    so longer answers weigh more than short ones, as in one unpadded batch.

    The batch shardings do not fix the sequence length: batches of another length (packing none's
    buckets) compile one more program on first sight and reuse it after, one per length.
    """

    def micro_loss(params, frozen, micro: Batch, rng):
        model = nnx.merge(graphdef, params, frozen)
        hidden = model.hidden_states(micro.tokens, micro.positions, micro.segment_ids,
                                     dropout_rng=rng if dropout else None)
        targets, weights = next_token_targets(micro.tokens, micro.loss_mask, micro.segment_ids)
        return chunked_cross_entropy(hidden, model.output_kernel(), targets, weights, loss_chunk)

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def step(state: TrainState, frozen: dict, batch: Batch):
        step_rng = jax.random.fold_in(state.rng, state.step)

        def accumulate(carry, inputs):
            grad_sum, loss_sum, count = carry
            micro, index = inputs
            (loss, n), grads = grad_fn(state.params, frozen, micro, jax.random.fold_in(step_rng, index))
            return (jax.tree.map(jnp.add, grad_sum, grads), loss_sum + loss, count + n), None

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        n_micro = batch.tokens.shape[0]
        (grad_sum, loss_sum, count), _ = jax.lax.scan(
            accumulate, (zeros, jnp.float32(0.0), jnp.float32(0.0)), (batch, jnp.arange(n_micro))
        )
        denom = jnp.maximum(count, 1.0)
        grads = jax.tree.map(lambda g: g / denom, grad_sum)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                                  opt_state=opt_state)
        metrics = {"loss": loss_sum / denom, "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step),
                   "loss_tokens": count}
        return new_state, metrics

    replicated = NamedSharding(batch_sharding.mesh, PartitionSpec())
    batch_shardings = Batch(*(batch_sharding,) * 4)
    return jax.jit(
        step,
        in_shardings=(shardings, frozen_shardings, batch_shardings),
        out_shardings=(shardings, replicated),
        donate_argnums=(0,),
    )


def batch_sharding(mesh) -> NamedSharding:
    """[grad_accum, micro_batch, seq]: micro-batch rows over the data and fsdp axes."""
    from diabetica_jax.parallel.rules import active_rules

    batch_axes = active_rules().spec(("batch",), None, mesh)[0]
    return NamedSharding(mesh, PartitionSpec(None, batch_axes, None))
