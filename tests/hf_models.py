"""Tiny random Qwen checkpoints made with transformers (PyTorch), for parity tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

TINY_SHAPES = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
)

VARIANTS = {
    "qwen2_tied": dict(family="qwen2", tie_word_embeddings=True),
    "qwen2_untied": dict(family="qwen2", tie_word_embeddings=False),
    "qwen3": dict(family="qwen3", tie_word_embeddings=False, head_dim=32),
}


def make_hf_checkpoint(variant: str, path: Path, seed: int = 0, **overrides) -> Path:
    """Save a randomly initialised transformers model of `variant` to `path` as safetensors."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    spec = dict(VARIANTS[variant])
    family = spec.pop("family")
    kwargs = {**TINY_SHAPES, **spec, **overrides}
    torch.manual_seed(seed)
    if family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**kwargs))
    else:
        model = Qwen3ForCausalLM(Qwen3Config(**kwargs))
    # Random biases and norm weights, so a mapping mistake in them cannot hide behind zeros and ones.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.eval()
    model.save_pretrained(path, safe_serialization=True)
    return path


def torch_logits(path: Path, tokens: np.ndarray) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        return model(torch.as_tensor(tokens, dtype=torch.long)).logits.float().numpy()
