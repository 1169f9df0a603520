"""Add LoRA adapters to a model, and fold them back into the kernels for export."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from diabetica_jax.model.factory import abstract_model
from diabetica_jax.model.lora_config import LoRAConfig
from diabetica_jax.model.qwen import Qwen
from diabetica_jax.parallel.rules import param_shardings


def add_lora(model: Qwen, lora: LoRAConfig, mesh: Mesh | None = None, seed: int = 0) -> Qwen:
    """`model`'s weights (shared, not copied) plus fresh adapters as `lora` (rank > 0) describes."""
    if lora.rank == 0:
        raise ValueError("add_lora needs a LoRA config with rank > 0")
    if model.lora.rank:
        raise ValueError("add_lora: the model has adapters already; merge_lora them first")
    cfg, runtime = model.config, model.runtime
    graphdef, abstract_lora, _ = nnx.split(abstract_model(cfg, runtime, lora), nnx.LoRAParam, ...)

    def init_adapters():
        # Only the adapters leave this function; XLA drops the unused base-weight initialisers.
        return nnx.state(Qwen(cfg, runtime, lora, rngs=nnx.Rngs(seed)), nnx.LoRAParam)

    shardings = param_shardings(abstract_lora, mesh) if mesh is not None else None
    adapters = jax.jit(init_adapters, out_shardings=shardings)()
    return nnx.merge(graphdef, nnx.to_pure_dict(nnx.state(model, nnx.Param)), nnx.to_pure_dict(adapters))


def merge_lora(model: Qwen) -> Qwen:
    """The same function without adapters: every adapted kernel becomes W + (alpha / rank) A B."""
    if model.lora.rank == 0:
        return model
    graphdef, _ = nnx.split(abstract_model(model.config, model.runtime))
    scale = model.lora.scale

    def fold(tree: dict) -> dict:
        out = {}
        for key, value in tree.items():
            if isinstance(value, dict) and "lora_a" in value:
                kernel, a, b = value["kernel"], value["lora_a"], value["lora_b"]
                # stacked layers: one A B product per layer
                update = jax.vmap(lambda a, b: jnp.tensordot(a, b, axes=1))(a.astype(jnp.float32), b.astype(jnp.float32))
                merged = (kernel.astype(jnp.float32) + scale * update).astype(kernel.dtype)
                out[key] = {k: v for k, v in value.items() if k not in ("lora_a", "lora_b")} | {"kernel": merged}
            elif isinstance(value, dict):
                out[key] = fold(value)
            else:
                out[key] = value
        return out

    merged = jax.jit(fold)(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    return nnx.merge(graphdef, merged)
