"""The decoder configuration: read from / written to a Hugging Face `config.json`.

One dataclass covers Qwen2, Qwen2.5 (same architecture as Qwen2), Qwen3 dense, and the Llama layout:
Llama 2 / 3 / 3.1 (and Llama-architecture models such as Yi and Meditron) and Mistral without a
sliding window. RoPE may be default, `linear` or `llama3` scaled. Anything the model does not
implement (other RoPE scalings, sliding-window layers, MLP biases, MoE, other activations) is refused
with an error naming the file and the field, never silently ignored. Every field read is type-checked (an
integer where an integer belongs, true/false for a flag), so `"num_hidden_layers": "two"` is a ConfigError
naming the file and the key. Keys the model does not read are ignored, as transformers ignores them; a
required key that is missing names a close misspelling among the file's keys, if there is one.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from pathlib import Path
from typing import Any

import yaml

from diabetica_jax.configuration import read_text_file, shown
from diabetica_jax.errors import UserError
from diabetica_jax.model.layers import LoRASpec, RopeScaling

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"

# config.json `architectures[0]` / `model_type` -> our family name (the family is also the model_type).
SUPPORTED_ARCHITECTURES = {
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
}
SUPPORTED_MODEL_TYPES = {"qwen2": "qwen2", "qwen3": "qwen3", "llama": "llama", "mistral": "mistral"}
ARCHITECTURE_OF = {family: arch for arch, family in SUPPORTED_ARCHITECTURES.items()}
# RoPE variants implemented (config.json `rope_type`, or `type` in older files); others are refused.
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")

COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
# How a process computes, one story for every entry point (hf.load, create_model, the CLI, training,
# evaluation): exact float32 with no rematerialisation. Accelerator configs opt into bfloat16 compute
# and a remat policy explicitly (the shipped recipes do).
DEFAULT_RUNTIME = {"dtype": "float32", "param_dtype": "float32", "attention": "auto", "remat": "none"}
ATTENTION_BACKENDS = ("auto", "xla", "cudnn", "splash")
REMAT_POLICIES = ("none", "full", "save_matmuls")
# The linear layers of a decoder layer, by their HF names; LoRA targets are chosen among them.
LINEAR_LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# The largest a config.json size may be: far past every released model (the largest dense ones have ~128 layers,
# hidden 16-25k, vocabularies of ~260k, contexts of 10M), so that a damaged or hostile file (num_hidden_layers:
# 1000000) is refused when it is read, not after minutes of sizing a model that no memory could hold.
SIZE_LIMITS = {"vocab_size": 2**22, "hidden_size": 2**17, "intermediate_size": 2**20, "num_hidden_layers": 2**12,
               "num_attention_heads": 2**12, "num_key_value_heads": 2**12, "head_dim": 2**12,
               "max_position_embeddings": 2**24}
MAX_PARAMS = 2**41  # 2.2 trillion parameters: four times the largest dense model trained (PaLM, 540B)
MAX_RMS_NORM_EPS = 0.1  # added to a mean square of activations ~1: past this it is no longer a small guard


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
        if self.family not in ARCHITECTURE_OF:
            raise ConfigError(f"family={self.family!r} is not one of {sorted(ARCHITECTURE_OF)}")
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

    @property
    def architecture(self) -> str:
        return ARCHITECTURE_OF[self.family]

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

    # ---- Hugging Face config.json -------------------------------------------------------------

    @classmethod
    def from_hf_dict(cls, raw: dict[str, Any], source: str = "config.json", **runtime: Any) -> "QwenConfig":
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a JSON object of settings at the top level, got "
                              f"{type(raw).__name__} {shown(raw)}")

        def need(key: str) -> Any:
            if key not in raw or raw[key] is None:
                close = difflib.get_close_matches(key, [k for k in raw if isinstance(k, str)], n=1, cutoff=0.85)
                hint = f" (the file has {close[0]!r}: a misspelling?)" if close else ""
                raise ConfigError(f"{source}: required field {key!r} is missing{hint}")
            return raw[key]

        def size(key: str, default: int | None = None) -> int:
            """A positive integer field, at most SIZE_LIMITS[key]; `default` when absent or null (None: required)."""
            value = need(key) if default is None else (raw.get(key) or default)
            value = _integer(value, source, key, minimum=1)
            if value > SIZE_LIMITS[key]:
                raise ConfigError(f"{source}: {key}: {value} is beyond any model (at most {SIZE_LIMITS[key]}); "
                                  "a damaged config.json?")
            return value

        archs = raw.get("architectures") or []
        if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
            raise ConfigError(f"{source}: architectures: expected a list of class names, got {shown(archs)}")
        if archs:
            if archs[0] not in SUPPORTED_ARCHITECTURES:
                raise ConfigError(
                    f"{source}: architectures={archs} is not supported; supported architectures: "
                    f"{sorted(SUPPORTED_ARCHITECTURES)}"
                )
            family = SUPPORTED_ARCHITECTURES[archs[0]]
        else:
            model_type = need("model_type")
            if not isinstance(model_type, str) or model_type not in SUPPORTED_MODEL_TYPES:
                raise ConfigError(
                    f"{source}: model_type={shown(model_type)} is not supported; supported model types: "
                    f"{sorted(SUPPORTED_MODEL_TYPES)}"
                )
            family = SUPPORTED_MODEL_TYPES[model_type]

        act = raw.get("hidden_act", "silu")
        if act != "silu":
            raise ConfigError(f"{source}: hidden_act={shown(act)} is not supported (only 'silu')")
        for moe_key in ("num_experts", "num_local_experts"):
            if raw.get(moe_key):
                raise ConfigError(f"{source}: {moe_key}={shown(raw[moe_key])} (mixture of experts) is not supported")

        if _flag(raw, "mlp_bias", source):
            raise ConfigError(f"{source}: mlp_bias=true (biases on the MLP projections) is not supported")
        rope_theta, rope_scaling = _rope(raw, source)
        num_layers = size("num_hidden_layers")
        max_positions = size("max_position_embeddings", 32768)
        if family == "mistral":
            _refuse_mistral_sliding_window(raw, source, max_positions)
        else:
            _refuse_sliding_window(raw, source, num_layers)

        hidden, heads = size("hidden_size"), size("num_attention_heads")
        kv_heads = size("num_key_value_heads", heads)
        if heads % kv_heads:
            raise ConfigError(f"{source}: num_attention_heads ({heads}) must be a multiple of num_key_value_heads "
                              f"({kv_heads})")
        head_dim = size("head_dim", max(hidden // heads, 1))
        if family == "qwen2" and head_dim * heads != hidden:
            raise ConfigError(f"{source}: hidden_size {hidden} is not divisible by num_attention_heads {heads}")
        if family == "qwen2":
            qkv_bias = True
        elif family == "mistral":  # MistralAttention has no biases whatever the config says
            qkv_bias = False
        else:
            qkv_bias = _flag(raw, "attention_bias", source)
        rms_norm_eps = _number(_or(raw.get("rms_norm_eps"), 1e-6), source, "rms_norm_eps")
        if not 0 < rms_norm_eps <= MAX_RMS_NORM_EPS:  # <= 0 divides by zero (NaN) or by a negative (garbage)
            raise ConfigError(f"{source}: rms_norm_eps: must be in (0, {MAX_RMS_NORM_EPS}] (models use 1e-5 or "
                              f"1e-6), got {rms_norm_eps}")
        cfg = cls(
            family=family,
            vocab_size=size("vocab_size"),
            hidden_size=hidden,
            intermediate_size=size("intermediate_size"),
            num_layers=num_layers,
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            rope_theta=rope_theta,
            rms_norm_eps=rms_norm_eps,
            tie_word_embeddings=_flag(raw, "tie_word_embeddings", source),
            qkv_bias=qkv_bias,
            qk_norm=family == "qwen3",
            max_position_embeddings=max_positions,
            rope_scaling=rope_scaling,
            bos_token_id=_token_ids(raw, "bos_token_id", source, several=False),
            eos_token_id=_token_ids(raw, "eos_token_id", source, several=True),
            source_dtype=_source_dtype(raw),
            **runtime,
        )
        if cfg.num_params() > MAX_PARAMS:
            raise ConfigError(f"{source}: hidden_size, intermediate_size, num_hidden_layers and vocab_size make "
                              f"{cfg.num_params():.3g} parameters, beyond any model (at most {MAX_PARAMS:.3g})")
        return cfg

    def to_hf_dict(self, torch_dtype: str = "float32") -> dict[str, Any]:
        """config.json content readable by transformers 4.x (rope_theta, rope_scaling) and 5.x (rope_parameters)."""
        scaling = _rope_scaling_dict(self.rope_scaling)
        out: dict[str, Any] = {
            "architectures": [self.architecture],
            "model_type": self.family,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": scaling,
            "rope_parameters": {"rope_type": "default", **(scaling or {}), "rope_theta": self.rope_theta},
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_dropout": 0.0,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "torch_dtype": torch_dtype,
            "dtype": torch_dtype,
            "use_cache": True,
        }
        if self.family in ("qwen2", "qwen3"):
            out["use_sliding_window"] = False
        out["sliding_window"] = None  # llama has none; qwen2/3 and mistral: off
        if self.family in ("qwen3", "llama"):
            out["attention_bias"] = self.qkv_bias
        if self.family == "llama":
            out["mlp_bias"] = False
        return out

    @classmethod
    def from_json_file(cls, path: str | Path, **runtime: Any) -> "QwenConfig":
        path = Path(path)
        text = read_text_file(path, "file", ConfigError)
        if not text.strip():
            raise ConfigError(f"{path}: empty file; a checkpoint's config.json describes its architecture")
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from e
        except RecursionError as e:  # json's decoder recurses once per level of [[[[...]]]]
            raise ConfigError(f"{path}: nested too deeply to be a config.json") from e
        return cls.from_hf_dict(raw, source=str(path), **runtime)

    @classmethod
    def preset(cls, name: str, **runtime: Any) -> "QwenConfig":
        """A named shape from diabetica_jax/presets (also reachable as configs/models/)."""
        path = PRESET_DIR / f"{name}.yaml"
        if not path.is_file():
            raise ConfigError(f"unknown model preset {name!r}; known: {list_presets()}")
        return cls.from_hf_dict(yaml.safe_load(path.read_text(encoding="utf-8")), source=str(path), **runtime)


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _integer(value: Any, source: str, key: str, minimum: int | None = None) -> int:
    """An integer config.json value (a float with no fraction, as some writers store sizes, counts too)."""
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
        raise ConfigError(f"{source}: {key}: expected an integer, got {shown(value)}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ConfigError(f"{source}: {key}: must be at least {minimum}, got {value}")
    return value


def _number(value: Any, source: str, key: str) -> float:
    """A finite numeric value; a numeric string too (PyYAML reads a preset's 1e-6, without a dot, as a string).
    Python's json reads NaN and Infinity, which no config.json field can mean."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{source}: {key}: expected a number, got {shown(value)}")
    if not math.isfinite(value):
        raise ConfigError(f"{source}: {key}: must be a finite number, got {value}")
    return float(value)


def _flag(raw: dict[str, Any], key: str, source: str) -> bool:
    """A true/false field (absent or null: false); "false" as a string is an error, not a true value."""
    value = raw.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ConfigError(f"{source}: {key}: expected true or false, got {shown(value)}")
    return value


def _token_ids(raw: dict[str, Any], key: str, source: str, several: bool) -> int | list[int] | None:
    """A token id (or, where `several`, a list of them), or None."""
    value = raw.get(key)
    if value is None:
        return None
    if several and isinstance(value, list):
        return [_integer(v, source, f"{key}[{i}]", minimum=0) for i, v in enumerate(value)]
    return _integer(value, source, key, minimum=0)


def _source_dtype(raw: dict[str, Any]) -> str:
    """The stored weights' dtype: transformers 5 writes `dtype`, 4.x `torch_dtype` ("torch.float16"
    in some old files)."""
    value = raw.get("dtype") or raw.get("torch_dtype") or "float32"
    return str(value).removeprefix("torch.")


def _rope(raw: dict[str, Any], source: str) -> tuple[float, RopeScaling | None]:
    """RoPE base and scaling from either the 4.x form (`rope_theta`, `rope_scaling`) or 5.x
    (`rope_parameters`). Like transformers, a non-empty `rope_scaling` wins over `rope_parameters`."""
    params = raw.get("rope_parameters")
    if isinstance(params, dict) and "full_attention" in params:  # per-layer-type form
        params = params["full_attention"]
    scaling = raw.get("rope_scaling")
    for field, block in (("rope_scaling", scaling), ("rope_parameters", params)):
        if not block:
            continue
        if not isinstance(block, dict):
            raise ConfigError(f"{source}: {field}={shown(block)} is not a mapping")
        kind = block.get("rope_type", block.get("type", "default"))
        if kind not in SUPPORTED_ROPE_TYPES:
            raise ConfigError(
                f"{source}: {field} rope_type={shown(kind)} is not supported; supported rope types: {list(SUPPORTED_ROPE_TYPES)}"
            )
        prf = block.get("partial_rotary_factor", raw.get("partial_rotary_factor"))
        if prf not in (None, 1, 1.0):
            raise ConfigError(f"{source}: {field} partial_rotary_factor={shown(prf)} is not supported (only 1.0)")
    if params and params.get("rope_theta") is not None:
        theta = _number(params["rope_theta"], source, "rope_parameters.rope_theta")
    elif raw.get("rope_theta") is not None:
        theta = _number(raw["rope_theta"], source, "rope_theta")
    elif scaling and scaling.get("rope_theta") is not None:
        theta = _number(scaling["rope_theta"], source, "rope_scaling.rope_theta")
    else:
        theta = 10000.0
    if theta <= 1:  # the rotation frequencies are theta ** (-2i / head_dim): they must fall from 1, not rise or stay
        raise ConfigError(f"{source}: rope_theta: must be greater than 1 (models use 1e4 to 1e6), got {theta}")
    field, block = ("rope_scaling", scaling) if scaling else ("rope_parameters", params)
    kind = block.get("rope_type", block.get("type", "default")) if block else "default"
    if kind == "default":
        return theta, None

    def number(key: str) -> float:
        if block.get(key) is None:
            raise ConfigError(f"{source}: {field} rope_type={shown(kind)} needs {key!r}, which is missing")
        return _number(block[key], source, f"{field}.{key}")

    factor = number("factor")
    if factor <= 0:
        raise ConfigError(f"{source}: {field} factor={factor} must be positive")
    if kind == "linear":
        return theta, RopeScaling("linear", factor)
    low, high = number("low_freq_factor"), number("high_freq_factor")
    if low <= 0:
        raise ConfigError(f"{source}: {field} low_freq_factor={low} must be positive")
    if high <= low:
        raise ConfigError(f"{source}: {field} high_freq_factor={high} must exceed low_freq_factor={low}")
    # transformers: a top-level original_max_position_embeddings takes priority, then the block's, then
    # max_position_embeddings
    original = raw.get("original_max_position_embeddings") or block.get("original_max_position_embeddings") \
        or raw.get("max_position_embeddings")
    if not original:
        raise ConfigError(f"{source}: {field} rope_type='llama3' needs 'original_max_position_embeddings', which is missing")
    original = _integer(original, source, "original_max_position_embeddings", minimum=1)
    return theta, RopeScaling("llama3", factor, low, high, original)


def _rope_scaling_dict(scaling: RopeScaling | None) -> dict[str, Any] | None:
    """The transformers `rope_scaling` block (without rope_theta) for a scaling, None for plain RoPE."""
    if scaling is None:
        return None
    if scaling.kind == "linear":
        return {"rope_type": "linear", "factor": scaling.factor}
    return {
        "rope_type": "llama3",
        "factor": scaling.factor,
        "low_freq_factor": scaling.low_freq_factor,
        "high_freq_factor": scaling.high_freq_factor,
        "original_max_position_embeddings": scaling.original_max_position_embeddings,
    }


def _refuse_sliding_window(raw: dict[str, Any], source: str, num_layers: int) -> None:
    layer_types = raw.get("layer_types")
    if layer_types and not (isinstance(layer_types, list) and all(isinstance(t, str) for t in layer_types)):
        raise ConfigError(f"{source}: layer_types: expected a list of attention kinds, got {shown(layer_types)}")
    if layer_types:
        sliding = [i for i, t in enumerate(layer_types) if t != "full_attention"]
        if sliding:
            raise ConfigError(
                f"{source}: layer_types marks layers {sliding} as {layer_types[sliding[0]]!r}; only full attention is supported"
            )
    if _flag(raw, "use_sliding_window", source) and raw.get("sliding_window"):
        first_sliding = _integer(raw.get("max_window_layers", 0), source, "max_window_layers", minimum=0)
        if first_sliding < num_layers:
            raise ConfigError(
                f"{source}: use_sliding_window=true with max_window_layers={first_sliding} < num_hidden_layers="
                f"{num_layers} puts sliding-window attention in use; it is not supported"
            )


def _refuse_mistral_sliding_window(raw: dict[str, Any], source: str, max_positions: int) -> None:
    """Mistral attends within `sliding_window` tokens whenever it is set (no use_sliding_window switch);
    a window of at least max_position_embeddings never binds, and is accepted as full attention."""
    _refuse_sliding_window({"layer_types": raw.get("layer_types")}, source, 0)
    window = raw.get("sliding_window")
    if window is not None and _integer(window, source, "sliding_window", minimum=1) < max_positions:
        raise ConfigError(
            f"{source}: sliding_window={window} < max_position_embeddings={max_positions} puts sliding-window "
            f"attention in use; it is not supported (only sliding_window: null)"
        )
