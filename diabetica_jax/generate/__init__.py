"""Text generation: the continuously batched KV-cache engine, prompt padding and sampling."""

from diabetica_jax.generate.batcher import Batcher
from diabetica_jax.generate.growing import GrowingBatcher
from diabetica_jax.generate.padding import LeftPadded, bucket, left_pad
from diabetica_jax.generate.sampling import SamplingParams

__all__ = ["Batcher", "GrowingBatcher", "LeftPadded", "SamplingParams", "bucket", "left_pad"]
