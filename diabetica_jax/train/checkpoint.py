"""Orbax checkpoints of the train state: asynchronous, keep-last-K, restorable onto any mesh.

A checkpoint step directory holds `state` (step, trainable params, optimizer state, RNG) and
`meta` (JSON: the model architecture, LoRA settings, where the frozen weights came from, the
trainable parameter shapes), and `data` (the Grain iterator state, one file per process; the same on every
process, so it restores onto another process count too). Restoring checks `meta` against the
current run first, so an incompatible checkpoint is refused with a clear message instead of
failing deep inside Orbax; restoring targets the current shardings, so the device count and mesh
may differ from the run that wrote it. Orbax writes each step to a temporary directory and commits
it by rename; old steps are deleted only after a newer one is committed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from diabetica_jax.train.state import TrainState

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A training checkpoint or run directory that cannot be used; the message names the directory and why."""


def _as_tree(state: TrainState) -> dict:
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state, "rng": state.rng}


def _from_tree(tree: dict) -> TrainState:
    return TrainState(**tree)


def param_shapes(params: dict) -> dict[str, list[int]]:
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {"/".join(str(getattr(k, "key", k)) for k in path): list(x.shape) for path, x in flat}


class Checkpoints:
    def __init__(self, directory: str | Path, keep: int = 3, async_save: bool = True):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta", "data"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: TrainState, meta: dict[str, Any], data_iterator=None) -> None:
        """Start saving (returns while the write goes on when asynchronous). With a Grain iterator, its
        state as of now is saved too (one file per process)."""
        items = {"state": ocp.args.StandardSave(_as_tree(state)), "meta": ocp.args.JsonSave(meta)}
        if data_iterator is not None:
            import grain

            from diabetica_jax.data.loader import FrozenIteratorState

            items["data"] = grain.checkpoint.CheckpointSave(FrozenIteratorState(data_iterator.get_state()))
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore_data(self, step: int, data_iterator) -> None:
        """Put a Grain iterator back where it was when `step` was saved, also when another number of processes
        saved it. Grain writes one state file per process (`data/process_I-of-N.json`); the plans of
        data/loader.py make the state (the next global batch index) the same on every process, so this
        process's own file is read when the process count is unchanged, and otherwise any of them, after
        checking they all agree (states that differ cannot be moved to another process count)."""
        directory = self.directory / str(step) / "data"
        index, count = jax.process_index(), jax.process_count()
        own = directory / f"process_{index}-of-{count}.json"
        try:
            if own.is_file():
                text = own.read_text()
            else:
                states = {p.name: p.read_text() for p in sorted(directory.glob("process_*-of-*.json"))}
                if not states:
                    raise CheckpointError(f"{directory}: no data iterator state (process_*-of-*.json) to restore")
                if len(set(states.values())) > 1:
                    raise CheckpointError(
                        f"{directory}: the data iterator states of the {len(states)} processes that saved it "
                        f"differ ({', '.join(states)}), so they cannot be restored onto {count} process(es); "
                        "resume with the process count that saved it")
                text = next(iter(states.values()))
                log.info("data iterator state of %s restored onto %d process(es)", next(iter(states)), count)
            data_iterator.set_state(json.loads(text))
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"{directory}: cannot restore the data iterator ({type(e).__name__}: {e}); a "
                                  "checkpoint from before the data plans of data/loader.py cannot resume its data "
                                  "position") from e
        if hasattr(data_iterator, "start_prefetch"):
            data_iterator.start_prefetch()

    def read_meta(self, step: int) -> dict[str, Any]:
        try:
            return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as e:  # Orbax raises many types for missing or damaged files
            raise CheckpointError(f"{self.directory / str(step)}: cannot read checkpoint metadata ({e})") from e

    def restore(self, step: int, target: TrainState, expected: dict[str, Any]) -> tuple[TrainState, dict[str, Any]]:
        """State of `step`, laid out as `target` (abstract arrays with shardings) says."""
        meta = self.read_meta(step)
        where = self.directory / str(step)
        for key in ("model", "lora", "frozen_source", "trainable"):
            if meta.get(key) != expected.get(key):
                raise CheckpointError(
                    f"{where}: incompatible checkpoint: its {key!r} is {_short(meta.get(key))} but this run has "
                    f"{_short(expected.get(key))}"
                )
        try:
            restored = self.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(_as_tree(target)))
            )["state"]
        except Exception as e:
            raise CheckpointError(f"{where}: checkpoint is damaged or unreadable ({type(e).__name__}: {e})") from e
        # Orbax hands back plain containers; put the leaves back into the target's exact structure
        # (optax state classes, the TrainState dataclass) so the compiled step accepts them.
        leaves = jax.tree.leaves(restored)
        return _from_tree(jax.tree.unflatten(jax.tree.structure(_as_tree(target)), leaves)), meta

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


class CheckpointHooks:
    """Saving as train loop hooks (train/loop.py): `on_step` every N steps, and `on_end` once the loop
    stops for any reason (last step, data ran out, preemption), unless that step is saved already."""

    def __init__(self, checkpoints: Checkpoints, meta: dict[str, Any], data_iterator, saved: int):
        self.checkpoints, self.meta, self.data_iterator = checkpoints, meta, data_iterator
        self.saved = saved  # the step of the newest checkpoint (the one resumed from)

    def on_step(self, info) -> None:
        self.checkpoints.save(info.step, info.state, self.meta, self.data_iterator)
        self.saved = info.step

    def on_end(self, info) -> None:
        if info.step != self.saved:
            self.on_step(info)


def _short(value: Any, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
