"""Typed reads of config.json values: an integer where an integer belongs, true/false for a flag, a finite number.

So `"num_hidden_layers": "two"` is a ConfigError naming the file (`source`) and the key, never a crash later.
"""

from __future__ import annotations

from typing import Any

from diabetica_jax.configuration import finite_number, shown
from diabetica_jax.model.config import ConfigError


def or_default(value: Any, default: Any) -> Any:
    return default if value is None else value


def integer(value: Any, source: str, key: str, minimum: int | None = None) -> int:
    """An integer config.json value (a float with no fraction, as some writers store sizes, counts too)."""
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
        raise ConfigError(f"{source}: {key}: expected an integer, got {shown(value)}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ConfigError(f"{source}: {key}: must be at least {minimum}, got {value}")
    return value


def number(value: Any, source: str, key: str) -> float:
    """A finite numeric value (a numeric string too: PyYAML reads a preset's 1e-6, without a dot, as one)."""
    return finite_number(value, f"{source}: {key}", ConfigError)


def flag(raw: dict[str, Any], key: str, source: str) -> bool:
    """A true/false field (absent or null: false); "false" as a string is an error, not a true value."""
    value = raw.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ConfigError(f"{source}: {key}: expected true or false, got {shown(value)}")
    return value


def token_ids(raw: dict[str, Any], key: str, source: str, several: bool) -> int | list[int] | None:
    """A token id (or, where `several`, a list of them), or None."""
    value = raw.get(key)
    if value is None:
        return None
    if several and isinstance(value, list):
        return [integer(v, source, f"{key}[{i}]", minimum=0) for i, v in enumerate(value)]
    return integer(value, source, key, minimum=0)

