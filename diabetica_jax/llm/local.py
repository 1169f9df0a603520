"""A local checkpoint (or model preset) answering chat requests through the project's own JAX engine.

Requests from the callers' thread pools (curation's teacher and refiner, evaluation's judge) go to one
continuously batched engine (generate/batcher.py): concurrent calls decode together in its slots instead of
queueing behind a lock. To share one model between processes or machines, run `diabetica-jax serve` and
point the section at it with `backend: openai` and its `base_url` instead.
"""

from __future__ import annotations

import logging
from pathlib import Path

from diabetica_jax import hf
from diabetica_jax.generate import SamplingParams
from diabetica_jax.generate.batcher import Batcher, BatcherError
from diabetica_jax.generate.chat import chat_prompt, stop_and_pad
from diabetica_jax.llm.client import LLMError

log = logging.getLogger(__name__)

MAX_PROMPT_TOKENS = 4096  # a refine prompt carries a whole reference answer; a judge prompt question + answer
MAX_NEW_TOKENS = 2048


class LocalModel:
    """A Hugging Face checkpoint directory (or a model preset with random weights) run by diabetica-jax itself.
    `slots`: requests decoded together (the section's `concurrency`)."""

    def __init__(self, model: str, slots: int = 4):
        self.name = f"local:{model}"
        opened = hf.open(model if Path(model).is_dir() else None, preset=model, progress=False)
        self.tokenizer = opened.tokenizer
        stop, pad = stop_and_pad(self.tokenizer)
        self.batcher = Batcher(opened.model, stop, pad, slots=slots,
                               max_prompt_tokens=MAX_PROMPT_TOKENS, max_new_tokens=MAX_NEW_TOKENS, max_waiting=None)

    def chat(self, messages, max_tokens: int, temperature: float) -> str:
        if max_tokens > MAX_NEW_TOKENS:
            log.warning("%s: max_tokens %d capped at %d", self.name, max_tokens, MAX_NEW_TOKENS)
            max_tokens = MAX_NEW_TOKENS
        try:
            [out] = self.batcher.generate([chat_prompt(self.tokenizer, messages)], max_tokens,
                                          SamplingParams(temperature=temperature))
        except BatcherError as e:  # a prompt over the limit: asking again will not help
            raise LLMError(f"{self.name}: {e}") from None
        return self.tokenizer.decode(out, skip_special_tokens=True)

    def close(self) -> None:
        self.batcher.close()
