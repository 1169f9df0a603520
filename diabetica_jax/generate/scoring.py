"""Prompt scoring: every prompt token's log-probability given the tokens before it, with the likeliest
alternatives at each position (what /v1/completions returns for `echo` with `logprobs`, and what
lm-evaluation-harness reads as a continuation's log-likelihood).

One forward pass over the prompt, left-padded to a power-of-two bucket (one compiled program per bucket);
the vocabulary projection runs over chunks of positions so that no [seq, vocab] float32 block is built
whole. Log-probabilities are the model's own: no temperature, penalty or bias. Perplexity scoring
(evaluation/perplexity.py) sums the same per-token log-probabilities.
"""

from __future__ import annotations

import functools
import threading

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diabetica_jax.generate.padding import left_pad
from diabetica_jax.model.chunks import chunk_size

TOP_ALTERNATIVES = 5  # alternatives computed per position (the legacy completions API's `logprobs` maximum)
LOGIT_CHUNK = 32  # positions projected to the vocabulary at once


def next_token_logprobs(model, tokens, positions, valid, alternatives: int = 0, targets=None):
    """For left-padded rows [b, t]: the log-probability of token p+1 at each position p [b, t] (the last position's
    is meaningless: nothing follows it), and with `alternatives` > 0 the likeliest ids there and their
    log-probabilities [b, t, alternatives] (else None). `targets` [b, t]: the tokens to score at each position
    instead of the row's next ones (lm-eval's windows, whose last target is not in the input). The vocabulary
    projection runs LOGIT_CHUNK positions at a time. Traced: call it inside jit."""
    hidden = model.hidden_states(tokens, positions, valid.astype(jnp.int32))  # padding is segment 0
    if targets is None:
        targets = jnp.roll(tokens, -1, axis=1)
    b, t, _ = hidden.shape
    c = chunk_size(t, LOGIT_CHUNK)

    def chunks(x):
        return jnp.swapaxes(x.reshape((b, t // c, c) + x.shape[2:]), 0, 1)

    def unchunk(x):
        return jnp.swapaxes(x, 0, 1).reshape((b, t) + x.shape[3:])

    def step(_, inputs):
        h, y = inputs
        logprobs = jax.nn.log_softmax(model.logits(h).astype(jnp.float32), axis=-1)
        chosen = jnp.take_along_axis(logprobs, y[..., None], axis=-1)[..., 0]
        return None, (chosen, jax.lax.top_k(logprobs, alternatives) if alternatives else None)

    _, (chosen, top) = jax.lax.scan(step, None, (chunks(hidden), chunks(targets)))
    return unchunk(chosen), None if top is None else (unchunk(top[1]), unchunk(top[0]))


class PromptScorer:
    """Scores prompts with a model's weights; one call at a time (each holds a prompt's activations)."""

    def __init__(self, model, pad_id: int):
        self.graphdef, self.state = nnx.split(model)
        self.pad_id = pad_id
        self._programs = functools.lru_cache(maxsize=None)(self._build)
        self._lock = threading.Lock()

    def score(self, tokens: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For a prompt of n tokens: the log-probability of tokens 1..n-1 given the ones before [n-1], and at
        each of those positions the TOP_ALTERNATIVES likeliest ids [n-1, k] and their log-probabilities."""
        padded = left_pad([tokens], self.pad_id, bucketed=True)
        width = padded.tokens.shape[1]
        with self._lock:
            chosen, (top_ids, top) = self._programs(width)(self.state, padded.tokens, padded.positions, padded.valid)
        start = width - len(tokens)  # left padding: the prompt is the last len(tokens) positions
        # position p predicts token p+1: the prompt's predictions are at start .. width-2
        return (np.asarray(chosen)[0, start:-1], np.asarray(top_ids)[0, start:-1], np.asarray(top)[0, start:-1])

    def _build(self, width: int):  # one program per prompt bucket (`width` keys the cache)
        graphdef = self.graphdef

        @jax.jit
        def run(state, tokens, positions, valid):
            return next_token_logprobs(nnx.merge(graphdef, state), tokens, positions, valid, TOP_ALTERNATIVES)

        return run
