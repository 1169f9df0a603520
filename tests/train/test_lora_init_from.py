"""train.lora.init_from: LoRA training that starts from a PEFT adapter (ms-swift, LLaMA-Factory, PEFT write it)."""

import jax
import numpy as np
import pytest
from train_helpers import tiny_config

from diabetica_jax.configuration import ConfigFileError
from diabetica_jax.model import forward
from diabetica_jax.parallel import make_mesh
from diabetica_jax.train.loop import train
from diabetica_jax.train.run_dir import export_run, trained_model
from diabetica_jax.train.setup import build_model

peft = pytest.importorskip("peft", reason="needs the test extra: pip install -e '.[test]'")
torch = pytest.importorskip("torch")

TOKENS = np.random.default_rng(0).integers(0, 512, (2, 12))


def _peft_adapter(base_dir, out):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="eager")
    peft_model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                            task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
        logits = peft_model.eval()(torch.as_tensor(TOKENS)).logits.numpy()
    peft_model.save_pretrained(out)
    return logits


@pytest.mark.slow
def test_lora_training_starts_from_a_peft_adapter_and_exports_one_peft_reads(hf_checkpoints, tmp_path):
    path = hf_checkpoints["qwen2_untied"]
    peft_logits = _peft_adapter(path, tmp_path / "adapter")
    lora = ["lora.rank=4", "lora.alpha=8", "lora.targets=[v_proj, q_proj]", f"lora.init_from={tmp_path / 'adapter'}"]
    cfg = tiny_config(path, *lora, "loop.steps=3", "mesh.fsdp=2")
    mesh = make_mesh(cfg.mesh.sizes())
    with jax.set_mesh(mesh):
        start, _, source = build_model(cfg, mesh)
    assert source["lora"] == f"adapter {tmp_path / 'adapter'}"
    assert np.abs(np.asarray(forward(start, TOKENS)) - peft_logits).max() <= 1e-5  # it starts where PEFT's ends

    train(cfg, tmp_path / "run", progress=False)
    trained, _, step = trained_model(tmp_path / "run")
    assert step == 3
    moved = np.abs(np.asarray(trained.layers.self_attn.q_proj.lora_b[...]) -
                   np.asarray(start.layers.self_attn.q_proj.lora_b[...])).max()
    assert moved > 0
    export_run(tmp_path / "run", tmp_path / "again", adapter=True)  # and goes back out as a PEFT adapter
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        again = peft.PeftModel.from_pretrained(base, str(tmp_path / "again")).eval()(torch.as_tensor(TOKENS)).logits
    assert np.abs(again.numpy() - np.asarray(forward(trained, TOKENS))).max() <= 1e-5


def test_an_adapter_that_does_not_fit_the_lora_section_is_refused_before_any_weight(hf_checkpoints, tmp_path):
    path = hf_checkpoints["qwen2_untied"]
    _peft_adapter(path, tmp_path / "adapter")
    cfg = tiny_config(path, "lora.rank=8", "lora.alpha=8", "lora.targets=[q_proj, v_proj]",
                      f"lora.init_from={tmp_path / 'adapter'}")
    with pytest.raises(ConfigFileError, match="lora.init_from: the adapter in .* has rank 4"):
        build_model(cfg, make_mesh({"fsdp": 1}))
    with pytest.raises(ConfigFileError, match="lora.init_from: starts LoRA adapters from a PEFT adapter"):
        tiny_config(path, f"lora.init_from={tmp_path / 'adapter'}")  # no rank: full fine-tuning
