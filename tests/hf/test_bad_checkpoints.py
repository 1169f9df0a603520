"""Every broken checkpoint gives one clear error naming the file (and tensor) before any weight is placed."""

import json
import shutil

import numpy as np
import pytest
from hf_models import torch_logits

from diabetica_jax import hf
from diabetica_jax.hf import loader
from diabetica_jax.hf.safetensors_io import PlannedTensor, SafetensorsFile, write_safetensors
from diabetica_jax.model import forward


@pytest.fixture
def ckpt(hf_checkpoints, tmp_path, monkeypatch):
    """A private copy of a valid checkpoint to break; placing weights is forbidden while it is broken."""
    path = tmp_path / "ckpt"
    shutil.copytree(hf_checkpoints["qwen2_untied"], path)

    def must_not_run(*args, **kwargs):
        raise AssertionError("weights were placed before the checkpoint was validated")

    monkeypatch.setattr(loader, "_materialise", must_not_run)
    return path


def _rewrite(path, drop=(), add=None):
    src = SafetensorsFile(path / "model.safetensors")
    tensors = {name: src.read(name) for name in src.keys() if name not in drop}
    src.close()
    tensors.update(add or {})
    planned = [PlannedTensor(n, v.shape, v.dtype, lambda v=v: v) for n, v in tensors.items()]
    write_safetensors(path / "model.safetensors", planned)


def _edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def _error(path, **kwargs) -> str:
    with pytest.raises(hf.HFCheckpointError) as err:
        hf.load(path, progress=False, **kwargs)
    return str(err.value)


def test_missing_directory_and_files(ckpt, tmp_path):
    assert "checkpoint directory not found" in _error(tmp_path / "nowhere")
    (ckpt / "config.json").unlink()
    assert f"{ckpt / 'config.json'}: file not found" in _error(ckpt)


def test_missing_weight_files(ckpt):
    (ckpt / "model.safetensors").unlink()
    assert f"{ckpt}: no model.safetensors or model.safetensors.index.json found" in _error(ckpt)


def test_missing_weight(ckpt):
    _rewrite(ckpt, drop=["model.layers.1.self_attn.k_proj.bias"])
    message = _error(ckpt)
    assert "missing weight 'model.layers.1.self_attn.k_proj.bias'" in message and str(ckpt) in message


def test_unexpected_weight(ckpt):
    _rewrite(ckpt, add={"model.layers.0.mlp.extra.weight": np.zeros((2, 2), np.float32)})
    message = _error(ckpt)
    assert "unexpected weight 'model.layers.0.mlp.extra.weight'" in message
    assert str(ckpt / "model.safetensors") in message


def test_shape_disagreeing_with_config(ckpt):
    _edit_config(ckpt, intermediate_size=96)
    message = _error(ckpt)
    assert str(ckpt / "model.safetensors") in message
    assert "tensor 'model.layers.0.mlp.gate_proj.weight' has shape [128, 64] but config.json implies [96, 64]" in message


def test_unsupported_architecture(ckpt):
    _edit_config(ckpt, architectures=["GPT2LMHeadModel"])
    message = _error(ckpt)
    assert str(ckpt / "config.json") in message and "GPT2LMHeadModel" in message and "not supported" in message
    # and it says what is
    assert all(a in message for a in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"))


def test_weights_of_another_family_are_not_silently_dropped(ckpt):
    """A Qwen2 checkpoint (q/k/v biases) relabelled as Llama without attention_bias: the biases are
    unexpected weights, not ignored."""
    _edit_config(ckpt, architectures=["LlamaForCausalLM"], model_type="llama")
    assert "unexpected weight 'model.layers.0.self_attn.k_proj.bias'" in _error(ckpt)


def test_unsupported_llama_features_are_refused(hf_checkpoints, tmp_path):
    path = tmp_path / "llama"
    shutil.copytree(hf_checkpoints["llama3"], path)
    config = json.loads((path / "config.json").read_text())
    _edit_config(path, rope_parameters={**config["rope_parameters"], "rope_type": "yarn"})
    message = _error(path)
    assert "rope_type='yarn'" in message and "['default', 'linear', 'llama3']" in message
    _edit_config(path, rope_parameters=config["rope_parameters"], mlp_bias=True)
    assert "mlp_bias=true" in _error(path)
    mistral = tmp_path / "mistral"
    shutil.copytree(hf_checkpoints["mistral"], mistral)
    _edit_config(mistral, sliding_window=16)
    assert "sliding_window=16 < max_position_embeddings=256" in _error(mistral)


def test_truncated_safetensors(ckpt):
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[:-100])
    message = _error(ckpt)
    assert str(ckpt / "model.safetensors") in message and "truncated" in message and "tensor '" in message


def test_corrupt_header(ckpt):
    (ckpt / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    assert "corrupt safetensors header" in _error(ckpt)


def test_index_naming_a_missing_shard(ckpt):
    index = {"metadata": {}, "weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors"}}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    message = _error(ckpt)
    assert "model.safetensors.index.json" in message and "'model.embed_tokens.weight'" in message
    assert "model-00001-of-00002.safetensors, which is missing" in message


def test_pickle_checkpoint_refused_unless_allowed(hf_checkpoints, tmp_path, tokens):
    import torch

    path = tmp_path / "pickled"
    shutil.copytree(hf_checkpoints["qwen2_untied"], path)
    src = SafetensorsFile(path / "model.safetensors")
    torch.save({n: torch.from_numpy(src.read(n)) for n in src.keys()}, path / "pytorch_model.bin")
    src.close()
    (path / "model.safetensors").unlink()
    message = _error(path)
    assert str(path / "pytorch_model.bin") in message and "refused" in message and "allow_pickle" in message
    model, _ = hf.load(path, allow_pickle=True, progress=False)
    reference = torch_logits(hf_checkpoints["qwen2_untied"], tokens)
    assert np.abs(np.asarray(forward(model, tokens)) - reference).max() <= 1e-4


def test_cli_reports_the_error_without_a_traceback(ckpt, capsys):
    from diabetica_jax.cli import main

    _edit_config(ckpt, architectures=["GPT2LMHeadModel"])
    assert main(["generate", "--model", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert "diabetica-jax generate: error:" in err and "GPT2LMHeadModel" in err and "Traceback" not in err
