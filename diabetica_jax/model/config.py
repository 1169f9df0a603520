"""The decoder's architecture: what the weights are (shapes, RoPE, biases, special tokens).

One dataclass covers Qwen2, Qwen2.5 (same architecture as Qwen2), Qwen3 dense, and the Llama layout:
Llama 2 / 3 / 3.1 (and Llama-architecture models such as Yi and Meditron) and Mistral without a
sliding window. RoPE may be default, `linear` or `llama3` scaled. Reading and writing a Hugging Face `config.json`
is the bridge's job (diabetica_jax/hf/config_json.py), and so are the presets, which are written in that form
(hf.preset_config). How a process computes the model (model/runtime.py) and which adapters it adds
(model/lora_config.py) are given to the model beside this config, never inside it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from diabetica_jax.errors import UserError
from diabetica_jax.model.layers import RopeScaling

# The model families implemented; the family is also the config.json `model_type`.
FAMILIES = ("qwen2", "qwen3", "llama", "mistral")


class ConfigError(UserError, ValueError):
    """A model config that cannot be used; the message names the source and the field."""


@dataclasses.dataclass(frozen=True)
class QwenConfig:
    # architecture (what config.json describes)
    family: str  # "qwen2" (also Qwen2.5), "qwen3", "llama" (also Yi, Meditron) or "mistral"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    rms_norm_eps: float
    tie_word_embeddings: bool
    qkv_bias: bool  # Qwen2/2.5: biases on q, k, v projections (Qwen3/Llama: `attention_bias`, o_proj too)
    qk_norm: bool  # Qwen3: per-head RMSNorm on q and k before RoPE
    max_position_embeddings: int = 32768
    rope_scaling: RopeScaling | None = None  # None: plain RoPE ("default")
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    # the dtype the checkpoint's weights were stored in (config.json `torch_dtype`, `dtype` in
    # transformers 5), so an export writes them back as they came; float32 when not recorded
    # (random presets). Provenance, not architecture: equal configs may come from either dtype.
    source_dtype: str = dataclasses.field(default="float32", compare=False)

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ConfigError(f"family={self.family!r} is not one of {sorted(FAMILIES)}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_attention_heads ({self.num_heads}) must be a multiple of num_key_value_heads ({self.num_kv_heads})"
            )

    def replace(self, **changes: Any) -> "QwenConfig":
        return dataclasses.replace(self, **changes)

    @property
    def o_proj_bias(self) -> bool:
        """`attention_bias` puts a bias on o_proj as well in Qwen3 and Llama; Qwen2 biases only q, k, v."""
        return self.qkv_bias and self.family != "qwen2"

    def num_params(self) -> int:
        """Parameter count (embeddings included once when tied)."""
        e, i, h, k, d = self.hidden_size, self.intermediate_size, self.num_heads, self.num_kv_heads, self.head_dim
        attn = e * h * d + 2 * e * k * d + h * d * e
        if self.qkv_bias:
            attn += h * d + 2 * k * d
        if self.o_proj_bias:
            attn += e
        if self.qk_norm:
            attn += 2 * d
        layer = attn + 3 * e * i + 2 * e
        head = 0 if self.tie_word_embeddings else e * self.vocab_size
        return self.vocab_size * e + self.num_layers * layer + e + head
