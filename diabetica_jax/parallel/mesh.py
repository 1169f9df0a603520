"""Build the (data, fsdp, tensor) device mesh from configured sizes."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "fsdp", "tensor")


def resolve_mesh_shape(sizes: Mapping[str, int], n_devices: int, allow_subset: bool = False) -> tuple[int, ...]:
    """Turn {'data': 1, 'fsdp': -1, 'tensor': 2} into concrete sizes that multiply to `n_devices`.

    At most one axis may be -1 (it takes whatever devices are left); missing axes are 1. With
    `allow_subset`, fully specified sizes may use fewer devices than there are (the first ones).
    """
    unknown = set(sizes) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"mesh: unknown axis {sorted(unknown)}; the axes are {list(MESH_AXES)}")
    shape = [int(sizes.get(axis, 1)) for axis in MESH_AXES]
    free = [i for i, s in enumerate(shape) if s == -1]
    if len(free) > 1:
        raise ValueError(f"mesh: only one axis may be -1, got {dict(zip(MESH_AXES, shape))}")
    if any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"mesh: axis sizes must be positive or -1, got {dict(zip(MESH_AXES, shape))}")
    fixed = math.prod(s for s in shape if s != -1)
    if free:
        if n_devices % fixed:
            raise ValueError(
                f"mesh: {dict(zip(MESH_AXES, shape))} does not divide the {n_devices} available devices"
            )
        shape[free[0]] = n_devices // fixed
    used = math.prod(shape)
    if used > n_devices or (used < n_devices and not allow_subset):
        raise ValueError(
            f"mesh: {dict(zip(MESH_AXES, shape))} uses {used} devices but {n_devices} are available"
        )
    return tuple(shape)


def devices_needed(sizes: Mapping[str, int]) -> int | None:
    """How many devices a fully given mesh spans (None when an axis is -1: it takes whatever is there)."""
    shape = [int(sizes.get(axis, 1)) for axis in MESH_AXES]
    return None if -1 in shape else math.prod(shape)


def emulate_cpu_devices(count: int) -> None:
    """Make JAX see `count` CPU devices (and only those, also on a GPU or TPU host), so a program can be
    compiled for a mesh bigger than this machine (`diabetica-jax plan`). Must run before the first
    computation starts JAX's backends."""
    import os

    if _backend_started():
        raise RuntimeError("emulate_cpu_devices must run before JAX starts its backends")
    # the config option, not the JAX_PLATFORMS variable: jax has been imported, and reads that only at import
    jax.config.update("jax_platforms", "cpu")
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


def _backend_started() -> bool:
    from jax._src import xla_bridge

    return bool(getattr(xla_bridge, "_backends", None))


def make_mesh(sizes: Mapping[str, int] | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over all (or the given) devices with axes (data, fsdp, tensor).

    Axis types are Auto: shardings of intermediates are left to XLA's propagation, guided by the
    explicit constraints the model places on its activations.
    """
    devices = list(devices if devices is not None else jax.devices())
    # A single process may leave devices unused (a one-device reference run on a bigger host);
    # across processes every device must be in the mesh.
    shape = resolve_mesh_shape(sizes or {"fsdp": -1}, len(devices), allow_subset=jax.process_count() == 1)
    devices = devices[: math.prod(shape)]
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)
