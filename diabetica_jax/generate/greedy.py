"""Greedy decoding without a KV cache: each step reruns the model over a fixed-size token buffer.

Quadratic in length, so it is only for short outputs of small models (the embedded default, smoke
tests). The whole loop is one jitted `lax.while_loop` with static shapes. Prompts are left-padded;
padding sits in its own attention segment and real tokens get positions counted from their first
token, so a padded row computes what it would alone.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diabetica_jax.model.qwen import Qwen


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids [batch, max_len] padded on the left, and the validity mask."""
    width = max(len(p) for p in prompts)
    tokens = np.full((len(prompts), width), pad_id, dtype=np.int32)
    valid = np.zeros((len(prompts), width), dtype=bool)
    for row, prompt in enumerate(prompts):
        if prompt:
            tokens[row, width - len(prompt):] = prompt
            valid[row, width - len(prompt):] = True
    return tokens, valid


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens"))
def _decode(graphdef, state, tokens, valid, stop_ids, max_new_tokens: int):
    model = nnx.merge(graphdef, state)
    batch, prompt_len = tokens.shape
    buf = jnp.pad(tokens, ((0, 0), (0, max_new_tokens)))
    seen = jnp.pad(valid, ((0, 0), (0, max_new_tokens)), constant_values=True)  # generated tokens are real

    def not_done(carry):
        step, _, finished = carry
        return (step < max_new_tokens) & ~jnp.all(finished)

    def one_token(carry):
        step, buf, finished = carry
        segment = seen.astype(jnp.int32)  # 1 = real token, 0 = left padding
        positions = jnp.maximum(jnp.cumsum(segment, axis=1) - 1, 0)
        logits = model(buf, positions, segment)
        index = prompt_len + step
        next_logits = jax.lax.dynamic_index_in_dim(logits, index - 1, axis=1, keepdims=False)
        token = jnp.argmax(next_logits, axis=-1).astype(buf.dtype)
        token = jnp.where(finished, stop_ids[0], token)
        buf = jax.lax.dynamic_update_index_in_dim(buf, token, index, axis=1)
        finished = finished | jnp.isin(token, stop_ids)
        return step + 1, buf, finished

    init = (jnp.int32(0), buf, jnp.zeros((batch,), dtype=bool))
    steps, buf, _ = jax.lax.while_loop(not_done, one_token, init)
    return buf[:, prompt_len:], steps


def greedy_generate(model: Qwen, prompts: list[list[int]], max_new_tokens: int, stop_ids: list[int], pad_id: int):
    """New token ids per prompt (stopping at, and excluding, the first stop id)."""
    tokens, valid = left_pad(prompts, pad_id)
    graphdef, state = nnx.split(model)
    new, _ = _decode(graphdef, state, tokens, valid, jnp.asarray(stop_ids, dtype=jnp.int32), max_new_tokens)
    out = []
    for row in np.asarray(new).tolist():
        cut = next((i for i, t in enumerate(row) if t in stop_ids), len(row))
        out.append(row[:cut])
    return out
