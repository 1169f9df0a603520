"""The bridge to Hugging Face: config.json + safetensors in, and back out; tokenizers; generation_config.json;
and `open`, one way to open a model wherever it lives (a checkpoint, a training run, a preset)."""

from diabetica_jax.hf.config_json import config_from_dict, config_from_file, config_to_dict
from diabetica_jax.hf.errors import HFCheckpointError
from diabetica_jax.hf.exporter import save
from diabetica_jax.hf.generation_config import read_generation_config
from diabetica_jax.hf.loader import load, read_config
from diabetica_jax.hf.presets import list_presets, preset_config
from diabetica_jax.hf.run_directories import RunBase, RunReader, is_run_directory, register_run_reader
from diabetica_jax.hf.sources import ModelSource, OpenedModel, find, open
from diabetica_jax.hf.tokenizer import embedded_tokenizer, load_tokenizer

__all__ = ["HFCheckpointError", "ModelSource", "OpenedModel", "RunBase", "RunReader", "config_from_dict",
           "config_from_file", "config_to_dict", "embedded_tokenizer", "find", "is_run_directory", "list_presets",
           "load", "load_tokenizer", "open", "preset_config", "read_config", "read_generation_config",
           "register_run_reader", "save"]
