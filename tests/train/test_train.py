"""Training on CPU: the loss falls, meshes and accumulation agree, LoRA trains only adapters."""

import functools
import json

import numpy as np
import pytest
from hf_models import torch_logits
from train_helpers import tiny_config

from diabetica_jax import hf
from diabetica_jax.model import forward
from diabetica_jax.train.loop import train
from diabetica_jax.train.run_dir import trained_model


def _losses(result):
    return np.array([h["loss"] for h in result.history])


@pytest.mark.slow
def test_loss_decreases_and_metrics_are_written(hf_checkpoints, tmp_path):
    cfg = tiny_config(hf_checkpoints["qwen2_untied"], "loop.steps=12", "loop.tensorboard=true",
                      "loop.checkpoint_every=6")
    result = train(cfg, tmp_path / "run", progress=False)
    losses = _losses(result)
    assert result.final_step == 12 and len(losses) == 12
    assert losses[-3:].mean() < 0.8 * losses[:3].mean()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 13))
    for key in ("step", "loss", "grad_norm", "lr", "tokens", "tokens_per_s", "mfu"):
        assert key in records[0]
    assert records[-1]["tokens"] == 12 * 8 * 32 and records[0]["lr"] == 0.0 and records[1]["lr"] == pytest.approx(1e-2)
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit()) == [6, 12]


@pytest.mark.slow
def test_eight_device_mesh_matches_one_device(hf_checkpoints, tmp_path):
    one = train(tiny_config(hf_checkpoints["qwen3"], "mesh.fsdp=1"), tmp_path / "one", progress=False)
    eight = train(tiny_config(hf_checkpoints["qwen3"], "mesh.fsdp=4", "mesh.tensor=2"), tmp_path / "eight",
                  progress=False)
    np.testing.assert_allclose(_losses(eight), _losses(one), rtol=2e-5)


@pytest.mark.slow
def test_gradient_accumulation_equals_one_big_batch(hf_checkpoints, tmp_path):
    path = hf_checkpoints["qwen2_tied"]
    big = train(tiny_config(path, "loop.steps=3", "mesh.fsdp=2"), tmp_path / "big", progress=False)
    accumulated = train(tiny_config(path, "loop.steps=3", "mesh.fsdp=2", "data.grad_accum=4"), tmp_path / "acc",
                        progress=False)
    np.testing.assert_allclose(_losses(accumulated), _losses(big), rtol=1e-5)
    a, _, _ = trained_model(tmp_path / "big")
    b, _, _ = trained_model(tmp_path / "acc")
    np.testing.assert_allclose(np.asarray(a.layers.mlp.up_proj.kernel[...]), np.asarray(b.layers.mlp.up_proj.kernel[...]),
                               atol=1e-6)


@pytest.mark.slow
def test_lora_trains_only_adapters_and_merged_export_matches(hf_checkpoints, tmp_path, tokens):
    path = hf_checkpoints["qwen2_untied"]
    cfg = tiny_config(path, "lora.rank=4", "lora.alpha=8", "lora.dropout=0.1", "optim.lr=3e-2", "mesh.fsdp=2",
                      "mesh.tensor=2")
    result = train(cfg, tmp_path / "lora", progress=False)
    assert _losses(result)[-1] < _losses(result)[0]
    adapted, _, step = trained_model(tmp_path / "lora")
    assert step == 6 and adapted.lora.rank == 4
    base, _ = hf.load(path, progress=False)
    # base weights untouched, adapters moved
    for name in ("layers.self_attn.q_proj.kernel", "layers.mlp.down_proj.kernel", "embed_tokens.embedding"):
        get = lambda m, name=name: np.asarray(functools.reduce(getattr, name.split("."), m)[...])  # noqa: E731
        np.testing.assert_array_equal(get(adapted), get(base))
    assert np.abs(np.asarray(adapted.layers.mlp.down_proj.lora_b[...])).max() > 0
    # only adapters are in the optimizer state: its size is a small multiple of the adapter count
    from diabetica_jax.train.checkpoint import Checkpoints

    meta = Checkpoints(tmp_path / "lora" / "checkpoints", async_save=False).read_meta(6)
    assert all("lora_" in key for key in meta["trainable"])
    assert len(meta["trainable"]) == 14  # 7 linear layers x (A, B), stacked over layers
    # the merged export is the adapted model
    from diabetica_jax.cli import main

    assert main(["export", "--run-dir", str(tmp_path / "lora"), "--out", str(tmp_path / "hf"), "--dtype", "float32"]) == 0
    adapted_logits = np.asarray(forward(adapted, tokens))
    assert np.abs(adapted_logits - np.asarray(forward(base, tokens))).max() > 1e-3
    assert np.abs(torch_logits(tmp_path / "hf", tokens) - adapted_logits).max() <= 1e-4
    # the export keeps the source checkpoint's decoding defaults (faithful evaluation reads them)
    generation = lambda d: json.loads((d / "generation_config.json").read_text())  # noqa: E731
    assert generation(tmp_path / "hf") == generation(path)
    # the adapters alone, in PEFT's layout: PeftModel on the base gives the adapted logits
    assert main(["export", "--run-dir", str(tmp_path / "lora"), "--out", str(tmp_path / "adapter"), "--adapter"]) == 0
    adapter_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (adapter_config["r"], adapter_config["lora_alpha"], adapter_config["base_model_name_or_path"]) == (
        4, 8.0, str(path))
    peft, torch = pytest.importorskip("peft"), pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    base_hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        peft_logits = peft.PeftModel.from_pretrained(base_hf, str(tmp_path / "adapter")).eval()(
            torch.as_tensor(tokens)).logits.numpy()
    assert np.abs(peft_logits - adapted_logits).max() <= 1e-5


