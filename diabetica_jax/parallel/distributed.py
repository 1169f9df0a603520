"""Multi-host start: one process per host (or per local process group), all running the same command.

`initialize()` connects the processes through `jax.distributed.initialize`:
  - explicit: coordinator address, process count and this process's id (flags or environment
    DIABETICA_COORDINATOR, DIABETICA_NUM_PROCESSES, DIABETICA_PROCESS_ID);
  - automatic on Cloud TPU pods and under SLURM (JAX reads their environment itself) when
    DIABETICA_DISTRIBUTED=auto (the launch scripts set it), or SLURM runs several tasks;
  - otherwise a single process, nothing to do.
On CPU the cross-process collectives go through gloo.
"""

from __future__ import annotations

import os

import jax


def _wants_auto() -> bool:
    if os.environ.get("DIABETICA_DISTRIBUTED") == "auto":
        return True
    return int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None) -> bool:
    """Join the multi-process group if one is configured; True when running multi-process."""
    coordinator = coordinator or os.environ.get("DIABETICA_COORDINATOR")
    if num_processes is None and os.environ.get("DIABETICA_NUM_PROCESSES"):
        num_processes = int(os.environ["DIABETICA_NUM_PROCESSES"])
    if process_id is None and os.environ.get("DIABETICA_PROCESS_ID"):
        process_id = int(os.environ["DIABETICA_PROCESS_ID"])
    if coordinator is None and not _wants_auto():
        return False
    if os.environ.get("JAX_PLATFORMS", "").startswith("cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator is not None:
        if num_processes is None or process_id is None:
            raise ValueError("a coordinator address needs --num-processes and --process-id too")
        jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
    else:
        jax.distributed.initialize()
    return jax.process_count() > 1
