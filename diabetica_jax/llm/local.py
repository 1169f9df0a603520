"""A local checkpoint (or model preset) answering chat requests through the project's own JAX engine."""

from __future__ import annotations

import threading
from pathlib import Path

from diabetica_jax import hf
from diabetica_jax.generate import SamplingParams
from diabetica_jax.generate.chat import chat_prompt, engine_for
from diabetica_jax.model import QwenConfig, create_model


class LocalModel:
    """A Hugging Face checkpoint directory (or a model preset with random weights) run by diabetica-jax itself."""

    def __init__(self, model: str):
        self.name = f"local:{model}"
        if Path(model).is_dir():
            loaded, _ = hf.load(model, progress=False)
            self.tokenizer = hf.load_tokenizer(model)
        else:
            loaded = create_model(QwenConfig.preset(model))
            self.tokenizer = hf.load_tokenizer(None)
        self.engine = engine_for(loaded, self.tokenizer)
        self._lock = threading.Lock()

    def chat(self, messages, max_tokens: int, temperature: float) -> str:
        with self._lock:  # one engine, called from the callers' thread pools
            out = self.engine.generate([chat_prompt(self.tokenizer, messages)], max_tokens,
                                       SamplingParams(temperature=temperature))[0]
        return self.tokenizer.decode(out, skip_special_tokens=True)
