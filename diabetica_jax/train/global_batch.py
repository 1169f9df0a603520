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


class BatchLayout:
    """Host rows -> global arrays for batches whose sequence length may change between steps (data.packing:
    none gives one length per bucket). The global shape of each length is worked out, and checked against
    this process's rows, once and cached; the jitted step compiles once per shape, so the layouts seen
    are the train step's programs."""

    def __init__(self, sharding: NamedSharding, grad_accum: int, micro_batch: int, rows: range):
        self.sharding, self.grad_accum, self.micro_batch, self.rows = sharding, grad_accum, micro_batch, rows
        self.shapes: dict[int, tuple[int, int, int]] = {}

    def global_shape(self, seq: int) -> tuple[int, int, int]:
        shape = self.shapes.get(seq)
        if shape is None:
            shape = (self.grad_accum, self.micro_batch, seq)
            if local_rows(self.sharding, shape) != self.rows:  # the sequence axis is not sharded: never expected
                raise ValueError(f"batch shape {shape}: this process's rows differ from {self.rows}")
            self.shapes[seq] = shape
        return shape

    def __call__(self, local: Batch) -> Batch:
        expected = (self.grad_accum, len(self.rows))
        if tuple(local.tokens.shape[:2]) != expected:
            raise ValueError(f"a batch of {tuple(local.tokens.shape)} for rows [grad_accum, rows] = {expected}")
        return to_global(local, self.sharding, self.global_shape(int(local.tokens.shape[2])))
