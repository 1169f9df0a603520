"""The Qwen family in Flax NNX, its config, attention backends and model construction."""

from diabetica_jax.model.config import ConfigError, QwenConfig
from diabetica_jax.model.factory import abstract_model, create_model, forward
from diabetica_jax.model.qwen import Qwen

__all__ = ["ConfigError", "QwenConfig", "Qwen", "abstract_model", "create_model", "forward"]
