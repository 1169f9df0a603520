"""The training configuration (`diabetica-jax train CONFIG`), section by section."""

from __future__ import annotations

import dataclasses
from typing import Literal

from diabetica_jax.configuration import ConfigFileError, apply_overrides, build, field, load_yaml
from diabetica_jax.model.config import LINEAR_LAYERS


@dataclasses.dataclass(frozen=True)
class ModelSection:
    preset: str = field("tiny", "model preset (configs/models/NAME.yaml) for random initialisation")
    hf_path: str | None = field(None, "Hugging Face checkpoint directory to start from (overrides preset)")
    dtype: Literal["float32", "bfloat16"] = field("bfloat16", "compute dtype of matmuls and attention")
    param_dtype: Literal["float32", "bfloat16"] = field("float32", "dtype of the master weights")
    attention: Literal["auto", "xla", "cudnn", "splash"] = field("auto", "attention backend")
    remat: Literal["none", "full", "save_matmuls"] = field("save_matmuls", "activation rematerialisation policy")
    seed: int = field(0, "seed of the random initialisation (preset) and of new LoRA adapters")


@dataclasses.dataclass(frozen=True)
class LoRASection:
    rank: int = field(0, "LoRA rank; 0 means full fine-tuning")
    alpha: float = field(16.0, "LoRA alpha; the update is scaled by alpha / rank")
    dropout: float = field(0.0, "dropout on the adapter input during training")
    targets: list[str] = field(list(LINEAR_LAYERS), "linear layers to adapt (default: all linear layers)")


@dataclasses.dataclass(frozen=True)
class MeshSection:
    data: int = field(1, "data-parallel axis size (-1: all remaining devices)")
    fsdp: int = field(-1, "fully-sharded data-parallel axis size (-1: all remaining devices)")
    tensor: int = field(1, "tensor-parallel axis size (-1: all remaining devices)")

    def sizes(self) -> dict[str, int]:
        return {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}


@dataclasses.dataclass(frozen=True)
class DataSection:
    source: Literal["synthetic", "curated"] = field(
        "synthetic", "batch source: curated (the shards `diabetica-jax curate` wrote) or synthetic sequences")
    path: str | None = field(None, "curated output directory (data.source: curated)")
    epochs: int = field(1, "passes over the curated data (training stops when they are used up)")
    pack: Literal["first_fit", "best_fit"] = field("first_fit", "how examples are packed into rows")
    overlong: Literal["truncate", "drop"] = field("truncate", "what happens to examples longer than seq_len")
    packing_bins: int = field(16, "rows filled at once while packing (more: less padding)")
    workers: int = field(0, "Grain worker processes (0: in the training process)")
    seq_len: int = field(128, "tokens per sequence")
    global_batch: int = field(8, "sequences per optimizer step, over all devices and accumulation steps")
    grad_accum: int = field(1, "micro-batches per optimizer step (global_batch must divide by it)")
    seed: int = field(0, "seed of the data order / synthetic data")


@dataclasses.dataclass(frozen=True)
class OptimSection:
    lr: float = field(1e-4, "peak learning rate")
    schedule: Literal["cosine", "linear", "constant"] = field("cosine", "decay after warmup")
    warmup_steps: int = field(0, "linear warmup steps from 0 to lr")
    min_lr_ratio: float = field(0.0, "final learning rate as a fraction of lr")
    weight_decay: float = field(0.0, "AdamW weight decay (never applied to norms and biases)")
    b1: float = field(0.9, "Adam beta1")
    b2: float = field(0.999, "Adam beta2")
    eps: float = field(1e-8, "Adam epsilon")
    clip_norm: float = field(1.0, "global gradient-norm clip (0 disables)")


@dataclasses.dataclass(frozen=True)
class LoopSection:
    steps: int = field(100, "optimizer steps in the whole run; -1: as many as data.epochs of curated data fill")
    log_every: int = field(1, "write metrics every N steps")
    checkpoint_every: int = field(100, "save a checkpoint every N steps (and always at the end and on SIGTERM)")
    keep_checkpoints: int = field(3, "how many recent checkpoints to keep")
    async_checkpoint: bool = field(True, "write checkpoints in the background while training goes on")
    loss_chunk: int = field(256, "sequence positions per vocabulary-projection chunk in the loss")
    peak_tflops: float | None = field(None, "peak bf16 TFLOP/s per device for MFU (default: by device kind)")
    tensorboard: bool = field(True, "also write TensorBoard event files under RUN_DIR/tensorboard")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model: ModelSection = field(ModelSection(), "model to train")
    lora: LoRASection = field(LoRASection(), "LoRA adapters (rank 0: full fine-tuning)")
    mesh: MeshSection = field(MeshSection(), "device mesh")
    data: DataSection = field(DataSection(), "batches")
    optim: OptimSection = field(OptimSection(), "optimizer and schedule")
    loop: LoopSection = field(LoopSection(), "steps, logging and checkpoints")

    @property
    def micro_batch(self) -> int:
        return self.data.global_batch // self.data.grad_accum


