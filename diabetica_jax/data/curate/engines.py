"""Run one picklable function over a list of picklable units, locally or on a data engine.

Curation's per-unit scan (`scan_unit(unit) -> summary`) is the only step that needs many cores: a
unit describes a slice of the input (a file, or a byte range of a JSONL file), the scan does the
per-record CPU work, spills the unit's records into the work directory and returns a compact,
picklable summary. The driver then resolves all summaries in unit order. This module runs the scan:

    from diabetica_jax.data.curate.engines import map_units
    summaries = map_units(scan_unit, units, workers=2, work_dir=work)             # local default
    summaries = map_units(scan_unit, units, engine="datatrove", work_dir=work)    # datatrove, local executor

`map_units` returns the results in unit order; `imap_units` yields them in unit order as they become
available (the driver can start resolving while later units are still being scanned).

Engines
-------
``engine="local"`` (default, no extra dependency): a `multiprocessing` pool with the *spawn* context
(``start_method="forkserver"`` also works; *fork* is refused because the parent may have imported
JAX, which must not be forked), ``imap`` with chunksize 1, so results stream back in unit order
under a tqdm progress bar. ``workers=1`` runs every unit in this process, with no pool (debugging,
pdb, profilers).

``engine="datatrove"`` (optional: ``pip install 'diabetica-jax[engine]'``, i.e. ``pip install
datatrove``): each unit becomes one datatrove task (rank ``i`` runs ``fn(units[i])``) and the result
is written to ``<work_dir>/datatrove/results/<i>.pkl``; the driver reads those files back in unit
order. The same call runs on three datatrove executors (``executor=``):

* ``"local"``: `LocalPipelineExecutor` (a `multiprocess` pool of ``workers`` processes on this
  machine, forkserver context; its manager process too, nothing is forked). Nothing else to install
  or start.
* ``"slurm"``: `SlurmPipelineExecutor` submits one sbatch job array (one array task per unit, at
  most ``workers`` running at once); ``executor_options`` are its arguments, e.g.
  ``{"partition": "cpu", "time": "02:00:00", "cpus_per_task": 1, "mem_per_cpu_gb": 2,
  "venv_path": "/shared/venv/bin/activate"}``. Run the driver on the login node; ``work_dir`` must
  be on a file system the compute nodes share (and the units' input paths too). Through the
  curation config's ``engine`` section (which the pipeline passes to `map_units`), on the login node::

      diabetica-jax curate my_curate.yaml --out /shared/curated engine.name=datatrove \\
          engine.executor=slurm engine.workers=200 engine.work_dir=/shared/curate-work
      # my_curate.yaml: engine: {executor_options: {partition: cpu, time: "02:00:00",
      #                                               venv_path: /shared/venv/bin/activate}}
      # sbatch is called for you; `squeue --me` to watch

  The driver waits for the result files (``timeout`` seconds, default no limit) and can be
  restarted: with ``resume=True`` units whose result file already exists are not run again.
* ``"ray"``: `RayPipelineExecutor` on an existing Ray cluster (``pip install 'datatrove[ray]'``,
  same Python environment on every node). ``ray.init()`` joins the cluster named by ``RAY_ADDRESS``
  (which ``ray job submit`` sets), else starts a local Ray instance::

      ray start --head                      # on the head node; `ray start --address=HEAD:6379` on the others
      ray job submit --address http://HEAD:8265 --working-dir . -- diabetica-jax curate my_curate.yaml \\
          --out /shared/curated engine.name=datatrove engine.executor=ray engine.workers=64 \\
          engine.work_dir=/shared/curate-work

  ``executor_options`` go to `RayPipelineExecutor` (``cpus_per_task``, ``mem_per_cpu_gb``, ...).

Units and state: units should be small descriptions (paths, byte offsets), not data. ``fn`` is
pickled once per worker process by the local engine, but datatrove pickles it with every task (the
step holds ``fn`` and the unit list), so large read-only state (e.g. the benchmark n-gram index)
belongs in a file under ``work_dir`` that ``fn`` loads once per process.

Errors: an exception in ``fn`` is re-raised on the driver as `UnitError`, naming the unit's index
and ``repr`` and carrying the worker's traceback text. With datatrove, a failing unit leaves
``<work_dir>/datatrove/errors/<i>.txt`` and datatrove's own task logs in
``<work_dir>/datatrove/logs/``.

Why datatrove and not Apache Beam or Ray: measured on a 2-core machine (bench/curate_engines.py,
bench/results/curate_engines_cpu.json: 60k records in 48 units, 2 workers; other jobs kept the load
average at 3-8, so CPU seconds compare better than wall time), datatrove's local executor starts in
about 2 s, uses ~10% more CPU than a plain spawn pool and ~300 MiB at peak (the pool: 0.5 s, 170 MiB),
while local Ray takes 8-14 s, 1.1-1.7 GiB and +20-45% CPU, and Beam's multi-process DirectRunner 5 s
and 680 MiB (its Prism runner downloads a binary at first use). datatrove installs in ~21 MB
(datatrove + loguru) without changing any installed package, where Beam would downgrade protobuf,
pyarrow and pillow; and its one-task-per-rank model is this scan, unchanged on Slurm and on Ray.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import shutil
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from diabetica_jax.configuration import InputError

ENGINES = ("local", "datatrove")
DATATROVE_EXECUTORS = ("local", "slurm", "ray")
DATATROVE_INSTALL = "pip install 'diabetica-jax[engine]'  (or: pip install datatrove)"


class UnitError(RuntimeError):
    """A unit's function raised. `index` and `unit` name it; `details` is the worker's traceback."""

    def __init__(self, index: int, unit: str, details: str):
        super().__init__(index, unit, details)
        self.index = index
        self.unit = unit
        self.details = details

    def __str__(self) -> str:
        return f"unit {self.index} ({self.unit}) failed:\n{self.details.rstrip()}"


def _describe(unit: Any, limit: int = 200) -> str:
    text = repr(unit)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _run_one(fn: Callable[[Any], Any], index: int, unit: Any) -> Any:
    try:
        return fn(unit)
    except (InputError, FileNotFoundError):  # a bad input names itself: the user sees it as it is
        raise
    except Exception as error:  # noqa: BLE001 - re-raised with the unit named
        raise UnitError(index, _describe(unit), traceback.format_exc()) from error


_WORKER_FN: Callable[[Any], Any] | None = None


def _init_worker(fn: Callable[[Any], Any]) -> None:
    """Pool initializer: `fn` (and whatever state it holds) is pickled once per worker, not once per unit."""
    global _WORKER_FN
    _WORKER_FN = fn


def _call_in_worker(item: tuple[int, Any]) -> Any:
    index, unit = item
    return _run_one(_WORKER_FN, index, unit)


def map_units(fn: Callable[[Any], Any], units: Sequence[Any], **options: Any) -> list[Any]:
    """`fn(unit)` for every unit, results in unit order. Options: see `imap_units`."""
    return list(imap_units(fn, units, **options))


def imap_units(
    fn: Callable[[Any], Any],
    units: Sequence[Any],
    *,
    engine: str = "local",
    workers: int = 2,
    work_dir: str | os.PathLike | None = None,
    progress: bool = True,
    desc: str = "units",
    start_method: str = "spawn",
    executor: str = "local",
    executor_options: dict[str, Any] | None = None,
    resume: bool = False,
    timeout: float | None = None,
    poll_s: float = 0.05,
) -> Iterator[Any]:
    """Yield `fn(unit)` for every unit, in unit order.

    fn: a top-level (importable, picklable) function of one unit. units: picklable descriptions.
    engine: "local" (multiprocessing pool) or "datatrove" (needs `work_dir`; results go through
    pickle files there). workers: processes (local) or concurrent tasks (datatrove); 1 runs in this
    process without a pool (local engine). start_method: "spawn" or "forkserver" (local engine).
    executor / executor_options / resume / timeout: datatrove only, see the module docstring.
    """
    units = list(units)
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if engine == "local":
        yield from _imap_local(fn, units, workers=workers, progress=progress, desc=desc, start_method=start_method)
    else:
        if work_dir is None:
            raise ValueError("engine='datatrove' needs work_dir (results travel through files there)")
        yield from _imap_datatrove(
            fn, units, workers=workers, work_dir=Path(work_dir), progress=progress, desc=desc, executor=executor,
            executor_options=executor_options or {}, resume=resume, timeout=timeout, poll_s=poll_s,
        )


def _bar(total: int, progress: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="unit", disable=not progress)


def _imap_local(fn, units, *, workers: int, progress: bool, desc: str, start_method: str) -> Iterator[Any]:
    if start_method not in ("spawn", "forkserver"):
        raise ValueError(f"start_method must be 'spawn' or 'forkserver' (fork is unsafe after importing JAX), "
                         f"got {start_method!r}")
    with _bar(len(units), progress, desc) as bar:
        if workers == 1 or len(units) <= 1:
            for index, unit in enumerate(units):
                result = _run_one(fn, index, unit)
                bar.update(1)
                yield result
            return
        context = multiprocessing.get_context(start_method)
        with context.Pool(min(workers, len(units)), initializer=_init_worker, initargs=(fn,)) as pool:
            for result in pool.imap(_call_in_worker, enumerate(units), chunksize=1):
                bar.update(1)
                yield result


# ---------------------------------------------------------------- datatrove


def _require_datatrove():
    try:
        import datatrove  # noqa: F401
    except ImportError as error:
        raise ImportError(f"engine='datatrove' needs the datatrove package: {DATATROVE_INSTALL}") from error


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
            raise UnitError(rank, _describe(unit), traceback.format_exc()) from error
        (out / "results").mkdir(parents=True, exist_ok=True)
        _atomic_write(out / "results" / f"{rank:06d}.pkl", pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
        return iter(())


def _atomic_write(path: Path, payload: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, path)


def datatrove_executor(
    pipeline: list, tasks: int, logging_dir: str, *, kind: str = "local", workers: int = 2,
    skip_completed: bool = False, **options: Any,
):
    """The datatrove executor of `kind` ("local", "slurm", "ray") for `pipeline` over `tasks` ranks.

    `options` are passed through to the executor's constructor (slurm: partition, time, cpus_per_task,
    mem_per_cpu_gb, venv_path, sbatch_args, ...; ray: cpus_per_task, mem_per_cpu_gb, ...).
    """
    _require_datatrove()
    common = dict(pipeline=pipeline, tasks=tasks, workers=workers, logging_dir=logging_dir,
                  skip_completed=skip_completed)
    if kind == "local":
        from datatrove.executor import LocalPipelineExecutor

        options.setdefault("start_method", "forkserver")
        return LocalPipelineExecutor(**common, **options)
    if kind == "slurm":
        from datatrove.executor import SlurmPipelineExecutor

        missing = [key for key in ("partition", "time") if key not in options]
        if missing:
            raise ValueError(f"executor='slurm' needs executor_options {missing} (e.g. partition='cpu', time='02:00:00')")
        return SlurmPipelineExecutor(**common, **options)
    if kind == "ray":
        try:
            import ray
        except ImportError as error:
            raise ImportError("executor='ray' needs Ray: pip install 'datatrove[ray]'") from error
        from datatrove.executor import RayPipelineExecutor

        if not ray.is_initialized():
            ray.init()  # joins the cluster in RAY_ADDRESS (set inside `ray job submit`), else starts a local Ray
        return RayPipelineExecutor(**common, **options)
    raise ValueError(f"unknown datatrove executor {kind!r}; choose one of {', '.join(DATATROVE_EXECUTORS)}")


def _imap_datatrove(fn, units, *, workers: int, work_dir: Path, progress: bool, desc: str, executor: str,
                    executor_options: dict, resume: bool, timeout: float | None, poll_s: float) -> Iterator[Any]:
    _require_datatrove()
    out = (work_dir / "datatrove").resolve()
    if not resume and out.exists():
        shutil.rmtree(out)
    (out / "results").mkdir(parents=True, exist_ok=True)
    if resume and (out / "errors").exists():
        shutil.rmtree(out / "errors")  # failed units are run again
    if not units:
        return
    result_path = lambda index: out / "results" / f"{index:06d}.pkl"
    error_path = lambda index: out / "errors" / f"{index:06d}.txt"
    todo = [index for index in range(len(units)) if not result_path(index).exists()]

    failure: list[BaseException] = []
    finished = threading.Event()
    runner = None
    if todo:
        # Completion markers are keyed by rank; results already on disk mark what is done.
        job = datatrove_executor([UnitStep(fn, units, str(out))], len(units), str(out), kind=executor,
                                 workers=min(workers, len(units)), skip_completed=resume, **executor_options)

        def launch() -> None:
            try:
                if executor == "local":
                    with _multiprocess_default(job.start_method):
                        job.run()
                else:
                    job.run()
            except BaseException as error:  # noqa: BLE001 - reported by the polling loop below
                failure.append(error)
            finally:
                finished.set()

        runner = threading.Thread(target=launch, name="datatrove-executor", daemon=True)
        runner.start()
    else:
        finished.set()
    # Local and Ray executors return when every task has ended; Slurm returns once the array is submitted.
    waits_after_run = executor == "slurm"
    start = time.monotonic()
    with _bar(len(units), progress, desc) as bar:
        done_count = 0
        for index in range(len(units)):
            while not result_path(index).exists():
                if error_path(index).exists() or (out / "errors").exists() and any((out / "errors").iterdir()):
                    _raise_first_error(out, units, failure, finished, 60.0 if executor == "local" else 0.0)
                if finished.is_set() and (failure or not waits_after_run) and not result_path(index).exists():
                    if failure:
                        _raise_first_error(out, units, failure)
                    raise RuntimeError(f"datatrove finished but unit {index} ({_describe(units[index])}) "
                                       f"left no result; see {out / 'logs'}")
                if timeout is not None and time.monotonic() - start > timeout:
                    raise TimeoutError(f"no result for unit {index} after {timeout:.0f} s; see {out / 'logs'}")
                done_now = len(os.listdir(out / "results"))
                if done_now > done_count:
                    bar.update(done_now - done_count)
                    done_count = done_now
                time.sleep(poll_s)
            with open(result_path(index), "rb") as handle:
                result = pickle.load(handle)
            if index + 1 > done_count:
                bar.update(index + 1 - done_count)
                done_count = index + 1
            yield result
    if runner is not None:
        runner.join()
        if failure:
            _raise_first_error(out, units, failure)


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


def _raise_first_error(out: Path, units: Sequence[Any], failure: list[BaseException],
                       finished: threading.Event | None = None, wait_s: float = 0.0) -> None:
    if finished is not None and wait_s > 0:
        finished.wait(wait_s)  # let a local executor stop its pool before the error leaves this generator
    errors = sorted((out / "errors").glob("*.txt")) if (out / "errors").exists() else []
    if errors:
        # A worker may still be writing; the name is final once it exists (atomic rename).
        index = int(errors[0].stem)
        cause = failure[0] if failure else None
        raise UnitError(index, _describe(units[index]), errors[0].read_text()) from cause
    raise RuntimeError(f"datatrove executor failed: {failure[0]!r}; see {out / 'logs'}") from failure[0]
