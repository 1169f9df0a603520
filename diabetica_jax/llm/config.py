"""The config section that names an LLM backend: curation's teacher and refiner, evaluation's judge."""

from __future__ import annotations

import dataclasses
from typing import Literal

from diabetica_jax.configuration import FieldError, field, require_positive

BACKENDS = ("none", "openai", "local")


@dataclasses.dataclass(frozen=True)
class BackendSection:
    backend: Literal[BACKENDS] = field("none", "none, an OpenAI-compatible endpoint, or a local model")
    base_url: str = field("http://127.0.0.1:8000/v1", "OpenAI-compatible endpoint")
    model: str = field("", "model name (openai) or checkpoint directory / preset (local)")
    api_key_env: str | None = field(None, "environment variable holding the API key (never logged)")
    timeout: float = field(60.0, "seconds per request")
    retries: int = field(3, "attempts per request, with exponential backoff")
    concurrency: int = field(4, "requests in flight")

    def __post_init__(self):
        require_positive(self, "timeout", "retries", "concurrency")
        if self.backend != "none" and not self.model:
            raise FieldError("model", f"required with backend {self.backend!r}")
