"""The evaluation suite configuration (`diabetica-jax eval CONFIG`), as eval/*.yaml files write it."""

from __future__ import annotations

import dataclasses
from typing import Literal

from diabetica_jax.configuration import ConfigFileError, apply_overrides, build, field, load_yaml
from diabetica_jax.llm.config import BackendSection


@dataclasses.dataclass(frozen=True)
class TaskSection:
    task: Literal["mcq", "cloze", "dialog"] = field("mcq", "which Diabetica task")
    files: list[str] = field([], "benchmark files (relative to data_dir; 'embedded:NAME' for the mini benchmarks)")
    limit: int | None = field(None, "evaluate only the first N items of each file")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    model: str | None = field(None, "Hugging Face checkpoint directory to evaluate")
    preset: str = field("tiny", "model preset with random weights when no model is given")
    name: str | None = field(None, "name of this run in reports (default: the model directory's name)")
    mode: Literal["own", "faithful"] = field("own", "own prompts, or the protocol file's (faithful)")
    protocol: str | None = field(None, "protocol file (layout of Diabetica's protocol.json) for faithful mode")
    data_dir: str | None = field(None, "directory that relative benchmark paths are read from")
    tasks: list[TaskSection] = field([], "tasks to run")
    judge: BackendSection = field(BackendSection(), "judge for the dialogue task")
    batch_size: int = field(16, "prompts generated together")
    dtype: Literal["float32", "bfloat16"] = field("float32", "compute dtype")
    bertscore_model: str | None = field(None, "local BERT model directory for BERTScore (cloze)")


def load_eval_config(path: str | None, overrides: list[str] | None = None) -> EvalConfig:
    data = load_yaml(path) if path else {}
    source = str(path) if path else "defaults"
    if overrides:
        data = apply_overrides(data, overrides)
    if path and data.get("data_dir") and not str(data["data_dir"]).startswith("/"):
        from pathlib import Path

        data["data_dir"] = str((Path(path).parent / data["data_dir"]).resolve())
    cfg = build(EvalConfig, data, source)
    validate_eval(cfg, source)
    return cfg


def validate_eval(cfg: EvalConfig, source: str, need_tasks: bool = True) -> None:
    if need_tasks and not cfg.tasks:
        raise ConfigFileError(f"{source}: no tasks to run")
    if cfg.mode == "faithful" and not cfg.protocol:
        raise ConfigFileError(f"{source}: mode faithful needs `protocol` (a protocol.json file)")
    if cfg.judge.backend != "none" and not cfg.judge.model:
        raise ConfigFileError(f"{source}: judge.model is required with judge backend {cfg.judge.backend!r}")
