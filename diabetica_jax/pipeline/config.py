"""The pipeline configuration: one section per stage, each the same shape as that stage's own config."""

from __future__ import annotations

import dataclasses
from typing import Literal

from diabetica_jax.configuration import apply_overrides, build, field, load_yaml
from diabetica_jax.data.curate.config import CurateConfig, validate_curate
from diabetica_jax.evaluation.config import EvalConfig, validate_eval
from diabetica_jax.train.config import TrainConfig, validate_train


@dataclasses.dataclass(frozen=True)
class ExportSection:
    dtype: Literal["float32", "bfloat16"] = field("bfloat16", "dtype of the exported weights")
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
    data = load_yaml(path) if path else {}
    source = str(path) if path else "defaults"
    if overrides:
        data = apply_overrides(data, overrides)
        source += " + overrides"
    train = data.setdefault("train", {}) or {}
    data["train"] = train
    train.setdefault("data", {})
    train["data"]["source"] = "curated"
    train["data"].setdefault("path", "<run-dir>/data")  # replaced by the real path when the run starts
    cfg = build(RunConfig, data, source)
    validate_curate(cfg.curate, f"{source}: curate")
    validate_train(cfg.train, f"{source}: train")
    validate_eval(cfg.eval, f"{source}: eval")
    return cfg
