"""diabetica-jax: curate, train, evaluate and export diabetes-specialised Qwen models in JAX."""

__version__ = "0.1.0"
