"""Model presets: named shapes in diabetica_jax/presets/NAME.yaml (also reachable as configs/models/), written in
config.json's form, so they are read through the same checks as a checkpoint's config.json."""

from __future__ import annotations

from pathlib import Path

import yaml

from diabetica_jax.hf.config_json import config_from_dict
from diabetica_jax.model.config import ConfigError, QwenConfig

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"


def preset_config(name: str) -> QwenConfig:
    """The model config (architecture) of preset `name`."""
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown model preset {name!r}; known: {list_presets()}")
    return config_from_dict(yaml.safe_load(path.read_text(encoding="utf-8")), source=str(path))


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
