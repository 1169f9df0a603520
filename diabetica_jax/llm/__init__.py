"""Talking to LLMs: an OpenAI-compatible endpoint or a local checkpoint, behind one cached interface.

Curation's teacher and refiner and evaluation's judge all get their backend from `make_backend`.
"""

from __future__ import annotations

from pathlib import Path

from diabetica_jax.llm.client import CachedChat, ChatBackend, LLMError, OpenAIClient
from diabetica_jax.llm.config import BackendSection


def make_backend(section: BackendSection, cache_dir: str | Path) -> CachedChat:
    """The backend a config section names, behind the disk cache in `cache_dir`."""
    if section.backend == "openai":
        backend: ChatBackend = OpenAIClient(section.base_url, section.model, section.api_key_env, section.timeout)
    elif section.backend == "local":
        from diabetica_jax.llm.local import LocalModel  # loads JAX models: only when asked for

        backend = LocalModel(section.model, slots=section.concurrency)
    else:
        raise ValueError(f"no LLM backend configured (backend: {section.backend!r})")
    return CachedChat(backend, cache_dir, retries=section.retries)


__all__ = ["BackendSection", "CachedChat", "ChatBackend", "LLMError", "OpenAIClient", "make_backend"]
