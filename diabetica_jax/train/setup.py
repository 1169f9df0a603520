"""Model assembly for training: the model from the config, split into what trains and what stays frozen."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax

from diabetica_jax import hf
from diabetica_jax.configuration import to_dict
from diabetica_jax.model import QwenConfig, create_model
from diabetica_jax.model.lora import add_lora
from diabetica_jax.train.checkpoint import param_shapes
from diabetica_jax.train.config import TrainConfig
from diabetica_jax.train.optimizer import build_optimizer
from diabetica_jax.train.state import (
    abstract_state,
    init_state,
    split_trainable,
    state_shardings,
    trainable_shardings,
)


def model_config(cfg: TrainConfig) -> tuple[QwenConfig, dict]:
    """The model's config (architecture from the HF checkpoint or preset, runtime and LoRA from `cfg`)
    and a description of where its initial weights come from."""
    runtime = dict(dtype=cfg.model.dtype, param_dtype=cfg.model.param_dtype, attention=cfg.model.attention,
                   remat=cfg.model.remat)
    if cfg.model.hf_path:
        model_cfg = hf.read_config(cfg.model.hf_path, **runtime)
        source = {"hf_path": str(Path(cfg.model.hf_path).absolute())}
    else:
        model_cfg = QwenConfig.preset(cfg.model.preset, **runtime)
        source = {"preset": cfg.model.preset, "seed": cfg.model.seed}
    if cfg.lora.rank:
        model_cfg = model_cfg.replace(lora_rank=cfg.lora.rank, lora_alpha=cfg.lora.alpha,
                                      lora_dropout=cfg.lora.dropout, lora_targets=tuple(cfg.lora.targets))
    return model_cfg, source


def build_model(cfg: TrainConfig, mesh):
    """The model to train: an HF checkpoint or a seeded random preset, plus LoRA adapters if asked."""
    model_cfg, source = model_config(cfg)
    base_cfg = model_cfg.without_lora()
    if cfg.model.hf_path:
        model, _ = hf.load(cfg.model.hf_path, mesh=mesh, dtype=base_cfg.dtype, param_dtype=base_cfg.param_dtype,
                           attention=base_cfg.attention, remat=base_cfg.remat)
    else:
        model = create_model(base_cfg, mesh=mesh, seed=cfg.model.seed)
    if cfg.lora.rank:
        model = add_lora(model, model_cfg, mesh=mesh, seed=cfg.model.seed)
    return model, model_cfg, source


@dataclasses.dataclass
class Setup:
    """Everything the step and the checkpoints need, derived from the config on a mesh."""

    model_cfg: QwenConfig
    graphdef: Any
    params: dict  # trainable
    frozen: dict
    frozen_sharding: dict
    optimizer: Any
    schedule: Any
    shardings: Any  # TrainState of NamedShardings
    meta: dict

    def restore_target(self):
        shapes = jax.eval_shape(lambda p: init_state(p, self.optimizer, 0, self.shardings), self.params)
        return abstract_state(shapes, self.shardings)


def prepare(cfg: TrainConfig, mesh) -> Setup:
    model, model_cfg, source = build_model(cfg, mesh)
    graphdef, params, frozen, trainable_filter = split_trainable(model)
    params_sharding, frozen_sharding = trainable_shardings(model, mesh, trainable_filter)
    optimizer, schedule = build_optimizer(cfg.optim, cfg.loop.steps)
    meta = {"model": model_cfg.to_hf_dict(), "lora": to_dict(cfg.lora) if cfg.lora.rank else None,
            "frozen_source": source if cfg.lora.rank else None, "trainable": param_shapes(params)}
    return Setup(model_cfg, graphdef, params, frozen, frozen_sharding, optimizer, schedule,
                 state_shardings(optimizer, params, params_sharding, mesh), meta)
