"""The generation engine: batched prefill and decode with a KV cache, one jitted program per shape bucket.

Prompts are left-padded to a power-of-two bucket (and the batch to a power of two), so a stream of
mixed-length requests compiles only a handful of programs. Padding is masked out through the cache's
validity mask, and real tokens get positions counted from their first token, so a padded row
computes exactly what it would alone. The decode loop runs inside `jax.lax.while_loop` and stops
when every row has produced a stop token or `max_new_tokens`.
"""

from __future__ import annotations

import contextlib
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diabetica_jax.generate.sampling import SamplingParams, choose
from diabetica_jax.model.qwen import Qwen

MIN_BUCKET = 16


def bucket(n: int, minimum: int = MIN_BUCKET) -> int:
    return max(minimum, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


class Engine:
    def __init__(self, model: Qwen, stop_ids: list[int], pad_id: int, mesh=None, cache_dtype=None):
        self.graphdef, self.state = nnx.split(model)
        self.config = model.config
        self.stop_ids = np.asarray(sorted(set(stop_ids)), dtype=np.int32)
        self.pad_id = pad_id
        self.mesh = mesh
        self.cache_dtype = jnp.dtype(cache_dtype or model.config.dtype)
        self.compilations = 0  # programs traced so far (one per shape bucket and sampling setting)

    # ---- batch generation (evaluation, benchmarks) ------------------------------------------------

    def generate(self, prompts: list[list[int]], max_new_tokens: int, params: SamplingParams = SamplingParams()):
        """New token ids per prompt, cut before the first stop token."""
        if not prompts:
            return []
        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        batch, width = bucket(len(prompts), 1), bucket(max(len(p) for p in prompts))
        tokens = np.full((batch, width), self.pad_id, np.int32)
        valid = np.zeros((batch, width), bool)
        for row, prompt in enumerate(prompts):
            tokens[row, width - len(prompt):] = prompt
            valid[row, width - len(prompt):] = True
        valid[len(prompts):, -1] = True  # filler rows: one real token so nothing is fully masked
        run = self._program(batch, width, max_new_tokens, params)
        with self._mesh():
            out, lengths = run(self.state, tokens, valid, jax.random.PRNGKey(params.seed))
        out, lengths = np.asarray(out), np.asarray(lengths)
        return [out[i, : lengths[i]].tolist() for i in range(len(prompts))]

    def _mesh(self):
        return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()

    @functools.lru_cache(maxsize=64)
    def _program(self, batch: int, width: int, max_new_tokens: int, params: SamplingParams):
        graphdef, cfg, stop_ids, pad_id = self.graphdef, self.config, jnp.asarray(self.stop_ids), self.pad_id
        max_len = width + max_new_tokens
        cache_shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)

        def run(state, tokens, valid, key):
            self.compilations += 1  # runs at trace time only
            model = nnx.merge(graphdef, state)
            cache = (jnp.zeros(cache_shape, self.cache_dtype), jnp.zeros(cache_shape, self.cache_dtype))
            key_valid = jnp.zeros((batch, max_len), bool).at[:, :width].set(valid)
            positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0).astype(jnp.int32)
            seen = jnp.zeros((batch, cfg.vocab_size), bool)
            seen = seen.at[jnp.arange(batch)[:, None], tokens].max(valid)
            logits, cache = model.decode_step(tokens, positions, cache, 0, key_valid)
            next_position = positions[:, -1] + 1

            def step(carry):
                i, logits, cache, key_valid, seen, position, out, done, key = carry
                key, sub = jax.random.split(key)
                token = choose(logits, seen, params, sub)
                token = jnp.where(done, pad_id, token)
                out = out.at[:, i].set(token)
                stopped = jnp.isin(token, stop_ids)
                seen = seen.at[jnp.arange(batch), token].set(True)
                slot = width + i
                key_valid = key_valid.at[:, slot].set(~done)
                logits, cache = model.decode_step(token[:, None], position[:, None], cache, slot, key_valid)
                return i + 1, logits, cache, key_valid, seen, position + 1, out, done | stopped, key

            def keep_going(carry):
                i, done = carry[0], carry[7]
                return (i < max_new_tokens) & ~jnp.all(done)

            out = jnp.full((batch, max_new_tokens), pad_id, jnp.int32)
            init = (jnp.int32(0), logits, cache, key_valid, seen, next_position, out, jnp.zeros((batch,), bool), key)
            final = jax.lax.while_loop(keep_going, step, init)
            out = final[6]
            is_stop = jnp.isin(out, stop_ids) | (out == pad_id) & (jnp.arange(max_new_tokens) >= final[0])
            lengths = jnp.where(is_stop.any(axis=1), jnp.argmax(is_stop, axis=1), max_new_tokens)
            return out, lengths

        return jax.jit(run)

    # ---- streaming (interactive chat) --------------------------------------------------------------

    def stream(self, prompt: list[int], max_new_tokens: int, params: SamplingParams = SamplingParams()):
        """Yield new token ids one at a time (one jitted decode call per token, so they can be shown)."""
        width = bucket(len(prompt))
        max_len = width + max_new_tokens
        prefill, decode = self._stream_programs(width, max_len, params)
        tokens = np.full((1, width), self.pad_id, np.int32)
        tokens[0, width - len(prompt):] = prompt
        valid = np.zeros((1, width), bool)
        valid[0, width - len(prompt):] = True
        key = jax.random.PRNGKey(params.seed)
        with self._mesh():
            token, carry = prefill(self.state, tokens, valid, key)
            for i in range(max_new_tokens):
                token_id = int(token[0])
                if token_id in self.stop_ids:
                    return
                yield token_id
                if i + 1 < max_new_tokens:
                    token, carry = decode(self.state, carry, token, width + i)

    @functools.lru_cache(maxsize=16)
    def _stream_programs(self, width: int, max_len: int, params: SamplingParams):
        graphdef, cfg = self.graphdef, self.config
        cache_shape = (cfg.num_layers, 1, max_len, cfg.num_kv_heads, cfg.head_dim)

        @jax.jit
        def prefill(state, tokens, valid, key):
            model = nnx.merge(graphdef, state)
            cache = (jnp.zeros(cache_shape, self.cache_dtype), jnp.zeros(cache_shape, self.cache_dtype))
            key_valid = jnp.zeros((1, max_len), bool).at[:, :width].set(valid)
            positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0).astype(jnp.int32)
            seen = jnp.zeros((1, cfg.vocab_size), bool).at[0, tokens[0]].max(valid[0])
            logits, cache = model.decode_step(tokens, positions, cache, 0, key_valid)
            key, sub = jax.random.split(key)
            token = choose(logits, seen, params, sub)
            seen = seen.at[0, token].set(True)
            return token, (cache, key_valid, seen, positions[:, -1] + 1, key)

        @functools.partial(jax.jit, donate_argnums=(1,))
        def decode(state, carry, token, slot):
            model = nnx.merge(graphdef, state)
            cache, key_valid, seen, position, key = carry
            key_valid = key_valid.at[:, slot].set(True)
            logits, cache = model.decode_step(token[:, None], position[:, None], cache, slot, key_valid)
            key, sub = jax.random.split(key)
            token = choose(logits, seen, params, sub)
            seen = seen.at[0, token].set(True)
            return token, (cache, key_valid, seen, position + 1, key)

        return prefill, decode
