"""Model assembly for training: the model from the config, split into what trains and what stays frozen, and the
train step's settings the config decides."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from diabetica_jax import hf
from diabetica_jax.configuration import ConfigFileError, build, to_dict, upgrade_renamed_keys
from diabetica_jax.hf.peft_adapter import load_adapter, read_adapter_config
from diabetica_jax.hf.run_directories import RUN_CONFIG_FILE
from diabetica_jax.model import QwenConfig, create_model
from diabetica_jax.model.factory import abstract_model
from diabetica_jax.model.lora import add_lora, merge_lora
from diabetica_jax.model.lora_config import NO_LORA
from diabetica_jax.parallel.rules import use_rules
from diabetica_jax.train.checkpoint import CheckpointError, Checkpoints, param_shapes
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
    """The model's architecture (from the HF checkpoint or preset) and a description of where its initial
    weights come from; how it computes and which adapters it adds are `cfg.model.runtime` and `cfg.lora`."""
    if cfg.model.path:
        model_cfg = hf.read_config(cfg.model.path)
        # checkpoints record this as `hf_path` (the key's old name): kept, so that older ones still restore
        source = {"hf_path": str(Path(cfg.model.path).absolute())}
    else:
        model_cfg = hf.preset_config(cfg.model.preset)
        source = {"preset": cfg.model.preset, "seed": cfg.model.seed}
    return model_cfg, source


def read_train_config(run_dir: str | Path) -> TrainConfig:
    """The config a run was trained with (RUN_DIR/train_config.json, written when training starts). A run
    written before keys were renamed (model.hf_path, model.dtype, ...) is read with their new names."""
    path = Path(run_dir) / RUN_CONFIG_FILE
    if not Path(run_dir).is_dir():
        raise CheckpointError(f"{run_dir}: run directory not found")
    if not path.is_file():
        raise CheckpointError(f"{path}: not found; is {run_dir} a training run directory?")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); training writes it when it starts: is {run_dir} "
                              "a training run directory?") from e
    # unknown keys and wrong types: ConfigFileError naming the key
    return build(TrainConfig, upgrade_renamed_keys(TrainConfig, data), str(path))


def restored_model(run_dir: str | Path, mesh, step: int | None = None):
    """(model, model config, step): a run's checkpoint (latest by default) on `mesh`, laid out by the run's
    sharding rules; call under jax.set_mesh."""
    cfg = read_train_config(run_dir)
    with use_rules(cfg.mesh.sharding_rules()):
        setup = prepare(cfg, mesh)
        checkpoints = Checkpoints(Path(run_dir) / "checkpoints", keep=cfg.loop.keep_checkpoints, async_save=False)
        step = checkpoints.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"{checkpoints.directory}: no checkpoint to load")
        state, _ = checkpoints.restore(step, setup.restore_target(), setup.meta)
        checkpoints.close()
    return nnx.merge(setup.graphdef, state.params, setup.frozen), setup.model_cfg, step


def _continued_model(cfg: TrainConfig, model_cfg: QwenConfig, mesh):
    """The model a stage starts from when it continues another run (model.init_from): that run's weights in this
    run's runtime settings, its adapters folded in (merged) or kept training (unmerged), and where they came from."""
    previous, previous_cfg, step = restored_model(cfg.model.init_from, mesh)
    source = {"init_from": str(Path(cfg.model.init_from).absolute()), "step": step, "lora": None}
    where = f"model.init_from {cfg.model.init_from}"
    if previous_cfg != model_cfg:
        raise ConfigFileError(f"{where}: that run trained a different architecture than model.preset/path names")
    old = previous.lora
    keep_adapters = old.rank and cfg.model.init_lora == "unmerged"
    if keep_adapters:
        if not cfg.lora.continues(old):
            raise ConfigFileError(
                f"{where}: init_lora unmerged continues its adapters (rank {old.rank}, alpha {old.alpha}, targets "
                f"{list(old.targets)}); set the same lora section")
        source["lora"] = "unmerged"
        weights, lora = previous, cfg.lora
    else:
        if old.rank:
            source["lora"] = "merged"
        weights, lora = merge_lora(previous), NO_LORA
    # this run's runtime (dtype, attention, remat) on the previous run's values
    runtime = cfg.model.runtime
    graphdef, _ = nnx.split(abstract_model(model_cfg, runtime, lora))
    dtype = jnp.dtype(runtime.param_dtype)
    state = jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                         nnx.state(weights))
    model = nnx.merge(graphdef, state)
    if cfg.lora.rank and not keep_adapters:
        model = add_lora(model, cfg.lora, mesh=mesh, seed=cfg.model.seed)
    return model, source


