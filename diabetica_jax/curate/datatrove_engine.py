"""engines.map_units on datatrove: one datatrove task per unit, on its local, Slurm or Ray executor.

Task `i` runs `fn(units[i])` and leaves its result in `<job dir>/results/<i>.pkl` (its traceback in
`errors/<i>.txt` when it raises); the driver reads the results back in unit order as they appear. A job
directory (`<work_dir>/datatrove/<job>`) belongs to one map_units call: results, datatrove's logs, its
completion markers and, on Slurm, the array's `slurm_logs/`.

What can go wrong and what the driver does:

* a unit raises: `UnitError` naming the unit, with its traceback (all executors);
* tasks end without a result (Slurm: `scancel`, out of time, a node lost; Ray: a task given up on; the local
  executor: a killed worker): `UnitsLost`, one line naming the units and where their logs are, as soon as
  it is known: on Slurm when `squeue` no longer lists any of the array's tasks, elsewhere when the executor
  returns; or after `timeout` seconds without a unit finishing (a task that hangs);
* a rerun with `resume=True` keeps the results already written and runs only the other units.

Executor options (`executor_options`) are the executor's own constructor arguments; `check_options` refuses
unknown ones, missing required ones and wrong types before anything is submitted.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import subprocess
import threading
import time
import traceback
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from diabetica_jax.configuration import FieldError
from diabetica_jax.errors import RunFailure

EXECUTORS = ("local", "slurm", "ray")
INSTALL = "pip install 'diabetica-jax[engine]'  (or: pip install datatrove)"
# set from engine.workers, the unit count and resume: not executor options
SET_BY_ENGINE = ("pipeline", "tasks", "workers", "logging_dir", "skip_completed", "depends", "job_id_retriever")
SQUEUE_EVERY_S = 5.0


class UnitError(RuntimeError):
    """A unit's function raised. `index` and `unit` name it; `details` is the worker's traceback."""

    def __init__(self, index: int, unit: str, details: str):
        super().__init__(index, unit, details)
        self.index, self.unit, self.details = index, unit, details

    def __str__(self) -> str:
        return f"unit {self.index} ({self.unit}) failed:\n{self.details.rstrip()}"


class UnitsLost(RunFailure):
    """Engine tasks ended (or stalled) without a result: the message names the units and their logs."""


def describe(unit: Any, limit: int = 200) -> str:
    text = repr(unit)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def require_datatrove() -> None:
    try:
        import datatrove  # noqa: F401
    except ImportError as error:
        raise ImportError(f"engine='datatrove' needs the datatrove package: {INSTALL}") from error


# ---------------------------------------------------------------- options


def executor_class(kind: str) -> type:
    if kind not in EXECUTORS:
        raise ValueError(f"unknown datatrove executor {kind!r}; choose one of {', '.join(EXECUTORS)}")
    require_datatrove()
    import datatrove.executor as executors

    return {"local": executors.LocalPipelineExecutor, "slurm": executors.SlurmPipelineExecutor,
            "ray": executors.RayPipelineExecutor}[kind]


def check_options(kind: str, options: dict[str, Any]) -> None:
    """FieldError (key `executor_options[.NAME]`) for an option the `kind` executor does not take, one it
    needs and lacks, or a value of the wrong type (YAML reads `time: 02:00:00` as the integer 7200)."""
    cls = executor_class(kind)
    import inspect

    parameters = inspect.signature(cls.__init__).parameters
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001 - an annotation that does not resolve: check names only
        hints = {}
    takes = sorted(name for name in parameters if name != "self" and name not in SET_BY_ENGINE)
    for name, value in options.items():
        if name in SET_BY_ENGINE:
            raise FieldError(f"executor_options.{name}", "is set by the engine section (engine.workers, the units, "
                                                         "the work directory); remove it")
        if name not in parameters:
            raise FieldError(f"executor_options.{name}", f"not an option of datatrove's {kind} executor; it takes: "
                                                         f"{', '.join(takes)}")
        expected = _simple_types(hints.get(name))
        if expected and (not isinstance(value, expected) or isinstance(value, bool) and bool not in expected):
            names = " or ".join(t.__name__ for t in expected)
            hint = " (quote it: YAML reads 02:00:00 as a number of seconds)" if name == "time" and kind == "slurm" else ""
            raise FieldError(f"executor_options.{name}", f"expected {names}, got {value!r}{hint}")
    missing = [name for name, p in parameters.items()
               if p.default is inspect.Parameter.empty and p.kind is p.POSITIONAL_OR_KEYWORD
               and name != "self" and name not in SET_BY_ENGINE and name not in options]
    if missing:
        example = " e.g. {partition: cpu, time: \"02:00:00\"}" if kind == "slurm" else ""
        raise FieldError("executor_options", f"datatrove's {kind} executor needs {', '.join(missing)}{example}")


def _simple_types(hint: Any) -> tuple[type, ...]:
    """The plain types a value annotated `hint` may have (int also for a float), () when not simply checkable."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    plain = []
    for option in options:
        if option is type(None):
            continue
        origin = typing.get_origin(option) or option
        if origin not in (str, int, float, bool, dict, list, tuple):
            return ()
        plain.append(origin)
        if origin is float:
            plain.append(int)
    return tuple(plain)


