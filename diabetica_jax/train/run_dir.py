"""A training run directory (finished or partial): its config, the model of a checkpoint, and its export."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax

from diabetica_jax import hf
from diabetica_jax.parallel import make_mesh
from diabetica_jax.train.config import TrainConfig
from diabetica_jax.train.setup import restored_model, run_config


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The config the run was trained with (RUN_DIR/train_config.json, written when training starts)."""
    return run_config(run_dir)


def trained_model(run_dir: str | Path, step: int | None = None):
    """(model, model config, step) as of a run's checkpoint (latest by default), on all local devices."""
    mesh = make_mesh({"fsdp": -1})
    with jax.set_mesh(mesh):
        return restored_model(run_dir, mesh, step)


@dataclasses.dataclass
class Export:
    path: Path
    step: int
    model_config: Any  # QwenConfig of the exported (merged) model
    tokenizer: Any


def export_run(run_dir: str | Path, out: str | Path, step: int | None = None, dtype: str | None = None,
               max_shard_size: str = "5GB", progress: bool = True) -> Export:
    """A run's checkpoint as a Hugging Face directory that transformers loads: LoRA adapters merged, weights in
    the source checkpoint's dtype unless `dtype` says otherwise, the run's own tokenizer (its source
    checkpoint's; the embedded Qwen2 one for presets), and the source's generation_config.json, so the
    export keeps the decoding defaults that faithful evaluation reads. A killed export leaves `out` without
    config.json (no loader takes it for a checkpoint); exporting again replaces it (hf.save)."""
    cfg = load_run_config(run_dir)
    model, model_cfg, step = trained_model(run_dir, step)
    tokenizer = hf.load_tokenizer(cfg.model.hf_path)
    source = Path(cfg.model.hf_path) / "generation_config.json" if cfg.model.hf_path else None
    path = hf.save(model, model_cfg, out, max_shard_size=max_shard_size, dtype=dtype, tokenizer=tokenizer,
                   progress=progress, generation_config=source if source is not None and source.is_file() else None)
    return Export(path, step, model_cfg.without_lora(), tokenizer)
