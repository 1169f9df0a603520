"""Perplexity on held-out text: how well a model predicts passages it was not trained on.

A tiny model trained for minutes cannot answer exam questions, but it does learn the language of the text
it is trained on; perplexity on held-out domain passages, beside perplexity on general text, shows that
learning (and what it costs elsewhere) where accuracy on ten questions is noise.

Each passage is tokenized without special tokens and cut to `MAX_TOKENS`; every token after the first is
predicted from the ones before it. A file's perplexity is exp(total negative log-likelihood / total
predicted tokens): longer passages weigh more, as in a language-modelling benchmark.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diabetica_jax.generate import left_pad
from diabetica_jax.generate.scoring import next_token_logprobs

MAX_TOKENS = 512  # longest passage scored, in tokens; longer ones are cut
NOT_AVAILABLE = "not available (the model gives no token log-likelihoods: an endpoint)"


def passage_nll(graphdef, state, token_lists: list[list[int]], pad_id: int,
                batch_size: int) -> list[tuple[float, int]]:
    """(negative log-likelihood summed over the predicted tokens, number of predicted tokens) per passage."""
    out: list[tuple[float, int]] = []
    for start in range(0, len(token_lists), batch_size):
        chunk = token_lists[start : start + batch_size]
        padded = left_pad(chunk, pad_id, bucketed=True)
        nll, count = _row_nll(graphdef)(state, padded.tokens, padded.positions, padded.valid)
        out += [(float(a), int(b)) for a, b in zip(np.asarray(nll)[: len(chunk)], np.asarray(count)[: len(chunk)])]
    return out


@functools.cache
def _row_nll(graphdef):
    @jax.jit
    def run(state, tokens, positions, valid):
        logprobs, _ = next_token_logprobs(nnx.merge(graphdef, state), tokens, positions, valid)
        # position t predicts token t+1 when both are real (left padding: real tokens are contiguous)
        weights = (valid & jnp.roll(valid, -1, axis=1)).at[:, -1].set(False).astype(jnp.float32)
        return -jnp.sum(logprobs * weights, axis=1), jnp.sum(weights, axis=1).astype(jnp.int32)

    return run


def perplexity_summary(results: list[dict]) -> dict:
    """Token-weighted perplexity over the scored passages (pooling files recomputes it from the items)."""
    scored = [r for r in results if r.get("n_tokens")]
    tokens = sum(r["n_tokens"] for r in scored)
    nll = sum(r["nll"] for r in scored)
    summary = {"n_items": len(results), "n_tokens": tokens, "n_failed": len(results) - len(scored),
               "mean_nll": nll / tokens if tokens else float("nan"),
               "perplexity": math.exp(nll / tokens) if tokens else float("nan")}
    if results and not scored and any(r.get("status") == NOT_AVAILABLE for r in results):
        summary.update(perplexity=NOT_AVAILABLE, mean_nll=NOT_AVAILABLE)
    return summary


def run_perplexity(model, items) -> tuple[list[dict], dict]:
    """Per passage: its predicted tokens, summed negative log-likelihood and perplexity; the file's summary."""
    score = getattr(model, "text_nll", None)
    if score is None:
        results = [{"id": item.id, "text": item.question, "status": NOT_AVAILABLE} for item in items]
        return results, perplexity_summary(results)
    results = []
    for item, (nll, count) in zip(items, score([item.question for item in items])):
        row = {"id": item.id, "text": item.question, "n_tokens": count, "nll": nll,
               "perplexity": math.exp(nll / count) if count else None}
        if not count:
            row["status"] = "skipped: fewer than two tokens"
        results.append(row)
    return results, perplexity_summary(results)
