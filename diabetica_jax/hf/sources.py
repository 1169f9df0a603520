"""Open a model from where it lives: a Hugging Face checkpoint directory, a training run directory, or a preset.

`find` reads and checks what comes with a model before its weights (config.json, the tokenizer; a run's
train_config.json), so that a broken file, or a prompt the tokenizer makes nothing of, is refused before minutes of
loading; `ModelSource.load` then reads the weights. `open` does both. The default decoding (generation_config.json)
is read when first asked for: only the callers that decode with it (serve, evaluation) refuse a broken one.
Run directories are read by the reader train/ registers (run_directories.py says why it is not done here).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from jax.sharding import Mesh

from diabetica_jax.hf.errors import HFCheckpointError
from diabetica_jax.hf.generation_config import read_generation_config
from diabetica_jax.hf.loader import load, read_config
from diabetica_jax.hf.peft_adapter import load_adapter, read_adapter_config
from diabetica_jax.hf.presets import preset_config
from diabetica_jax.hf.run_directories import is_run_directory, run_reader
from diabetica_jax.hf.tokenizer import load_tokenizer
from diabetica_jax.model.config import QwenConfig
from diabetica_jax.model.factory import create_model
from diabetica_jax.model.qwen import Qwen
from diabetica_jax.model.runtime import RuntimeConfig

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

CHECKPOINT, RUN, PRESET = "checkpoint", "run", "preset"  # ModelSource.kind


class OpenedModel(NamedTuple):
    model: Qwen
    config: QwenConfig
    tokenizer: PreTrainedTokenizerBase
    source: ModelSource
    step: int | None  # a run's checkpoint step that was loaded; None for the other kinds

    @property
    def generation_config(self) -> dict:
        return self.source.generation_config


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """A model found and checked up to its weights. `preset`: for PRESET the shape of the random weights, for RUN
    the preset the run started from (None when it started from a checkpoint: its model.path)."""

    kind: str  # CHECKPOINT, RUN or PRESET
    path: Path | None  # the checkpoint or run directory; None for a preset
    preset: str | None
    tokenizer: PreTrainedTokenizerBase
    decoding_from: str | Path | None  # generation_config.json or its directory; None: greedy
    step: int | None = None  # RUN: the checkpoint step to load; None: the latest
    adapter: Path | None = None  # a PEFT LoRA adapter directory applied on the loaded weights (not for a RUN)

    @functools.cached_property
    def generation_config(self) -> dict:
        """The default decoding, as read_generation_config gives it (an InputError for a broken file)."""
        return read_generation_config(self.decoding_from)

    def load(self, *, mesh: Mesh | None = None, seed: int = 0, allow_pickle: bool = False, progress: bool = True,
             runtime: RuntimeConfig = RuntimeConfig()) -> OpenedModel:
        """The weights, placed by the sharding rules on `mesh` (None: one device; a run: all local devices).
        `runtime` sets how a checkpoint or preset computes; a run computes as it was trained (its train config
        says). `seed`: a preset's random weights."""
        step = None
        if self.kind == CHECKPOINT:
            model, config = load(self.path, mesh=mesh, runtime=runtime, allow_pickle=allow_pickle, progress=progress)
        elif self.kind == RUN:
            model, config, step = run_reader(self.path).restore(self.path, self.step, mesh)
        else:
            config = preset_config(self.preset)
            model = create_model(config, runtime, mesh=mesh, seed=seed)
        if self.adapter is not None:
            model = load_adapter(model, config, self.adapter, mesh)
        return OpenedModel(model, config, self.tokenizer, self, step)


def find(source: str | Path | None = None, *, preset: str | None = None, step: int | None = None,
         generation_config: str | Path | None = None, adapter: str | Path | None = None) -> ModelSource:
    """`source`: a Hugging Face checkpoint directory (config.json + safetensors) or a training run directory (its
    checkpoint `step`, the latest by default); without one, `preset` with random weights. `generation_config`
    (a file, or the directory holding one) replaces the default decoding the source brings (a checkpoint's own,
    a run's starting checkpoint's; a preset: greedy). `adapter`: a PEFT LoRA adapter directory (ms-swift,
    LLaMA-Factory and `export --adapter` write one) applied on a checkpoint's or preset's weights; its
    adapter_config.json is checked here. What cannot be used is a UserError naming its file."""
    found = _find(source, preset, step, generation_config)
    if adapter is None:
        return found
    if found.kind == RUN:
        raise HFCheckpointError(f"{adapter}: an adapter goes on a checkpoint or a preset; the training run "
                                f"{source} has its own adapters (export it, or continue it with lora.init_from)")
    read_adapter_config(adapter)
    return dataclasses.replace(found, adapter=Path(adapter))


def _find(source, preset, step, generation_config) -> ModelSource:
    if not source:
        if preset is None:
            raise ValueError("hf.find: give a checkpoint or run directory, or a preset")
        _no_step(step, f"preset {preset!r}")
        preset_config(preset)  # an unknown preset is refused here, with the known ones
        return ModelSource(PRESET, None, preset, load_tokenizer(None), generation_config)
    path = Path(source)
    if is_run_directory(path):
        base = run_reader(path).base(path)
        return ModelSource(RUN, path, base.preset, load_tokenizer(base.path), generation_config or base.path,
                           step)
    if not path.is_dir():
        raise HFCheckpointError(f"{path}: checkpoint directory not found (a Hugging Face checkpoint directory or "
                                "a training run directory)")
    _no_step(step, str(path))
    read_config(path)  # config.json first: its errors come as loading the weights would report them
    return ModelSource(CHECKPOINT, path, None, load_tokenizer(path), generation_config or path)


# hf.open for callers; it hides builtins.open in this module only, which opens no file itself
def open(source: str | Path | None = None, *, preset: str | None = None, step: int | None = None,
         generation_config: str | Path | None = None, adapter: str | Path | None = None,
         **load_options: Any) -> OpenedModel:
    """find(source, preset=..., step=..., generation_config=..., adapter=...).load(**load_options): the model,
    its config, tokenizer and default decoding."""
    return find(source, preset=preset, step=step, generation_config=generation_config,
                adapter=adapter).load(**load_options)


def _no_step(step: int | None, what: str) -> None:
    if step is not None:
        raise HFCheckpointError(f"{what}: checkpoint step {step} asked for, but only a training run directory has "
                                "steps")
