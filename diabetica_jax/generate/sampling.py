"""Next-token choice from float32 logits: repetition penalty, then greedy or temperature / top-k / top-p."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    repetition_penalty: float = 1.0  # 1: off; Diabetica's dialogue evaluation used 1.1
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


def apply_repetition_penalty(logits: jax.Array, seen: jax.Array, penalty: float) -> jax.Array:
    """Tokens already in the sequence become less likely: positive logits divided by the penalty,
    negative ones multiplied (the CTRL rule transformers implements)."""
    if penalty == 1.0:
        return logits
    penalised = jnp.where(logits > 0, logits / penalty, logits * penalty)
    return jnp.where(seen, penalised, logits)


def choose(logits: jax.Array, seen: jax.Array, params: SamplingParams, key: jax.Array) -> jax.Array:
    """Token ids [b] from logits [b, vocab]; `seen` [b, vocab] marks tokens already in each sequence."""
    logits = apply_repetition_penalty(logits.astype(jnp.float32), seen, params.repetition_penalty)
    if params.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / params.temperature
    if params.top_k > 0:
        kth = jax.lax.top_k(logits, params.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if params.top_p < 1.0:
        ordered = jnp.sort(logits, axis=-1)[:, ::-1]
        cumulative = jnp.cumsum(jax.nn.softmax(ordered, axis=-1), axis=-1)
        # smallest set whose probability reaches top_p: keep tokens at least as likely as its last member
        cutoff_index = jnp.sum(cumulative < params.top_p, axis=-1, keepdims=True)
        cutoff = jnp.take_along_axis(ordered, cutoff_index, axis=-1)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)
