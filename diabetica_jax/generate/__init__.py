"""Text generation with Qwen models."""

from diabetica_jax.generate.greedy import greedy_generate, left_pad

__all__ = ["greedy_generate", "left_pad"]
