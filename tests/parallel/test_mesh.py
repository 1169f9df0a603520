"""Sharded on an 8-device emulated CPU mesh: same logits as one device, parameters laid out as the rules say."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from diabetica_jax import hf
from diabetica_jax.model import create_model, forward
from diabetica_jax.model.attention import splash_attention, xla_attention
from diabetica_jax.parallel import ShardingRules, make_mesh
from diabetica_jax.parallel.mesh import resolve_mesh_shape


@pytest.fixture
def batch4():
    return np.random.RandomState(2).randint(0, 512, size=(4, 10))


def _spec(array) -> P:
    spec = tuple(array.sharding.spec)
    return P(*(spec + (None,) * (array.ndim - len(spec))))


@pytest.mark.parametrize("mesh_sizes", [{"fsdp": 4, "tensor": 2}, {"fsdp": 2, "tensor": 4}, {"data": 2, "fsdp": 2, "tensor": 2}])
@pytest.mark.parametrize("variant", ["qwen2_untied", "qwen3", "llama_tied_linear"])
def test_sharded_logits_equal_single_device(hf_checkpoints, batch4, mesh_sizes, variant):
    single, _ = hf.load(hf_checkpoints[variant], progress=False)
    reference = np.asarray(forward(single, batch4))
    mesh = make_mesh(mesh_sizes)
    sharded, _ = hf.load(hf_checkpoints[variant], mesh=mesh, progress=False)
    logits = forward(sharded, batch4, mesh=mesh)
    np.testing.assert_allclose(np.asarray(logits), reference, atol=2e-5)


def test_parameters_are_sharded_as_the_rules_say(hf_checkpoints):
    mesh = make_mesh({"fsdp": 4, "tensor": 2})
    model, cfg = hf.load(hf_checkpoints["qwen2_untied"], mesh=mesh, progress=False)
    layers, attn = model.layers, model.layers.self_attn
    expected = {
        "embedding [vocab, embed]": (model.embed_tokens.embedding, P("tensor", "fsdp")),
        "lm_head [embed, vocab]": (model.lm_head.kernel, P("fsdp", "tensor")),
        "q_proj [layers, embed, heads, head_dim]": (attn.q_proj.kernel, P(None, "fsdp", "tensor", None)),
        "q bias [layers, heads, head_dim]": (attn.q_proj.bias, P(None, "tensor", None)),
        "k_proj [layers, embed, kv_heads, head_dim]": (attn.k_proj.kernel, P(None, "fsdp", "tensor", None)),
        "o_proj [layers, heads, head_dim, embed]": (attn.o_proj.kernel, P(None, "tensor", None, "fsdp")),
        "gate_proj [layers, embed, mlp]": (layers.mlp.gate_proj.kernel, P(None, "fsdp", "tensor")),
        "down_proj [layers, mlp, embed]": (layers.mlp.down_proj.kernel, P(None, "tensor", "fsdp")),
        "input_layernorm [layers, norm]": (layers.input_layernorm.weight, P(None, None)),
    }
    for what, (variable, spec) in expected.items():
        array = variable[...]
        assert _spec(array) == spec, what
        # each device really holds only its slice
        shard_shape = array.addressable_shards[0].data.shape
        assert shard_shape == array.sharding.shard_shape(array.shape), what
    q = attn.q_proj.kernel[...]
    assert q.addressable_shards[0].data.shape == (cfg.num_layers, 64 // 4, 4 // 2, 16)


def test_llama_parameters_use_the_same_logical_axes(hf_checkpoints):
    """Llama's extra o_proj bias [embed] shards like the embedding dimension; tied: no lm_head."""
    mesh = make_mesh({"fsdp": 4, "tensor": 2})
    model, cfg = hf.load(hf_checkpoints["llama_tied_linear"], mesh=mesh, progress=False)
    attn = model.layers.self_attn
    assert cfg.family == "llama" and model.lm_head is None
    assert _spec(attn.o_proj.bias[...]) == P(None, "fsdp")
    assert _spec(attn.q_proj.bias[...]) == P(None, "tensor", None)
    assert _spec(attn.q_proj.kernel[...]) == P(None, "fsdp", "tensor", None)
    assert _spec(model.embed_tokens.embedding[...]) == P("tensor", "fsdp")


def test_axis_that_does_not_divide_is_replicated(hf_checkpoints):
    """2 KV heads on a tensor axis of 4: the kv_heads dimension stays whole, the rest still shards."""
    mesh = make_mesh({"fsdp": 2, "tensor": 4})
    model, _ = hf.load(hf_checkpoints["qwen2_untied"], mesh=mesh, progress=False)
    assert _spec(model.layers.self_attn.k_proj.kernel[...]) == P(None, "fsdp", None, None)
    assert _spec(model.layers.self_attn.q_proj.kernel[...]) == P(None, "fsdp", "tensor", None)


