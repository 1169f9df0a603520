"""Orbax checkpoints of the train state: asynchronous, keep-last-K, restorable onto any mesh.

A checkpoint step directory holds `state` (step, trainable params, optimizer state, RNG) and
`meta` (JSON: the model architecture, LoRA settings, where the frozen weights came from, the
trainable parameter shapes), and `data` (the Grain iterator state, one file per process; the same on every
process, so it restores onto another process count too). Restoring checks `meta` against the
current run first, so an incompatible checkpoint is refused with a clear message instead of
failing deep inside Orbax; restoring targets the current shardings, so the device count and mesh
may differ from the run that wrote it. Orbax writes each step to a temporary directory and commits
it by rename; old steps are deleted only after a newer one is committed, and the temporary directories a
killed save leaves behind are removed when the next run opens the directory.

A damaged checkpoint (a truncated or deleted file, unreadable metadata or data state) is never trained over:
`restore_newest_readable` falls back to the newest step that restores, and the caller moves the damaged
steps aside (`set_aside`, into RUN/damaged_checkpoints/) with a warning naming both, so a later save of the
same step number cannot replace them silently. When no step restores, it stops before any work and says
what to do.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import logging
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from diabetica_jax.errors import RunFailure, UserError
from diabetica_jax.train.state import TrainState

log = logging.getLogger(__name__)


class CheckpointError(UserError, ValueError):
    """A training checkpoint or run directory that cannot be used; the message names the directory and why."""


class DamagedCheckpoint(CheckpointError):
    """A checkpoint step whose files cannot be read back (as opposed to one written by another model)."""

    def __init__(self, step: int, message: str):
        super().__init__(message)
        self.step = step


class CheckpointSaveError(RunFailure):
    """Saving a checkpoint failed (a full disk, a lost mount); the run stops, the older checkpoints stay."""


def _first_line(error: BaseException, limit: int = 200) -> str:
    """`Type: first line` of an error: TensorStore and Orbax errors run to many lines of internals."""
    lines = str(error).strip().splitlines()
    text = lines[0].split(" See full TensorStore details")[0] if lines else ""
    text = text if len(text) <= limit else text[:limit] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


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
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True,
                                               cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta", "data"))
        self._saving: int | None = None  # the step of the newest save started (an asynchronous one may fail later)

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
        self.wait()  # Orbax would wait for the previous save anyway; its failure is named after its own step
        self._saving = step
        try:
            self.manager.save(step, args=ocp.args.Composite(**items), force=True)
        except Exception as e:  # a full disk, a lost mount: also an earlier asynchronous save failing now
            raise self._save_failed(step, e) from e

    def _save_failed(self, step: int | None, error: BaseException) -> CheckpointSaveError:
        self.manager.reload()
        readable = [s for s in self.manager.all_steps() if s != step]
        action = "free space" if _disk_full(error) else "fix the cause"
        kept = (f"the checkpoint of step {max(readable)} is kept; {action} and rerun to resume from it"
                if readable else f"no earlier checkpoint exists; {action} and rerun")
        why = "no space left on the device" if _disk_full(error) else "it could not be written"
        return CheckpointSaveError(f"{self.directory}: saving the checkpoint of step {step} failed: {why} "
                                   f"({_first_line(error, 120)}); {kept}")

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
                    raise DamagedCheckpoint(step, f"{directory}: no data iterator state (process_*-of-*.json) "
                                                  "to restore")
                if len(set(states.values())) > 1:
                    raise CheckpointError(
                        f"{directory}: the data iterator states of the {len(states)} processes that saved it "
                        f"differ ({', '.join(states)}), so they cannot be restored onto {count} process(es); "
                        "resume with the process count that saved it")
                text = next(iter(states.values()))
                log.info("data iterator state of %s restored onto %d process(es)", next(iter(states)), count)
            try:
                state = json.loads(text)
            except ValueError as e:
                raise DamagedCheckpoint(step, f"{directory}: the data iterator state is not JSON ({e})") from e
            data_iterator.set_state(state)
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
            raise DamagedCheckpoint(step, f"{self.directory / str(step)}: cannot read the checkpoint's metadata "
                                          f"({_first_line(e)})") from e

    def restore(self, step: int, target: TrainState, expected: dict[str, Any]) -> tuple[TrainState, dict[str, Any]]:
        """State of `step`, laid out as `target` (abstract arrays with shardings) says."""
        meta = self.read_meta(step)
        where = self.directory / str(step)
        for key in ("model", "lora", "frozen_source", "trainable"):
            if meta.get(key) != expected.get(key):
                raise CheckpointError(
                    f"{where}: incompatible checkpoint: its {key!r} is {_short(meta.get(key))} but this run has "
                    f"{_short(expected.get(key))}; train into a new --run-dir, or use that run's config"
                )
        try:
            restored = self.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(_as_tree(target)))
            )["state"]
        except Exception as e:
            raise DamagedCheckpoint(step, f"{where}: checkpoint is damaged or unreadable ({_first_line(e)})") from e
        # Orbax hands back plain containers; put the leaves back into the target's exact structure
        # (optax state classes, the TrainState dataclass) so the compiled step accepts them.
        leaves = jax.tree.leaves(restored)
        return _from_tree(jax.tree.unflatten(jax.tree.structure(_as_tree(target)), leaves)), meta

    def restore_newest_readable(self, target: TrainState, expected: dict[str, Any], data_iterator=None
                                ) -> tuple[TrainState | None, int | None, list[DamagedCheckpoint]]:
        """(state, step, damaged): the newest step whose state (and data iterator state, with an iterator)
        restores, and the newer steps that were damaged; (None, None, []) when there is no checkpoint.
        A checkpoint of another model stops at once (CheckpointError); when every step is damaged, a
        CheckpointError says which and what to do."""
        damaged: list[DamagedCheckpoint] = []
        with _quiet_leftovers_of_failed_reads():
            for step in sorted(self.all_steps(), reverse=True):
                try:
                    state, _ = self.restore(step, target, expected)
                    if data_iterator is not None:
                        self.restore_data(step, data_iterator)
                    return state, step, damaged
                except DamagedCheckpoint as e:
                    log.warning("%s", e)
                    # a fresh error without the traceback, which holds Orbax's pending reads alive
                    damaged.append(DamagedCheckpoint(e.step, str(e)))
        if damaged:
            steps = ", ".join(str(d.step) for d in damaged)
            raise CheckpointError(
                f"{self.directory}: no checkpoint can be read back (step{'s' * (len(damaged) > 1)} {steps} damaged; "
                f"newest: {damaged[0]}); restore the directory from a backup, or move it away to train from the "
                "start")
        return None, None, damaged

    def set_aside(self, steps: list[int]) -> Path | None:
        """Move damaged step directories to RUN/damaged_checkpoints/STEP-TIME (process 0; call on every process),
        so that saving the same step again cannot replace them; the folder they went to."""
        if not steps:
            return None
        self.wait()
        aside = self.directory.parent / "damaged_checkpoints"
        stamp = time.strftime("%Y%m%d-%H%M%S")
        if jax.process_index() == 0:
            aside.mkdir(exist_ok=True)
            for step in steps:
                shutil.move(str(self.directory / str(step)), str(aside / f"{step}-{stamp}"))
        _barrier("diabetica_jax_checkpoints_set_aside")
        self.manager.reload()
        return aside / f"{steps[0]}-{stamp}" if len(steps) == 1 else aside

    def wait(self) -> None:
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # the asynchronous write of the last save failed
            raise self._save_failed(self._saving, e) from e

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


def _disk_full(error: BaseException) -> bool:
    """ENOSPC anywhere in the chain, or TensorStore's word for it."""
    while error is not None:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if "RESOURCE_EXHAUSTED" in str(error) or "No space left" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def quiet_orbax_leftovers(unraisable) -> None:
    """A `sys.unraisablehook`: a failed Orbax read or write leaves coroutines and futures that raise again when
    they are collected ("Exception ignored in ...", with the whole TensorStore spec, hundreds of lines); those
    (raised in Orbax or asyncio code) go to DEBUG, since the failure itself is reported once where it happened.
    Anything else is reported as Python would."""
    frames = traceback.extract_tb(unraisable.exc_traceback) if unraisable.exc_traceback else []
    if any("orbax" in f.filename or "asyncio" in f.filename for f in frames):
        log.debug("left over from a failed checkpoint read or write: %s", _first_line(unraisable.exc_value))
    else:
        sys.__unraisablehook__(unraisable)


@contextlib.contextmanager
def _quiet_leftovers_of_failed_reads():
    """`quiet_orbax_leftovers` while restores are tried, collecting what failed ones left before it goes."""
    previous, sys.unraisablehook = sys.unraisablehook, quiet_orbax_leftovers
    try:
        yield
    finally:
        gc.collect()
        sys.unraisablehook = previous


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _short(value: Any, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
