"""Make models: abstract (shapes and shardings only), or materialised straight into their shardings."""

from __future__ import annotations

import contextlib
import functools

import jax
from flax import nnx
from jax.sharding import Mesh

from diabetica_jax.model.config import QwenConfig
from diabetica_jax.model.lora_config import NO_LORA, LoRAConfig
from diabetica_jax.model.qwen import Qwen
from diabetica_jax.model.runtime import RuntimeConfig
from diabetica_jax.parallel.rules import param_shardings


def abstract_model(cfg: QwenConfig, runtime: RuntimeConfig = RuntimeConfig(), lora: LoRAConfig = NO_LORA) -> Qwen:
    """The model with ShapeDtypeStructs for parameters: no memory, no compute."""
    return nnx.eval_shape(lambda: Qwen(cfg, runtime, lora, rngs=nnx.Rngs(0)))


def create_model(cfg: QwenConfig, runtime: RuntimeConfig = RuntimeConfig(), lora: LoRAConfig = NO_LORA, *,
                 mesh: Mesh | None = None, seed: int = 0) -> Qwen:
    """Randomly initialised model whose parameters are created directly in their final shardings."""
    graphdef, abstract_state = nnx.split(abstract_model(cfg, runtime, lora))

    def init():
        return nnx.split(Qwen(cfg, runtime, lora, rngs=nnx.Rngs(seed)))[1]

    out_shardings = param_shardings(abstract_state, mesh) if mesh is not None else None
    state = jax.jit(init, out_shardings=out_shardings)()
    return nnx.merge(graphdef, state)


@functools.cache
def _jitted_forward(graphdef):
    @jax.jit
    def run(state, tokens, positions, segment_ids):
        return nnx.merge(graphdef, state)(tokens, positions, segment_ids)

    return run


def forward(model: Qwen, tokens, positions=None, segment_ids=None, mesh: Mesh | None = None) -> jax.Array:
    """Jitted logits [batch, seq, vocab] float32; under `mesh` activations follow the sharding rules."""
    graphdef, state = nnx.split(model)
    ctx = jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext()
    with ctx:
        return _jitted_forward(graphdef)(state, tokens, positions, segment_ids)
