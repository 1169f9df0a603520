"""The generation engine: batched prefill and decode with a KV cache, one jitted program per shape bucket.

Prompts are left-padded (generate/padding.py) to a power-of-two bucket (and the batch to a power of
two), so a stream of mixed-length requests compiles only a handful of programs. Padding is masked out
through the cache's validity mask, and real tokens get positions counted from their first token, so a
padded row computes exactly what it would alone. The decode loop runs inside `jax.lax.while_loop` and
stops when every row has produced a stop token or `max_new_tokens`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diabetica_jax.generate.padding import LeftPadded, left_pad
from diabetica_jax.generate.sampling import SamplingParams, choose
from diabetica_jax.model.qwen import KVCache, Qwen


class DecodeState(NamedTuple):
    """The batch decode loop's state, carried through `jax.lax.while_loop`."""

    step: jax.Array  # new tokens chosen so far
    logits: jax.Array  # [b, vocab] float32 logits for the next token
    cache: KVCache
    key_valid: jax.Array  # [b, max_len] cache slots holding real tokens
    seen: jax.Array  # [b, vocab] tokens already in each row (repetition penalty)
    position: jax.Array  # [b] rope position of the next token
    out: jax.Array  # [b, max_new_tokens] chosen tokens; pad_id once a row is done
    done: jax.Array  # [b] rows that produced a stop token
    key: jax.Array


class StreamState(NamedTuple):
    """What streaming keeps between its per-token decode calls (batch 1)."""

    cache: KVCache
    key_valid: jax.Array
    seen: jax.Array
    position: jax.Array
    key: jax.Array


