"""RoPE in config.json: the base and scaling read from either transformers form, and written back."""

from __future__ import annotations

from typing import Any

from diabetica_jax.configuration import shown
from diabetica_jax.hf.config_values import integer, number
from diabetica_jax.model.config import ConfigError
from diabetica_jax.model.layers import RopeScaling

# RoPE variants implemented (config.json `rope_type`, or `type` in older files); others are refused.
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


def read_rope(raw: dict[str, Any], source: str) -> tuple[float, RopeScaling | None]:
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
        theta = number(params["rope_theta"], source, "rope_parameters.rope_theta")
    elif raw.get("rope_theta") is not None:
        theta = number(raw["rope_theta"], source, "rope_theta")
    elif scaling and scaling.get("rope_theta") is not None:
        theta = number(scaling["rope_theta"], source, "rope_scaling.rope_theta")
    else:
        theta = 10000.0
    if theta <= 1:  # the rotation frequencies are theta ** (-2i / head_dim): they must fall from 1, not rise or stay
        raise ConfigError(f"{source}: rope_theta: must be greater than 1 (models use 1e4 to 1e6), got {theta}")
    field, block = ("rope_scaling", scaling) if scaling else ("rope_parameters", params)
    kind = block.get("rope_type", block.get("type", "default")) if block else "default"
    if kind == "default":
        return theta, None

    def needed(key: str) -> float:
        if block.get(key) is None:
            raise ConfigError(f"{source}: {field} rope_type={shown(kind)} needs {key!r}, which is missing")
        return number(block[key], source, f"{field}.{key}")

    factor = needed("factor")
    if factor <= 0:
        raise ConfigError(f"{source}: {field} factor={factor} must be positive")
    if kind == "linear":
        return theta, RopeScaling("linear", factor)
    low, high = needed("low_freq_factor"), needed("high_freq_factor")
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
    original = integer(original, source, "original_max_position_embeddings", minimum=1)
    return theta, RopeScaling("llama3", factor, low, high, original)


def rope_scaling_dict(scaling: RopeScaling | None) -> dict[str, Any] | None:
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

