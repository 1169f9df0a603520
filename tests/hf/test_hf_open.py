"""`hf.open`: one way to open a model from a Hugging Face checkpoint directory, a training run directory or a preset;
each gives the model, tokenizer and decoding that the old, separate paths gave, and a bad source is one UserError
naming it."""

import json
import shutil

import numpy as np
import pytest
from hf_models import torch_logits
from train_helpers import tiny_config

from diabetica_jax import hf
from diabetica_jax.configuration import ConfigFileError, InputError
from diabetica_jax.errors import UserError
from diabetica_jax.hf import run_directories
from diabetica_jax.model import ConfigError, create_model, forward
from diabetica_jax.model.runtime import RuntimeConfig
from diabetica_jax.parallel import make_mesh
from diabetica_jax.train.checkpoint import CheckpointError
from diabetica_jax.train.loop import train
from diabetica_jax.train.run_dir import trained_model

TEXT = "Which hormone lowers blood glucose?"


def _logits(model, tokens):
    return np.asarray(forward(model, tokens))


def _same_tokenizer(a, b):
    assert a(TEXT).input_ids == b(TEXT).input_ids and a.chat_template == b.chat_template
    assert (a.eos_token_id, a.pad_token_id) == (b.eos_token_id, b.pad_token_id)


@pytest.fixture(scope="module")
def run_dir(hf_checkpoints, tmp_path_factory):
    """Two steps of training the tiny Qwen2 checkpoint, a checkpoint after each."""
    path = tmp_path_factory.mktemp("runs") / "run"
    train(tiny_config(hf_checkpoints["qwen2_tied"], "loop.steps=2", "loop.checkpoint_every=1", "mesh.fsdp=2"),
          path, progress=False)
    return path


def test_a_checkpoint_directory_opens_as_hf_load_and_load_tokenizer_did(hf_checkpoints, tokens):
    path = hf_checkpoints["qwen2_untied"]
    opened = hf.open(path, progress=False)
    old, old_cfg = hf.load(path, progress=False)
    assert (opened.source.kind, opened.source.path, opened.step) == ("checkpoint", path, None)
    assert opened.config == old_cfg == opened.model.config
    np.testing.assert_array_equal(_logits(opened.model, tokens), _logits(old, tokens))
    np.testing.assert_allclose(_logits(opened.model, tokens), torch_logits(path, tokens), atol=1e-4)
    _same_tokenizer(opened.tokenizer, hf.load_tokenizer(path))
    assert opened.generation_config == hf.read_generation_config(path)


def test_runtime_and_mesh_options_reach_the_weights(hf_checkpoints, tokens):
    path = hf_checkpoints["qwen3"]
    opened = hf.open(path, mesh=make_mesh({"fsdp": 4, "tensor": 2}), runtime=RuntimeConfig(dtype="bfloat16"),
                     progress=False)
    assert opened.model.runtime.dtype == "bfloat16"
    assert len(opened.model.layers.mlp.up_proj.kernel[...].sharding.device_set) == 8
    old, _ = hf.load(path, runtime=RuntimeConfig(dtype="bfloat16"), progress=False)
    np.testing.assert_allclose(_logits(opened.model, tokens), _logits(old, tokens), atol=2e-2)


def test_a_run_directory_opens_its_latest_or_a_given_checkpoint(run_dir, hf_checkpoints, tokens):
    base = hf_checkpoints["qwen2_tied"]
    opened = hf.open(run_dir)
    old, old_cfg, old_step = trained_model(run_dir)
    assert (opened.source.kind, opened.step, old_step) == ("run", 2, 2)
    assert opened.source.preset is None  # it started from a checkpoint, not a preset
    assert opened.config == old_cfg
    np.testing.assert_array_equal(_logits(opened.model, tokens), _logits(old, tokens))
    # the tokenizer and the default decoding of the checkpoint the run started from, as serve read them
    _same_tokenizer(opened.tokenizer, hf.load_tokenizer(base))
    assert opened.generation_config == hf.read_generation_config(base)

    first = hf.open(run_dir, step=1)
    assert first.step == 1
    np.testing.assert_array_equal(_logits(first.model, tokens), _logits(trained_model(run_dir, 1)[0], tokens))
    assert np.abs(_logits(first.model, tokens) - _logits(opened.model, tokens)).max() > 0


