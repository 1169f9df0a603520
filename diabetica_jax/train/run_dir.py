"""Reading a training run directory (finished or partial): its config and the model of a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import jax
from flax import nnx

from diabetica_jax.configuration import build
from diabetica_jax.parallel import make_mesh
from diabetica_jax.train.checkpoint import CheckpointError, Checkpoints
from diabetica_jax.train.config import TrainConfig
from diabetica_jax.train.setup import prepare


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The config the run was trained with (RUN_DIR/train_config.json, written when training starts)."""
    path = Path(run_dir) / "train_config.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: not found; is {run_dir} a training run directory?")
    return build(TrainConfig, json.loads(path.read_text()), str(path))


def trained_model(run_dir: str | Path, step: int | None = None):
    """(model, model config, step) as of a run's checkpoint (latest by default), on all local devices."""
    cfg = load_run_config(run_dir)
    mesh = make_mesh({"fsdp": -1})
    with jax.set_mesh(mesh):
        setup = prepare(cfg, mesh)
        checkpoints = Checkpoints(Path(run_dir) / "checkpoints", keep=cfg.loop.keep_checkpoints, async_save=False)
        step = checkpoints.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"{checkpoints.directory}: no checkpoint to load")
        state, _ = checkpoints.restore(step, setup.restore_target(), setup.meta)
        checkpoints.close()
    return nnx.merge(setup.graphdef, state.params, setup.frozen), setup.model_cfg, step
