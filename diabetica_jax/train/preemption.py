"""SIGTERM -> a stop request that every process of a multi-host run agrees on.

A signal reaches one host (or the hosts at different moments), but saving a checkpoint is a
collective: if each process stopped on its own flag, they would save at different steps (a hang,
or checkpoints that do not match). So once per step every process contributes its local flag to a
tiny all-reduce (a max over one element per device), and all of them act on the reduced value.

The all-reduce of step k is dispatched after step k and read after step k+1 has been dispatched,
like the metrics (train/metrics.py): reading it never stalls the accelerator, and the stop comes
one step after the signal is noticed, at the same step everywhere. A single process has nothing to
agree with and reads its flag directly.
"""

from __future__ import annotations

import signal

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec


class Preemption:
    """Installs a SIGTERM handler for the `with` block; `agreed()` (once per step, on every process)
    says whether any process has been asked to stop."""

    def __init__(self, mesh):
        self.requested = False  # this process got SIGTERM
        self.stopping = False  # some process did, and all processes know it
        self.previous = None
        self._pending = None  # the all-reduce dispatched last step, not read yet
        if jax.process_count() > 1:
            # one flag per device of the mesh, each process filling its own devices' entries
            self._sharding = NamedSharding(mesh, PartitionSpec(tuple(mesh.axis_names)))
            self._shape = (mesh.devices.size,)
            self._any = jax.jit(jnp.max, out_shardings=NamedSharding(mesh, PartitionSpec()))

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

    def agreed(self) -> bool:
        """Call once per step on every process (it is a collective when there are several)."""
        if jax.process_count() == 1:
            self.stopping = self.requested
            return self.stopping
        flag = np.int32(self.requested)
        local = jax.make_array_from_callback(self._shape, self._sharding, lambda index: np.full((1,), flag))
        previous, self._pending = self._pending, self._any(local)
        if previous is not None:
            # replicated: every process reads the same value from its own copy
            self.stopping = bool(np.asarray(previous.addressable_data(0)))
        return self.stopping
