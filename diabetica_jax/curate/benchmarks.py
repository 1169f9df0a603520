"""Evaluation items to protect from leaking into training: read their question text from any table."""

from __future__ import annotations

from pathlib import Path

from diabetica_jax.curate.filters import BenchmarkItem
from diabetica_jax.data.mcq import MCQParseError, parse_question, render
from diabetica_jax.data.records import Reject
from diabetica_jax.data.tables import detect_format, read_rows

QUESTION_COLUMNS = ("question", "stem", "prompt", "instruction", "input", "note")  # note: summarize items


def load_benchmark_items(path: str | Path) -> list[BenchmarkItem]:
    path = Path(path)
    if path.is_dir():
        return [item for f in sorted(path.iterdir()) if f.suffix.lower() in (".csv", ".jsonl", ".json", ".xlsx")
                for item in load_benchmark_items(f)]
    items = []
    for row_index, row in read_rows(path, detect_format(path)):
        if isinstance(row, Reject):
            continue
        text = next((str(row[c]) for c in QUESTION_COLUMNS if row.get(c)), None)
        if not text:
            continue
        try:  # MCQs compare in their canonical rendering, as curated MCQs are stored
            text = render(*parse_question(text))
        except MCQParseError:
            pass
        items.append(BenchmarkItem(f"{path.name}:{row_index}", text))
    return items
