"""Serving: an OpenAI-compatible HTTP API with continuous batching, and the clinic web page."""

from diabetica_jax.serve.config import ServeConfig, ServeLimits

__all__ = ["ServeConfig", "ServeLimits", "ServedModel"]


def __getattr__(name: str):
    # ServedModel loads JAX: imported when first asked for, so that `serve --help` (which reads serve/config.py)
    # answers without it
    if name == "ServedModel":
        from diabetica_jax.serve.model import ServedModel

        return ServedModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