def test_a_run_directory_written_with_the_old_keys_still_opens(run_dir, tmp_path, tokens):
    """Runs trained before model.hf_path became model.path and the runtime fields moved into model.runtime: their
    train_config.json is read with the new names, and their checkpoints (whose metadata did not change) restore."""
    old = tmp_path / "old-run"
    shutil.copytree(run_dir, old)
    config = json.loads((old / "train_config.json").read_text())
    model = config["model"]
    model["hf_path"] = model.pop("path")
    runtime = model.pop("runtime")  # its old fields beside the other keys; the ones added since did not exist
    model.update({key: runtime[key] for key in ("dtype", "param_dtype", "attention", "remat")})
    (old / "train_config.json").write_text(json.dumps(config))
    opened = hf.open(old)
    assert opened.source.path == old and opened.step == 2
    np.testing.assert_array_equal(_logits(opened.model, tokens), _logits(hf.open(run_dir).model, tokens))


def test_a_preset_opens_with_seeded_random_weights(tokens):
    opened = hf.open(preset="tiny", seed=3)
    old = create_model(hf.preset_config("tiny"), seed=3)
    assert (opened.source.kind, opened.source.preset, opened.source.path) == ("preset", "tiny", None)
    np.testing.assert_array_equal(_logits(opened.model, tokens), _logits(old, tokens))
    _same_tokenizer(opened.tokenizer, hf.load_tokenizer(None))
    assert opened.generation_config["do_sample"] is False  # no generation_config.json: greedy
    # a source wins over the preset; the preset is what opens without one
    assert hf.find("", preset="tiny").kind == "preset"


def test_generation_config_given_replaces_the_sources(hf_checkpoints, tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps({"do_sample": True, "temperature": 0.7}))
    found = hf.find(hf_checkpoints["qwen2_tied"], generation_config=tmp_path)
    assert found.generation_config["temperature"] == 0.7
    assert found.generation_config["source"] == str(tmp_path / "generation_config.json")


def _message(kind, call) -> str:
    with pytest.raises(kind) as err:
        call()
    assert isinstance(err.value, UserError), type(err.value)
    return str(err.value)


def test_bad_sources_are_one_user_error_naming_them(tmp_path, hf_checkpoints, monkeypatch):
    missing = tmp_path / "nowhere"
    assert _message(hf.HFCheckpointError, lambda: hf.find(missing)).startswith(
        f"{missing}: checkpoint directory not found")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"{empty / 'config.json'}: file not found" in _message(hf.HFCheckpointError, lambda: hf.find(empty))
    assert "unknown model preset 'qwen9-1t'" in _message(ConfigError, lambda: hf.find(preset="qwen9-1t"))
    text = _message(hf.HFCheckpointError, lambda: hf.find(hf_checkpoints["qwen2_tied"], step=3))
    assert str(hf_checkpoints["qwen2_tied"]) in text and "only a training run directory" in text

    run = tmp_path / "run"
    run.mkdir()
    (run / "train_config.json").write_text('{"loop": {"steps": "many"}}')
    text = _message(ConfigFileError, lambda: hf.find(run))
    assert str(run / "train_config.json") in text and "loop.steps" in text
    (run / "train_config.json").write_text("{}")  # a run that has saved no checkpoint yet
    assert f"{run / 'checkpoints'}: no checkpoint to load" in _message(CheckpointError, lambda: hf.open(run))
    monkeypatch.setattr(run_directories, "_reader", None)  # a process that never imported train/run_dir.py
    text = _message(hf.HFCheckpointError, lambda: hf.find(run))
    assert text.startswith(f"{run}: a training run directory") and "diabetica-jax export" in text


def test_a_broken_generation_config_is_refused_when_it_is_read(hf_checkpoints, tmp_path):
    """Read on first use: the callers that decode with it refuse a broken one, the others never read it."""
    import shutil

    copy = shutil.copytree(hf_checkpoints["qwen2_tied"], tmp_path / "ckpt")
    (copy / "generation_config.json").write_text('{"truncated": ')
    found = hf.find(copy)
    text = _message(InputError, lambda: found.generation_config)
    assert str(copy / "generation_config.json") in text and "not a readable JSON file" in text


def test_the_command_line_generates_from_a_run_directory(run_dir, capsys):
    from diabetica_jax.cli import main

    assert main(["generate", "--model", str(run_dir), "--raw", "--prompt", TEXT, "--max-new-tokens", "2"]) == 0
    assert f"# model: {run_dir}" in capsys.readouterr().out
