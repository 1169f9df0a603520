"""`diabetica-jax train`: the step loop, with metrics and checkpoints as hooks on it.

`train()` wires the pieces together (model assembly is train/setup.py, reading a run directory is
train/run_dir.py); `Trainer` only fetches batches, dispatches steps and calls its hooks, so the host
never waits for the accelerator inside the loop except where a hook chooses to (the metrics of
step k are fetched after step k+1 is dispatched).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from diabetica_jax import hf
from diabetica_jax.configuration import ConfigFileError, to_dict
from diabetica_jax.hf.run_directories import RUN_CONFIG_FILE
from diabetica_jax.hf.tokenizer import load_tokenizer
from diabetica_jax.parallel import make_mesh
from diabetica_jax.parallel.rules import use_rules
from diabetica_jax.run_lock import LOCK_FILE, hold_lock
from diabetica_jax.train.checkpoint import CheckpointHooks, Checkpoints
from diabetica_jax.train.config import TrainConfig, check_against_devices
from diabetica_jax.train.feed import count_steps, make_feed
from diabetica_jax.train.flops import peak_flops_per_device, train_flops_per_token
from diabetica_jax.train.global_batch import BatchLayout, local_rows
from diabetica_jax.train.grpo_step import make_grpo_step
from diabetica_jax.train.metrics import MetricsLogger
from diabetica_jax.train.pair_feed import PairFeed, attach_reference, load_pairs, pair_layout
from diabetica_jax.train.preemption import Preemption
from diabetica_jax.train.preference_step import make_preference_step
from diabetica_jax.train.rollouts import RolloutFeed, rollout_layout
from diabetica_jax.train.setup import model_config, prepare, step_settings
from diabetica_jax.train.state import TrainState, init_state
from diabetica_jax.train.step import batch_sharding, make_train_step
from diabetica_jax.train.trackers import Trackers, TrackingSection

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    final_step: int
    preempted: bool
    history: list[dict[str, Any]]
    data_exhausted: bool = False
    batch_shapes: list[tuple[int, int, int]] = dataclasses.field(default_factory=list)  # global shapes run (programs)


@dataclasses.dataclass
class StepInfo:
    """What hooks see after a step."""

    step: int  # optimizer steps done, this one included
    state: TrainState  # donated to the next step: use it (or start copying it) inside the hook
    metrics: dict | None  # this step's metrics as device arrays, not fetched; None if no step ran


@dataclasses.dataclass
class LoopEnd:
    state: TrainState
    step: int
    preempted: bool
    data_exhausted: bool


class Trainer:
    """The step loop. Hooks run after every N-th step (`add_hook`) and once when the loop stops for any
    reason: its last step, the data running out, or a preemption all processes agreed on (`add_end_hook`)."""

    def __init__(self, step_fn: Callable, frozen: dict, feed, to_device: Callable):
        self.step_fn, self.frozen, self.feed, self.to_device = step_fn, frozen, feed, to_device
        self._hooks: list[tuple[Callable[[StepInfo], None], int]] = []
        self._end_hooks: list[Callable[[StepInfo], None]] = []

    def add_hook(self, fn: Callable[[StepInfo], None], every: int = 1) -> None:
        self._hooks.append((fn, every))

    def add_end_hook(self, fn: Callable[[StepInfo], None]) -> None:
        self._end_hooks.append(fn)

    def run(self, state: TrainState, start: int, end: int, preemption: Preemption) -> LoopEnd:
        info = StepInfo(start, state, None)
        exhausted = False
        for step in range(start, end):
            try:  # an on-policy feed (GRPO's rollouts) samples from the state it is given
                local = self.feed.next(step, state) if getattr(self.feed, "on_policy", False) else self.feed.next(step)
            except StopIteration:
                exhausted = True
                break
            state, metrics = self.step_fn(state, self.frozen, self.to_device(local))
            info = StepInfo(step + 1, state, metrics)
            for fn, every in self._hooks:
                if info.step % every == 0:
                    fn(info)
            if preemption.agreed():
                break
        for fn in self._end_hooks:
            fn(info)
        return LoopEnd(info.state, info.step, preemption.stopping, exhausted)


def _resume(checkpoints: Checkpoints, setup, data_iterator) -> tuple[TrainState | None, int | None]:
    """The state (and data position) of the newest readable checkpoint, or (None, None) to start afresh. Newer
    damaged checkpoints are moved aside first (train/checkpoint.py), with a warning naming both steps."""
    state, step, damaged = checkpoints.restore_newest_readable(setup.restore_target(), setup.meta, data_iterator)
    if damaged:
        aside = checkpoints.set_aside([d.step for d in damaged])
        log.warning("resuming from the checkpoint of step %d instead of the damaged one%s of step %s, which %s "
                    "moved to %s (delete when no longer needed)", step, "s" * (len(damaged) > 1),
                    ", ".join(str(d.step) for d in damaged), "were" if len(damaged) > 1 else "was", aside)
    elif step is not None:
        log.info("resumed from %s at step %d", checkpoints.directory, step)
    return state, step


def _attach_reference(cfg: TrainConfig, setup, feed: PairFeed, to_device, run_dir: Path, mesh, writer: bool):
    """The reference log-probs of the pairs (train/pair_feed.py): from preference.reference, or the stage's starting
    weights, which `setup` still holds (a resumed run restores its trained state only after this)."""
    if not cfg.preference.uses_reference:
        return
    if cfg.preference.reference:
        source = f"reference {Path(cfg.preference.reference).absolute()}"

        def reference_model():
            return hf.load(cfg.preference.reference, mesh=mesh, runtime=cfg.model.runtime, progress=False)[0]
    else:
        origin = setup.meta.get("init") or setup.meta.get("frozen_source") or model_config(cfg)[1]
        source = "starting weights " + json.dumps(origin, sort_keys=True)

        def reference_model():
            return nnx.merge(setup.graphdef, setup.params, setup.frozen)
    attach_reference(feed, to_device, run_dir, reference_model, source, cfg.loop.loss_chunk, mesh, writer)


def train(cfg: TrainConfig, run_dir: str | Path, progress: bool = True, stop_after: int | None = None,
          name: str = "train") -> TrainResult:
    """Train to cfg.loop.steps (or `stop_after` more steps), resuming from RUN_DIR/checkpoints if present.
    `name` labels the progress bar (a multi-stage run's stage name). Another training in RUN_DIR at the same time
    is refused (run_lock.DirectoryInUse) before any work."""
    # each process of a multi-host job locks a file of its own (.lock, .lock.1, ...): a second job in the directory
    # is then refused in every one of its processes, not in process 0 alone while the others wait for it
    index = jax.process_index()
    # every sharding of the run (parameters, optimizer state, batches, activations) follows the run's rules
    with hold_lock(run_dir, "training", LOCK_FILE if index == 0 else f"{LOCK_FILE}.{index}"), \
            use_rules(cfg.mesh.sharding_rules()):
        return _train(cfg, Path(run_dir), progress, stop_after, name)


def _train(cfg: TrainConfig, run_dir: Path, progress: bool, stop_after: int | None, name: str) -> TrainResult:
    check_against_devices(cfg, jax.device_count(), jax.process_count())
    mesh = make_mesh(cfg.mesh.sizes())
    # the batch sharding and this process's rows are fixed for the run; the sequence length may change between
    # steps with data.packing: none (one per length bucket), and each length's global shape is worked out once
    sharding = batch_sharding(mesh)
    rows = local_rows(sharding, (cfg.data.grad_accum, cfg.micro_batch, cfg.data.seq_len))
    layout = BatchLayout(sharding, cfg.data.grad_accum, cfg.micro_batch, rows)
    writer = jax.process_index() == 0
    if writer:
        run_dir.mkdir(parents=True, exist_ok=True)
    pair_feed = rollout_feed = None
    # pairs and items are read first: loop.steps -1 counts them, and a bad file fails before any work
    if cfg.method == "dpo":
        pair_feed = PairFeed(cfg, rows, load_pairs(cfg, model_config(cfg)[0].vocab_size, run_dir if writer else None))
    elif cfg.method == "grpo":
        if jax.process_count() > 1:
            raise ConfigFileError("method grpo runs in one process (its rollouts are generated by one batcher)")
        rollout_feed = RolloutFeed(cfg, rows, load_tokenizer(cfg.model.path), model_config(cfg)[0].vocab_size,
                                   run_dir if writer else None)
    own_feed = pair_feed or rollout_feed
    if cfg.loop.steps == -1 and own_feed is not None:
        log.info("data.epochs=%d fill %d steps", cfg.data.epochs, own_feed.total_steps)
        cfg = dataclasses.replace(cfg, loop=dataclasses.replace(cfg.loop, steps=own_feed.total_steps))
    elif cfg.loop.steps == -1:  # as many steps as the epochs of data fill; the schedule spans exactly them
        steps = count_steps(cfg, rows)
        log.info("data.epochs=%d of %s fill %d steps", cfg.data.epochs, cfg.data.path, steps)
        cfg = dataclasses.replace(cfg, loop=dataclasses.replace(cfg.loop, steps=steps))

    with jax.set_mesh(mesh):
        setup = prepare(cfg, mesh)
        checkpoints = Checkpoints(run_dir / "checkpoints", keep=cfg.loop.keep_checkpoints,
                                  async_save=cfg.loop.async_checkpoint)
        frozen = setup.frozen
        if pair_feed is not None:
            feed, to_device = pair_feed, pair_layout(layout, sharding)
            _attach_reference(cfg, setup, feed, to_device, run_dir, mesh, writer)
        elif rollout_feed is not None:
            feed, to_device = rollout_feed, rollout_layout(layout, sharding)
            feed.model_of = lambda state: nnx.merge(setup.graphdef, state.params, setup.frozen)
            feed.mesh = mesh
            # the KL reference: the starting weights, which `setup` holds until the state takes them over
            frozen = (setup.frozen, jax.tree.map(jnp.copy, setup.params) if cfg.grpo.beta else None)
        else:
            feed, to_device = make_feed(cfg, rows, setup.model_cfg.vocab_size, run_dir if writer else None), layout
        state, start = _resume(checkpoints, setup, feed.iterator)
        if rollout_feed is not None:
            rollout_feed.resume_at(start or 0)
        if writer:  # only now: a run directory refused (another model's, all damaged) keeps its own config
            (run_dir / RUN_CONFIG_FILE).write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
        if state is None:
            state, start = init_state(setup.params, setup.optimizer, cfg.model.seed, setup.shardings), 0
        setup.params = None  # the state owns (and donates) them from here on

        if rollout_feed is not None:
            step_fn = make_grpo_step(setup.graphdef, setup.optimizer, setup.schedule, cfg.grpo,
                                     loss_chunk=cfg.loop.loss_chunk, dropout=cfg.lora.dropout > 0,
                                     shardings=setup.shardings, frozen_shardings=setup.frozen_sharding,
                                     batch_sharding=sharding)
        elif pair_feed is not None:
            step_fn = make_preference_step(setup.graphdef, setup.optimizer, setup.schedule, cfg.preference,
                                           loss_chunk=cfg.loop.loss_chunk, dropout=cfg.lora.dropout > 0,
                                           shardings=setup.shardings, frozen_shardings=setup.frozen_sharding,
                                           batch_sharding=sharding)
        else:
            step_fn = make_train_step(setup.graphdef, setup.optimizer, setup.schedule, shardings=setup.shardings,
                                      frozen_shardings=setup.frozen_sharding, batch_sharding=sharding,
                                      **step_settings(cfg))
        tokens_per_step = cfg.data.global_batch * cfg.data.seq_len
        flops_per_token = train_flops_per_token(setup.model_cfg, cfg.data.seq_len, lora=bool(cfg.lora.rank))
        peak = peak_flops_per_device(cfg.loop.peak_tflops)
        # W&B / MLflow (tracking.backends), on the writing process: the config once, then each logged step
        trackers = Trackers(cfg.tracking if writer else TrackingSection(), run_dir, to_dict(cfg))
        if cfg.data.source == "curated" and cfg.data.path:
            for card in ("data_card.md", "data_card.json"):
                trackers.log_file(Path(cfg.data.path) / card)
        metrics = MetricsLogger(
            run_dir, start_step=start, total_steps=cfg.loop.steps, tokens_per_step=tokens_per_step,
            flops_per_step=tokens_per_step * flops_per_token, peak_flops=peak * jax.device_count() if peak else None,
            log_every=cfg.loop.log_every, tensorboard=cfg.loop.tensorboard, enabled=writer, progress=progress,
            name=name, trackers=trackers,
        )
        saver = CheckpointHooks(checkpoints, setup.meta, feed.iterator, saved=start)

        trainer = Trainer(step_fn, frozen, feed, to_device)
        trainer.add_hook(metrics.on_step)
        trainer.add_hook(saver.on_step, every=cfg.loop.checkpoint_every)
        trainer.add_end_hook(saver.on_end)  # first: the save is a collective every process must reach
        trainer.add_end_hook(metrics.on_end)

        end = cfg.loop.steps if stop_after is None else min(cfg.loop.steps, start + stop_after)
        try:
            with Preemption(mesh) as preemption:
                outcome = trainer.run(state, start, end, preemption)
        except BaseException:
            trackers.close(failed=True)  # ended as failed (the metrics' end hook closes them on success)
            raise
        finally:
            if rollout_feed is not None:
                rollout_feed.close()
        if len(layout.shapes) > 1:
            log.info("the train step ran on %d batch shapes (one program each): %s", len(layout.shapes),
                     sorted(layout.shapes.values()))
        if outcome.data_exhausted:
            log.warning("the data ran out after step %d (data.epochs=%d)", outcome.step, cfg.data.epochs)
        if outcome.preempted:
            who = "this process" if preemption.requested else "another process"
            log.warning("SIGTERM (to %s): checkpoint saved at step %d, stopping", who, outcome.step)
        checkpoints.wait()
        checkpoints.close()
    return TrainResult(run_dir, outcome.step, outcome.preempted, metrics.history, outcome.data_exhausted,
                       sorted(layout.shapes.values()))
