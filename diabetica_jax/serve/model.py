"""The model a server answers with: weights, tokenizer, chat formatting, default decoding and the batcher."""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

import diabetica_jax.train.run_dir  # noqa: F401 (imported to register the reader of training run directories with hf.open)
from diabetica_jax import hf
from diabetica_jax.generate import SamplingParams
from diabetica_jax.generate.batcher import Batcher
from diabetica_jax.generate.chat import chat_prompt, stop_and_pad
from diabetica_jax.generate.scoring import PromptScorer
from diabetica_jax.hf.sources import PRESET, RUN
from diabetica_jax.model import QwenConfig
from diabetica_jax.model.runtime import RuntimeConfig
from diabetica_jax.serve.config import ServeLimits

log = logging.getLogger(__name__)

# Below this many parameters a model is a smoke test of the code (the tiny preset, which the demo recipe
# trains, has 9.8M), not one that knows medicine: the API and the page say so. The smallest real Qwen has 494M.
DEMO_MAX_PARAMS = 100_000_000
# Folder names `diabetica-jax run` gives its stages inside RUN_DIR (pipeline/run.py): an export in RUN_DIR/hf,
# a training run in RUN_DIR/train or RUN_DIR/train-NAME. They say nothing on their own, so the run names them.
# A stage folder is told apart from a folder that merely has such a name by the marker files the pipeline
# writes into it (`.started.json` when the stage begins, `.stage.json` when it is done).
PIPELINE_MARKERS = (".stage.json", ".started.json")


def served_name(directory: str | Path, step: int | None = None) -> str:
    """The name a checkpoint or run directory is served under unless `--name` says otherwise: the folder's
    name, plus `-step{step}` for a training run directory. A pipeline's stage folder takes its run's name
    instead: runs/demo/hf -> "demo", runs/demo/train -> "demo-step30", runs/demo/train-instruct ->
    "demo-instruct-step30" (the stage is kept where a run has several)."""
    path = Path(directory).resolve()
    name = path.name
    is_stage = name == "hf" or name == "train" or name.startswith("train-")
    if is_stage and any((path / marker).is_file() for marker in PIPELINE_MARKERS):
        name = path.parent.name + ("" if name == "hf" else name.removeprefix("train"))
    return name if step is None else f"{name}-step{step}"


def demo_description(config: QwenConfig, random_preset: str | None = None, run_preset: str | None = None
                     ) -> str | None:
    """What makes a model a demo, in words (None for a real model): random weights (`random_preset`), or tiny
    ones: fewer than DEMO_MAX_PARAMS parameters, or a run whose config trained the tiny preset (`run_preset`:
    the preset a training run started from, None when it started from a checkpoint)."""
    if random_preset is not None:
        return f"demo model: {random_preset} preset, random weights"
    params = config.num_params()
    if params < DEMO_MAX_PARAMS or run_preset == "tiny":
        return f"demo model: tiny weights ({params / 1e6:.1f}M parameters)"
    return None


def _default_name(opened: hf.OpenedModel) -> str:
    """The name a model is served under without --name: its folder's (served_name), `PRESET-random` for a preset."""
    source = opened.source
    return f"{source.preset}-random" if source.path is None else served_name(source.path, opened.step)


class ServedModel:
    """One model behind the API: `name` is what /v1/models lists and requests must name.

    `description` says why it is a demo model (a preset's random weights; fewer than DEMO_MAX_PARAMS
    parameters; or a training run whose config started from the tiny preset), None for a real one; /v1/models
    and the page show it.

    `defaults` is the decoding a request gets for the sampling fields it leaves out: the checkpoint's
    generation_config.json when it has one (as `transformers.generate` would decode), else greedy.
    """

    def __init__(self, opened: hf.OpenedModel, name: str, limits: ServeLimits = ServeLimits(), warmup: bool = False):
        model, tokenizer, source = opened.model, opened.tokenizer, opened.source
        self.name, self.tokenizer, self.limits = name, tokenizer, limits
        self.parameters = model.config.num_params()
        self.description = demo_description(model.config, source.preset if source.kind == PRESET else None,
                                            source.preset if source.kind == RUN else None)
        if self.description:
            log.warning("serving %r, a %s: its answers carry no medical knowledge", name, self.description)
        self.defaults = opened.generation_config
        # the positions the model was trained for: a prompt plus its reply may not go past them
        self.context_length = model.config.max_position_embeddings
        self.vocab_size = model.config.vocab_size
        if limits.max_prompt_tokens + limits.max_new_tokens > self.context_length:
            log.warning("--max-prompt-tokens %d + --max-tokens %d exceed the model's context of %d positions: "
                        "requests whose prompt and max_tokens together pass it are refused",
                        limits.max_prompt_tokens, limits.max_new_tokens, self.context_length)
        stop, pad = stop_and_pad(tokenizer)
        self.scorer = PromptScorer(model, pad)
        self.batcher = Batcher(model, stop, pad, slots=limits.slots,
                               max_prompt_tokens=limits.max_prompt_tokens, max_new_tokens=limits.max_new_tokens,
                               max_waiting=limits.max_waiting, prefills_per_step=limits.prefills_per_step)
        if warmup:
            self.batcher.warmup()

    @classmethod
    def load(cls, source: str, *, preset: str = "tiny", seed: int = 0, runtime: RuntimeConfig = RuntimeConfig(),
             name: str | None = None, limits: ServeLimits = ServeLimits(), warmup: bool = False) -> ServedModel:
        """A Hugging Face checkpoint directory, a training run directory (its latest checkpoint), or, with
        `source` empty, a preset with random weights (a smoke test of the serving path, not a model). A broken
        config.json, tokenizer or generation_config.json stops it before any weight is read."""
        found = hf.find(source or None, preset=preset)
        _ = found.generation_config  # read now: a broken generation_config.json stops serving before the weights load
        opened = found.load(seed=seed, runtime=runtime, progress=False)
        return cls(opened, name or _default_name(opened), limits, warmup)

    def sampling(self, temperature: float | None, top_p: float | None, top_k: int | None,
                 repetition_penalty: float | None, seed: int | None) -> SamplingParams:
        """A request's sampling: its own fields, the model's defaults for the ones it leaves out."""
        d = self.defaults
        sampled = d["do_sample"]
        return SamplingParams(
            temperature=temperature if temperature is not None else (d.get("temperature", 1.0) if sampled else 0.0),
            top_p=top_p if top_p is not None else (d.get("top_p", 1.0) if sampled else 1.0),
            top_k=top_k if top_k is not None else (d.get("top_k", 0) if sampled else 0),
            repetition_penalty=repetition_penalty if repetition_penalty is not None else d["repetition_penalty"],
            seed=seed if seed is not None else secrets.randbits(31),  # unseeded requests differ, as OpenAI's do
        )

    def chat_tokens(self, messages: list[dict[str, str]]) -> list[int]:
        return chat_prompt(self.tokenizer, messages)

    def text_tokens(self, prompt: str) -> list[int]:
        return self.tokenizer.encode(prompt, add_special_tokens=False)

    def prompt_logprobs(self, tokens: list[int]) -> list[tuple[float, list[tuple[int, float]]] | None]:
        """Per prompt token: None for the first (nothing predicts it), then (its log-probability, the
        likeliest alternatives as (id, log-probability), best first)."""
        chosen, top_ids, top = self.scorer.score(tokens)
        return [None] + [(float(c), [(int(i), float(v)) for i, v in zip(ids, vals)])
                         for c, ids, vals in zip(chosen, top_ids, top)]

    def close(self) -> None:
        self.batcher.close()
