"""The evaluation suite configuration (`diabetica-jax eval CONFIG`), as eval/*.yaml files write it."""

from __future__ import annotations

import dataclasses
from typing import Literal

from diabetica_jax.configuration import FieldError, field, require_positive
from diabetica_jax.llm.config import BackendSection
from diabetica_jax.model.config import COMPUTE_DTYPES, DEFAULT_RUNTIME


@dataclasses.dataclass(frozen=True)
class TaskSection:
    task: Literal["mcq", "cloze", "dialog"] = field("mcq", "which Diabetica task")
    files: list[str] = field([], "benchmark files (relative to data_dir; 'embedded:NAME' for the mini benchmarks)")
    limit: int | None = field(None, "evaluate only the first N items of each file")


# Without a tasks list, the embedded mini benchmarks (as eval/demo.yaml runs them).
MINI_SUITE = [TaskSection("mcq", ["embedded:mini_mcq.csv"]), TaskSection("cloze", ["embedded:mini_cloze.csv"]),
              TaskSection("dialog", ["embedded:mini_dialog.jsonl"])]


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    model: str | None = field(None, "Hugging Face checkpoint directory to evaluate", path=True)
    preset: str = field("tiny", "model preset with random weights when no model is given")
    name: str | None = field(None, "name of this run in reports (default: the model directory's name)")
    mode: Literal["own", "faithful"] = field("own", "own prompts, or the protocol file's (faithful)")
    protocol: str | None = field(None, "protocol file (layout of Diabetica's protocol.json) for faithful mode",
                                 path=True)
    data_dir: str | None = field(None, "directory that relative benchmark paths are read from", path=True)
    tasks: list[TaskSection] = field(MINI_SUITE, "tasks to run (default: the embedded mini benchmarks)")
    judge: BackendSection = field(BackendSection(), "judge for the dialogue task")
    batch_size: int = field(16, "prompts generated together")
    dtype: Literal[COMPUTE_DTYPES] = field(DEFAULT_RUNTIME["dtype"], "compute dtype")
    bertscore_model: str | None = field(None, "local BERT model directory for BERTScore (cloze)", path=True)

    def __post_init__(self):
        if not self.tasks:
            raise FieldError("tasks", "empty: nothing to evaluate")
        if self.mode == "faithful" and not self.protocol:
            raise FieldError("protocol", "mode: faithful needs the protocol file (Diabetica's protocol.json)")
        require_positive(self, "batch_size")
