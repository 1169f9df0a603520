"""HF dir -> load -> save -> transformers gives the same logits; the written files are well formed."""

import json

import numpy as np
import pytest
from hf_models import VARIANTS, torch_logits
from transformers import AutoTokenizer

from diabetica_jax import hf
from diabetica_jax.hf.safetensors_io import SafetensorsFile


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_float32_export_reloads_in_transformers_with_identical_logits(hf_checkpoints, tokens, tmp_path, variant):
    source = hf_checkpoints[variant]
    model, cfg = hf.load(source, progress=False)
    out = hf.save(model, cfg, tmp_path / "export", max_shard_size=40_000, dtype="float32", progress=False)
    np.testing.assert_array_equal(torch_logits(out, tokens), torch_logits(source, tokens))

    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1 and all(f.startswith("model-") and f.endswith(f"-of-{len(files):05d}.safetensors") for f in files)
    total = 0
    for name in files:
        shard = SafetensorsFile(out / name)
        sizes = [t.end - t.begin for t in shard.tensors.values()]
        # a shard respects the limit, unless it holds a single tensor that alone exceeds it
        assert sum(sizes) <= 40_000 or len(sizes) == 1
        assert all(index["weight_map"][t] == name for t in shard.tensors)
        total += sum(sizes)
    assert index["metadata"]["total_size"] == total
    assert set(index["weight_map"]) == {n for f in files for n in SafetensorsFile(out / f).tensors}


def test_bfloat16_export_and_written_metadata(hf_checkpoints, tokens, tmp_path):
    source = hf_checkpoints["qwen2_untied"]
    model, cfg = hf.load(source, progress=False)
    out = hf.save(model, cfg, tmp_path / "bf16", dtype="bfloat16", progress=False)
    assert (out / "model.safetensors").is_file() and not (out / "model.safetensors.index.json").exists()
    assert {t.dtype for t in SafetensorsFile(out / "model.safetensors").tensors.values()} == {"BF16"}
    config = json.loads((out / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16" and config["architectures"] == ["Qwen2ForCausalLM"]
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == cfg.eos_token_id
    reference = torch_logits(source, tokens)
    assert np.abs(torch_logits(out, tokens) - reference).max() < 0.1 * reference.std()
    # reloading the bf16 export in JAX gives back the bf16-rounded weights exactly
    again, _ = hf.load(out, progress=False)
    np.testing.assert_array_equal(
        np.asarray(again.layers.mlp.down_proj.kernel[...]),
        np.asarray(model.layers.mlp.down_proj.kernel[...]).astype("bfloat16").astype("float32"),
    )
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer("Hello world").input_ids == [9707, 1879]


def test_export_from_a_sharded_model(hf_checkpoints, tokens, tmp_path):
    """Gathering from an fsdp x tensor layout writes the same checkpoint as from one device."""
    from diabetica_jax.parallel import make_mesh

    source = hf_checkpoints["qwen3"]
    model, cfg = hf.load(source, mesh=make_mesh({"fsdp": 4, "tensor": 2}), progress=False)
    assert len(model.layers.mlp.up_proj.kernel[...].sharding.device_set) == 8
    out = hf.save(model, cfg, tmp_path / "from_mesh", dtype="float32", progress=False)
    np.testing.assert_array_equal(torch_logits(out, tokens), torch_logits(source, tokens))


def test_default_export_keeps_the_source_dtype(hf_checkpoints, tokens, tmp_path):
    """No dtype given: a float32 checkpoint comes back exactly (it once was rounded to bfloat16,
    ~2e-3 off in the logits), and a bfloat16 one stays bfloat16."""
    source = hf_checkpoints["qwen3"]
    model, cfg = hf.load(source, progress=False)
    assert cfg.source_dtype == "float32"
    out = hf.save(model, cfg, tmp_path / "same", progress=False)
    assert {t.dtype for t in SafetensorsFile(out / "model.safetensors").tensors.values()} == {"F32"}
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float32"
    np.testing.assert_allclose(torch_logits(out, tokens), torch_logits(source, tokens), rtol=0, atol=1e-6)

    bf16_source = hf.save(model, cfg, tmp_path / "bf16", dtype="bfloat16", progress=False)  # explicit dtype wins
    model, cfg = hf.load(bf16_source, progress=False)
    assert cfg.source_dtype == "bfloat16" and cfg == cfg.replace(source_dtype="float32")  # not architecture
    again = hf.save(model, cfg, tmp_path / "bf16_again", progress=False)
    assert {t.dtype for t in SafetensorsFile(again / "model.safetensors").tensors.values()} == {"BF16"}
    assert json.loads((again / "config.json").read_text())["torch_dtype"] == "bfloat16"
    np.testing.assert_array_equal(torch_logits(again, tokens), torch_logits(bf16_source, tokens))


def test_source_dtype_is_read_from_either_config_key():
    base = hf.config_to_dict(hf.preset_config("qwen2.5-0.5b"))
    del base["torch_dtype"], base["dtype"]
    assert hf.config_from_dict(base).source_dtype == "float32"  # random presets: float32
    assert hf.config_from_dict({**base, "torch_dtype": "bfloat16"}).source_dtype == "bfloat16"  # transformers 4
    assert hf.config_from_dict({**base, "dtype": "bfloat16"}).source_dtype == "bfloat16"  # transformers 5


def test_llama_lora_adapters_merge_into_the_export(hf_checkpoints, tokens, tmp_path):
    """LoRA on every linear layer of a Llama model (with q/k/v/o biases, tied, linear RoPE scaling):
    the merged export gives transformers the adapted model's logits, and no tokenizer files are
    invented for a non-Qwen model."""
    import jax
    from flax import nnx

    from diabetica_jax.model import forward
    from diabetica_jax.model.lora import add_lora
    from diabetica_jax.model.lora_config import LoRAConfig

    model, cfg = hf.load(hf_checkpoints["llama_tied_linear"], progress=False)
    adapted = add_lora(model, LoRAConfig(rank=4))
    for i, (path, variable) in enumerate(nnx.iter_graph(adapted)):
        if isinstance(variable, nnx.LoRAParam) and path[-1] == "lora_b":  # B starts at zero: make it count
            variable.set_value(0.05 * jax.random.normal(jax.random.key(i), variable.shape))
    ours = np.asarray(forward(adapted, tokens))
    assert np.abs(ours - np.asarray(forward(model, tokens))).max() > 0.1
    out = hf.save(adapted, cfg, tmp_path / "merged", dtype="float32", progress=False)
    assert np.abs(torch_logits(out, tokens) - ours).max() <= 1e-4
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert config["rope_scaling"] == {"rope_type": "linear", "factor": 2.0} and config["attention_bias"] is True
    assert "pad_token_id" not in json.loads((out / "generation_config.json").read_text())
    assert not (out / "tokenizer_config.json").exists()
