"""`diabetica-jax plan`: compile the real train step ahead of time for a target mesh and report memory.

Nothing is allocated: parameters, optimizer state and the batch are abstract arrays carrying the
shardings the run would use, and XLA compiles the step for the mesh (emulated CPU devices stand in
for the chips). Parameter and optimizer bytes per device come from the shardings; temporaries
(activations, gradients, collectives' buffers) from the compiled program's memory analysis, which
is the CPU compiler's view: accelerator compilers fuse differently, so treat it as an estimate.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from flax import nnx

from diabetica_jax.data.batch import Batch
from diabetica_jax.model.factory import abstract_model
from diabetica_jax.parallel import make_mesh
from diabetica_jax.parallel.rules import param_shardings, use_rules
from diabetica_jax.train.config import TrainConfig, check_against_devices
from diabetica_jax.train.optimizer import build_optimizer
from diabetica_jax.train.setup import model_config, step_settings
from diabetica_jax.train.state import abstract_state, init_state, state_shardings
from diabetica_jax.train.step import batch_sharding, make_train_step


def _per_device_bytes(tree) -> int:
    """Bytes one device holds of these abstract sharded arrays (the largest shard of each)."""
    total = 0
    for x in jax.tree.leaves(tree):
        shard = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        total += math.prod(shard) * np.dtype(x.dtype).itemsize
    return total


def plan(cfg: TrainConfig) -> dict[str, float]:
    mesh_shape = check_against_devices(cfg, jax.device_count(), jax.process_count())
    mesh = make_mesh(cfg.mesh.sizes())
    model_cfg, _ = model_config(cfg)
    with jax.set_mesh(mesh), use_rules(cfg.mesh.sharding_rules()):
        trainable = nnx.LoRAParam if cfg.lora.rank else nnx.Param
        graphdef, train_abs, frozen_abs = nnx.split(abstract_model(model_cfg, cfg.model.runtime, cfg.lora), trainable,
                                                    ...)

        def with_shardings(state):
            shapes, shardings = nnx.to_pure_dict(state), nnx.to_pure_dict(param_shardings(state, mesh))
            return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings), shardings

        params, params_sharding = with_shardings(train_abs)
        frozen, frozen_sharding = with_shardings(frozen_abs)
        optimizer, schedule = build_optimizer(cfg.optim, cfg.loop.steps)
        shardings = state_shardings(optimizer, params, params_sharding, mesh)
        state = abstract_state(jax.eval_shape(lambda p: init_state(p, optimizer, 0, shardings), params), shardings)
        batch_sh = batch_sharding(mesh)
        shape = (cfg.data.grad_accum, cfg.micro_batch, cfg.data.seq_len)
        batch = Batch(*(jax.ShapeDtypeStruct(shape, np.int32, sharding=batch_sh) for _ in range(4)))
        step, frozen, batch = _stage_step(cfg, graphdef, optimizer, schedule, shardings, frozen, frozen_sharding,
                                          batch, batch_sh, params)
        compiled = step.lower(state, frozen, batch).compile()
    analysis = compiled.memory_analysis()
    report = {
        "devices": jax.device_count(),
        "mesh": dict(zip(("data", "fsdp", "tensor"), mesh_shape)),
        "parameters_total": model_cfg.num_params(),
        "trainable_parameters": sum(math.prod(x.shape) for x in jax.tree.leaves(params)),
        "trainable_params_bytes": _per_device_bytes(state.params),
        "frozen_params_bytes": _per_device_bytes(frozen),
        "optimizer_state_bytes": _per_device_bytes(state.opt_state),
        "batch_bytes": _per_device_bytes(batch),
        "temporaries_bytes": getattr(analysis, "temp_size_in_bytes", float("nan")),
    }
    if cfg.method == "grpo":  # the rollout batcher's KV cache and weights, beside the training step's memory
        report["rollout_kv_cache_bytes"] = _rollout_cache_bytes(cfg, model_cfg)
        compute, stored = np.dtype(cfg.model.runtime.dtype), np.dtype(cfg.model.runtime.param_dtype)
        if compute != stored:  # the batcher decodes with a copy of the weights in the compute dtype
            weights = report["trainable_params_bytes"] + report["frozen_params_bytes"]
            report["rollout_weights_bytes"] = weights * compute.itemsize // stored.itemsize
    report["total_bytes"] = sum(v for k, v in report.items() if k.endswith("_bytes"))
    report["method"] = cfg.method
    return report


def _stage_step(cfg, graphdef, optimizer, schedule, shardings, frozen, frozen_sharding, batch, batch_sh, params):
    """The step the stage's method runs, with its abstract inputs: the preference step's batch carries the
    reference log-probs, the GRPO step's the rewards (and, with a KL penalty, the reference weights)."""
    if cfg.method == "dpo":
        from diabetica_jax.train.pair_feed import PairBatch
        from diabetica_jax.train.preference_step import make_preference_step

        reference = jax.ShapeDtypeStruct(batch.tokens.shape[:2] + (2 * cfg.preference.pairs_per_row,), np.float32,
                                         sharding=batch_sh)
        step = make_preference_step(graphdef, optimizer, schedule, cfg.preference, loss_chunk=cfg.loop.loss_chunk,
                                    dropout=cfg.lora.dropout > 0, shardings=shardings,
                                    frozen_shardings=frozen_sharding, batch_sharding=batch_sh)
        return step, frozen, PairBatch(batch, reference)
    if cfg.method == "grpo":
        from jax.sharding import NamedSharding, PartitionSpec

        from diabetica_jax.train.grpo_step import make_grpo_step
        from diabetica_jax.train.rollouts import RolloutBatch

        rewards = jax.ShapeDtypeStruct(batch.tokens.shape[:2], np.float32,
                                       sharding=NamedSharding(batch_sh.mesh, PartitionSpec(*batch_sh.spec[:2])))
        step = make_grpo_step(graphdef, optimizer, schedule, cfg.grpo, loss_chunk=cfg.loop.loss_chunk,
                              dropout=cfg.lora.dropout > 0, shardings=shardings, frozen_shardings=frozen_sharding,
                              batch_sharding=batch_sh)
        return step, (frozen, params if cfg.grpo.beta else None), RolloutBatch(batch, rewards)
    step = make_train_step(graphdef, optimizer, schedule, shardings=shardings, frozen_shardings=frozen_sharding,
                           batch_sharding=batch_sh, **step_settings(cfg))
    return step, frozen, batch