class Engine:
    def __init__(self, model: Qwen, stop_ids: list[int], pad_id: int, mesh=None, cache_dtype=None):
        self.graphdef, self.state = nnx.split(model)
        self.config = model.config
        self.stop_ids = np.asarray(sorted(set(stop_ids)), dtype=np.int32)
        self.pad_id = pad_id
        self.mesh = mesh
        self.cache_dtype = jnp.dtype(cache_dtype or model.runtime.dtype)
        self.compilations = 0  # programs traced so far (one per shape bucket and sampling setting)
        # Compiled programs cached per engine (an lru_cache on the method would keep every engine alive).
        self._program = functools.lru_cache(maxsize=64)(self._build_program)
        self._stream_programs = functools.lru_cache(maxsize=16)(self._build_stream_programs)

    # ---- batch generation (evaluation, benchmarks) ------------------------------------------------

    def generate(self, prompts: list[list[int]], max_new_tokens: int, params: SamplingParams = SamplingParams()):
        """New token ids per prompt, cut before the first stop token."""
        if not prompts:
            return []
        padded = left_pad(prompts, self.pad_id, bucketed=True)
        # the seed enters as the PRNG key, not the program: one compilation serves every seed
        run = self._program(*padded.tokens.shape, max_new_tokens, dataclasses.replace(params, seed=0))
        with self._mesh():
            out, lengths = run(self.state, padded, jax.random.PRNGKey(params.seed))
        out, lengths = np.asarray(out), np.asarray(lengths)
        return [out[i, : lengths[i]].tolist() for i in range(len(prompts))]

    def _mesh(self):
        return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()

    def _prefill(self, model: Qwen, padded: LeftPadded, max_len: int):
        """Run left-padded prompts into a fresh cache of max_len slots. Returns the last position's logits,
        the cache, the slots holding real tokens and the tokens each row has seen."""
        cfg = self.config
        batch, width = padded.tokens.shape
        shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
        cache = KVCache(jnp.zeros(shape, self.cache_dtype), jnp.zeros(shape, self.cache_dtype))
        key_valid = jnp.zeros((batch, max_len), bool).at[:, :width].set(padded.valid)
        seen = jnp.zeros((batch, cfg.vocab_size), bool).at[jnp.arange(batch)[:, None], padded.tokens].max(padded.valid)
        logits, cache = model.decode_step(padded.tokens, padded.positions, cache, 0, key_valid)
        return logits, cache, key_valid, seen

    def _build_program(self, batch: int, width: int, max_new_tokens: int, params: SamplingParams):
        graphdef, stop_ids, pad_id = self.graphdef, jnp.asarray(self.stop_ids), self.pad_id

        def run(state, padded, key):
            self.compilations += 1  # runs at trace time only
            model = nnx.merge(graphdef, state)
            logits, cache, key_valid, seen = self._prefill(model, padded, width + max_new_tokens)

            def step(s: DecodeState) -> DecodeState:
                key, sub = jax.random.split(s.key)
                token = jnp.where(s.done, pad_id, choose(s.logits, s.seen, params, sub))
                slot = width + s.step
                key_valid = s.key_valid.at[:, slot].set(~s.done)  # a finished row's pad tokens stay masked
                logits, cache = model.decode_step(token[:, None], s.position[:, None], s.cache, slot, key_valid)
                return DecodeState(
                    step=s.step + 1, logits=logits, cache=cache, key_valid=key_valid,
                    seen=s.seen.at[jnp.arange(batch), token].set(True), position=s.position + 1,
                    out=s.out.at[:, s.step].set(token), done=s.done | jnp.isin(token, stop_ids), key=key,
                )

            def keep_going(s: DecodeState):
                return (s.step < max_new_tokens) & ~jnp.all(s.done)

            init = DecodeState(
                step=jnp.int32(0), logits=logits, cache=cache, key_valid=key_valid, seen=seen,
                position=padded.positions[:, -1] + 1, out=jnp.full((batch, max_new_tokens), pad_id, jnp.int32),
                done=jnp.zeros((batch,), bool), key=key,
            )
            final = jax.lax.while_loop(keep_going, step, init)
            out = final.out
            is_stop = jnp.isin(out, stop_ids) | (out == pad_id) & (jnp.arange(max_new_tokens) >= final.step)
            lengths = jnp.where(is_stop.any(axis=1), jnp.argmax(is_stop, axis=1), max_new_tokens)
            return out, lengths

        return jax.jit(run)

    # ---- streaming (interactive chat) --------------------------------------------------------------

    def stream(self, prompt: list[int], max_new_tokens: int, params: SamplingParams = SamplingParams()):
        """Yield new token ids one at a time (one jitted decode call per token, so they can be shown)."""
        padded = left_pad([prompt], self.pad_id, bucketed=True)
        width = padded.tokens.shape[1]
        prefill, decode = self._stream_programs(width, width + max_new_tokens, dataclasses.replace(params, seed=0))
        with self._mesh():
            token, carry = prefill(self.state, padded, jax.random.PRNGKey(params.seed))
            for i in range(max_new_tokens):
                token_id = int(token[0])
                if token_id in self.stop_ids:
                    return
                yield token_id
                if i + 1 < max_new_tokens:
                    token, carry = decode(self.state, carry, token, width + i)

    def _build_stream_programs(self, width: int, max_len: int, params: SamplingParams):
        graphdef = self.graphdef

        def pick(logits, s: StreamState):
            key, sub = jax.random.split(s.key)
            token = choose(logits, s.seen, params, sub)
            return token, s._replace(seen=s.seen.at[0, token].set(True), key=key)

        @jax.jit
        def prefill(state, padded, key):
            logits, cache, key_valid, seen = self._prefill(nnx.merge(graphdef, state), padded, max_len)
            return pick(logits, StreamState(cache, key_valid, seen, padded.positions[:, -1] + 1, key))

        @functools.partial(jax.jit, donate_argnums=(1,))
        def decode(state, s: StreamState, token, slot):
            model = nnx.merge(graphdef, state)
            key_valid = s.key_valid.at[:, slot].set(True)
            logits, cache = model.decode_step(token[:, None], s.position[:, None], s.cache, slot, key_valid)
            return pick(logits, StreamState(cache, key_valid, s.seen, s.position + 1, s.key))

        return prefill, decode
