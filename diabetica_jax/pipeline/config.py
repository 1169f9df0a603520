"""The pipeline configuration: one section per stage, each the same shape as that stage's own config."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Literal

from diabetica_jax.configuration import ConfigFileError, FieldError, build, config_data, field, shown, to_dict
from diabetica_jax.curate.config import CurateConfig
from diabetica_jax.evaluation.config import EvalConfig, TaskSection
from diabetica_jax.model.runtime import COMPUTE_DTYPES
from diabetica_jax.train.config import CURATED_PAIRS, TrainConfig

NAME = re.compile(r"[A-Za-z0-9_-]+")


@dataclasses.dataclass(frozen=True)
class ExportSection:
    dtype: Literal[COMPUTE_DTYPES] | None = field(None, "dtype of the exported weights (default: the source checkpoint's; float32 for presets)")
    max_shard_size: str = field("5GB", "largest safetensors shard")
    verify: bool = field(True, "reload the export in transformers and compare greedy tokens with the JAX engine")
    verify_prompts: int = field(4, "prompts used by the check")
    verify_tokens: int = field(16, "new tokens compared per prompt")


@dataclasses.dataclass(frozen=True)
class StageSection:
    name: str = field("", "the stage's name; its run directory is RUN_DIR/train-NAME")
    train: dict[str, Any] = field({}, "the settings of this stage that differ from the `train` section (same "
                                  "keys, e.g. {data: {kinds: [passage], loss_on: all}, optim: {lr: 1e-4}})")
    lora_from_previous: Literal["merged", "unmerged"] = field(
        "merged", "a LoRA previous stage: fold its adapters into the weights this stage starts from, or keep "
        "training them (unmerged: same rank, alpha and targets)")
    eval: bool = field(False, "evaluate the model after this stage too (the last stage always is)")

    def __post_init__(self):
        if not NAME.fullmatch(self.name):
            raise FieldError("name", f"{shown(self.name)}: letters, digits, '-' and '_' only (it names a folder)")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    curate: CurateConfig = field(CurateConfig(demo=True), "data curation (the output feeds training)")
    train: TrainConfig = field(TrainConfig(), "training (data.source/data.path are set to the curated data)")
    eval: EvalConfig = field(EvalConfig(), "evaluation of the base and the trained model")
    eval_base: bool = field(True, "also evaluate the model before training, for comparison")
    stages: list[StageSection] = field([], "training stages run in order, each starting from the previous one's "
                                       "weights (empty: one stage, the train section as it is)")
    general: list[TaskSection] = field([], "general-domain tasks evaluated before training and after every stage, "
                                       "to measure forgetting (e.g. [{task: mcq, files: [embedded:mini_general_mcq.csv]}])")
    export: ExportSection = field(ExportSection(), "Hugging Face export of the trained model")


def load_run_config(path: str | None, overrides: list[str] | None = None) -> RunConfig:
    """load_config(RunConfig, ...) with training reading the curated data, so that the train section is
    checked as the run will use it (e.g. `loop.steps: -1` counts the curated data). Every stage's
    training config is built here too, so a bad stage fails before any work starts."""
    data, source = config_data(RunConfig, path, overrides)
    train_data = _mapping(_mapping(data, "train"), "data")
    if train_data is not None:  # otherwise build() reports the malformed section
        train_data["source"] = "curated"
        train_data.setdefault("path", "<run-dir>/data")  # replaced by the real path when the run starts
    cfg = build(RunConfig, data, source)
    names = [s.name for s in cfg.stages]
    if len(set(names)) != len(names):
        raise ConfigFileError(f"{source}: stages: two stages named {sorted({n for n in names if names.count(n) > 1})}")
    for i in range(len(cfg.stages)):
        stage_train_config(cfg, i, "<run-dir>/previous-stage" if i else None, source)
    return cfg


def stage_inputs(train_cfg: TrainConfig, key: str, curated_pairs: bool = False) -> list[Path]:
    """The files a training stage reads besides the curated data (a DPO stage's pairs, a GRPO stage's items);
    one that is missing is a ConfigFileError naming `key` (the stage's train section), before any work.
    `preference.pairs: curated` reads what the curate stage writes (its digest covers them): it needs the
    curate section's pairs stage on (`curated_pairs`)."""
    named = {"dpo": ("preference.pairs", train_cfg.preference.pairs), "grpo": ("grpo.items", train_cfg.grpo.items)}
    if train_cfg.method not in named:
        return []
    if train_cfg.method == "dpo" and train_cfg.preference.pairs == CURATED_PAIRS:
        if not curated_pairs:
            raise ConfigFileError(f"{key}.preference.pairs: {CURATED_PAIRS} reads the curated pairs, but "
                                  "curate.pairs.backend is none: set it (and curate.pairs.model) to the base model")
        return []
    field_name, path = named[train_cfg.method]
    if not Path(path).is_file():
        raise ConfigFileError(f"{key}.{field_name}: {path} not found")
    return [Path(path)]


def stage_train_config(cfg: RunConfig, index: int, previous: str | None, source: str = "config") -> TrainConfig:
    """Stage `index`'s training config: the train section with the stage's settings on top, continuing from
    the run directory `previous` (the stage before; None for the first)."""
    stage = cfg.stages[index]
    merged = _deep_merge(to_dict(cfg.train), stage.train)
    merged.setdefault("model", {})
    if previous is not None:
        merged["model"]["init_from"], merged["model"]["init_lora"] = previous, stage.lora_from_previous
    return build(TrainConfig, merged, source, prefix=f"stages[{index}].train.")


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _deep_merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) \
            else value
    return out


def _mapping(parent: dict | None, key: str) -> dict | None:
    """parent[key] as a mapping, created when absent or left empty in the file; None when it is something else."""
    if parent is None:
        return None
    if parent.get(key) is None:
        parent[key] = {}
    return parent[key] if isinstance(parent[key], dict) else None
