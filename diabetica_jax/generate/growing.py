"""A continuous batcher sized by the calls it gets, for callers that cannot say their sizes up front.

A Batcher's KV cache has a fixed number of slots and positions (generate/batcher.py), chosen when it is
made. Evaluation, the CLI and the terminal chat learn their prompt lengths, token limits and prompt counts
call by call, so GrowingBatcher keeps one batcher and replaces it with a larger one when a call does not fit:
every size rounded up to a power of two and never shrunk, so a run rebuilds (and compiles) a few times at
most, and a call pays for no more slots or positions than the calls so far have needed. One caller at a
time: a rebuild closes the batcher another thread could be using.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator

from diabetica_jax.generate.batcher import Batcher
from diabetica_jax.generate.padding import bucket
from diabetica_jax.generate.sampling import SamplingParams
from diabetica_jax.model.qwen import Qwen

MIN_NEW_TOKENS = 16  # the smallest token limit a batcher is built for: small limits share one


class GrowingBatcher:
    """`generate` and `stream` as a Batcher's, on a batcher big enough for the call. slots: the most slots
    built (more prompts than that wait for a free one)."""

    def __init__(self, model: Qwen, stop_ids: list[int], pad_id: int, *, slots: int = 16, mesh=None,
                 cache_dtype=None):
        if slots < 1:
            raise ValueError("slots must be positive")
        self.model, self.stop_ids, self.pad_id = model, sorted(set(stop_ids)), pad_id
        self.max_slots, self.mesh, self.cache_dtype = slots, mesh, cache_dtype
        self.batcher: Batcher | None = None
        self._compiled = 0  # programs the replaced batchers compiled
        self._close_at_exit = None

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
        return self._compiled + (self.batcher.compilations if self.batcher else 0)

    def close(self) -> None:
        if self.batcher is not None:
            self._compiled += self.batcher.compilations
            self._close_at_exit()
            self.batcher = None

    def __enter__(self) -> GrowingBatcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _fitting(self, prompts: list[list[int]], max_new_tokens: int) -> Batcher:
        """The batcher, first replaced by a larger one when the call needs more slots, a longer prompt or
        more new tokens than it has. An empty prompt is left to the batcher to refuse."""
        slots = min(self.max_slots, bucket(len(prompts), 1))
        prompt_tokens = bucket(max(len(p) for p in prompts))
        new_tokens = bucket(max_new_tokens, MIN_NEW_TOKENS)
        old = self.batcher
        if old is not None and (old.num_slots >= slots and old.max_prompt_tokens >= prompt_tokens
                                and old.max_new_tokens >= new_tokens):
            return old
        if old is not None:
            slots, prompt_tokens = max(slots, old.num_slots), max(prompt_tokens, old.max_prompt_tokens)
            new_tokens = max(new_tokens, old.max_new_tokens)
            self.close()
        batcher = Batcher(self.model, self.stop_ids, self.pad_id, slots=slots, max_prompt_tokens=prompt_tokens,
                          max_new_tokens=new_tokens, max_waiting=None, cache_dtype=self.cache_dtype, mesh=self.mesh)
        # the scheduler thread keeps its batcher alive: stop it when this object goes, or the cache stays
        self.batcher, self._close_at_exit = batcher, weakref.finalize(self, batcher.close)
        return batcher