def test_plan_reports_per_device_memory_from_the_shardings():
    from diabetica_jax.configuration import load_config
    from diabetica_jax.train.config import TrainConfig
    from diabetica_jax.train.plan import format_plan, plan

    cfg = load_config(TrainConfig, None, ["model.preset=tiny", "mesh.fsdp=4", "mesh.tensor=2", "data.seq_len=64",
                                   "loop.loss_chunk=32"])
    report = plan(cfg)
    n = report["parameters_total"]
    assert report["devices"] == 8 and report["mesh"] == {"data": 1, "fsdp": 4, "tensor": 2}
    # f32 weights split 8 ways (the small norms are replicated), Adam's two moments twice that
    assert n * 4 / 8 <= report["trainable_params_bytes"] < n * 4 / 8 * 1.01
    assert 2 * report["trainable_params_bytes"] <= report["optimizer_state_bytes"] < 2.01 * report["trainable_params_bytes"]
    assert report["temporaries_bytes"] > 0 and "optimizer state" in format_plan(report)
    lora = plan(load_config(TrainConfig, None, ["model.preset=tiny", "mesh.fsdp=4", "mesh.tensor=2", "lora.rank=4"]))
    assert lora["frozen_params_bytes"] >= n * 4 / 8 and lora["trainable_parameters"] < n / 50


@pytest.mark.slow
def test_plan_compiles_the_preference_and_grpo_steps():
    """A dpo or grpo stage is planned with its own step (and a grpo stage's rollout cache and weights copy)."""
    from diabetica_jax.configuration import load_config
    from diabetica_jax.train.config import TrainConfig
    from diabetica_jax.train.plan import format_plan, plan

    base = ["model.preset=tiny", "mesh.fsdp=4", "mesh.tensor=2", "data.seq_len=64", "loop.loss_chunk=32",
            "data.global_batch=8", "model.runtime.dtype=bfloat16"]
    dpo = plan(load_config(TrainConfig, None, base + ["method=dpo", "preference.pairs=p.jsonl"]))
    grpo = plan(load_config(TrainConfig, None, base + ["method=grpo", "grpo.items=i.csv", "grpo.beta=0.04"]))
    assert dpo["method"] == "dpo" and "rollout_kv_cache_bytes" not in dpo and dpo["temporaries_bytes"] > 0
    # keys and values: tiny's 2 layers x 8 slots x 64 positions x 1 kv-head per device (2 over tensor 2) x 16, bf16
    assert grpo["rollout_kv_cache_bytes"] == 2 * 2 * 8 * 64 * 1 * 16 * 2
    assert grpo["rollout_weights_bytes"] == (grpo["trainable_params_bytes"] + grpo["frozen_params_bytes"]) // 2
    assert "rollout KV cache" in format_plan(grpo)


@pytest.mark.slow
def test_data_running_out_ends_the_run_with_a_checkpoint(tmp_path):
    from train_helpers import curated_training

    from diabetica_jax.configuration import load_config
    from diabetica_jax.train.config import TrainConfig

    settings = curated_training(tmp_path, "data.seq_len=512", "data.global_batch=8", "loop.loss_chunk=16",
                                "loop.checkpoint_every=1000", "optim.warmup_steps=1")
    # loop.steps=-1: as many steps as the data fills, saved at the last one
    counted = train(load_config(TrainConfig, None, settings + ["loop.steps=-1"]), tmp_path / "counted", progress=False)
    steps = counted.final_step
    assert steps > 1 and not counted.data_exhausted and not counted.preempted
    # more steps than the data fills: the loop stops when it runs out and still saves
    short = train(load_config(TrainConfig, None, settings + [f"loop.steps={steps + 3}"]), tmp_path / "short", progress=False)
    assert short.data_exhausted and short.final_step == steps and len(short.history) == steps
    for run in ("counted", "short"):
        assert sorted(int(p.name) for p in (tmp_path / run / "checkpoints").iterdir() if p.name.isdigit()) == [steps]
