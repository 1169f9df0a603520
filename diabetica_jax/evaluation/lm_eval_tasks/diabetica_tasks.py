"""The datasets of the Diabetica lm-eval tasks (diabetica_mcq.yaml, diabetica_cloze.yaml): the user's benchmark
files, read by the project's own reader (errors name the file and row), asked with the project's own prompts.

lm-eval loads this file by path and calls `custom_dataset` with the run's --metadata as keyword arguments."""

from __future__ import annotations

from pathlib import Path

import datasets

from diabetica_jax.evaluation.data import EvalDataError, load_items
from diabetica_jax.evaluation.prompts import OWN
from diabetica_jax.evaluation.runner import resolve

LETTERS = "ABCDE"


def _files(kind: str, files, data_dir: str | None) -> list[Path]:
    if not files:
        raise EvalDataError(f"diabetica_{kind}: no benchmark file given; pass --metadata "
                            f"'{{\"{kind}_files\": [\"/path/to/file.csv\"]}}'")
    files = [files] if isinstance(files, str) else list(files)
    return [resolve(str(f), data_dir) for f in files]  # as eval reads them: relative to data_dir, or embedded:NAME


def mcq_dataset(mcq_files=None, data_dir: str | None = None, **_other_metadata) -> datasets.DatasetDict:
    """One row per item: `prompt` (the own MCQ prompt), `letters` (the item's option letters, A-E order) and
    `target` (the keyed letter's index among them)."""
    rows = []
    for path in _files("mcq", mcq_files, data_dir):
        for item in load_items(path, "mcq"):
            letters = [letter for letter in LETTERS if letter in item.options]
            rows.append({"id": f"{path.name}:{item.id}", "prompt": OWN.mcq.format(question=item.question),
                         "letters": letters, "target": letters.index(item.answer)})
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def cloze_dataset(cloze_files=None, data_dir: str | None = None, **_other_metadata) -> datasets.DatasetDict:
    """One row per item: `prompt` (the own cloze prompt) and `answer` (the expected span)."""
    rows = [{"id": f"{path.name}:{item.id}", "prompt": OWN.cloze.format(question=item.question),
             "answer": item.answer.strip()}
            for path in _files("cloze", cloze_files, data_dir) for item in load_items(path, "cloze")]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
