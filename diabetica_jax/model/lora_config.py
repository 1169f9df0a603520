"""Which LoRA adapters a model carries: rank, alpha, dropout and the linear layers adapted (rank 0: none).

The model builds its adapters from it (model/layers.py, model/lora.py) and training reads it as its `lora:`
section; a checkpoint records it (train/checkpoint.py `meta["lora"]`), in the keys of this dataclass.
"""

from __future__ import annotations

import dataclasses

from diabetica_jax.configuration import FieldError, field, require_at_most, require_positive, shown

# The linear layers of a decoder layer, by their HF names; LoRA targets are chosen among them.
LINEAR_LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MAX_LORA_RANK = 2**16  # wider than the hidden size of any model; a bigger rank is a typo, refused before it allocates


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    rank: int = field(0, "LoRA rank; 0 means full fine-tuning")
    alpha: float = field(16.0, "LoRA alpha; the update is scaled by alpha / rank")
    dropout: float = field(0.0, "dropout on the adapter input during training")
    # all linear layers by default, as the Diabetica recipe adapted them all
    targets: tuple[str, ...] = field(LINEAR_LAYERS, "linear layers to adapt (default: all linear layers)")
    init_from: str | None = field(None, "a PEFT LoRA adapter directory (ms-swift, LLaMA-Factory, export --adapter) "
                                        "the adapters start from; its rank, alpha and targets must be these",
                                  path=True)

    def __post_init__(self):
        if self.rank < 0:
            raise FieldError("rank", f"must be >= 0, got {self.rank}")
        require_at_most(self, MAX_LORA_RANK, "rank", why="no layer of any model is that wide")
        require_positive(self, "alpha")  # 0 switches the adapters off, < 0 reverses them: neither is a setting
        if not 0.0 <= self.dropout < 1.0:
            raise FieldError("dropout", f"must be in [0, 1), got {self.dropout}")
        unknown = sorted(set(self.targets) - set(LINEAR_LAYERS))
        if unknown:
            raise FieldError("targets", f"{shown(unknown)} are not linear layers; choose from {list(LINEAR_LAYERS)}")
        object.__setattr__(self, "targets", tuple(self.targets))  # hashable, whatever sequence it was given as

    @property
    def scale(self) -> float:
        """What the adapter's update A B is multiplied by."""
        return self.alpha / self.rank

    def for_layer(self, layer: str) -> LoRAConfig | None:
        """This config when linear layer `layer` is adapted, else None."""
        return self if self.rank and layer in self.targets else None

    def continues(self, other: LoRAConfig) -> bool:
        """Adapters trained under `other` keep training under this config (dropout may differ)."""
        return (self.rank, self.alpha, set(self.targets)) == (other.rank, other.alpha, set(other.targets))


NO_LORA = LoRAConfig()
