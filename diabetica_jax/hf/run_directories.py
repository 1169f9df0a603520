"""Training run directories, as far as hf/ knows them: how to tell one, and the reader that train/ registers.

A run directory is train/'s format: RUN/train_config.json (written when training starts) and RUN/checkpoints/
(Orbax steps of the whole train state: the trainable weights, the optimizer moments, the RNG). Restoring a step
means rebuilding that state's layout from the train config: the model (from the run's model.path, its preset, or an
earlier run's checkpoint: init_from), the LoRA split and the optimizer. Moving that read side below hf/ would move
the train config, the optimizer and the checkpoint manager with it: a second train package under the first. So
hf/ keeps only the marker file and the shape of a reader, and train/run_dir.py registers its reader when it is
imported, as the entry points that open run directories (the CLI, serve) do. A process that never imported it is
told, naming the directory, to export the run first.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from jax.sharding import Mesh

from diabetica_jax.hf.errors import HFCheckpointError
from diabetica_jax.model.config import QwenConfig
from diabetica_jax.model.qwen import Qwen

RUN_CONFIG_FILE = "train_config.json"  # the file that makes a folder a run directory


class RunBase(NamedTuple):
    """What a run started from, which its tokenizer and default decoding come from."""

    path: str | None  # the Hugging Face checkpoint, model.path (its tokenizer, generation_config.json); None: a preset
    preset: str | None  # the preset of a run that had no model.path


class RunReader(NamedTuple):
    # the run's base, from its train config; a broken config is a UserError naming the file
    base: Callable[[Path], RunBase]
    # (path, step or None for the latest, mesh or None for all local devices) -> (model, model config, step)
    restore: Callable[[Path, int | None, Mesh | None], tuple[Qwen, QwenConfig, int]]


_reader: RunReader | None = None


def register_run_reader(reader: RunReader) -> None:
    """Let hf.open read training run directories (train/run_dir.py calls it when imported)."""
    global _reader
    _reader = reader


def is_run_directory(path: str | Path) -> bool:
    return (Path(path) / RUN_CONFIG_FILE).is_file()


def run_reader(path: Path) -> RunReader:
    """The registered reader; without one, an HFCheckpointError naming the run directory `path`."""
    if _reader is None:
        raise HFCheckpointError(f"{path}: a training run directory ({RUN_CONFIG_FILE}), which this program does "
                                f"not open; export it (diabetica-jax export --run-dir {path} --out DIR) and use DIR")
    return _reader
