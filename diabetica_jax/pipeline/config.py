"""The pipeline configuration: one section per stage, each the same shape as that stage's own config."""

from __future__ import annotations

import dataclasses
from typing import Literal

from diabetica_jax.configuration import build, config_data, field
from diabetica_jax.data.curate.config import CurateConfig
from diabetica_jax.evaluation.config import EvalConfig
from diabetica_jax.model.config import COMPUTE_DTYPES
from diabetica_jax.train.config import TrainConfig


@dataclasses.dataclass(frozen=True)
class ExportSection:
    dtype: Literal[COMPUTE_DTYPES] | None = field(None, "dtype of the exported weights (default: the source checkpoint's; float32 for presets)")
    max_shard_size: str = field("5GB", "largest safetensors shard")
    verify: bool = field(True, "reload the export in transformers and compare greedy tokens with the JAX engine")
    verify_prompts: int = field(4, "prompts used by the check")
    verify_tokens: int = field(16, "new tokens compared per prompt")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    curate: CurateConfig = field(CurateConfig(demo=True), "data curation (the output feeds training)")
    train: TrainConfig = field(TrainConfig(), "training (data.source/data.path are set to the curated data)")
    eval: EvalConfig = field(EvalConfig(), "evaluation of the base and the trained model")
    eval_base: bool = field(True, "also evaluate the model before training, for comparison")
    export: ExportSection = field(ExportSection(), "Hugging Face export of the trained model")


def load_run_config(path: str | None, overrides: list[str] | None = None) -> RunConfig:
    """load_config(RunConfig, ...) with training reading the curated data, so that the train section is
    checked as the run will use it (e.g. `loop.steps: -1` counts the curated data)."""
    data, source = config_data(RunConfig, path, overrides)
    train_data = _mapping(_mapping(data, "train"), "data")
    if train_data is not None:  # otherwise build() reports the malformed section
        train_data["source"] = "curated"
        train_data.setdefault("path", "<run-dir>/data")  # replaced by the real path when the run starts
    return build(RunConfig, data, source)


def _mapping(parent: dict | None, key: str) -> dict | None:
    """parent[key] as a mapping, created when absent or left empty in the file; None when it is something else."""
    if parent is None:
        return None
    if parent.get(key) is None:
        parent[key] = {}
    return parent[key] if isinstance(parent[key], dict) else None
