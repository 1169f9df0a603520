"""The bridge to Hugging Face: config.json + safetensors in, and back out; tokenizers."""

from diabetica_jax.hf.errors import HFCheckpointError
from diabetica_jax.hf.exporter import save
from diabetica_jax.hf.loader import load, read_config
from diabetica_jax.hf.tokenizer import embedded_tokenizer, load_tokenizer

__all__ = ["HFCheckpointError", "embedded_tokenizer", "load", "load_tokenizer", "read_config", "save"]
