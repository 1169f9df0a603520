"""The settings of `diabetica-jax generate` and `chat` (`generate [CONFIG] [key=value ...]`): the model, the
decoding, the prompts.

A YAML file and `key=value` overrides, as for every stage (configuration.load_config); each option of the
commands is the shorthand of one key (`--temperature 0.7` is `temperature=0.7`). They live with the command line,
not in generate/ (the engine library, whose package loads JAX): `--help` shows every default from here.
"""

from __future__ import annotations

import dataclasses

from diabetica_jax.configuration import field
from diabetica_jax.model.choice import ModelChoice


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """What generate and chat share: the model, where it runs, and how it decodes (generate.SamplingParams checks
    the sampling values)."""

    model: ModelChoice = field(ModelChoice(), "the model (default: the tiny preset with random weights)")
    seed: int = field(0, "random init seed of the preset, and the sampling seed")
    max_new_tokens: int = field(32, "longest reply, in tokens")
    temperature: float = field(0.0, "sampling temperature; 0: greedy")
    top_k: int = field(0, "sample from the k likeliest tokens; 0: all")
    top_p: float = field(1.0, "nucleus sampling: the likeliest tokens up to this mass")
    repetition_penalty: float = field(1.0, "penalise the tokens already in the text; 1: off")
    mesh: dict[str, int] = field({}, "mesh axis sizes, e.g. {fsdp: 4, tensor: 2} (empty: one device)")
    allow_pickle: bool = field(False, "accept a PyTorch pickle checkpoint (trusted only)")


@dataclasses.dataclass(frozen=True)
class GenerateConfig(DecodeConfig):
    prompts: list[str] = field([], "prompt texts (default: a diabetes question)")
    raw: bool = field(False, "do not wrap prompts in the chat template")


@dataclasses.dataclass(frozen=True)
class ChatConfig(DecodeConfig):
    max_new_tokens: int = field(512, "longest reply, in tokens")
    system: str | None = field(None, "system prompt")
