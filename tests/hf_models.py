"""Tiny random Qwen / Llama / Mistral checkpoints made with transformers (PyTorch), for parity tests."""

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
    # Llama 3.1 RoPE: original_max_position_embeddings 64 puts most of the tiny head's frequencies
    # in the divided (factor 8) or interpolated band, so the remapping shows in every logit.
    "llama3": dict(family="llama", tie_word_embeddings=False, rope_scaling=dict(
        rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=64)),
    "llama_tied_linear": dict(family="llama", tie_word_embeddings=True, attention_bias=True,
                              rope_scaling=dict(rope_type="linear", factor=2.0)),
    "mistral": dict(family="mistral", tie_word_embeddings=False, sliding_window=None),
}


def make_hf_checkpoint(variant: str, path: Path, seed: int = 0, **overrides) -> Path:
    """Save a randomly initialised transformers model of `variant` to `path` as safetensors."""
    import torch
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    classes = {
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
        "qwen3": (Qwen3Config, Qwen3ForCausalLM),
        "llama": (LlamaConfig, LlamaForCausalLM),
        "mistral": (MistralConfig, MistralForCausalLM),
    }

    spec = dict(VARIANTS[variant])
    family = spec.pop("family")
    kwargs = {**TINY_SHAPES, **spec, **overrides}
    torch.manual_seed(seed)
    config_class, model_class = classes[family]
    model = model_class(config_class(**kwargs))
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
