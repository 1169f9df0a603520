"""A continuous batcher sized by the calls it gets, for callers that cannot say their sizes up front.

A Batcher's KV cache has a fixed number of slots and positions (generate/batcher.py), chosen when it is made,
and every slot computes at every decode step. Evaluation, the CLI and the terminal chat learn their prompt
counts, prompt lengths and token limits call by call, so SizedBatcher keeps one batcher per slot count: the
call's prompt count rounded up to a power of two (at most `slots`), as the batch engine before it padded its
batch, so a one-prompt call after a batch of sixteen does not pay for sixteen, and calls that alternate
between sizes compile once per size. A batcher's positions (prompt bucket plus token limit, both powers of
two) only grow: a call that needs more replaces that batcher with a larger one (a compilation, so a run
rebuilds each a few times at most). They start no larger than the first call needs: every decode step
attends over all of them, masked or not (with the tiny preset on a CPU, 288 positions instead of 96 cost
a tenth of the throughput). The device memory held is at most
about twice the largest batcher's cache (the slot counts halve). One caller at a time: a rebuild closes a
batcher another thread could be using.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator

from flax import nnx

from diabetica_jax.generate.batcher import Batcher, in_compute_dtype
from diabetica_jax.generate.padding import bucket
from diabetica_jax.generate.sampling import SamplingParams
from diabetica_jax.model.qwen import Qwen

MIN_NEW_TOKENS = 16  # the smallest token limit a batcher is built for: small limits share one


class SizedBatcher:
    """`generate` and `stream` as a Batcher's, on a batcher sized for the call. slots: the most slots of one
    batcher (more prompts than that wait for a free one)."""

    def __init__(self, model: Qwen, stop_ids: list[int], pad_id: int, *, slots: int = 16, mesh=None,
                 cache_dtype=None):
        if slots < 1:
            raise ValueError("slots must be positive")
        # the batchers it builds share one copy of the weights in the compute dtype (each would cast its own)
        graphdef, state = nnx.split(model)
        self.model = nnx.merge(graphdef, in_compute_dtype(state, model.runtime.dtype))
        self.stop_ids, self.pad_id = sorted(set(stop_ids)), pad_id
        self.max_slots, self.mesh, self.cache_dtype = slots, mesh, cache_dtype
        self.batchers: dict[int, Batcher] = {}  # by slot count
        self._closers: dict[int, weakref.finalize] = {}
        self._compiled = 0  # programs the closed batchers compiled

    def generate(self, prompts: list[list[int]], max_new_tokens: int, sampling: SamplingParams = SamplingParams()
                 ) -> list[list[int]]:
        """Each prompt's generated tokens, cut before the stop token (Batcher.generate)."""
        if not prompts:
            return []
        return self._fitting(prompts, max_new_tokens).generate(prompts, max_new_tokens, sampling)

    def stream(self, prompt: list[int], max_new_tokens: int, sampling: SamplingParams = SamplingParams()
               ) -> Iterator[int]:
        """The generated tokens one at a time, as they are chosen (Batcher.stream)."""
        return self._fitting([prompt], max_new_tokens).stream(prompt, max_new_tokens, sampling)

    @property
    def compilations(self) -> int:
        """Programs compiled by every batcher this one has built."""
        return self._compiled + sum(b.compilations for b in self.batchers.values())

    def close(self) -> None:
        for slots in list(self.batchers):
            self._close(slots)

    def __enter__(self) -> SizedBatcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _close(self, slots: int) -> None:
        self._compiled += self.batchers.pop(slots).compilations
        self._closers.pop(slots)()

    def _fitting(self, prompts: list[list[int]], max_new_tokens: int) -> Batcher:
        """The batcher of the call's slot count, first replaced by a larger one when the call needs a longer
        prompt or more new tokens than it has. An empty prompt is left to the batcher to refuse."""
        slots = min(self.max_slots, bucket(len(prompts), 1))
        prompt_tokens = bucket(max(len(p) for p in prompts))
        new_tokens = bucket(max_new_tokens, MIN_NEW_TOKENS)
        old = self.batchers.get(slots)
        if old is not None and old.max_prompt_tokens >= prompt_tokens and old.max_new_tokens >= new_tokens:
            return old
        if old is not None:
            prompt_tokens = max(prompt_tokens, old.max_prompt_tokens)
            new_tokens = max(new_tokens, old.max_new_tokens)
            self._close(slots)
        batcher = Batcher(self.model, self.stop_ids, self.pad_id, slots=slots, max_prompt_tokens=prompt_tokens,
                          max_new_tokens=new_tokens, max_waiting=None, greedy_programs=True,
                          cache_dtype=self.cache_dtype, mesh=self.mesh)
        # the scheduler thread keeps its batcher alive: stop it when this object goes, or the cache stays
        self.batchers[slots], self._closers[slots] = batcher, weakref.finalize(self, batcher.close)
        return batcher
