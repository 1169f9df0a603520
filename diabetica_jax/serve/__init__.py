"""Serving: an OpenAI-compatible HTTP API with continuous batching, and the clinic web page."""

from diabetica_jax.serve.model import ServedModel, ServeLimits

__all__ = ["ServeLimits", "ServedModel"]