def build_model(cfg: TrainConfig, mesh):
    """The model to train: an HF checkpoint, a seeded random preset or another run's checkpoint (model.init_from),
    plus LoRA adapters if asked."""
    model_cfg, source = model_config(cfg)
    if cfg.lora.init_from:
        _check_adapter(cfg)  # before any weight is read
    if cfg.model.init_from:
        model, source = _continued_model(cfg, model_cfg, mesh)
        return model, model_cfg, source
    if cfg.model.path:
        model, _ = hf.load(cfg.model.path, mesh=mesh, runtime=cfg.model.runtime)
    else:
        model = create_model(model_cfg, cfg.model.runtime, mesh=mesh, seed=cfg.model.seed)
    if cfg.lora.init_from:
        model = load_adapter(model, model_cfg, cfg.lora.init_from, mesh, lora=cfg.lora)
        source["lora"] = f"adapter {cfg.lora.init_from}"
    elif cfg.lora.rank:
        model = add_lora(model, cfg.lora, mesh=mesh, seed=cfg.model.seed)
    return model, model_cfg, source


def _check_adapter(cfg: TrainConfig) -> None:
    """lora.init_from's adapter fits this run's lora section: the same rank, alpha and targets."""
    adapter = read_adapter_config(cfg.lora.init_from)
    if not cfg.lora.continues(adapter):
        raise ConfigFileError(f"lora.init_from: the adapter in {cfg.lora.init_from} has rank {adapter.rank}, alpha "
                              f"{adapter.alpha}, targets {list(adapter.targets)}; set this run's lora section to "
                              f"them (it has {cfg.lora.rank}, {cfg.lora.alpha}, {list(cfg.lora.targets)})")


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


def step_settings(cfg: TrainConfig) -> dict[str, Any]:
    """The keyword settings of train.step.make_train_step that come from the config: the loss chunk, dropout, and
    what attention is told of the rows' documents."""
    # packing none on curated data: one example per row, padding after it (synthetic rows always hold two documents)
    one_document_rows = cfg.data.source == "curated" and cfg.data.packing == "none"
    return {"loss_chunk": cfg.loop.loss_chunk, "dropout": cfg.lora.dropout > 0, "one_document_rows": one_document_rows,
            "max_segments": None if one_document_rows else cfg.data.max_segments_per_row}


def prepare(cfg: TrainConfig, mesh) -> Setup:
    model, model_cfg, source = build_model(cfg, mesh)
    graphdef, params, frozen, trainable_filter = split_trainable(model)
    params_sharding, frozen_sharding = trainable_shardings(model, mesh, trainable_filter)
    optimizer, schedule = build_optimizer(cfg.optim, cfg.loop.steps)
    meta = {"model": hf.config_to_dict(model_cfg), "lora": to_dict(cfg.lora) if cfg.lora.rank else None,
            "frozen_source": source if cfg.lora.rank else None, "trainable": param_shapes(params)}
    if cfg.model.init_from and not cfg.lora.rank:  # full fine-tuning continues a run: say from where
        meta["init"] = source
    return Setup(model_cfg, graphdef, params, frozen, frozen_sharding, optimizer, schedule,
                 state_shardings(optimizer, params, params_sharding, mesh), meta)