# ---------------------------------------------------------------- the task


class UnitStep:
    """A datatrove pipeline step: task `rank` runs `fn(units[rank])` and pickles the result.

    Written atomically to `<out>/results/<rank>.pkl` (or the traceback to `<out>/errors/<rank>.txt`,
    then re-raised so datatrove marks the task failed). Picklable with dill, as datatrove needs.
    """

    def __init__(self, fn: Callable[[Any], Any], units: Sequence[Any], out: str):
        self.fn = fn
        self.units = list(units)
        self.out = out

    def __call__(self, data, rank: int = 0, world_size: int = 1):
        out = Path(self.out)
        unit = self.units[rank]
        try:
            result = self.fn(unit)
        except Exception as error:  # noqa: BLE001 - recorded for the driver, then re-raised
            (out / "errors").mkdir(parents=True, exist_ok=True)
            _atomic_write(out / "errors" / f"{rank:06d}.txt", traceback.format_exc().encode())
            raise UnitError(rank, describe(unit), traceback.format_exc()) from error
        (out / "results").mkdir(parents=True, exist_ok=True)
        _atomic_write(out / "results" / f"{rank:06d}.pkl", pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
        return iter(())


def _atomic_write(path: Path, payload: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, path)


class _JobIds:
    """datatrove's job-id reader for `sbatch`'s output, keeping every id it reads (one per array of up to
    max_array_size tasks): the driver watches them with squeue."""

    def __init__(self):
        self.ids: list[str] = []

    def __call__(self, output: str) -> str:
        self.ids.append(output.split()[-1])
        return self.ids[-1]


def _slurm_executor_class() -> type:
    from datatrove.executor import SlurmPipelineExecutor

    class ArrayOnly(SlurmPipelineExecutor):
        """Without datatrove's follow-up stats job: it waits on the array with `afterok`, so it would stay
        pending for ever after a lost task, and the driver reads the results itself."""

        def launch_merge_stats(self):
            return None

    ArrayOnly.__module__, ArrayOnly.__qualname__ = __name__, "_SlurmArrayExecutor"
    return ArrayOnly


def make_executor(pipeline: list, tasks: int, logging_dir: str, *, kind: str = "local", workers: int = 2,
                  skip_completed: bool = False, **options: Any):
    """The datatrove executor of `kind` ("local", "slurm", "ray") for `pipeline` over `tasks` ranks.

    `options` are passed through to the executor's constructor (slurm: partition, time, cpus_per_task,
    mem_per_cpu_gb, venv_path, sbatch_args, ...; ray: cpus_per_task, mem_per_cpu_gb, ...), checked first.
    """
    try:
        check_options(kind, options)
    except FieldError as e:
        raise ValueError(f"engine.{e.key}: {e.message}") from None
    common = dict(pipeline=pipeline, tasks=tasks, workers=workers, logging_dir=logging_dir,
                  skip_completed=skip_completed)
    if kind == "local":
        options.setdefault("start_method", "forkserver")
    if kind == "slurm":
        return __getattr__("_SlurmArrayExecutor")(**common, job_id_retriever=_JobIds(), **options)
    if kind == "ray":
        try:
            import ray
        except ImportError as error:
            raise ImportError("executor='ray' needs Ray: pip install 'datatrove[ray]'") from error
        if not ray.is_initialized():
            ray.init()  # joins the cluster in RAY_ADDRESS (set inside `ray job submit`), else starts a local Ray
    return executor_class(kind)(**common, **options)


# ---------------------------------------------------------------- the driver


def imap(fn, units, *, workers: int, job_dir: Path, progress: bool, desc: str, executor: str,
         executor_options: dict, resume: bool, timeout: float | None, poll_s: float) -> Iterator[Any]:
    """Yield `fn(unit)` for every unit, in unit order, from datatrove tasks (see the module docstring)."""
    require_datatrove()
    out = job_dir.resolve()
    if not resume and out.exists():
        shutil.rmtree(out)
    (out / "results").mkdir(parents=True, exist_ok=True)
    if resume and (out / "errors").exists():
        shutil.rmtree(out / "errors")  # failed units are run again
    if not units:
        return
    results = _Results(out, units)
    run = _Run(fn, units, out, results.missing(), workers, executor, executor_options, resume)
    from tqdm.auto import tqdm

    last_progress = time.monotonic()
    with tqdm(total=len(units), desc=desc, unit="unit", disable=not progress) as bar:
        bar.update(len(units) - len(results.missing()))
        for index in range(len(units)):
            while not results.ready(index):
                run.raise_if_failed(results)
                done = results.count()
                if done > bar.n:
                    bar.update(done - bar.n)
                    last_progress = time.monotonic()
                elif timeout is not None and time.monotonic() - last_progress > timeout:
                    run.cancel()
                    raise UnitsLost(results.lost_message(f"no unit finished for {timeout:.0f} s (engine.timeout)",
                                                         run.logs))
                time.sleep(poll_s)
            yield results.load(index)
            if index + 1 > bar.n:
                bar.update(index + 1 - bar.n)
    run.join()


class _Results:
    """The job directory's result and error files."""

    def __init__(self, out: Path, units: Sequence[Any]):
        self.out, self.units = out, units

    def path(self, index: int) -> Path:
        return self.out / "results" / f"{index:06d}.pkl"

    def ready(self, index: int) -> bool:
        return self.path(index).exists()

    def count(self) -> int:
        return sum(1 for name in os.listdir(self.out / "results") if name.endswith(".pkl"))

    def missing(self) -> list[int]:
        return [i for i in range(len(self.units)) if not self.ready(i)]

    def load(self, index: int) -> Any:
        with open(self.path(index), "rb") as handle:
            return pickle.load(handle)

    def first_error(self) -> tuple[int, str] | None:
        errors = self.out / "errors"
        files = sorted(errors.glob("*.txt")) if errors.exists() else []
        return (int(files[0].stem), files[0].read_text()) if files else None  # named once complete (rename)

    def lost_message(self, why: str, logs: Path) -> str:
        missing = self.missing()
        shown = ", ".join(f"{i} ({describe(self.units[i], 80)})" for i in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        return (f"{why}: {len(missing)} of {len(self.units)} units have no result: {shown}{more}; task logs: {logs}; "
                f"rerun the same command to run only those units")


class _Run:
    """The executor, run in a thread (local and Ray block until every task ends; Slurm returns once the
    array is submitted, then the driver watches squeue)."""

    def __init__(self, fn, units, out: Path, todo: list[int], workers: int, executor: str, options: dict,
                 resume: bool):
        self.executor, self.failure, self.finished = executor, [], threading.Event()
        self.logs = out / ("slurm_logs" if executor == "slurm" else "logs")
        self.job, self.thread, self.next_squeue, self.slurm_gone = None, None, 0.0, False
        if not todo:
            self.finished.set()
            return
        # datatrove's completion markers are keyed by rank: with resume they skip what is done
        self.job = make_executor([UnitStep(fn, units, str(out))], len(units), str(out), kind=executor,
                                 workers=min(workers, len(todo)), skip_completed=resume, **dict(options))
        self.thread = threading.Thread(target=self._launch, name="datatrove-executor", daemon=True)
        self.thread.start()

    def _launch(self) -> None:
        try:
            if self.executor == "local":
                with _multiprocess_default(self.job.start_method):
                    self.job.run()
            else:
                self.job.run()
        except BaseException as error:  # noqa: BLE001 - reported by the polling loop
            self.failure.append(error)
        finally:
            self.finished.set()

    def raise_if_failed(self, results: _Results) -> None:
        error = results.first_error()
        if error is not None:
            if self.executor == "local":
                self.finished.wait(60.0)  # let the local pool stop before the error leaves the generator
            self.cancel()
            index, details = error
            raise UnitError(index, describe(results.units[index]), details) from (self.failure or [None])[0]
        if self.executor == "slurm" and self.finished.is_set() and not self.failure:
            if self._slurm_array_ended() and results.missing():
                job = ",".join(self.job.job_id_retriever.ids)
                raise UnitsLost(results.lost_message(f"slurm job {job} ended (squeue lists none of its tasks)",
                                                     self.logs))
            return
        if self.finished.is_set() and results.missing():
            if self.failure:
                raise UnitsLost(results.lost_message(f"datatrove's {self.executor} executor stopped "
                                                     f"({self.failure[0]!r})", self.logs)) from self.failure[0]
            raise UnitsLost(results.lost_message(f"datatrove's {self.executor} executor finished", self.logs))

    def _slurm_array_ended(self) -> bool:
        """True once squeue lists none of the array's tasks (pending or running); asked every few seconds."""
        now = time.monotonic()
        if self.slurm_gone or now < self.next_squeue:
            return self.slurm_gone
        self.next_squeue = now + SQUEUE_EVERY_S
        ids = self.job.job_id_retriever.ids
        done = subprocess.run(["squeue", "--noheader", "--format=%i", "--jobs", ",".join(ids)],
                              capture_output=True, text=True)
        listed = done.stdout.split() if done.returncode == 0 else []
        # an ended job drops out of squeue's list (and is an "invalid job id" once slurmctld forgets it)
        self.slurm_gone = not any(line.split("_")[0] in ids for line in listed)
        return self.slurm_gone

    def cancel(self) -> None:
        """Best effort: the remaining tasks of a Slurm array are cancelled, so a rerun does not race them."""
        if self.executor == "slurm" and self.job is not None and self.job.job_id_retriever.ids:
            subprocess.run(["scancel", *self.job.job_id_retriever.ids], capture_output=True)

    def join(self) -> None:
        if self.thread is not None:
            self.thread.join()
        if self.failure:
            raise UnitsLost(f"datatrove's {self.executor} executor failed: {self.failure[0]!r}; task logs: "
                            f"{self.logs}") from self.failure[0]


@contextlib.contextmanager
def _multiprocess_default(method: str):
    """`multiprocess`'s default start method set to `method` for a while.

    LocalPipelineExecutor starts its pool with its own start_method but its `multiprocess.Manager()`
    with the default context, which forks on Linux; forking a process that has started JAX's threads
    can deadlock (JAX warns "os.fork() was called"). Restored afterwards (the setting is process-wide:
    `datasets` also uses `multiprocess`).
    """
    import multiprocess

    previous = multiprocess.get_start_method(allow_none=True)
    multiprocess.set_start_method(method, force=True)
    try:
        yield
    finally:
        multiprocess.set_start_method(previous, force=True)


def __getattr__(name: str):
    # the Slurm subclass needs datatrove: made on first use, under a name pickle can find again
    if name == "_SlurmArrayExecutor":
        if name not in globals():
            globals()[name] = _slurm_executor_class()
        return globals()[name]
    raise AttributeError(name)
