"""A Hugging Face `config.json` <-> the model config (QwenConfig), with every check on the way in.

Anything the model does not implement (other RoPE scalings, sliding-window layers, MLP biases, MoE, other
activations) is refused with an error naming the file and the field, never silently ignored. Every field read is
type-checked (config_values.py), so `"num_hidden_layers": "two"` is a ConfigError naming the file and the key, and
sizes are bounded, so a damaged or hostile file is refused when it is read. Keys the model does not read are
ignored, as transformers ignores them; a required key that is missing names a close misspelling among the file's
keys, if there is one. The file written back is readable by transformers 4.x and 5.x.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from diabetica_jax.configuration import read_text_file, shown
from diabetica_jax.hf.config_values import flag, integer, number, or_default, token_ids
from diabetica_jax.hf.rope_json import read_rope, rope_scaling_dict
from diabetica_jax.model.config import ConfigError, QwenConfig

# config.json `architectures[0]` / `model_type` -> our family name (the family is also the model_type).
SUPPORTED_ARCHITECTURES = {
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
}
SUPPORTED_MODEL_TYPES = {"qwen2": "qwen2", "qwen3": "qwen3", "llama": "llama", "mistral": "mistral"}
ARCHITECTURE_OF = {family: arch for arch, family in SUPPORTED_ARCHITECTURES.items()}

# The largest a config.json size may be: far past every released model (the largest dense ones have ~128 layers,
# hidden 16-25k, vocabularies of ~260k, contexts of 10M), so that a damaged or hostile file (num_hidden_layers:
# 1000000) is refused when it is read, not after minutes of sizing a model that no memory could hold.
SIZE_LIMITS = {"vocab_size": 2**22, "hidden_size": 2**17, "intermediate_size": 2**20, "num_hidden_layers": 2**12,
               "num_attention_heads": 2**12, "num_key_value_heads": 2**12, "head_dim": 2**12,
               "max_position_embeddings": 2**24}
MAX_PARAMS = 2**41  # 2.2 trillion parameters: four times the largest dense model trained (PaLM, 540B)
MAX_RMS_NORM_EPS = 0.1  # added to a mean square of activations ~1: past this it is no longer a small guard


def config_from_dict(raw: dict[str, Any], source: str = "config.json") -> QwenConfig:
    """The model config a config.json object describes (`source` names it in errors)."""
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
        value = integer(value, source, key, minimum=1)
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

    if flag(raw, "mlp_bias", source):
        raise ConfigError(f"{source}: mlp_bias=true (biases on the MLP projections) is not supported")
    rope_theta, rope_scaling = read_rope(raw, source)
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
        qkv_bias = flag(raw, "attention_bias", source)
    rms_norm_eps = number(or_default(raw.get("rms_norm_eps"), 1e-6), source, "rms_norm_eps")
    if not 0 < rms_norm_eps <= MAX_RMS_NORM_EPS:  # <= 0 divides by zero (NaN) or by a negative (garbage)
        raise ConfigError(f"{source}: rms_norm_eps: must be in (0, {MAX_RMS_NORM_EPS}] (models use 1e-5 or "
                          f"1e-6), got {rms_norm_eps}")
    cfg = QwenConfig(
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
        tie_word_embeddings=flag(raw, "tie_word_embeddings", source),
        qkv_bias=qkv_bias,
        qk_norm=family == "qwen3",
        max_position_embeddings=max_positions,
        rope_scaling=rope_scaling,
        bos_token_id=token_ids(raw, "bos_token_id", source, several=False),
        eos_token_id=token_ids(raw, "eos_token_id", source, several=True),
        source_dtype=_source_dtype(raw),
    )
    if cfg.num_params() > MAX_PARAMS:
        raise ConfigError(f"{source}: hidden_size, intermediate_size, num_hidden_layers and vocab_size make "
                          f"{cfg.num_params():.3g} parameters, beyond any model (at most {MAX_PARAMS:.3g})")
    return cfg


def config_to_dict(cfg: QwenConfig, torch_dtype: str = "float32") -> dict[str, Any]:
    """config.json content readable by transformers 4.x (rope_theta, rope_scaling) and 5.x (rope_parameters)."""
    scaling = rope_scaling_dict(cfg.rope_scaling)
    out: dict[str, Any] = {
        "architectures": [ARCHITECTURE_OF[cfg.family]],
        "model_type": cfg.family,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": scaling,
        "rope_parameters": {"rope_type": "default", **(scaling or {}), "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "attention_dropout": 0.0,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "torch_dtype": torch_dtype,
        "dtype": torch_dtype,
        "use_cache": True,
    }
    if cfg.family in ("qwen2", "qwen3"):
        out["use_sliding_window"] = False
    out["sliding_window"] = None  # llama has none; qwen2/3 and mistral: off
    if cfg.family in ("qwen3", "llama"):
        out["attention_bias"] = cfg.qkv_bias
    if cfg.family == "llama":
        out["mlp_bias"] = False
    return out


def config_from_file(path: str | Path) -> QwenConfig:
    """The model config of a config.json file; every problem with the file is a ConfigError naming it."""
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
    return config_from_dict(raw, source=str(path))


def _source_dtype(raw: dict[str, Any]) -> str:
    """The stored weights' dtype: transformers 5 writes `dtype`, 4.x `torch_dtype` ("torch.float16"
    in some old files)."""
    value = raw.get("dtype") or raw.get("torch_dtype") or "float32"
    return str(value).removeprefix("torch.")


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
    if flag(raw, "use_sliding_window", source) and raw.get("sliding_window"):
        first_sliding = integer(raw.get("max_window_layers", 0), source, "max_window_layers", minimum=0)
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
    if window is not None and integer(window, source, "sliding_window", minimum=1) < max_positions:
        raise ConfigError(
            f"{source}: sliding_window={window} < max_position_embeddings={max_positions} puts sliding-window "
            f"attention in use; it is not supported (only sliding_window: null)"
        )
