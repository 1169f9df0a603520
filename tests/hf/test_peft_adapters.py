"""LoRA adapters in PEFT's layout, against `peft` itself on the tiny random Qwen2 checkpoints."""

import json

import jax
import numpy as np
import pytest
from hf_models import torch_logits

from diabetica_jax import hf
from diabetica_jax.hf.peft_adapter import ADAPTER_CONFIG, load_adapter, read_adapter_config, save_adapter
from diabetica_jax.model import forward
from diabetica_jax.model.lora import add_lora
from diabetica_jax.model.lora_config import LoRAConfig

peft = pytest.importorskip("peft", reason="the PEFT parity tests need the test extra: pip install -e '.[test]'")
torch = pytest.importorskip("torch")

TARGETS = ("q_proj", "v_proj", "o_proj", "down_proj")


def _trained_like(model, seed: int = 1):
    """`model` with its adapters set to random values (B starts at zero: an untrained adapter changes nothing)."""
    from flax import nnx

    graphdef, adapters, rest = nnx.split(model, nnx.LoRAParam, ...)
    leaves, tree = jax.tree.flatten(nnx.to_pure_dict(adapters))
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    noisy = [0.05 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    return nnx.merge(graphdef, jax.tree.unflatten(tree, noisy), rest)


def _peft_logits(base_dir, adapter_dir, tokens, merge: bool = False):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="eager")
    model = peft.PeftModel.from_pretrained(base, str(adapter_dir))
    if merge:
        model = model.merge_and_unload()
    model.eval()
    with torch.no_grad():
        return model(torch.as_tensor(tokens, dtype=torch.long)).logits.float().numpy()


@pytest.mark.parametrize("variant", ["qwen2_untied", "qwen2_tied"])
def test_exported_adapter_loads_in_peft_with_the_jax_logits(hf_checkpoints, tokens, tmp_path, variant):
    source = hf_checkpoints[variant]
    base, cfg = hf.load(source, progress=False)
    adapted = _trained_like(add_lora(base, LoRAConfig(rank=4, alpha=8.0, targets=TARGETS)))
    jax_logits = np.asarray(forward(adapted, tokens))
    assert np.abs(jax_logits - np.asarray(forward(base, tokens))).max() > 1e-3  # the adapter does something

    out = save_adapter(adapted, cfg, tmp_path / "adapter", base_model=str(source))
    written = json.loads((out / ADAPTER_CONFIG).read_text())
    assert (written["r"], written["lora_alpha"], written["target_modules"]) == (4, 8.0, sorted(TARGETS))
    np.testing.assert_allclose(_peft_logits(source, out, tokens), jax_logits, atol=1e-5, rtol=0)
    # PEFT's merge_and_unload equals this project's merged export
    merged = hf.save(adapted, cfg, tmp_path / "merged", dtype="float32", progress=False)
    np.testing.assert_allclose(_peft_logits(source, out, tokens, merge=True), torch_logits(merged, tokens),
                               atol=1e-5, rtol=0)
    # and it reads back into JAX as the same adapters
    again = load_adapter(base, cfg, out)
    assert again.lora == adapted.lora
    np.testing.assert_array_equal(np.asarray(forward(again, tokens)), jax_logits)


def test_an_adapter_made_with_peft_loads_with_its_logits(hf_checkpoints, tokens, tmp_path):
    from transformers import AutoModelForCausalLM

    source = hf_checkpoints["qwen2_untied"]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, attn_implementation="eager")
    config = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear",
                             task_type="CAUSAL_LM")
    peft_model = peft.get_peft_model(model, config)
    with torch.no_grad():  # as if trained: B away from its zero start
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    peft_model.save_pretrained(tmp_path / "made-by-peft")

    base, cfg = hf.load(source, progress=False)
    lora = read_adapter_config(tmp_path / "made-by-peft")
    assert (lora.rank, lora.alpha, lora.dropout) == (8, 16.0, 0.05)
    assert set(lora.targets) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    loaded = load_adapter(base, cfg, tmp_path / "made-by-peft")
    expected = _peft_logits(source, tmp_path / "made-by-peft", tokens)
    np.testing.assert_allclose(np.asarray(forward(loaded, tokens)), expected, atol=1e-5, rtol=0)
    # hf.open: a checkpoint and an adapter on it, as every command that opens a model does
    opened = hf.open(source, adapter=tmp_path / "made-by-peft", progress=False)
    assert opened.model.lora == lora and opened.source.adapter == tmp_path / "made-by-peft"
    np.testing.assert_allclose(np.asarray(forward(opened.model, tokens)), expected, atol=1e-5, rtol=0)
    # a broken adapter config is refused when the model is found, before any weight is read
    (tmp_path / "made-by-peft" / ADAPTER_CONFIG).write_text("{not json")
    with pytest.raises(hf.HFCheckpointError, match="not valid JSON"):
        hf.find(source, adapter=tmp_path / "made-by-peft")


@pytest.mark.parametrize("field, value, says", [
    ("use_dora", True, "use_dora"),
    ("use_rslora", True, "use_rslora"),
    ("rank_pattern", {"q_proj": 16}, "rank_pattern"),
    ("modules_to_save", ["lm_head"], "modules_to_save"),
    ("target_modules", ["q_proj", "lm_head"], "target_modules"),
    ("peft_type", "IA3", "peft_type"),
])
def test_adapter_features_these_adapters_cannot_compute_are_refused(hf_checkpoints, tmp_path, field, value, says):
    base, cfg = hf.load(hf_checkpoints["qwen2_untied"], progress=False)
    out = save_adapter(add_lora(base, LoRAConfig(rank=2, targets=("q_proj",))), cfg, tmp_path / "a")
    data = json.loads((out / ADAPTER_CONFIG).read_text())
    (out / ADAPTER_CONFIG).write_text(json.dumps({**data, field: value}))
    with pytest.raises(hf.HFCheckpointError, match=f"{ADAPTER_CONFIG}: {says}"):
        load_adapter(base, cfg, out)


def test_a_damaged_adapter_names_the_tensor(hf_checkpoints, tmp_path):
    from diabetica_jax.hf.safetensors_io import PlannedTensor, SafetensorsFile, write_safetensors

    base, cfg = hf.load(hf_checkpoints["qwen2_untied"], progress=False)
    out = save_adapter(add_lora(base, LoRAConfig(rank=2, targets=("q_proj", "v_proj"))), cfg, tmp_path / "a")
    weights = SafetensorsFile(out / "adapter_model.safetensors")
    tensors = {name: weights.read(name) for name in weights.keys()}
    weights.close()
    dropped = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"

    def rewrite(values: dict):
        write_safetensors(out / "adapter_model.safetensors", [
            PlannedTensor(n, v.shape, v.dtype, lambda v=v: v) for n, v in values.items()])

    rewrite({n: v for n, v in tensors.items() if n != dropped})
    with pytest.raises(hf.HFCheckpointError, match=f"missing tensor '{dropped}'"):
        load_adapter(base, cfg, out)
    rewrite({**tensors, dropped: tensors[dropped][:, :1]})  # rank 1 where the config says 2
    with pytest.raises(hf.HFCheckpointError, match=f"tensor '{dropped}' has shape"):
        load_adapter(base, cfg, out)
    (out / "adapter_model.safetensors").unlink()
    (out / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(hf.HFCheckpointError, match="safetensors only"):
        load_adapter(base, cfg, out)
