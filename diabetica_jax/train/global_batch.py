"""Assemble per-host batch rows into global arrays sharded over the mesh."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding

from diabetica_jax.data.batch import Batch


def local_rows(sharding: NamedSharding, global_shape: tuple[int, ...], axis: int = 1) -> range:
    """The contiguous range of rows (along `axis`) that this process's devices hold."""
    starts, stops = [], []
    for index in sharding.addressable_devices_indices_map(global_shape).values():
        sl = index[axis]
        starts.append(sl.start or 0)
        stops.append(sl.stop if sl.stop is not None else global_shape[axis])
    lo, hi = min(starts), max(stops)
    covered = sorted(set(zip(starts, stops)))
    total = sum(b - a for a, b in covered)
    if total != hi - lo:
        raise ValueError(f"this process's batch rows are not contiguous: {covered}")
    return range(lo, hi)


def to_global(local: Batch, sharding: NamedSharding, global_shape: tuple[int, ...]) -> Batch:
    """Each process passes only its own rows; the result is one global array per field."""
    return Batch(*(jax.make_array_from_process_local_data(sharding, np.asarray(x), global_shape) for x in local))
