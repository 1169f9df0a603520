"""Logits of the Flax model equal transformers' PyTorch logits on the same checkpoint."""

import jax.numpy as jnp
import numpy as np
import pytest
from hf_models import VARIANTS, torch_logits

from diabetica_jax import hf
from diabetica_jax.model import forward
from diabetica_jax.model.runtime import RuntimeConfig

# bf16 compute (float32 parameters, norms, softmax and logit accumulation) against the float32
# reference: the stated tolerance is a max abs deviation of 10% of the reference logits' standard
# deviation. Measured on these models: 0.004-0.006 against a std of 0.16 (about 3.5%).
BF16_REL_TOLERANCE = 0.10


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_float32_logits_match_transformers(hf_checkpoints, tokens, variant):
    reference = torch_logits(hf_checkpoints[variant], tokens)
    model, _ = hf.load(hf_checkpoints[variant], progress=False)
    logits = np.asarray(forward(model, tokens))
    assert logits.shape == reference.shape
    assert np.abs(logits - reference).max() <= 1e-4


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_bfloat16_compute_within_tolerance(hf_checkpoints, tokens, variant):
    reference = torch_logits(hf_checkpoints[variant], tokens)
    model, cfg = hf.load(hf_checkpoints[variant], runtime=RuntimeConfig(dtype="bfloat16"), progress=False)
    assert model.runtime.dtype == "bfloat16" and model.layers.mlp.up_proj.kernel.get_value().dtype == jnp.float32
    logits = np.asarray(forward(model, tokens))
    assert logits.dtype == np.float32
    assert np.abs(logits - reference).max() <= BF16_REL_TOLERANCE * reference.std()
    # and it is really computing in bf16: not bit-identical to the float32 path
    assert np.abs(logits - reference).max() > 1e-5


def test_packed_segments_equal_separate_sequences(hf_checkpoints):
    """Two documents packed in one row, with segment ids and per-document positions, give each
    document exactly the logits it gets alone."""
    model, _ = hf.load(hf_checkpoints["qwen3"], progress=False)
    rng = np.random.RandomState(1)
    a, b = rng.randint(0, 512, 7), rng.randint(0, 512, 5)
    packed = np.concatenate([a, b])[None]
    segments = np.array([[1] * 7 + [2] * 5])
    positions = np.array([list(range(7)) + list(range(5))])
    out = np.asarray(forward(model, packed, positions, segments))
    alone_a = np.asarray(forward(model, a[None]))
    alone_b = np.asarray(forward(model, b[None]))
    np.testing.assert_allclose(out[0, :7], alone_a[0], atol=1e-5)
    np.testing.assert_allclose(out[0, 7:], alone_b[0], atol=1e-5)
    # without the segment ids the second document would see the first: the test can tell
    mixed = np.asarray(forward(model, packed, positions))
    assert np.abs(mixed[0, 7:] - alone_b[0]).max() > 1e-3


@pytest.mark.parametrize("variant", ["llama3", "llama_tied_linear"])
def test_rope_scaling_is_applied_past_the_original_context(hf_checkpoints, tmp_path, variant):
    """Parity holds at positions past llama3's original_max_position_embeddings (64), and the scaling
    is what makes it hold: the same weights read as plain RoPE fail the parity tolerance (measured:
    llama3 > 1e-3, linear ~7e-4, against ~3e-7 when scaled)."""
    import json
    import shutil

    tokens = np.random.RandomState(4).randint(0, 512, size=(1, 90))
    reference = torch_logits(hf_checkpoints[variant], tokens)
    model, cfg = hf.load(hf_checkpoints[variant], progress=False)
    assert cfg.rope_scaling is not None and cfg.rope_scaling.kind == VARIANTS[variant]["rope_scaling"]["rope_type"]
    assert np.abs(np.asarray(forward(model, tokens)) - reference).max() <= 1e-4

    plain = tmp_path / "plain"
    shutil.copytree(hf_checkpoints[variant], plain)
    config = json.loads((plain / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0}
    (plain / "config.json").write_text(json.dumps(config))
    unscaled, _ = hf.load(plain, progress=False)
    assert np.abs(np.asarray(forward(unscaled, tokens)) - reference).max() > 3e-4


@pytest.mark.slow
def test_kv_cache_decode_uses_the_scaled_rope(hf_checkpoints):
    """Prefill then token-by-token decode_step, past the original context of the llama3 scaling,
    gives the full forward pass's logits at every position."""
    from diabetica_jax.model.qwen import KVCache

    model, cfg = hf.load(hf_checkpoints["llama3"], progress=False)
    tokens = np.random.RandomState(5).randint(0, 512, size=(2, 76)).astype(np.int32)
    full = np.asarray(forward(model, tokens))
    b, total, prefill = tokens.shape[0], tokens.shape[1], 60
    shape = (cfg.num_layers, b, total, cfg.num_kv_heads, cfg.head_dim)
    cache = KVCache(jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32))
    valid = jnp.ones((b, total), bool)
    positions = np.broadcast_to(np.arange(total, dtype=np.int32), tokens.shape)
    logits, cache = model.decode_step(tokens[:, :prefill], positions[:, :prefill], cache, 0, valid)
    np.testing.assert_allclose(np.asarray(logits), full[:, prefill - 1], atol=1e-4)
    for i in range(prefill, total):
        logits, cache = model.decode_step(tokens[:, i:i + 1], positions[:, i:i + 1], cache, i, valid)
        np.testing.assert_allclose(np.asarray(logits), full[:, i], atol=1e-4)
