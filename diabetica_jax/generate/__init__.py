"""Text generation: the KV-cache engine and sampling."""

from diabetica_jax.generate.engine import Engine, bucket
from diabetica_jax.generate.sampling import SamplingParams

__all__ = ["Engine", "SamplingParams", "bucket"]
