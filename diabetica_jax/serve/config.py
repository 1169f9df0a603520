"""The server's settings (`diabetica-jax serve [CONFIG] [key=value ...]`): the model, the address, the limits.

A YAML file and `key=value` overrides, as for every stage (configuration.load_config); each option of the
command is the shorthand of one key (`--port 8001` is `port=8001`). Importing this module loads no JAX, so that
`serve --help` shows every default from here.
"""

from __future__ import annotations

import dataclasses

from diabetica_jax.configuration import FieldError, field
from diabetica_jax.model.choice import ModelChoice

MIB = 2**20


@dataclasses.dataclass(frozen=True)
class ServeLimits:
    """What one server takes: slots decoding together, the longest prompt, the most new tokens a request may ask
    for, and how many requests may wait for a slot (more are refused with 429)."""

    slots: int = field(8, "requests decoded together")
    max_prompt_tokens: int = field(1024, "longest prompt accepted, in tokens")
    max_new_tokens: int = field(512, "most new tokens one request may ask for: its max_tokens")
    max_waiting: int = field(64, "requests queued for a slot before 429s")
    prefills_per_step: int = field(4, "prompts prefilled between two decoding steps")

    def __post_init__(self):
        for name, value in dataclasses.asdict(self).items():
            if not isinstance(value, int) or value < (0 if name == "max_waiting" else 1):
                raise FieldError(name, f"must be a positive integer, not {value!r}")


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    model: ModelChoice = field(ModelChoice(), "the model served (default: the tiny preset with random weights, a "
                               "smoke test)")
    name: str | None = field(None, "model name clients ask for (default: the directory's name)")
    host: str = field("127.0.0.1", "address to bind; 127.0.0.1: this machine only, 0.0.0.0: every interface")
    port: int = field(8000, "port to listen on")
    api_key_env: str | None = field(None, "environment variable holding the API key clients must send")
    limits: ServeLimits = field(ServeLimits(), "what one request, and the server, may take")
    max_body_mb: float = field(8.0, "largest request body, in MiB; larger gets 413")
    body_timeout: float = field(30.0, "seconds a request's body may take to arrive; slower gets 408")
    warmup: bool = field(True, "compile at start (false: on the first requests)")

    @property
    def max_body_bytes(self) -> int:
        return round(self.max_body_mb * MIB)
