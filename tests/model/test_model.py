"""Model internals: attention backends agree, remat policies change memory, not results."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from diabetica_jax import hf
from diabetica_jax.model import create_model
from diabetica_jax.model.attention import attend, resolve_backend, splash_attention, xla_attention
from diabetica_jax.model.runtime import REMAT_POLICIES, RuntimeConfig


def test_auto_backend_is_xla_on_cpu():
    assert jax.default_backend() == "cpu" and resolve_backend("auto") == "xla"
    assert resolve_backend("cudnn") == "cudnn"
    with pytest.raises(ValueError, match="flash"):
        resolve_backend("flash")


def test_gqa_reference_equals_explicit_repeat():
    """Grouped-query attention equals ordinary attention with each kv head repeated for its group."""
    keys = jax.random.split(jax.random.key(1), 3)
    q = jax.random.normal(keys[0], (2, 16, 6, 8))
    k, v = (jax.random.normal(kk, (2, 16, 2, 8)) for kk in keys[1:])
    grouped = xla_attention(q, k, v)
    full = jax.nn.dot_product_attention(q, jnp.repeat(k, 3, axis=2), jnp.repeat(v, 3, axis=2), is_causal=True)
    np.testing.assert_allclose(np.asarray(grouped), np.asarray(full), atol=1e-5)


@pytest.mark.parametrize("with_segments", [False, True])
def test_splash_kernel_equals_reference(with_segments):
    keys = jax.random.split(jax.random.key(2), 3)
    q = jax.random.normal(keys[0], (1, 128, 4, 32))
    k, v = (jax.random.normal(kk, (1, 128, 2, 32)) for kk in keys[1:])
    segments = jnp.where(jnp.arange(128) < 77, 1, 2)[None] if with_segments else None
    np.testing.assert_allclose(
        np.asarray(splash_attention(q, k, v, segment_ids=segments)),
        np.asarray(attend(q, k, v, segment_ids=segments, backend="xla")),
        atol=1e-5,
    )


def _loss_and_grads(cfg, tokens, runtime=RuntimeConfig()):
    model = create_model(cfg, runtime, seed=0)
    graphdef, state = nnx.split(model)

    def loss(state):
        return jnp.mean(nnx.merge(graphdef, state)(tokens) ** 2)

    return jax.jit(jax.value_and_grad(loss))(state)


def _saved_shapes(policy: str, capsys) -> list[str]:
    """The shapes of the residuals the backward pass keeps under a remat policy (JAX's own report)."""
    model = create_model(hf.preset_config("tiny"), RuntimeConfig(remat=policy), seed=0)
    graphdef, state = nnx.split(model)
    tokens = jnp.zeros((2, 8), jnp.int32)
    capsys.readouterr()
    jax.ad_checkpoint.print_saved_residuals(lambda s: jnp.sum(nnx.merge(graphdef, s).hidden_states(tokens)), state)
    return [line.split()[0] for line in capsys.readouterr().out.splitlines() if "argument" not in line]


def test_save_attention_keeps_the_attention_output_and_full_remat_does_not(capsys):
    cfg = hf.preset_config("tiny")
    # [layers, batch, seq, heads, head_dim]: every layer's attention output, stacked by the layer scan
    attention = f"f32[{cfg.num_layers},2,8,{cfg.num_heads},{cfg.head_dim}]"
    assert attention in _saved_shapes("save_attention", capsys)
    assert attention not in _saved_shapes("full", capsys)


@pytest.mark.slow
def test_remat_policies_give_identical_gradients():
    tokens = jnp.asarray(np.random.RandomState(0).randint(0, 1000, (2, 8)))
    base = hf.preset_config("tiny")
    ref_loss, ref_grads = _loss_and_grads(base, tokens)
    for policy in set(REMAT_POLICIES) - {"none"}:
        loss, grads = _loss_and_grads(base, tokens, RuntimeConfig(remat=policy))
        assert loss == pytest.approx(float(ref_loss), rel=1e-6)
        for a, b in zip(jax.tree.leaves(ref_grads), jax.tree.leaves(grads)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
