"""`diabetica-jax train`: build everything from the config, restore if a checkpoint exists, run the steps."""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
from pathlib import Path
from typing import Any

import jax
from flax import nnx

from diabetica_jax import hf
from diabetica_jax.configuration import build, to_dict
from diabetica_jax.train.global_batch import local_rows, to_global
from diabetica_jax.train.feed import count_steps, make_feed
from diabetica_jax.model import QwenConfig, create_model
from diabetica_jax.model.lora import add_lora
from diabetica_jax.parallel import make_mesh
from diabetica_jax.train.checkpoint import CheckpointError, Checkpoints, param_shapes
from diabetica_jax.train.config import TrainConfig, check_against_devices
from diabetica_jax.train.flops import peak_flops_per_device, train_flops_per_token
from diabetica_jax.train.metrics import MetricsLogger
from diabetica_jax.train.optimizer import build_optimizer
from diabetica_jax.train.state import (
    abstract_state, init_state, split_trainable, state_shardings, trainable_shardings,
)
from diabetica_jax.train.step import batch_sharding, make_train_step

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    final_step: int
    preempted: bool
    history: list[dict[str, Any]]
    data_exhausted: bool = False


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


class _Preemption:
    """Turns SIGTERM into a flag the loop checks after each step (then it checkpoints and stops)."""

    def __init__(self):
        self.requested = False
        self.previous = None

    def __enter__(self):
        try:
            self.previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no handler, no preemption saves
            self.previous = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


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


def train(cfg: TrainConfig, run_dir: str | Path, progress: bool = True, stop_after: int | None = None) -> TrainResult:
    """Train to cfg.loop.steps (or `stop_after` more steps), resuming from RUN_DIR/checkpoints if present."""
    run_dir = Path(run_dir)
    check_against_devices(cfg, jax.device_count(), jax.process_count())
    mesh = make_mesh(cfg.mesh.sizes())
    if cfg.loop.steps == -1:  # as many steps as the epochs of data fill; the schedule spans exactly them
        shape = (cfg.data.grad_accum, cfg.micro_batch, cfg.data.seq_len)
        steps = count_steps(cfg, local_rows(batch_sharding(mesh), shape))
        log.info("data.epochs=%d of %s fill %d steps", cfg.data.epochs, cfg.data.path, steps)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=steps))
    writer = jax.process_index() == 0
    if writer:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "train_config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")

    with jax.set_mesh(mesh):
        setup = prepare(cfg, mesh)
        checkpoints = Checkpoints(run_dir / "checkpoints", keep=cfg.loop.keep_checkpoints,
                                  async_save=cfg.loop.async_checkpoint)
        start = checkpoints.latest_step()
        resumed = start is not None
        if not resumed:
            state, start = init_state(setup.params, setup.optimizer, cfg.model.seed, setup.shardings), 0
        else:
            state, _ = checkpoints.restore(start, setup.restore_target(), setup.meta)
            log.info("resumed from %s at step %d", checkpoints.directory, start)
        setup.params = None  # the state owns (and donates) them from here on

        step_fn = make_train_step(setup.graphdef, setup.optimizer, setup.schedule, loss_chunk=cfg.loop.loss_chunk,
                                  dropout=cfg.lora.dropout > 0, shardings=setup.shardings,
                                  frozen_shardings=setup.frozen_sharding, batch_sharding=batch_sharding(mesh))
        global_shape = (cfg.data.grad_accum, cfg.micro_batch, cfg.data.seq_len)
        feed = make_feed(cfg, local_rows(batch_sharding(mesh), global_shape), setup.model_cfg.vocab_size,
                         run_dir if writer else None)
        if resumed and feed.iterator is not None:
            checkpoints.restore_data(start, feed.iterator)
        tokens_per_step = cfg.data.global_batch * cfg.data.seq_len
        flops_per_token = train_flops_per_token(setup.model_cfg, cfg.data.seq_len, lora=bool(cfg.lora.rank))
        peak = peak_flops_per_device(cfg.loop.peak_tflops)
        metrics = MetricsLogger(
            run_dir, start_step=start, total_steps=cfg.loop.steps, tokens_per_step=tokens_per_step,
            flops_per_step=tokens_per_step * flops_per_token, peak_flops=peak * jax.device_count() if peak else None,
            log_every=cfg.loop.log_every, tensorboard=cfg.loop.tensorboard, enabled=writer, progress=progress,
        )
        end = cfg.loop.steps if stop_after is None else min(cfg.loop.steps, start + stop_after)
        done = saved = start
        data_exhausted = False
        with _Preemption() as preemption:
            for step in range(start, end):
                try:
                    local = feed.next(step)
                except StopIteration:
                    data_exhausted = True
                    log.warning("the data ran out after step %d (data.epochs=%d)", done, cfg.data.epochs)
                    break
                state, step_metrics = step_fn(state, setup.frozen, to_global(local, batch_sharding(mesh), global_shape))
                metrics.push(step, step_metrics)
                done = step + 1
                if preemption.requested or done % cfg.loop.checkpoint_every == 0 or done == end:
                    checkpoints.save(done, state, setup.meta, feed.iterator)
                    saved = done
                if preemption.requested:
                    log.warning("SIGTERM: checkpoint saved at step %d, stopping", done)
                    break
        if saved != done:  # the data ended between checkpoints
            checkpoints.save(done, state, setup.meta, feed.iterator)
        metrics.close()
        checkpoints.wait()
        checkpoints.close()
    return TrainResult(run_dir, done, preemption.requested, metrics.history, data_exhausted)


def load_run_config(run_dir: str | Path) -> TrainConfig:
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
