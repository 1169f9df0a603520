"""Multi-stage training: a run continuing another run's weights (full, LoRA merged, LoRA unmerged) and stage
configs (the pipeline running the stages in order is tested with the demo run, tests/pipeline/test_run.py)."""

import jax
import numpy as np
import pytest
from flax import nnx
from train_helpers import REPO

from diabetica_jax.configuration import ConfigFileError, load_config
from diabetica_jax.model.factory import forward
from diabetica_jax.model.lora import merge_lora
from diabetica_jax.parallel import make_mesh
from diabetica_jax.pipeline.config import load_run_config
from diabetica_jax.train.config import TrainConfig
from diabetica_jax.train.loop import train
from diabetica_jax.train.run_dir import trained_model
from diabetica_jax.train.setup import build_model

DEMO = str(REPO / "configs" / "recipes" / "demo.yaml")
TOKENS = np.random.default_rng(0).integers(0, 1000, (2, 12)).astype(np.int32)


def _config(*overrides):
    base = ["model.preset=tiny", "data.source=synthetic", "data.seq_len=32", "data.global_batch=4",
            "optim.lr=1e-2", "optim.warmup_steps=0", "loop.steps=3", "loop.checkpoint_every=3", "loop.loss_chunk=16",
            "loop.tensorboard=false", "loop.async_checkpoint=false", "mesh.fsdp=1"]
    return load_config(TrainConfig, None, base + list(overrides))


def _start(cfg):
    mesh = make_mesh(cfg.mesh.sizes())
    with jax.set_mesh(mesh):
        model, _, source = build_model(cfg, mesh)
    return model, source


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("stage1")
    train(_config("lora.rank=4", "lora.alpha=8"), run_dir, progress=False)
    model, _, _ = trained_model(run_dir)
    assert np.abs(np.asarray(model.layers.self_attn.q_proj.lora_b[...])).max() > 0  # the adapters trained
    return run_dir, model


@pytest.mark.slow
def test_a_stage_continues_a_lora_run_merged_or_unmerged(lora_run, tmp_path):
    run_dir, previous = lora_run
    expected = np.asarray(forward(previous, TOKENS))

    merged, source = _start(_config(f"model.init_from={run_dir}", "lora.rank=2", "model.seed=5"))
    assert source == {"init_from": str(run_dir), "step": 3, "lora": "merged"}
    # the previous adapters are folded into the kernels; the new ones start as the identity change
    np.testing.assert_allclose(np.asarray(forward(merged, TOKENS)), expected, atol=1e-5)
    np.testing.assert_allclose(np.asarray(merged.layers.self_attn.q_proj.kernel[...]),
                               np.asarray(merge_lora(previous).layers.self_attn.q_proj.kernel[...]), atol=1e-6)
    assert merged.lora.rank == 2

    unmerged, source = _start(_config(f"model.init_from={run_dir}", "model.init_lora=unmerged", "lora.rank=4",
                                      "lora.alpha=8"))
    assert source["lora"] == "unmerged"
    for a, b in zip(jax.tree.leaves(nnx.state(unmerged, nnx.LoRAParam)), jax.tree.leaves(nnx.state(previous, nnx.LoRAParam))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the same adapters, to keep training
    np.testing.assert_allclose(np.asarray(forward(unmerged, TOKENS)), expected, atol=1e-5)

    with pytest.raises(ConfigFileError, match="rank 4, alpha 8.0"):
        _start(_config(f"model.init_from={run_dir}", "model.init_lora=unmerged", "lora.rank=2"))
    with pytest.raises(ConfigFileError, match="unmerged continues"):
        _config(f"model.init_from={run_dir}", "model.init_lora=unmerged")


@pytest.mark.slow
def test_a_continued_stage_trains_checkpoints_and_restores(lora_run, tmp_path):
    run_dir, previous = lora_run
    for name, extra in (("full", []), ("unmerged", ["model.init_lora=unmerged", "lora.rank=4", "lora.alpha=8"])):
        out = tmp_path / name
        result = train(_config(f"model.init_from={run_dir}", "loop.steps=2", "loop.checkpoint_every=2", *extra), out,
                       progress=False)
        assert result.final_step == 2
        model, _, step = trained_model(out)  # rebuilt on top of the first run's weights
        assert step == 2 and model.lora.rank == (4 if name == "unmerged" else 0)
        moved = np.abs(np.asarray(forward(model, TOKENS)) - np.asarray(forward(previous, TOKENS))).max()
        assert moved > 0  # it trained on from there


def test_stage_configs_fail_before_any_work(tmp_path):
    with pytest.raises(ConfigFileError, match=r"unknown key 'stages\[1\]\.train\.optim\.lrr'"):
        load_run_config(DEMO, ["stages=[{name: a}, {name: b, train: {optim: {lrr: 1}}}]"])
    with pytest.raises(ConfigFileError, match="two stages named"):
        load_run_config(DEMO, ["stages=[{name: a}, {name: a}]"])
    with pytest.raises(ConfigFileError, match="name"):
        load_run_config(DEMO, ["stages=[{name: 'a b'}]"])
    with pytest.raises(ConfigFileError, match="unmerged continues"):
        load_run_config(DEMO, ["stages=[{name: a, train: {lora: {rank: 2}}}, {name: b, lora_from_previous: unmerged}]"])



@pytest.mark.slow
def test_each_stage_exports_its_adapter_on_the_base_it_applies_to(lora_run, tmp_path):
    """export --adapter per stage of a multi-stage run: base_model_name_or_path names what the adapters apply
    to, and on that base (exported) they give the stage's own logits."""
    import json

    from diabetica_jax import hf
    from diabetica_jax.train.run_dir import export_run

    def base_of(adapter):
        return json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))["base_model_name_or_path"]

    run_dir, _ = lora_run
    export_run(run_dir, tmp_path / "adapter1", adapter=True)
    assert base_of(tmp_path / "adapter1") is None  # a preset's random weights: no checkpoint to name

    stage2 = tmp_path / "stage2"  # continues stage 1 with its adapters folded in, and new ones of its own
    train(_config(f"model.init_from={run_dir}", "lora.rank=2", "loop.steps=2", "loop.checkpoint_every=2"), stage2,
          progress=False)
    export_run(stage2, tmp_path / "adapter2", adapter=True)
    assert base_of(tmp_path / "adapter2") == str(run_dir)
    export_run(run_dir, tmp_path / "stage1-merged")  # the base the adapter names, as a checkpoint
    on_base = hf.open(tmp_path / "stage1-merged", adapter=tmp_path / "adapter2", progress=False).model
    trained, _, _ = trained_model(stage2)
    assert np.abs(np.asarray(forward(on_base, TOKENS)) - np.asarray(forward(trained, TOKENS))).max() <= 1e-5

    stage3 = tmp_path / "stage3"  # keeps training stage 2's adapters (never folded in): stage 2's base still
    train(_config(f"model.init_from={stage2}", "model.init_lora=unmerged", "lora.rank=2", "loop.steps=1",
                  "loop.checkpoint_every=1"), stage3, progress=False)
    export_run(stage3, tmp_path / "adapter3", adapter=True)
    assert base_of(tmp_path / "adapter3") == str(run_dir)
