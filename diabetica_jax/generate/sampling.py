"""Next-token choice from float32 logits: repetition penalty, then greedy or temperature / top-k / top-p."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

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


class RowSampling(NamedTuple):
    """Sampling settings per batch row, as arrays [b], so rows with different settings (requests of a
    continuously batched server) share one compiled decode step. frequency/presence penalties follow
    the OpenAI API: logit -= frequency * count + presence * (count > 0), over the tokens generated so far."""

    temperature: jax.Array  # float32; 0: greedy
    top_k: jax.Array  # int32; 0: off
    top_p: jax.Array  # float32; 1: off
    repetition_penalty: jax.Array  # float32; 1: off (over prompt and generated tokens, like `choose`)
    frequency_penalty: jax.Array  # float32; 0: off
    presence_penalty: jax.Array  # float32; 0: off

    @staticmethod
    def of(params: SamplingParams, frequency_penalty: float = 0.0, presence_penalty: float = 0.0) -> RowSampling:
        """One row's settings (arrays of shape [])."""
        return RowSampling(jnp.float32(params.temperature), jnp.int32(params.top_k), jnp.float32(params.top_p),
                           jnp.float32(params.repetition_penalty), jnp.float32(frequency_penalty),
                           jnp.float32(presence_penalty))

    @staticmethod
    def neutral(rows: int) -> RowSampling:
        """Greedy, no filters, no penalties, for `rows` rows."""
        def f(value):  # separate buffers: the batcher donates each field
            return jnp.full((rows,), value, jnp.float32)

        return RowSampling(f(0.0), jnp.zeros((rows,), jnp.int32), f(1.0), f(1.0), f(0.0), f(0.0))


def choose_rows(logits: jax.Array, seen: jax.Array, counts: jax.Array, rows: RowSampling,
                keys: jax.Array) -> jax.Array:
    """Token ids [b] from logits [b, vocab] with each row's own settings; `keys` [b] are per-row PRNG keys.

    Greedy rows give exactly what `choose` gives them. The sort that top-k/top-p need runs only when some
    row samples (a `lax.cond`), so an all-greedy batch pays for an argmax alone.
    """
    logits = logits.astype(jnp.float32)
    penalty = rows.repetition_penalty[:, None]
    logits = jnp.where(seen & (penalty != 1.0), jnp.where(logits > 0, logits / penalty, logits * penalty), logits)
    logits = logits - rows.frequency_penalty[:, None] * counts - rows.presence_penalty[:, None] * (counts > 0)
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def sample(logits):
        vocab = logits.shape[-1]
        scaled = logits / jnp.maximum(rows.temperature, 1e-6)[:, None]
        ordered = -jnp.sort(-scaled, axis=-1)
        k = jnp.where(rows.top_k > 0, jnp.minimum(rows.top_k, vocab), vocab)[:, None]
        kth = jnp.take_along_axis(ordered, k - 1, axis=-1)
        scaled = jnp.where(scaled < kth, -jnp.inf, scaled)
        ordered = jnp.where(jnp.arange(vocab) < k, ordered, -jnp.inf)
        cumulative = jnp.cumsum(jax.nn.softmax(ordered, axis=-1), axis=-1)
        cutoff_index = jnp.minimum(jnp.sum(cumulative < rows.top_p[:, None], axis=-1, keepdims=True), vocab - 1)
        cutoff = jnp.where(rows.top_p[:, None] < 1.0, jnp.take_along_axis(ordered, cutoff_index, axis=-1), -jnp.inf)
        scaled = jnp.where(scaled < cutoff, -jnp.inf, scaled)
        sampled = jax.vmap(lambda key, row: jax.random.categorical(key, row))(keys, scaled).astype(jnp.int32)
        return jnp.where(rows.temperature > 0, sampled, greedy)

    return jax.lax.cond(jnp.any(rows.temperature > 0), sample, lambda _: greedy, logits)
