"""The evaluation suite configuration (`diabetica-jax eval CONFIG`), as eval/*.yaml files write it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar, Literal

from diabetica_jax.configuration import FieldError, field, require_positive, shown
from diabetica_jax.evaluation.task_names import (  # noqa: F401 (re-exported)
    CLINICAL_TASKS,
    HARNESS_TASKS,
    MODES,
    PAPER_TASKS,
    TASKS,
    TEXT_TASKS,
)
from diabetica_jax.llm.config import BackendSection
from diabetica_jax.model.choice import ModelChoice


@dataclasses.dataclass(frozen=True)
class TaskSection:
    task: Literal[TASKS] = field("mcq", "which task: a Diabetica benchmark (mcq, cloze, dialog), a clinical "
                                 "role rated by the judge (consult, educate, summarize), or the perplexity of "
                                 "held-out text (perplexity: a `text` column, or Markdown / text paragraphs), "
                                 "or lm-evaluation-harness tasks on this engine (lm_eval: see lm_eval_tasks)")
    files: list[str] = field([], "benchmark files (relative to data_dir; 'embedded:NAME' for the mini benchmarks); "
                             "lm_eval: folders of task YAMLs (local data) put on lm-eval's task path")
    limit: int | None = field(None, "evaluate only the first N items of each file")
    rubric: str | None = field(None, "clinical tasks: the judge's rubric file (default: the package's "
                               "evaluation/rubrics/TASK.txt)", path=True)
    max_new_tokens: int | None = field(None, "longest reply in tokens (default: the mode's; own: mcq 16, cloze 32, "
                                       "dialog 512, consult 512, educate 384, summarize 384)")
    lm_eval_tasks: list[str] = field([], "task lm_eval: the lm-evaluation-harness tasks or groups to run, by name "
                                     "(lm-eval's own, e.g. mmlu_anatomy, or ones defined in `files`; "
                                     "diabetica_mcq and diabetica_cloze are always on the path)")
    lm_eval_metadata: dict[str, Any] = field({}, "task lm_eval: lm-eval's --metadata (what custom datasets read, e.g. "
                                   "{mcq_files: [ZhiCheng_MCQ_A1.csv]} for diabetica_mcq)")
    num_fewshot: int | None = field(None, "task lm_eval: few-shot examples per prompt (default: each task's own)")


# Without a tasks list, the embedded mini benchmarks (as eval/demo.yaml runs them).
MINI_SUITE = [TaskSection("mcq", ["embedded:mini_mcq.csv"]), TaskSection("cloze", ["embedded:mini_cloze.csv"]),
              TaskSection("dialog", ["embedded:mini_dialog.jsonl"])]


@dataclasses.dataclass(frozen=True)
class EvalModelSection(ModelChoice):
    path: str | None = field(None, "Hugging Face checkpoint directory to evaluate, or openai:NAME (an "
                             "OpenAI-compatible endpoint as the model under test: see endpoint)",
                             path=lambda d: not str(d.get("path") or "").startswith("openai:"))


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    model: EvalModelSection = field(EvalModelSection(), "the model under test (default: the tiny preset, random "
                                    "weights)")
    name: str | None = field(None, "name of this run in reports (default: the model directory's name)")
    mode: Literal[MODES] = field("own", "own prompts, greedy decoding and rules, or the protocol file's and "
                                 "the checkpoint's generation_config.json decoding (faithful)")
    modes: list[Literal[MODES]] = field([], "several modes in one run, each written to OUT/<mode>/ "
                                        "(empty: just `mode`, written to OUT)")
    seeds: int = field(1, "faithful mode: sampled runs with seeds 42, 43, ... (1: seed 42, as published); "
                       "own mode decodes greedily and runs once whatever this says")
    generation_config: str | None = field(None, "generation_config.json (or the directory holding it) that faithful "
                                          "mode decodes with (default: the model directory's)", path=True)
    endpoint: BackendSection = field(BackendSection(), "the endpoint of an openai:NAME model under test "
                                     "(base_url, api_key_env, timeout, retries, concurrency; backend and "
                                     "model are not read)")
    protocol: str | None = field(None, "protocol file (layout of Diabetica's protocol.json) for faithful mode "
                                 "(default: the paper's, shipped with the package as "
                                 "evaluation/protocols/diabetica.json)", path=True)
    data_dir: str | None = field(None, "directory that relative benchmark paths are read from", path=True)
    tasks: list[TaskSection] = field(MINI_SUITE, "tasks to run (default: the embedded mini benchmarks)")
    judge: BackendSection = field(BackendSection(), "judge for the dialogue and clinical tasks (faithful mode "
                                  "with an openai judge asks the protocol's judge model)")
    judge_max_tokens: int = field(1024, "own mode: the judge's max_tokens (faithful: the protocol's)")
    judge_temperature: float = field(0.0, "own mode: the judge's temperature (faithful: the protocol's)")
    batch_size: int = field(16, "prompts generated together")
    bertscore_model: str | None = field(None, "local BERT model directory for BERTScore (cloze)", path=True)

    # the keys of the model under test before the `model:` section (see configuration.RENAMED_KEYS)
    RENAMED_KEYS: ClassVar[dict[str, str]] = {"model": "model.path", "preset": "model.preset",
                                              "dtype": "model.runtime.dtype"}

    def __post_init__(self):
        if not self.tasks:
            raise FieldError("tasks", "empty: nothing to evaluate")
        names = [t.task for t in self.tasks]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:  # each task writes report_<task>.json: a second section would overwrite the first
            raise FieldError("tasks", f"task {', '.join(twice)} named in two sections: list all its files in one")
        for section in self.tasks:
            if section.rubric is not None and section.task not in CLINICAL_TASKS:
                raise FieldError("tasks", f"{section.task}: a rubric is read by the clinical tasks only "
                                 f"({', '.join(CLINICAL_TASKS)})")
            harness = section.task in HARNESS_TASKS
            if harness and not section.lm_eval_tasks:
                raise FieldError("tasks", f"{section.task}: lm_eval_tasks is empty: name the lm-eval tasks to run")
            for name in ("lm_eval_tasks", "lm_eval_metadata", "num_fewshot"):
                if not harness and getattr(section, name) not in ([], {}, None):
                    raise FieldError("tasks", f"{section.task}: {name} is read by task lm_eval only")
            if harness and (section.max_new_tokens is not None or section.rubric is not None):
                raise FieldError("tasks", f"{section.task}: each lm-eval task sets its own decoding: max_new_tokens "
                                 "and rubric are not read")
            if section.num_fewshot is not None and section.num_fewshot < 0:
                raise FieldError("tasks", f"{section.task}: num_fewshot must be at least 0, not {section.num_fewshot}")
            if section.max_new_tokens is not None and section.max_new_tokens <= 0:
                raise FieldError("tasks", f"{section.task}: max_new_tokens must be positive, not "
                                 f"{section.max_new_tokens}")
            bases = [Path(f).name for f in section.files]
            same = sorted({b for b in bases if bases.count(b) > 1})
            if same:  # per_file is keyed by Path(file).name
                raise FieldError("tasks", f"{section.task}: two files named {', '.join(same)}; the report keys "
                                 "files by name, so rename one")
        if self.remote and any(t.task in HARNESS_TASKS for t in self.tasks):
            raise FieldError("tasks", "lm_eval runs on a local model; for an endpoint run lm-eval itself with "
                             "--model local-completions against it")
        if len(set(self.modes)) != len(self.modes):
            raise FieldError("modes", f"{shown(self.modes)}: a mode named twice")
        require_positive(self, "batch_size", "seeds", "judge_max_tokens")
        if self.judge_temperature < 0:
            raise FieldError("judge_temperature", f"must be at least 0, not {self.judge_temperature}")

    @property
    def run_modes(self) -> list[str]:
        """The modes this run evaluates: `modes`, else [`mode`]."""
        return list(self.modes) or [self.mode]

    @property
    def remote(self) -> bool:
        """The model under test is an OpenAI-compatible endpoint (model: openai:NAME)."""
        return bool(self.model.path) and self.model.path.startswith("openai:")