def _rollout_cache_bytes(cfg, model_cfg) -> int:
    """The batcher's key and value cache for data.global_batch slots of data.seq_len positions in the compute
    dtype, its kv-heads split over the tensor axis when they divide: per device at most (the whole cache when
    its slots are not split over devices)."""
    head_dim = model_cfg.head_dim
    tensor = max(cfg.mesh.tensor, 1)
    heads = model_cfg.num_kv_heads
    heads_per_device = heads // tensor if heads % tensor == 0 else heads
    itemsize = np.dtype(cfg.model.runtime.dtype).itemsize
    return 2 * model_cfg.num_layers * cfg.data.global_batch * cfg.data.seq_len * heads_per_device * head_dim * itemsize


def format_plan(report: dict) -> str:
    gib = 1024**3
    lines = [
        f"devices: {report['devices']}  mesh: {report['mesh']}",
        f"parameters: {report['parameters_total'] / 1e9:.3f} B total, {report['trainable_parameters'] / 1e9:.3f} B trainable",
        "per-device memory:",
    ]
    for key, label in (("trainable_params_bytes", "trainable parameters"), ("frozen_params_bytes", "frozen parameters"),
                       ("optimizer_state_bytes", "optimizer state"), ("batch_bytes", "batch"),
                       ("temporaries_bytes", "temporaries (XLA estimate)"),
                       ("rollout_kv_cache_bytes", "rollout KV cache (at most)"),
                       ("rollout_weights_bytes", "rollout weights (compute)"), ("total_bytes", "total")):
        if key in report:
            lines.append(f"  {label:28s} {report[key] / gib:9.3f} GiB")
    return "\n".join(lines)