def test_random_init_is_created_sharded():
    cfg = hf.preset_config("tiny")
    mesh = make_mesh({"fsdp": 4, "tensor": 2})
    model = create_model(cfg, mesh=mesh, seed=3)
    assert _spec(model.embed_tokens.embedding[...]) == P("tensor", "fsdp")
    single = create_model(cfg, seed=3)
    np.testing.assert_array_equal(np.asarray(model.layers.mlp.up_proj.kernel[...]),
                                  np.asarray(single.layers.mlp.up_proj.kernel[...]))


def test_splash_attention_under_a_mesh_matches_xla():
    """The TPU kernel (interpret mode on CPU), run per shard through shard_map, equals the reference."""
    keys = jax.random.split(jax.random.key(0), 3)
    b, t, h, k, d = 4, 128, 4, 2, 64
    q = jax.random.normal(keys[0], (b, t, h, d))
    kv = [jax.random.normal(keys[i], (b, t, k, d)) for i in (1, 2)]
    segments = jnp.broadcast_to(jnp.where(jnp.arange(t) < 50, 1, 2), (b, t))
    mesh = make_mesh({"fsdp": 4, "tensor": 2})
    with jax.set_mesh(mesh):
        out = jax.jit(lambda q, k, v, s: splash_attention(q, k, v, segment_ids=s))(q, *kv, segments)
    np.testing.assert_allclose(np.asarray(out), np.asarray(xla_attention(q, *kv, segment_ids=segments)), atol=1e-5)


def test_rules_reject_two_logical_axes_on_one_mesh_axis():
    rules = ShardingRules({"embed": "fsdp", "mlp": "fsdp"})
    with pytest.raises(ValueError, match="both 'embed' and 'mlp'"):
        rules.spec(("embed", "mlp"))
    with pytest.raises(ValueError, match="no rule for logical axis 'bogus'"):
        rules.spec(("bogus",))


def test_mesh_shapes_resolve_or_fail_clearly():
    assert resolve_mesh_shape({"fsdp": -1, "tensor": 2}, 8) == (1, 4, 2)
    with pytest.raises(ValueError, match="does not divide"):
        resolve_mesh_shape({"fsdp": -1, "tensor": 3}, 8)
    with pytest.raises(ValueError, match="uses 4 devices but 8"):
        resolve_mesh_shape({"fsdp": 2, "tensor": 2}, 8)
    with pytest.raises(ValueError, match="unknown axis"):
        resolve_mesh_shape({"model": 8}, 8)


def test_every_parameter_axis_is_declared_for_the_rules_check():
    """model/axes.py lists the arrays that a `mesh.rules` table is checked against: every parameter the model
    makes (biases, q/k norms, an untied head, LoRA on all layers) has its logical axes within one of them."""
    from flax import nnx

    from diabetica_jax.model import abstract_model, axes
    from diabetica_jax.model.lora_config import LoRAConfig

    cfg = hf.preset_config("qwen3-0.6b").replace(qkv_bias=True, tie_word_embeddings=False)
    model = abstract_model(cfg, lora=LoRAConfig(rank=2))
    found = {tuple(v.get_metadata()["axes"]) for _, v in nnx.iter_graph(model) if isinstance(v, nnx.Variable)}
    assert len(found) > 10
    assert [a for a in found if not any(set(a) <= set(declared) for declared in axes.PARAMETERS)] == []


@pytest.mark.slow
def test_mesh_rules_override_a_parameter_sharding_and_training_still_matches(hf_checkpoints, tmp_path):
    """mesh.rules replaces entries of the default table for the run: here the MLP weights stay whole on the tensor
    axis (and the vocabulary splits over it and data); the run trains to the same losses and weights."""
    from train_helpers import tiny_config

    from diabetica_jax.train.loop import train
    from diabetica_jax.train.run_dir import trained_model

    path, mesh = hf_checkpoints["qwen2_untied"], ["mesh.fsdp=4", "mesh.tensor=2"]
    default = train(tiny_config(path, *mesh, "loop.steps=3"), tmp_path / "default", progress=False)
    overridden = train(tiny_config(path, *mesh, "loop.steps=3", "mesh.rules={mlp: null, vocab: [tensor, data]}"),
                       tmp_path / "overridden", progress=False)
    np.testing.assert_allclose([h["loss"] for h in overridden.history], [h["loss"] for h in default.history],
                               rtol=1e-5)
    a, _, _ = trained_model(tmp_path / "default", mesh=make_mesh({"fsdp": 4, "tensor": 2}))
    b, _, _ = trained_model(tmp_path / "overridden", mesh=make_mesh({"fsdp": 4, "tensor": 2}))
    assert _spec(a.layers.mlp.up_proj.kernel[...]) == P(None, "fsdp", "tensor")
    assert _spec(b.layers.mlp.up_proj.kernel[...]) == P(None, "fsdp", None)  # restored as the run laid it out
    assert _spec(b.lm_head.kernel[...]) == P("fsdp", ("tensor", "data"))
    np.testing.assert_allclose(np.asarray(b.layers.mlp.up_proj.kernel[...]), np.asarray(a.layers.mlp.up_proj.kernel[...]),
                               atol=1e-6)
