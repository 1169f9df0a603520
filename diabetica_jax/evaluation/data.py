"""Benchmark items, read from the user's files with errors that name the file and row.

Question and answer/rule text is kept exactly as in the file cell, leading and trailing whitespace included
(the paper's scripts used the cells verbatim: 38 of the 120 dialogue questions and 12 of its rules carry
some); whitespace is stripped only to decide whether a cell is empty."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from diabetica_jax.data.mcq import MCQParseError, parse_answer, parse_question
from diabetica_jax.data.records import Reject
from diabetica_jax.data.tables import detect_format, read_rows
from diabetica_jax.data.text import decode, undecodable
from diabetica_jax.errors import UserError


class EvalDataError(UserError, ValueError):
    """A benchmark file that cannot be evaluated; names the file, row and field."""


@dataclasses.dataclass(frozen=True)
class Item:
    id: str
    question: str  # as in the file (MCQ: stem and option lines)
    answer: str  # MCQ: the keyed letter; cloze: the expected text; dialog: the physician rules
    options: dict[str, str] | None = None
    reference: str | None = None  # dialog: a reference response, when the file has one
    item_class: str | None = None  # dialog: the workbook's `class` column (per-category report)
    item_type: str | None = None  # dialog: the workbook's `type` column


QUESTION = ("question",)
ANSWERS = {"mcq": ("answer",), "cloze": ("answer",), "dialog": ("rulehuman", "rules", "rule")}


def _text(value) -> str:
    return "" if value is None else str(value)


def _label(value) -> str | None:
    return _text(value).strip() or None


def load_items(path: str | Path, task: str, faithful: bool = False) -> list[Item]:
    """The items of one benchmark file. MCQ items are parsed into options and a keyed letter; an item that
    does not parse is an error, except with `faithful` (the paper's rule: the reply's first A-E letter
    against the answer cell's first character), where it is keyed by the answer cell's first character
    when that is A-E (options None)."""
    path = Path(path)
    if not path.is_file():
        raise EvalDataError(f"{path}: benchmark file not found")
    if task == "perplexity":
        return _passages(path)
    items: list[Item] = []
    columns_checked = False
    for row_index, row in read_rows(path, detect_format(path)):
        where = f"{path}: row {row_index}"
        if isinstance(row, Reject):
            raise EvalDataError(f"{where}: {row.reason}")
        if not columns_checked:
            for needed in (QUESTION, ANSWERS[task]):
                if not any(c in row for c in needed):
                    raise EvalDataError(f"{path}: missing column {needed[0]!r} (columns: {sorted(row)})")
            columns_checked = True
        question = _text(row.get("question"))
        answer = next((_text(row[c]) for c in ANSWERS[task] if _text(row.get(c)).strip()), "")
        if not question.strip():
            raise EvalDataError(f"{where}: empty 'question'")
        if not answer.strip():
            raise EvalDataError(f"{where}: empty {ANSWERS[task][0]!r}")
        item_id = str(row.get("ID") or row.get("id") or row_index)
        if task == "mcq":
            try:
                _, options = parse_question(question)
                letter = parse_answer(answer, options)
            except MCQParseError as e:
                if not faithful or answer[:1] not in ("A", "B", "C", "D", "E"):
                    raise EvalDataError(f"{where}: {e}") from None
                letter, options = answer[0], None
            items.append(Item(item_id, question, letter, options))
        else:
            items.append(Item(item_id, question, answer, reference=row.get("response") or None,
                              item_class=_label(row.get("class")), item_type=_label(row.get("type"))))
    if not items:
        raise EvalDataError(f"{path}: no items")
    return items


def _passages(path: Path) -> list[Item]:
    """Text to score (the perplexity task): the `text` column of a table file, or the paragraphs of a Markdown
    or text file (blank-line separated; heading lines and `>` notes are not passages). Text kept exactly."""
    fmt = detect_format(path)
    items: list[Item] = []
    if fmt == "text":
        for index, block in enumerate(re.split(r"\n\s*\n", decode_file(path).replace("\r\n", "\n"))):
            lines = [line for line in block.split("\n") if not line.lstrip().startswith(("#", ">"))]
            if "".join(lines).strip():
                items.append(Item(str(index), "\n".join(lines).strip(), ""))
    else:
        for row_index, row in read_rows(path, fmt):
            where = f"{path}: row {row_index}"
            if isinstance(row, Reject):
                raise EvalDataError(f"{where}: {row.reason}")
            text = _text(row.get("text"))
            if "text" not in row:
                raise EvalDataError(f"{where}: missing column 'text' (columns: {sorted(row)})")
            if not text.strip():
                raise EvalDataError(f"{where}: empty 'text'")
            items.append(Item(str(row.get("ID") or row.get("id") or row_index), text, ""))
    if not items:
        raise EvalDataError(f"{path}: no passages")
    return items


def decode_file(path: Path) -> str:
    try:
        return decode(path.read_bytes())[0]
    except UnicodeDecodeError as e:
        raise EvalDataError(f"{path}: {undecodable(e)}") from None
