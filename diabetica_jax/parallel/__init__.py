"""Device meshes and the logical-axis -> mesh-axis sharding rules."""

from diabetica_jax.parallel.mesh import MESH_AXES, make_mesh
from diabetica_jax.parallel.rules import (
    DEFAULT_RULES,
    ShardingRules,
    constrain,
    param_shardings,
)

__all__ = ["MESH_AXES", "make_mesh", "DEFAULT_RULES", "ShardingRules", "constrain", "param_shardings"]
