"""The optimizer: clipping by the norm the step passes equals optax's clip_by_global_norm + AdamW, keeps the
optimizer state's tree structure (old checkpoints restore), and the first moment may be bfloat16."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diabetica_jax.configuration import ConfigFileError, load_config
from diabetica_jax.train.config import OptimSection, TrainConfig
from diabetica_jax.train.optimizer import build_optimizer, clip_by_given_norm, decay_mask

STEPS = 6


def _params():
    rng = np.random.RandomState(0)
    return {"layers": {"mlp": {"kernel": jnp.asarray(rng.randn(4, 3), jnp.float32),
                               "bias": jnp.asarray(rng.randn(3), jnp.float32)},
                       "input_layernorm": {"scale": jnp.ones((4,), jnp.float32)}},
            "embed": jnp.asarray(rng.randn(5, 4), jnp.float32)}


def optax_reference(cfg: OptimSection, total_steps: int):
    """build_optimizer as it was: optax's own clipping, which computes the norm itself."""
    _, schedule = build_optimizer(cfg, total_steps)
    adamw = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask)
    return optax.chain(*([optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm > 0 else []), adamw)


def _gradients(params, norms):
    """One gradient tree per step, scaled to each global norm."""
    rng = np.random.RandomState(1)
    for norm in norms:
        g = jax.tree.map(lambda p: jnp.asarray(rng.randn(*p.shape), jnp.float32), params)
        scale = norm / optax.tree.norm(g)
        yield jax.tree.map(lambda x, scale=scale: x * scale, g)


@pytest.mark.parametrize("clip_norm", [1.0, 0.0])
def test_updates_equal_optax_clipping_and_adamw(clip_norm):
    cfg = OptimSection(lr=1e-2, warmup_steps=2, weight_decay=0.1, clip_norm=clip_norm)
    optimizer, _ = build_optimizer(cfg, STEPS)
    reference = optax_reference(cfg, STEPS)
    params = ref_params = _params()
    state, ref_state = optimizer.init(params), reference.init(params)
    norms = [3.0, 0.5, 1.0, 12.0, 0.01, 2.0]  # above the clip, below it, at it
    for grads in _gradients(params, norms):
        updates, state = jax.jit(optimizer.update)(grads, state, params, grad_norm=optax.tree.norm(grads))
        ref_updates, ref_state = jax.jit(reference.update)(grads, ref_state, ref_params)
        for got, want in zip(jax.tree.leaves(updates), jax.tree.leaves(ref_updates)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8)
        params, ref_params = optax.apply_updates(params, updates), optax.apply_updates(ref_params, ref_updates)
    for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(ref_state)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8)


def test_clipping_scales_by_the_norm_it_is_given():
    """The norm comes from the step, not from the updates the clipping sees."""
    clip = clip_by_given_norm(2.0)
    grads = jax.tree.map(jnp.ones_like, _params())
    clipped, state = clip.update(grads, clip.init(grads), grad_norm=jnp.float32(8.0))
    kept, _ = clip.update(grads, state, grad_norm=jnp.float32(1.5))
    assert state == optax.EmptyState()
    for g, c, k in zip(jax.tree.leaves(grads), jax.tree.leaves(clipped), jax.tree.leaves(kept)):
        np.testing.assert_allclose(c, g * 0.25, rtol=1e-7)
        np.testing.assert_array_equal(k, g)


@pytest.mark.parametrize("clip_norm", [1.0, 0.0])
def test_the_state_has_the_tree_structure_of_optax_clipping(clip_norm):
    """Checkpoints written before restore: same nesting, same leaves, same dtypes."""
    cfg = OptimSection(clip_norm=clip_norm)
    optimizer, _ = build_optimizer(cfg, STEPS)
    state, ref_state = optimizer.init(_params()), optax_reference(cfg, STEPS).init(_params())
    assert jax.tree.structure(state) == jax.tree.structure(ref_state)
    assert [x.dtype for x in jax.tree.leaves(state)] == [x.dtype for x in jax.tree.leaves(ref_state)]


def test_a_bfloat16_first_moment():
    optimizer, _ = build_optimizer(OptimSection(mu_dtype="bfloat16"), STEPS)
    params = _params()
    state = optimizer.init(params)
    grads = next(_gradients(params, [2.0]))
    _, state = jax.jit(optimizer.update)(grads, state, params, grad_norm=optax.tree.norm(grads))
    assert {x.dtype for x in jax.tree.leaves(optax.tree.get(state, "mu"))} == {jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in jax.tree.leaves(optax.tree.get(state, "nu"))} == {jnp.dtype(jnp.float32)}
    # the default keeps both in float32, the dtype of checkpoints written before
    default = build_optimizer(OptimSection(), STEPS)[0].init(params)
    assert {x.dtype for x in jax.tree.leaves(optax.tree.get(default, "mu"))} == {jnp.dtype(jnp.float32)}


def test_mu_dtype_takes_only_float32_or_bfloat16():
    with pytest.raises(ConfigFileError, match="mu_dtype"):
        load_config(TrainConfig, None, ["optim.mu_dtype=float16"])
    with pytest.raises(ValueError, match="mu_dtype"):
        OptimSection(mu_dtype="float16")
