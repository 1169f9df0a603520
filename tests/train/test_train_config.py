"""Bad training configs and checkpoints fail first, with messages that name what is wrong."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_helpers import tiny_config

from diabetica_jax.cli import main
from diabetica_jax.configuration import ConfigFileError, load_config, reference
from diabetica_jax.train.checkpoint import CheckpointError, Checkpoints, CheckpointSaveError
from diabetica_jax.train.config import TrainConfig, check_against_devices
from diabetica_jax.train.loop import train
from diabetica_jax.train.state import TrainState


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["trian.steps=3"], "unknown key 'trian'"),
        (["loop.stepz=3"], "unknown key 'loop.stepz'"),
        (["loop.steps=ten"], "loop.steps: expected an integer, got 'ten'"),
        (["model.runtime.dtype=float64"],
         "model.runtime.dtype: 'float64' is not one of ['float32', 'bfloat16', 'float16']"),
        (["model.hf_path=/data/ckpt"], "model.hf_path: renamed to model.path"),
        (["model.dtype=bfloat16"], "model.dtype: renamed to model.runtime.dtype"),
        (["mesh.rules={embeding: fsdp}"], "mesh.rules.embeding: unknown logical axis"),
        (["mesh.rules={mlp: fdsp}"], "mesh.rules.mlp: 'fdsp' is not a mesh axis"),
        (["mesh.rules={mlp: fsdp}"], "mesh.rules.mlp: puts 'embed' and 'mlp' of one array"),
        (["loop.tensorboard=maybe"], "loop.tensorboard: expected true or false"),
        (["data.global_batch=8", "data.grad_accum=3"], "data.global_batch: 8 does not divide into grad_accum=3"),
        (["lora.targets=[q_proj, lm_head]"], "['lm_head'] are not linear layers"),
        (["optim.warmup_steps=500", "loop.steps=100"], "exceeds loop.steps=100"),
        (["loop.steps"], "expected KEY=VALUE"),
    ],
)
def test_bad_values_are_refused(overrides, message):
    with pytest.raises(ConfigFileError) as err:
        load_config(TrainConfig, None, overrides)
    assert message in str(err.value)


def test_renamed_keys_name_the_new_key_and_old_files_are_upgraded():
    from diabetica_jax.configuration import upgrade_renamed_keys
    from diabetica_jax.evaluation.config import EvalConfig

    for old, new in (("model=/data/ckpt", "model.path"), ("preset=tiny", "model.preset"),
                     ("dtype=bfloat16", "model.runtime.dtype")):
        with pytest.raises(ConfigFileError, match=f"overrides: {old.split('=')[0]}: renamed to {new}$"):
            load_config(EvalConfig, None, [old])
    assert upgrade_renamed_keys(EvalConfig, {"model": "/data/ckpt", "dtype": "bfloat16"}) == \
        {"model": {"path": "/data/ckpt", "runtime": {"dtype": "bfloat16"}}}
    # a run directory's train_config.json written before the rename
    written = {"model": {"hf_path": "/data/ckpt", "remat": "full", "seed": 3}, "lora": {"rank": 4}}
    assert upgrade_renamed_keys(TrainConfig, written) == \
        {"model": {"path": "/data/ckpt", "runtime": {"remat": "full"}, "seed": 3}, "lora": {"rank": 4}}


def test_yaml_file_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  steps: [1, 2\n")
    with pytest.raises(ConfigFileError, match=str(path)):
        load_config(TrainConfig, str(path))
    path.write_text("optim:\n  lr: 1e-4\n")  # YAML 1.1 reads this as a string; accepted as the number it is
    assert load_config(TrainConfig, str(path)).optim.lr == 1e-4


def test_section_checks_name_the_key_where_the_section_is_nested():
    from diabetica_jax.pipeline.config import load_run_config

    with pytest.raises(ConfigFileError, match=r"overrides: train\.data\.global_batch: 8 does not divide into grad_acc"):
        load_run_config(None, ["train.data.grad_accum=3"])
    with pytest.raises(ConfigFileError, match=r"overrides: eval\.judge\.model: required with backend 'openai'"):
        load_run_config(None, ["eval.judge.backend=openai"])
    with pytest.raises(ConfigFileError, match=r"overrides: curate\.inputs\[1\]\.path: missing"):
        load_run_config(None, ["curate.inputs=[{path: a.jsonl}, {format: csv}]"])


def test_paths_in_a_config_file_are_relative_to_its_folder(tmp_path, monkeypatch):
    from diabetica_jax.curate.config import CurateConfig

    folder = tmp_path / "configs"
    folder.mkdir()
    path = folder / "curate.yaml"
    path.write_text("inputs:\n  - path: data/qa.jsonl\n  - {path: org/dataset, format: hf_hub}\n"
                    "decontamination:\n  benchmarks: [../bench, /abs/bench]\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(CurateConfig, path, ["output.tokenizer=tok"])
    assert [i.path for i in cfg.inputs] == [str((folder / "data" / "qa.jsonl").resolve()), "org/dataset"]
    assert cfg.decontamination.benchmarks == [str((tmp_path / "bench").resolve()), "/abs/bench"]
    assert cfg.output.tokenizer == "tok"  # a command-line path stays relative to the working directory
    train = folder / "train.yaml"
    train.write_text("model: {path: ckpt}\ndata: {source: curated, path: /data/curated}\n")
    cfg = load_config(TrainConfig, train)
    assert (cfg.model.path, cfg.data.path) == (str((folder / "ckpt").resolve()), "/data/curated")


def test_mesh_and_batch_must_fit_the_devices():
    with pytest.raises(ConfigFileError, match="does not divide the 8 available devices"):
        check_against_devices(load_config(TrainConfig, None, ["mesh.tensor=3"]), 8)
    with pytest.raises(ConfigFileError, match="uses 16 devices but 8"):
        check_against_devices(load_config(TrainConfig, None, ["mesh.fsdp=8", "mesh.tensor=2"]), 8)
    with pytest.raises(ConfigFileError, match="12 sequences per micro-batch do not divide over the data x fsdp = 8"):
        check_against_devices(load_config(TrainConfig, None, ["data.global_batch=12"]), 8)
    assert check_against_devices(load_config(TrainConfig, None, ["mesh.fsdp=-1", "mesh.tensor=2"]), 8) == (1, 4, 2)


def test_cli_fails_before_any_work(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  steps: 0\n")
    assert main(["train", str(config), "--run-dir", str(tmp_path / "run")]) == 2
    assert f"{config}" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_config_reference_covers_every_field():
    keys = {row[0] for row in reference(TrainConfig)}
    assert {"model.path", "model.runtime.dtype", "mesh.rules", "lora.rank", "mesh.tensor", "data.grad_accum", "optim.lr", "loop.loss_chunk"} <= keys
    assert all(row[3] for row in reference(TrainConfig))  # every field documented


@pytest.mark.slow
def test_incompatible_or_damaged_checkpoints_are_refused(hf_checkpoints, tmp_path):
    cfg = tiny_config(hf_checkpoints["qwen2_untied"], "loop.steps=3", "mesh.fsdp=2")
    train(cfg, tmp_path / "run", progress=False)
    with pytest.raises(CheckpointError, match="incompatible checkpoint: its 'model'"):
        train(tiny_config(hf_checkpoints["qwen3"], "loop.steps=4", "mesh.fsdp=2"), tmp_path / "run", progress=False)
    with pytest.raises(CheckpointError, match="incompatible checkpoint: its 'lora'"):
        train(tiny_config(hf_checkpoints["qwen2_untied"], "loop.steps=4", "lora.rank=2"), tmp_path / "run",
              progress=False)
    damaged = tmp_path / "damaged"
    shutil.copytree(tmp_path / "run", damaged)
    for f in (damaged / "checkpoints" / "3" / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "metadata" not in f.name:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="damaged or unreadable"):
        train(tiny_config(hf_checkpoints["qwen2_untied"], "loop.steps=4", "mesh.fsdp=2"), damaged, progress=False)


def test_failed_save_keeps_the_last_good_checkpoint(tmp_path):
    checkpoints = Checkpoints(tmp_path, keep=2, async_save=False)

    def state(step, value):
        return TrainState(step=jnp.int32(step), params={"w": jnp.full((4,), value)}, opt_state=(), rng=jax.random.PRNGKey(0))

    checkpoints.save(1, state(1, 1.0), {})
    checkpoints.save(2, state(2, 2.0), {})
    with pytest.raises(CheckpointSaveError, match="saving the checkpoint of step 3 failed: it could not be written .*; "
                                                  "the checkpoint of step 2 is kept; fix the cause and rerun"):
        checkpoints.save(3, TrainState(step=jnp.int32(3), params={"w": object()}, opt_state=(), rng=None), {})
    checkpoints.wait()
    assert checkpoints.all_steps() == [1, 2] and checkpoints.latest_step() == 2
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=jax.sharding.SingleDeviceSharding(
        jax.devices()[0])), state(0, 0.0))
    restored, _ = checkpoints.restore(2, target, {})
    np.testing.assert_array_equal(np.asarray(restored.params["w"]), np.full((4,), 2.0))
    checkpoints.save(3, state(3, 3.0), {})
    checkpoints.wait()
    assert checkpoints.all_steps() == [2, 3]


def test_configuration_reference_is_current():
    from pathlib import Path

    from diabetica_jax.configuration import markdown_reference
    from diabetica_jax.pipeline.config import RunConfig

    page = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text(encoding="utf-8")
    start, end = "<!-- config-reference:start -->\n", "\n<!-- config-reference:end -->"
    current = page[page.index(start) + len(start): page.index(end)]
    assert current == markdown_reference(RunConfig), (
        "docs/configuration.md: the config reference drifted; regenerate it with python -c 'from "
        "diabetica_jax.configuration import markdown_reference; from diabetica_jax.pipeline.config import RunConfig; "
        "print(markdown_reference(RunConfig))'")


def test_shipped_configs_load():
    from pathlib import Path

    from diabetica_jax.curate.config import load_curate_config
    from diabetica_jax.evaluation.config import EvalConfig
    from diabetica_jax.pipeline.config import load_run_config

    root = Path(__file__).resolve().parents[2]
    for path in sorted((root / "configs" / "curate").glob("*.yaml")):
        assert load_curate_config(str(path)).demo
    for path in sorted((root / "configs" / "recipes").glob("*.yaml")):
        assert load_run_config(str(path)).train.data.source == "curated"
    for path in sorted((root / "configs" / "train").glob("*.yaml")):
        assert load_config(TrainConfig, str(path)).loop.steps > 0
    assert len(list((root / "configs").glob("*.yaml"))) == 0, "a config's kind is the folder it lives in"
    for path in sorted((root / "eval").glob("*.yaml")):
        assert load_config(EvalConfig, str(path)).tasks