def validate_train(cfg: TrainConfig, source: str) -> None:
    def bad(key: str, message: str):
        raise ConfigFileError(f"{source}: {key}: {message}")

    positive = {"data.seq_len": cfg.data.seq_len, "data.global_batch": cfg.data.global_batch,
                "data.grad_accum": cfg.data.grad_accum, "loop.steps": cfg.loop.steps if cfg.loop.steps != -1 else 1,
                "loop.log_every": cfg.loop.log_every, "loop.checkpoint_every": cfg.loop.checkpoint_every,
                "loop.keep_checkpoints": cfg.loop.keep_checkpoints, "loop.loss_chunk": cfg.loop.loss_chunk}
    for key, value in positive.items():
        if value <= 0:
            bad(key, f"must be positive, got {value}")
    if cfg.data.global_batch % cfg.data.grad_accum:
        bad("data.global_batch", f"{cfg.data.global_batch} does not divide into data.grad_accum={cfg.data.grad_accum} micro-batches")
    if cfg.data.source == "curated" and not cfg.data.path:
        bad("data.path", "data.source: curated needs the curated output directory")
    if cfg.data.epochs <= 0 or cfg.data.packing_bins <= 0 or cfg.data.workers < 0:
        bad("data", "epochs and packing_bins must be positive, workers >= 0")
    if cfg.lora.rank < 0:
        bad("lora.rank", f"must be >= 0, got {cfg.lora.rank}")
    if not 0.0 <= cfg.lora.dropout < 1.0:
        bad("lora.dropout", f"must be in [0, 1), got {cfg.lora.dropout}")
    unknown = set(cfg.lora.targets) - set(LINEAR_LAYERS)
    if unknown:
        bad("lora.targets", f"{sorted(unknown)} are not linear layers; choose from {list(LINEAR_LAYERS)}")
    if cfg.optim.lr <= 0 or cfg.optim.warmup_steps < 0:
        bad("optim", "lr must be positive and warmup_steps >= 0")
    if cfg.loop.steps == -1 and cfg.data.source != "curated":
        bad("loop.steps", "-1 (from the data) needs data.source: curated")
    if cfg.loop.steps != -1 and cfg.optim.warmup_steps > cfg.loop.steps:
        bad("optim.warmup_steps", f"{cfg.optim.warmup_steps} exceeds loop.steps={cfg.loop.steps}")


def check_against_devices(cfg: TrainConfig, n_devices: int, n_processes: int = 1, source: str = "config") -> tuple[int, ...]:
    """Mesh shape for this many devices; errors when the mesh or the batch does not fit them."""
    from diabetica_jax.parallel.mesh import resolve_mesh_shape

    try:
        shape = resolve_mesh_shape(cfg.mesh.sizes(), n_devices, allow_subset=n_processes == 1)
    except ValueError as e:
        raise ConfigFileError(f"{source}: {e}") from e
    data_ways = shape[0] * shape[1]
    if cfg.micro_batch % data_ways:
        raise ConfigFileError(
            f"{source}: data.global_batch / data.grad_accum = {cfg.micro_batch} sequences per micro-batch do not "
            f"divide over the data x fsdp = {data_ways} batch shards of mesh {dict(zip(('data', 'fsdp', 'tensor'), shape))}"
        )
    if cfg.micro_batch % n_processes:
        raise ConfigFileError(f"{source}: micro-batch of {cfg.micro_batch} does not split over {n_processes} processes")
    return shape


def load_train_config(path: str | None, overrides: list[str] | None = None) -> TrainConfig:
    """TrainConfig from a YAML file (or defaults when None) and `key=value` overrides."""
    data = load_yaml(path) if path else {}
    source = str(path) if path else "defaults"
    if overrides:
        data = apply_overrides(data, overrides)
        source += " + overrides"
    cfg = build(TrainConfig, data, source)
    validate_train(cfg, source)
    return cfg
