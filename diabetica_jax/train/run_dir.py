"""A training run directory (finished or partial): the model of a checkpoint, and its export.

Importing this module lets `hf.open` read run directories (hf/run_directories.py says why the reader is
registered from here rather than written below train/).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax

from diabetica_jax import hf
from diabetica_jax.configuration import ConfigFileError
from diabetica_jax.hf.exporter import EXPORT_DTYPES
from diabetica_jax.hf.peft_adapter import save_adapter
from diabetica_jax.parallel import make_mesh
from diabetica_jax.train.setup import read_train_config, restored_model


def trained_model(run_dir: str | Path, step: int | None = None, mesh=None):
    """(model, model config, step) as of a run's checkpoint (latest by default), on `mesh` (default: all local
    devices)."""
    mesh = make_mesh({"fsdp": -1}) if mesh is None else mesh
    with jax.set_mesh(mesh):
        return restored_model(run_dir, mesh, step)


def _run_base(run_dir: Path) -> hf.RunBase:
    model = read_train_config(run_dir).model
    return hf.RunBase(model.path, None if model.path else model.preset)  # a path overrides the preset


def _restore(run_dir: Path, step: int | None, mesh):
    return trained_model(run_dir, step, mesh)  # looked up at each call, so that tests may stand in for it


hf.register_run_reader(hf.RunReader(base=_run_base, restore=_restore))


@dataclasses.dataclass
class Export:
    path: Path
    step: int
    model_config: Any  # QwenConfig of the exported (merged) model
    tokenizer: Any


def adapter_base(cfg) -> str | None:
    """What a run's LoRA adapters apply to (an adapter export's base_model_name_or_path): its checkpoint
    (model.path; None for a preset); for a stage that continues an earlier one, that stage's weights with its
    adapters folded in (init_lora merged: the earlier run directory, whose export is the base), or, when it
    keeps training the earlier adapters (unmerged, never folded in), the earlier stage's own base."""
    if cfg.model.init_from is None:
        return cfg.model.path
    if cfg.model.init_lora == "unmerged":
        return adapter_base(read_train_config(cfg.model.init_from))
    return str(cfg.model.init_from)


def export_run(run_dir: str | Path, out: str | Path, step: int | None = None, dtype: str | None = None,
               max_shard_size: str = "5GB", progress: bool = True, adapter: bool = False) -> Export:
    """A run's checkpoint as a Hugging Face directory that transformers loads: LoRA adapters merged, weights in
    the source checkpoint's dtype unless `dtype` says otherwise, the run's own tokenizer (its source
    checkpoint's; the embedded Qwen2 one for presets), and the source's generation_config.json, so the
    export keeps the decoding defaults that faithful evaluation reads. A killed export leaves `out` without
    config.json (no loader takes it for a checkpoint); exporting again replaces it (hf.save).
    `adapter`: only the LoRA adapters, unmerged, in PEFT's layout (hf/peft_adapter.py), float32 by default."""
    cfg = read_train_config(run_dir)
    if adapter and not cfg.lora.rank:
        raise ConfigFileError(f"{run_dir}: export --adapter writes LoRA adapters, and this run has none "
                              "(lora.rank 0: full fine-tuning); export the whole model instead")
    model, model_cfg, step = trained_model(run_dir, step)
    if adapter:
        path = save_adapter(model, model_cfg, out, base_model=adapter_base(cfg),
                            dtype=EXPORT_DTYPES[dtype or "float32"])
        return Export(path, step, model_cfg, None)
    tokenizer = hf.load_tokenizer(cfg.model.path)
    source = Path(cfg.model.path) / "generation_config.json" if cfg.model.path else None
    path = hf.save(model, model_cfg, out, max_shard_size=max_shard_size, dtype=dtype, tokenizer=tokenizer,
                   progress=progress, generation_config=source if source is not None and source.is_file() else None)
    return Export(path, step, model_cfg, tokenizer)
