"""The decoder's configuration: the architecture the model implements, and how this process runs it.

One dataclass covers Qwen2, Qwen2.5 (same architecture as Qwen2), Qwen3 dense, and the Llama layout:
Llama 2 / 3 / 3.1 (and Llama-architecture models such as Yi and Meditron) and Mistral without a
sliding window. RoPE may be default, `linear` or `llama3` scaled. Reading and writing a Hugging Face `config.json`
is the bridge's job (diabetica_jax/hf/config_json.py), and so are the presets, which are written in that form
(hf.preset_config).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from diabetica_jax.errors import UserError
from diabetica_jax.model.layers import LoRASpec, RopeScaling

# The model families implemented; the family is also the config.json `model_type`.
FAMILIES = ("qwen2", "qwen3", "llama", "mistral")

COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
# How a process computes, one story for every entry point (hf.load, create_model, the CLI, training,
# evaluation): exact float32 with no rematerialisation. Accelerator configs opt into bfloat16 compute
# and a remat policy explicitly (the shipped recipes do).
DEFAULT_RUNTIME = {"dtype": "float32", "param_dtype": "float32", "attention": "auto", "remat": "none"}
ATTENTION_BACKENDS = ("auto", "xla", "cudnn", "splash")
REMAT_POLICIES = ("none", "full", "save_matmuls")
# The linear layers of a decoder layer, by their HF names; LoRA targets are chosen among them.
LINEAR_LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# The fields that say what the weights are (shapes, RoPE, biases, special tokens), as opposed to how this
# process computes (runtime) and which adapters it adds (LoRA); source_dtype is provenance, neither.
ARCHITECTURE_FIELDS = ("family", "vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                       "num_kv_heads", "head_dim", "rope_theta", "rms_norm_eps", "tie_word_embeddings", "qkv_bias",
                       "qk_norm", "max_position_embeddings", "rope_scaling", "bos_token_id", "eos_token_id")


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
    # runtime (how this process computes; not part of config.json)
    param_dtype: str = DEFAULT_RUNTIME["param_dtype"]
    dtype: str = DEFAULT_RUNTIME["dtype"]  # compute dtype of matmuls and attention
    attention: str = DEFAULT_RUNTIME["attention"]
    remat: str = DEFAULT_RUNTIME["remat"]
    # LoRA adapters (rank 0: none). Targets are names from LINEAR_LAYERS; all of them by default,
    # as the Diabetica recipe adapted all linear layers.
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = LINEAR_LAYERS

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ConfigError(f"family={self.family!r} is not one of {sorted(FAMILIES)}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_attention_heads ({self.num_heads}) must be a multiple of num_key_value_heads ({self.num_kv_heads})"
            )
        for name, allowed in (("dtype", COMPUTE_DTYPES), ("param_dtype", COMPUTE_DTYPES),
                              ("attention", ATTENTION_BACKENDS), ("remat", REMAT_POLICIES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}={getattr(self, name)!r} is not one of {allowed}")
        unknown = set(self.lora_targets) - set(LINEAR_LAYERS)
        if unknown:
            raise ConfigError(f"lora_targets {sorted(unknown)} are not linear layers; choose from {LINEAR_LAYERS}")
        if self.lora_rank < 0 or not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"lora_rank must be >= 0 and lora_dropout in [0, 1), got {self.lora_rank}, {self.lora_dropout}")

    def lora_for(self, layer: str) -> LoRASpec | None:
        """The adapter spec for linear layer `layer`, or None when it is not adapted."""
        if self.lora_rank == 0 or layer not in self.lora_targets:
            return None
        return LoRASpec(self.lora_rank, self.lora_alpha, self.lora_dropout)

    def without_lora(self) -> "QwenConfig":
        return self.replace(lora_rank=0)

    def replace(self, **changes: Any) -> "QwenConfig":
        return dataclasses.replace(self, **changes)

    def same_architecture(self, other: QwenConfig) -> bool:
        """Both describe the same weights, whatever each computes in and whichever adapters it adds."""
        return all(getattr(self, name) == getattr(other, name) for name in ARCHITECTURE_FIELDS)

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
