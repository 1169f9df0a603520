"""The one table between Hugging Face tensor names and model parameter paths, used both ways.

Each entry names the HF tensor (with `{layer}` for per-layer weights), the parameter path in the
model state, how the layout changes (`kernel`: HF stores Linear weights [out, in], we store
[in..., out...]; `plain`: same values, possibly reshaped, e.g. a bias [heads*head_dim] -> [heads, head_dim]),
and when the entry applies (biases only where the config has them, lm_head only when untied).
Every supported family (Qwen2/3, Llama, Mistral) uses these same names.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from diabetica_jax.model.config import QwenConfig


@dataclass(frozen=True)
class Layout:
    """How an HF tensor maps to a parameter of shape in_dims + out_dims."""

    kind: str  # "plain" (same shape), "flat" (HF stores it flattened) or "kernel" (HF [out, in])
    in_ndim: int = 1  # kernel only: how many leading parameter dims are the input side

    def to_param(self, hf: np.ndarray, param_shape: tuple[int, ...]) -> np.ndarray:
        if self.kind == "kernel":
            return hf.T.reshape(param_shape)
        return hf.reshape(param_shape)

    def to_hf(self, param: np.ndarray) -> np.ndarray:
        if self.kind == "kernel":
            n_in = math.prod(param.shape[: self.in_ndim])
            return param.reshape(n_in, -1).T
        return param.reshape(self.hf_shape(param.shape))

    def hf_shape(self, param_shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.kind == "kernel":
            return (math.prod(param_shape[self.in_ndim :]), math.prod(param_shape[: self.in_ndim]))
        if self.kind == "flat":
            return (math.prod(param_shape),)
        return tuple(param_shape)


PLAIN = Layout("plain")
FLAT = Layout("flat")  # q/k/v biases: HF [heads*head_dim], ours [heads, head_dim]
KERNEL = Layout("kernel", in_ndim=1)
KERNEL_FROM_HEADS = Layout("kernel", in_ndim=2)  # o_proj: [heads, head_dim, embed]


def _always(cfg: QwenConfig) -> bool:
    return True


@dataclass(frozen=True)
class WeightEntry:
    hf_name: str
    param_path: tuple[str, ...]
    layout: Layout
    per_layer: bool = False
    applies: Callable[[QwenConfig], bool] = _always


def _layer(hf_suffix: str, path: str, layout: Layout, applies=_always) -> WeightEntry:
    return WeightEntry(f"model.layers.{{layer}}.{hf_suffix}", ("layers",) + tuple(path.split(".")), layout, True, applies)


def _has_bias(cfg: QwenConfig) -> bool:
    return cfg.qkv_bias


def _has_o_bias(cfg: QwenConfig) -> bool:
    return cfg.o_proj_bias


def _has_qk_norm(cfg: QwenConfig) -> bool:
    return cfg.qk_norm


def _untied(cfg: QwenConfig) -> bool:
    return not cfg.tie_word_embeddings


WEIGHT_TABLE: tuple[WeightEntry, ...] = (
    WeightEntry("model.embed_tokens.weight", ("embed_tokens", "embedding"), PLAIN),
    _layer("input_layernorm.weight", "input_layernorm.weight", PLAIN),
    _layer("self_attn.q_proj.weight", "self_attn.q_proj.kernel", KERNEL),
    _layer("self_attn.q_proj.bias", "self_attn.q_proj.bias", FLAT, _has_bias),
    _layer("self_attn.k_proj.weight", "self_attn.k_proj.kernel", KERNEL),
    _layer("self_attn.k_proj.bias", "self_attn.k_proj.bias", FLAT, _has_bias),
    _layer("self_attn.v_proj.weight", "self_attn.v_proj.kernel", KERNEL),
    _layer("self_attn.v_proj.bias", "self_attn.v_proj.bias", FLAT, _has_bias),
    _layer("self_attn.q_norm.weight", "self_attn.q_norm.weight", PLAIN, _has_qk_norm),
    _layer("self_attn.k_norm.weight", "self_attn.k_norm.weight", PLAIN, _has_qk_norm),
    _layer("self_attn.o_proj.weight", "self_attn.o_proj.kernel", KERNEL_FROM_HEADS),
    _layer("self_attn.o_proj.bias", "self_attn.o_proj.bias", PLAIN, _has_o_bias),
    _layer("post_attention_layernorm.weight", "post_attention_layernorm.weight", PLAIN),
    _layer("mlp.gate_proj.weight", "mlp.gate_proj.kernel", KERNEL),
    _layer("mlp.up_proj.weight", "mlp.up_proj.kernel", KERNEL),
    _layer("mlp.down_proj.weight", "mlp.down_proj.kernel", KERNEL),
    WeightEntry("model.norm.weight", ("norm", "weight"), PLAIN),
    WeightEntry("lm_head.weight", ("lm_head", "kernel"), KERNEL, applies=_untied),
)

# Present in some tied checkpoints as a copy of the embedding; accepted and ignored when tied.
TIED_DUPLICATE = "lm_head.weight"


def entries(cfg: QwenConfig) -> list[WeightEntry]:
    return [e for e in WEIGHT_TABLE if e.applies(cfg)]


def hf_names(cfg: QwenConfig) -> Iterator[tuple[str, WeightEntry, int | None]]:
    """Every HF tensor name the config implies, with its entry and layer index."""
    for entry in entries(cfg):
        if entry.per_layer:
            for layer in range(cfg.num_layers):
                yield entry.hf_name.format(layer=layer), entry, layer
        else:
            yield entry.hf_name, entry, None
