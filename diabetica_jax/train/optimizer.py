"""AdamW with warmup and decay, global-norm clipping, and no weight decay on norms and biases."""

from __future__ import annotations

import jax
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


def build_optimizer(cfg: OptimSection, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = learning_rate_schedule(cfg, total_steps)
    adamw = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask)
    chain = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm > 0 else []
    return optax.chain(*chain, adamw), schedule
