"""Text generation: the KV-cache engine, prompt padding and sampling."""

from diabetica_jax.generate.engine import Engine
from diabetica_jax.generate.padding import LeftPadded, bucket, left_pad
from diabetica_jax.generate.sampling import SamplingParams

__all__ = ["Engine", "LeftPadded", "SamplingParams", "bucket", "left_pad"]
