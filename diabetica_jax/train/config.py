"""The training configuration (`diabetica-jax train CONFIG`), section by section."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from diabetica_jax.configuration import ConfigFileError, FieldError, field, require_positive, shown
from diabetica_jax.data.config import DataSection
from diabetica_jax.llm.config import BackendSection
from diabetica_jax.model import axes
from diabetica_jax.model.choice import ModelChoice
from diabetica_jax.model.lora_config import LoRAConfig
from diabetica_jax.parallel.mesh import MESH_AXES
from diabetica_jax.parallel.rules import LOGICAL_AXES, RuleConflict, ShardingRules, with_overrides
from diabetica_jax.train.preference import GRPO_LOSSES, PAIR_LOSSES, REFERENCE_FREE
from diabetica_jax.train.trackers import TrackingSection


@dataclasses.dataclass(frozen=True)
class ModelSection(ModelChoice):
    path: str | None = field(None, "Hugging Face checkpoint directory to start from (overrides preset)", path=True)
    preset: str = field("tiny", "model preset (configs/models/NAME.yaml) for random initialisation")
    seed: int = field(0, "seed of the random initialisation (preset) and of new LoRA adapters")
    init_from: str | None = field(None, "training run directory to start from: its latest checkpoint's weights "
                                  "(multi-stage training; preset/path must name the same architecture)", path=True)
    init_lora: Literal["merged", "unmerged"] = field(
        "merged", "with init_from a LoRA run: fold its adapters into the weights (this run may add new ones), or "
        "keep training them (unmerged: this run's lora rank, alpha and targets must be the same)")


@dataclasses.dataclass(frozen=True)
class MeshSection:
    data: int = field(1, "data-parallel axis size (-1: all remaining devices)")
    fsdp: int = field(-1, "fully-sharded data-parallel axis size (-1: all remaining devices)")
    tensor: int = field(1, "tensor-parallel axis size (-1: all remaining devices)")
    rules: dict[str, str | list[str] | None] = field(
        {}, "sharding rules replacing entries of the default table (parallel/rules.py): logical axis -> mesh "
        "axis, list of mesh axes, or null (replicated), e.g. {mlp: null}")

    def __post_init__(self):
        for logical, mesh_axes in self.rules.items():
            named = [] if mesh_axes is None else [mesh_axes] if isinstance(mesh_axes, str) else list(mesh_axes)
            if logical not in LOGICAL_AXES:
                raise FieldError(f"rules.{logical}", f"unknown logical axis; the axes are {list(LOGICAL_AXES)}")
            unknown = [a for a in named if a not in MESH_AXES]
            if unknown:
                raise FieldError(f"rules.{logical}", f"{shown(unknown[0])} is not a mesh axis; the mesh axes are "
                                 f"{list(MESH_AXES)}")
            if len(set(named)) != len(named):
                raise FieldError(f"rules.{logical}", f"{shown(mesh_axes)} names a mesh axis twice")
        rules = self.sharding_rules()
        for array in axes.ARRAYS:  # every array the model shards: one mesh axis may split one of its dimensions
            try:
                rules.spec(array)
            except RuleConflict as e:
                key = e.second if e.second in self.rules else e.first  # the default table has no conflict
                raise FieldError(f"rules.{key}", f"puts {e.first!r} and {e.second!r} of one array (axes "
                                 f"{e.axes}) on mesh axis {e.mesh_axis!r}") from None

    def sizes(self) -> dict[str, int]:
        return {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}

    def sharding_rules(self) -> ShardingRules:
        return with_overrides(self.rules)


# Adam's first moment may be rounded to bfloat16; the second moment (squares, summed over many steps) may not
MOMENT_DTYPES = ("float32", "bfloat16")


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
    mu_dtype: Literal[MOMENT_DTYPES] = field(
        "float32", "dtype of Adam's first moment (bfloat16 halves its memory; the second moment stays float32)")

    def __post_init__(self):
        require_positive(self, "lr", "eps")  # eps 0 divides by zero where a gradient is 0 (unused embedding rows)
        if self.warmup_steps < 0:
            raise FieldError("warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise FieldError("min_lr_ratio", f"must be in [0, 1] (a fraction of lr), got {self.min_lr_ratio}")
        for name in ("b1", "b2"):  # Adam's bias correction divides by 1 - b**step: 0 at b = 1, NaN from step 1
            if not 0.0 <= getattr(self, name) < 1.0:
                raise FieldError(name, f"must be in [0, 1), got {getattr(self, name)}")
        if self.weight_decay < 0:
            raise FieldError("weight_decay", f"must be >= 0, got {self.weight_decay}")
        if self.clip_norm < 0:
            raise FieldError("clip_norm", f"must be >= 0 (0 disables clipping), got {self.clip_norm}")
        if self.mu_dtype not in MOMENT_DTYPES:  # build() checks the Literal already; this is for configs made in Python
            raise FieldError("mu_dtype", f"{shown(self.mu_dtype)} is not one of {list(MOMENT_DTYPES)}")


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

    def __post_init__(self):
        if self.steps <= 0 and self.steps != -1:
            raise FieldError("steps", f"must be positive, or -1 (from the data), got {self.steps}")
        require_positive(self, "log_every", "checkpoint_every", "keep_checkpoints", "loss_chunk")
        if self.peak_tflops is not None:
            require_positive(self, "peak_tflops")


METHODS = ("sft", "dpo", "grpo")
# preference.pairs naming the pairs curation wrote beside the curated data (its `pairs` stage: pairs.jsonl)
CURATED_PAIRS = "curated"


@dataclasses.dataclass(frozen=True)
class PreferenceSection:
    pairs: str | None = field(None, "preference pairs file (.jsonl or .csv): prompt, chosen and rejected as text, "
                              "or chat messages (method: dpo); `curated`: the pairs.jsonl curation's pairs stage "
                              "wrote beside the curated data (data.path)",
                              path=lambda section: section.get("pairs") != CURATED_PAIRS)
    loss: Literal[PAIR_LOSSES] = field(
        "sigmoid", "sigmoid (DPO), ipo, hinge, orpo or simpo (orpo and simpo use no reference model)")
    beta: float = field(0.1, "how far the policy may move from the reference (DPO's beta; ORPO's lambda)")
    simpo_gamma: float = field(0.5, "simpo: target reward margin")
    label_smoothing: float = field(0.0, "sigmoid / simpo: assumed fraction of flipped preference labels")
    orpo_nll: Literal["reply", "sequence"] = field(
        "reply", "orpo: the SFT term over the chosen reply (the paper) or prompt and reply (TRL's ORPOTrainer)")
    pairs_per_row: int = field(1, "pairs packed into one row of data.seq_len tokens (each pair gets seq_len / "
                               "pairs_per_row); data.global_batch counts rows")
    reference: str | None = field(
        None, "Hugging Face checkpoint directory of the frozen reference model (default: the stage's starting "
        "weights); its log-probs are computed once, before the first step, into RUN_DIR/reference_logps.npz",
        path=True)

    def __post_init__(self):
        require_positive(self, "beta", "pairs_per_row")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise FieldError("label_smoothing", f"must be in [0, 0.5), got {self.label_smoothing}")
        if self.loss not in PAIR_LOSSES:
            raise FieldError("loss", f"{shown(self.loss)} is not one of {list(PAIR_LOSSES)}")
        if self.reference and self.loss in REFERENCE_FREE:
            raise FieldError("reference", f"the {self.loss} loss uses no reference model; leave reference unset")

    @property
    def uses_reference(self) -> bool:
        return self.loss not in REFERENCE_FREE


@dataclasses.dataclass(frozen=True)
class GRPOSection:
    items: str | None = field(None, "MCQ or cloze items to roll out on (.csv/.xlsx/.jsonl, the evaluation's item "
                              "format: question with options, and the keyed answer) (method: grpo)", path=True)
    task: Literal["mcq", "cloze"] = field("mcq", "the items' kind, which decides the reward rule")
    group_size: int = field(4, "completions per prompt (data.global_batch counts completions: it must divide)")
    max_new_tokens: int = field(16, "longest completion")
    temperature: float = field(1.0, "rollout sampling temperature")
    top_p: float = field(1.0, "rollout nucleus sampling (1: off)")
    loss: Literal[GRPO_LOSSES] = field("dapo", "grpo (per-completion mean), dr_grpo (sum over group x "
                                       "max_new_tokens) or dapo (token mean over the batch)")
    epsilon_low: float = field(0.2, "lower clip of the probability ratio")
    epsilon_high: float = field(0.28, "upper clip (DAPO's clip-higher; set equal to epsilon_low for symmetric)")
    beta: float = field(0.0, "KL penalty to the starting weights (0: none, no reference kept)")
    scale_rewards: bool = field(True, "divide each group's centred rewards by their standard deviation")
    format_weight: float = field(0.0, "reward added when the reply is only the answer (a letter; a short span)")
    judge: BackendSection = field(BackendSection(), "judge rating each completion from 1 to 10 against the keyed "
                                  "answer (the evaluation's judge prompt); off unless judge_weight is set too")
    judge_weight: float = field(0.0, "reward added for the judge's rating: judge_weight x (score - 1) / 9")

    def __post_init__(self):
        require_positive(self, "group_size", "max_new_tokens")
        if self.group_size < 2:
            raise FieldError("group_size", "GRPO compares completions of one prompt: at least 2")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise FieldError("temperature", "temperature must be >= 0 and top_p in (0, 1]")
        if self.epsilon_low <= 0 or self.epsilon_high < self.epsilon_low:
            raise FieldError("epsilon_high", f"need 0 < epsilon_low <= epsilon_high, got {self.epsilon_low}, "
                             f"{self.epsilon_high}")
        if self.beta < 0:
            raise FieldError("beta", f"must be >= 0, got {self.beta}")
        if self.judge_weight < 0:
            raise FieldError("judge_weight", f"must be >= 0, got {self.judge_weight}")
        if (self.judge_weight > 0) != (self.judge.backend != "none"):
            raise FieldError("judge_weight", "a judge reward needs both judge.backend and judge_weight > 0 (got "
                             f"backend {self.judge.backend}, weight {self.judge_weight})")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model: ModelSection = field(ModelSection(), "model to train")
    lora: LoRAConfig = field(LoRAConfig(), "LoRA adapters (rank 0: full fine-tuning)")
    mesh: MeshSection = field(MeshSection(), "device mesh")
    data: DataSection = field(DataSection(), "batches")
    optim: OptimSection = field(OptimSection(), "optimizer and schedule")
    loop: LoopSection = field(LoopSection(), "steps, logging and checkpoints")
    method: Literal[METHODS] = field(
        "sft", "sft (next-token loss on the data section's source), dpo (the pairs of preference.pairs) or grpo "
        "(rollouts on grpo.items); for dpo and grpo only data.seq_len, global_batch, grad_accum, epochs and seed "
        "apply")
    preference: PreferenceSection = field(PreferenceSection(), "preference tuning (method: dpo)")
    grpo: GRPOSection = field(GRPOSection(), "reinforcement learning with verifiable rewards (method: grpo)")
    tracking: TrackingSection = field(TrackingSection(), "experiment trackers (Weights & Biases, MLflow)")

    def __post_init__(self):
        if self.method not in METHODS:
            raise FieldError("method", f"{shown(self.method)} is not one of {list(METHODS)}")
        if self.method == "dpo":
            if not self.preference.pairs:
                raise FieldError("preference.pairs", "method dpo trains on a pairs file: set preference.pairs")
            if self.preference.pairs == CURATED_PAIRS and self.data.source != "curated":
                raise FieldError("preference.pairs", f"{CURATED_PAIRS} names the pairs beside curated data, but "
                                 f"data.source is {self.data.source}")
            if self.data.seq_len // self.preference.pairs_per_row < 4:
                raise FieldError("preference.pairs_per_row", f"{self.preference.pairs_per_row} pairs leave under 4 "
                                 f"tokens each of data.seq_len={self.data.seq_len}")
        if self.method == "grpo":
            if not self.grpo.items:
                raise FieldError("grpo.items", "method grpo rolls out on an item file: set grpo.items")
            if self.data.global_batch % self.grpo.group_size:
                raise FieldError("grpo.group_size", f"data.global_batch={self.data.global_batch} completions do "
                                 f"not divide into groups of {self.grpo.group_size}")
            if self.data.seq_len <= self.grpo.max_new_tokens:
                raise FieldError("grpo.max_new_tokens", f"{self.grpo.max_new_tokens} leaves no room for the prompt "
                                 f"in data.seq_len={self.data.seq_len}")
        if self.model.init_from and self.model.init_lora == "unmerged" and not self.lora.rank:
            raise FieldError("model.init_lora", "unmerged continues the previous run's adapters: set lora.rank "
                             "(and alpha, targets) to the previous run's, or use merged")
        if self.lora.init_from and not self.lora.rank:
            raise FieldError("lora.init_from", "starts LoRA adapters from a PEFT adapter: set lora.rank, alpha and "
                             "targets to the adapter's (its adapter_config.json: r, lora_alpha, target_modules)")
        if self.lora.init_from and self.model.init_from:
            raise FieldError("lora.init_from", "the adapter goes on model.path or model.preset; model.init_from "
                             "continues another run's model: set one of them")
        if self.loop.steps == -1 and self.data.source != "curated" and self.method == "sft":
            raise FieldError("loop.steps", "-1 (from the data) needs data.source: curated")
        if self.loop.steps != -1 and self.optim.warmup_steps > self.loop.steps:
            raise FieldError("optim.warmup_steps", f"{self.optim.warmup_steps} exceeds loop.steps={self.loop.steps}")

    @property
    def micro_batch(self) -> int:
        return self.data.global_batch // self.data.grad_accum

    @property
    def pairs_file(self) -> str | None:
        """The pairs file method dpo reads: preference.pairs, or for `curated` the one beside data.path."""
        if self.preference.pairs == CURATED_PAIRS:
            return str(Path(self.data.path) / "pairs.jsonl")
        return self.preference.pairs


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
