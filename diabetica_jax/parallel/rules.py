"""One table maps logical axis names onto mesh axes; everything sharded asks it.

Parameters carry logical names in their `axes` metadata (e.g. ('embed', 'heads', 'head_dim')),
activations name theirs at `constrain(...)` calls. Changing the layout is an edit of the table, or, for one
run, the `mesh.rules` section of its config (entries replacing the table's: `with_overrides`), which train/
applies with `use_rules` where it builds, compiles and restores a model.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterable, Mapping, Sequence

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MeshAxes = str | tuple[str, ...] | None

DEFAULT_RULES: tuple[tuple[str, MeshAxes], ...] = (
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("norm", None),
    ("layers", None),
    ("lora_rank", None),
    # activations
    ("batch", ("data", "fsdp")),
    ("seq", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)


LOGICAL_AXES = tuple(logical for logical, _ in DEFAULT_RULES)


class RuleConflict(ValueError):
    """A table putting two logical axes of one array on one mesh axis (an array cannot be split twice over it)."""

    def __init__(self, first: str, second: str, mesh_axis: str, axes: Sequence[str | None]):
        super().__init__(f"sharding rules map both {first!r} and {second!r} of one array (axes {tuple(axes)}) to "
                         f"mesh axis {mesh_axis!r}")
        self.first, self.second, self.mesh_axis, self.axes = first, second, mesh_axis, tuple(axes)


class ShardingRules:
    """Logical axis name -> mesh axis (or tuple of mesh axes, or None for replicated)."""

    def __init__(self, rules: Iterable[tuple[str, MeshAxes]] | Mapping[str, MeshAxes] = DEFAULT_RULES):
        items = rules.items() if isinstance(rules, Mapping) else rules
        self.table: dict[str, tuple[str, ...]] = {}
        for logical, mesh_axes in items:
            if mesh_axes is None:
                self.table[logical] = ()
            elif isinstance(mesh_axes, str):
                self.table[logical] = (mesh_axes,)
            else:
                self.table[logical] = tuple(mesh_axes)

    def spec(
        self,
        axes: Sequence[str | None],
        shape: Sequence[int] | None = None,
        mesh: Mesh | jax.sharding.AbstractMesh | None = None,
    ) -> PartitionSpec:
        """PartitionSpec for an array whose dimensions have these logical names.

        With `shape` and `mesh`, a mesh axis that does not divide its dimension is dropped (that
        dimension is replicated over it), so e.g. 2 KV heads still load on a tensor axis of 4.
        Mesh axes absent from `mesh` are dropped too.
        """
        used: dict[str, str] = {}
        entries: list[MeshAxes] = []
        for dim, logical in enumerate(axes):
            if logical is None:
                entries.append(None)
                continue
            if logical not in self.table:
                raise ValueError(f"sharding rules: no rule for logical axis {logical!r} (axes {tuple(axes)})")
            kept = []
            for mesh_axis in self.table[logical]:
                if mesh_axis in used:
                    raise RuleConflict(used[mesh_axis], logical, mesh_axis, axes)
                used[mesh_axis] = logical
                if mesh is not None:
                    if mesh_axis not in mesh.axis_names:
                        continue
                    size = mesh.shape[mesh_axis]
                    split = size * _prod(mesh.shape[a] for a in kept)
                    if shape is not None and shape[dim] % split:
                        continue
                kept.append(mesh_axis)
            entries.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
        return PartitionSpec(*entries)


def with_overrides(overrides: Mapping[str, MeshAxes]) -> ShardingRules:
    """The default table with the entries of `overrides` (logical axis -> mesh axes) in place of its own."""
    return ShardingRules({**dict(DEFAULT_RULES), **overrides})


def _prod(values: Iterable[int]) -> int:
    out = 1
    for v in values:
        out *= v
    return out


_ACTIVE_RULES: contextvars.ContextVar[ShardingRules] = contextvars.ContextVar(
    "diabetica_sharding_rules", default=ShardingRules()  # noqa: B039 (the table is never mutated)
)


def active_rules() -> ShardingRules:
    return _ACTIVE_RULES.get()


@contextlib.contextmanager
def use_rules(rules: ShardingRules):
    """Make `rules` the table that `constrain` and `param_shardings` consult by default."""
    token = _ACTIVE_RULES.set(rules)
    try:
        yield rules
    finally:
        _ACTIVE_RULES.reset(token)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """Pin an activation's sharding by logical names; a no-op outside a mesh context."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, active_rules().spec(axes, x.shape, mesh))


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def variable_spec(variable: nnx.Variable, mesh: Mesh, rules: ShardingRules | None = None) -> PartitionSpec:
    axes = variable.get_metadata().get("axes")
    if axes is None:
        raise ValueError(f"parameter of shape {variable.shape} carries no logical `axes` metadata")
    return (rules or active_rules()).spec(axes, variable.shape, mesh)


def param_shardings(state: nnx.State, mesh: Mesh, rules: ShardingRules | None = None) -> nnx.State:
    """A State of NamedShardings, one per parameter, from each parameter's logical axes."""
    return jax.tree.map(
        lambda v: v.replace(NamedSharding(mesh, variable_spec(v, mesh, rules))),
        state,
        is_leaf=_is_variable,
    )
