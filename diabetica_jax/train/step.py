"""The jitted train step: gradient accumulation, masked mean loss over the global batch, one update.

The loss is the fused chunked cross-entropy (train/loss.py), whose gradients come out of its forward pass; the
gradients' global norm is computed once, for the optimizer's clipping and for the `grad_norm` metric.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from diabetica_jax.data.batch import Batch
from diabetica_jax.model.segments import segment_layout
from diabetica_jax.train.loss import fused_cross_entropy, next_token_targets
from diabetica_jax.train.state import TrainState


def make_train_step(
    graphdef,
    optimizer: optax.GradientTransformationExtraArgs,
    schedule: optax.Schedule,
    *,
    loss_chunk: int,
    dropout: bool,
    shardings: TrainState,
    frozen_shardings: dict,
    batch_sharding: NamedSharding,
    max_segments: int | None = None,
    one_document_rows: bool = False,
) -> Callable[[TrainState, dict, Batch], tuple[TrainState, dict]]:
    """`step(state, frozen, batch) -> (state, metrics)`, jitted with explicit shardings; `state` is donated.

    The loss is the sum of token losses over every micro-batch divided by the number of loss tokens
    in the whole global batch, so accumulation equals one big batch exactly (not a mean of means): a
    token mean over the batch's loss-masked tokens, whether rows are packed or hold one example each
    (data.packing: none), where it is the mean over all the batch's examples' loss tokens together,
    so longer answers weigh more than short ones, as in one unpadded batch. A batch of one micro-batch
    takes its gradient directly, without the accumulation loop.

    What attention sees of the rows' documents: with `one_document_rows` (each row one example, its
    padding after it) nothing, so it runs causal-only, which is exact for the real tokens since they
    never look ahead to the padding; otherwise the segment ids, and with `max_segments` also their
    per-document layout (model/segments.py) for kernels that take packed rows that way. The loss
    weights follow the segment ids either way.

    The batch shardings do not fix the sequence length: batches of another length (packing none's
    buckets) compile one more program on first sight and reuse it after, one per length.
    """

    def attention_inputs(segment_ids):
        """(segment_ids, packed layout) as the model's attention is given them."""
        if one_document_rows:
            return None, None
        return segment_ids, None if max_segments is None else segment_layout(segment_ids, max_segments)

    def micro_loss(params, frozen, micro: Batch, rng):
        model = nnx.merge(graphdef, params, frozen)
        segment_ids, packed = attention_inputs(micro.segment_ids)
        hidden = model.hidden_states(micro.tokens, micro.positions, segment_ids,
                                     dropout_rng=rng if dropout else None, packed=packed)
        targets, weights = next_token_targets(micro.tokens, micro.loss_mask, micro.segment_ids)
        return fused_cross_entropy(hidden, model.output_kernel(), targets, weights, loss_chunk)

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def summed_over_micro_batches(params, frozen, batch: Batch, step_rng):
        """(gradient, loss, loss tokens), each summed over the batch's micro-batches."""

        def micro_sums(micro, index):
            (loss, count), grads = grad_fn(params, frozen, micro, jax.random.fold_in(step_rng, index))
            return grads, loss, count

        n_micro = batch.tokens.shape[0]
        if n_micro == 1:  # no loop, and no zeroed sums for it to add into
            return micro_sums(jax.tree.map(lambda x: x[0], batch), 0)

        def accumulate(sums, inputs):
            return jax.tree.map(jnp.add, sums, micro_sums(*inputs)), None

        zeros = (jax.tree.map(jnp.zeros_like, params), jnp.float32(0.0), jnp.float32(0.0))
        sums, _ = jax.lax.scan(accumulate, zeros, (batch, jnp.arange(n_micro)))
        return sums

    def step(state: TrainState, frozen: dict, batch: Batch):
        step_rng = jax.random.fold_in(state.rng, state.step)
        grad_sum, loss_sum, count = summed_over_micro_batches(state.params, frozen, batch, step_rng)
        denom = jnp.maximum(count, 1.0)
        grads = jax.tree.map(lambda g: g / denom, grad_sum)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params, grad_norm=grad_norm)
        new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                                  opt_state=opt_state)
        metrics = {"loss": loss_sum / denom, "grad_norm": grad_norm, "lr": schedule(state.step),
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
