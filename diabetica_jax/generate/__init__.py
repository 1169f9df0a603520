"""Text generation: the continuously batched KV-cache engine, prompt padding and sampling."""

from diabetica_jax.generate.batcher import Batcher
from diabetica_jax.generate.padding import LeftPadded, bucket, left_pad
from diabetica_jax.generate.sampling import SamplingParams
from diabetica_jax.generate.sized import SizedBatcher

__all__ = ["Batcher", "LeftPadded", "SamplingParams", "SizedBatcher", "bucket", "left_pad"]
