"""Train state: what a checkpoint holds and what the step carries from one update to the next."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from diabetica_jax.model.qwen import Qwen
from diabetica_jax.parallel.rules import param_shardings


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer updates done
    params: dict  # trainable parameters (all of them, or only LoRA adapters), as a plain nested dict
    opt_state: Any
    rng: jax.Array  # uint32[2] raw key; per-step keys are folded in from the step number


def split_trainable(model: Qwen):
    """(graphdef, trainable, frozen): LoRA adapters when the model has them, else every parameter."""
    trainable = nnx.LoRAParam if model.lora.rank else nnx.Param
    graphdef, train_state, frozen_state = nnx.split(model, trainable, ...)
    return graphdef, nnx.to_pure_dict(train_state), nnx.to_pure_dict(frozen_state), trainable


def trainable_shardings(model: Qwen, mesh: Mesh, trainable_filter) -> tuple[dict, dict]:
    """NamedShardings for the trainable and frozen parts, as plain dicts matching `split_trainable`."""
    _, train_abs, frozen_abs = nnx.split(model, trainable_filter, ...)
    as_dict = lambda state: nnx.to_pure_dict(param_shardings(state, mesh))  # noqa: E731
    return as_dict(train_abs), as_dict(frozen_abs)


def state_shardings(optimizer: optax.GradientTransformation, params: dict, params_sharding: dict, mesh: Mesh) -> TrainState:
    """Shardings of every TrainState leaf: optimizer moments follow their parameters."""
    replicated = NamedSharding(mesh, PartitionSpec())
    abstract_opt = jax.eval_shape(optimizer.init, params)
    opt_sharding = optax.tree_map_params(
        optimizer, lambda _, sharding: sharding, abstract_opt, params_sharding,
        transform_non_params=lambda _: replicated,
    )
    return TrainState(step=replicated, params=params_sharding, opt_state=opt_sharding, rng=replicated)


def init_state(params: dict, optimizer: optax.GradientTransformation, seed: int, shardings: TrainState) -> TrainState:
    def make(params):
        return TrainState(step=jnp.int32(0), params=params, opt_state=optimizer.init(params),
                          rng=jax.random.PRNGKey(seed))

    return jax.jit(make, out_shardings=shardings)(params)


def abstract_state(state_or_shapes, shardings: TrainState) -> TrainState:
    """ShapeDtypeStructs carrying the target shardings (restore targets, AOT compilation)."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state_or_shapes, shardings
    )
