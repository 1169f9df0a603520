"""Items of the clinical tasks, read from the user's files (any table format `data.tables` reads: JSONL, JSON,
CSV, XLSX, Parquet), keeping the good rows and recording the bad ones.

Columns (other columns are ignored; `id` or `ID` names an item, else its row number):

- consult:   `question` (the patient's question, required), `reference` (a reference answer, e.g. a
             physician's, optional: rated by the judge beside the model's answer).
- educate:   `question` and `answer` (or `key`), required: an exam MCQ and its keyed letter (`B`, `B：text`,
             `答案：B`), as the MCQ benchmark files write them. The options are either option lines inside
             `question` (`A. ...` / `Option A: ...`) or an `options` column: an object {"A": "...", ...}, a
             list (lettered A, B, ... in order), or option lines.
- summarize: `note` (the clinical record, required), `reference` (or `summary`: a reference summary,
             optional: ROUGE is computed against it and the judge rates it beside the model's summary).

A row that cannot be used (unreadable, a required field missing or empty, options that do not parse, a key
outside the options) becomes a `ClinicalReject` naming the file, the row (as the reader numbers it: 0 is the
first data row of a CSV / XLSX file and the first line of a JSONL file), the field and the reason; the other
rows are evaluated. A file without any usable row is an error naming the file.

Text is kept as in the file cell (surrounding whitespace included), except the educate question, which is
shown to the model in the canonical rendering of its stem and options ("stem", then "A. option" lines).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from diabetica_jax.data.mcq import LETTERS, MCQParseError, parse_answer, parse_question, render
from diabetica_jax.data.records import Reject
from diabetica_jax.data.tables import detect_format, read_rows
from diabetica_jax.evaluation.data import EvalDataError

# task -> role -> the columns that may hold it, first found wins
COLUMNS = {
    "consult": {"text": ("question",), "reference": ("reference",)},
    "educate": {"text": ("question",), "key": ("answer", "key"), "options": ("options",)},
    "summarize": {"text": ("note",), "reference": ("reference", "summary")},
}


@dataclasses.dataclass(frozen=True)
class ClinicalItem:
    id: str
    row: int
    text: str  # consult: the patient's question; educate: the rendered MCQ; summarize: the note
    reference: str | None = None  # consult: a reference answer; summarize: a reference summary
    options: dict[str, str] | None = None  # educate
    key: str | None = None  # educate: the keyed letter


@dataclasses.dataclass(frozen=True)
class ClinicalReject:
    file: str
    row: int | None
    field: str | None
    reason: str

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        where = f"row {self.row}" if self.row is not None else "file"
        return f"{self.file}: {where}" + (f": {self.field!r}" if self.field else "") + f": {self.reason}"


class _RowError(ValueError):
    def __init__(self, field: str, reason: str):
        super().__init__(reason)
        self.field = field


def _cell(row: dict, columns: tuple[str, ...]):
    """(the column used, its value or None when absent or blank): the first of `columns` holding something."""
    for column in columns:
        value = row.get(column)
        if value is not None and str(value).strip():
            return column, value
    return columns[0], None


def _required(row: dict, columns: tuple[str, ...]) -> str:
    column, value = _cell(row, columns)
    if value is None:
        if not any(c in row for c in columns):
            raise _RowError(column, f"no {' or '.join(repr(c) for c in columns)} in this row "
                                    f"(its fields: {sorted(map(str, row))})")
        raise _RowError(column, f"empty {column!r}")
    return str(value)


def _options(value) -> dict[str, str]:
    """An `options` cell as {letter: text}: an object, a list, a JSON text of either, or option lines."""
    if isinstance(value, str) and value.strip()[:1] in ("{", "["):
        try:
            value = json.loads(value)
        except ValueError:
            pass
    if isinstance(value, dict):
        options = {str(k).strip().upper(): str(v).strip() for k, v in value.items()}
    elif isinstance(value, list):
        if len(value) > len(LETTERS):
            raise _RowError("options", f"{len(value)} options; at most {len(LETTERS)}")
        options = {LETTERS[i]: str(v).strip() for i, v in enumerate(value)}
    else:
        try:  # option lines: parse them under a placeholder stem
            _, options = parse_question("options\n" + str(value))
        except MCQParseError as e:
            raise _RowError("options", str(e)) from None
    bad = sorted(k for k in options if k not in LETTERS)
    if bad:
        raise _RowError("options", f"option labels {bad} are not letters {LETTERS[0]}-{LETTERS[-1]}")
    if len(options) < 2 or any(not v for v in options.values()):
        raise _RowError("options", "an MCQ needs at least two options, none of them empty")
    return dict(sorted(options.items()))


def _item(task: str, row: dict, row_index: int) -> ClinicalItem:
    columns = COLUMNS[task]
    text = _required(row, columns["text"])
    item_id = next((str(row[c]).strip() for c in ("id", "ID") if row.get(c) not in (None, "")), str(row_index))
    if task != "educate":
        _, reference = _cell(row, columns["reference"])
        return ClinicalItem(item_id, row_index, text, reference=None if reference is None else str(reference))
    key_text = _required(row, columns["key"])
    _, options_cell = _cell(row, columns["options"])
    if options_cell is not None:
        stem, options = text.strip(), _options(options_cell)
    else:
        try:
            stem, options = parse_question(text)
        except MCQParseError as e:
            raise _RowError("question", f"{e} (or give them in an 'options' column)") from None
    try:
        key = parse_answer(key_text, options)
    except MCQParseError as e:
        raise _RowError(_cell(row, columns["key"])[0], str(e)) from None
    return ClinicalItem(item_id, row_index, render(stem, options), options=options, key=key)


def load_clinical_items(path: str | Path, task: str) -> tuple[list[ClinicalItem], list[ClinicalReject]]:
    """(usable items, rejected rows) of one file of a clinical task; EvalDataError when the file is missing,
    unreadable as a table, or holds no usable row (the message names the file and the first rejects)."""
    path = Path(path)
    if not path.is_file():
        raise EvalDataError(f"{path}: benchmark file not found")
    items: list[ClinicalItem] = []
    rejects: list[ClinicalReject] = []
    try:
        rows = list(read_rows(path, detect_format(path)))
    except (ValueError, OSError) as e:  # not a table at all: nothing to keep
        raise EvalDataError(f"{path}: cannot read it as a table ({str(e).removeprefix(f'{path}: ')})") from None
    for row_index, row in rows:
        if isinstance(row, Reject):
            rejects.append(ClinicalReject(str(path), row_index, None, row.reason))
            continue
        try:
            items.append(_item(task, row, row_index))
        except _RowError as e:
            rejects.append(ClinicalReject(str(path), row_index, e.field, str(e)))
    if not items:
        shown = "; ".join(str(r).removeprefix(f"{path}: ") for r in rejects[:3])
        more = f" (and {len(rejects) - 3} more)" if len(rejects) > 3 else ""
        needed = ", ".join(f"'{c[0]}'" for role, c in COLUMNS[task].items() if role in ("text", "key"))
        raise EvalDataError(f"{path}: no usable {task} row (needs {needed}); "
                            + (f"{len(rejects)} rejected: {shown}{more}" if rejects else "the file holds no rows"))
    return items, rejects
