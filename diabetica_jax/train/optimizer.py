"""AdamW with warmup and decay, global-norm clipping, and no weight decay on norms and biases.

The optimizer's `update` takes the gradients' global norm as an extra argument (`grad_norm=`): the train
step computes it once, for the clipping and for its metric.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from diabetica_jax.train.config import OptimSection


def learning_rate_schedule(cfg: OptimSection, total_steps: int) -> optax.Schedule:
    decay_steps = max(total_steps - cfg.warmup_steps, 1)
    end = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(cfg.lr, decay_steps, alpha=cfg.min_lr_ratio)
    elif cfg.schedule == "linear":
        decay = optax.linear_schedule(cfg.lr, end, decay_steps)
    else:
        decay = optax.constant_schedule(cfg.lr)
    if cfg.warmup_steps == 0:
        return decay
    warmup = optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps)
    return optax.join_schedules([warmup, decay], [cfg.warmup_steps])


def decay_mask(params) -> dict:
    """True for weights that get weight decay: matrices (kernels, embeddings, adapters), not norms or biases."""

    def decide(path, _):
        names = [getattr(k, "key", getattr(k, "name", "")) for k in path]
        leaf, owner = names[-1], (names[-2] if len(names) > 1 else "")
        return not (leaf == "bias" or "norm" in owner)

    return jax.tree_util.tree_map_with_path(decide, params)


def clip_by_given_norm(max_norm: float) -> optax.GradientTransformationExtraArgs:
    """optax.clip_by_global_norm, given the updates' global norm (`update(..., grad_norm=norm)`) instead of
    computing it again. Its state is the same EmptyState, so the optimizer state keeps its tree structure
    (checkpoints of runs that clipped with optax's restore into it)."""

    def update(updates, state, params=None, *, grad_norm, **extra_args):
        del params, extra_args
        unclipped = jnp.squeeze(grad_norm < max_norm)

        def clip(t):  # the same arithmetic as optax's
            return jax.lax.select(unclipped, t, (t / grad_norm.astype(t.dtype)) * max_norm)

        return jax.tree.map(clip, updates), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


def build_optimizer(cfg: OptimSection, total_steps: int) -> tuple[optax.GradientTransformationExtraArgs, optax.Schedule]:
    schedule = learning_rate_schedule(cfg, total_steps)
    adamw = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask,
                        mu_dtype=jnp.dtype(cfg.mu_dtype))
    chain = [clip_by_given_norm(cfg.clip_norm)] if cfg.clip_norm > 0 else []
    return optax.chain(*chain, adamw), schedule
