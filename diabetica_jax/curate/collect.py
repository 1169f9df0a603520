"""Collect: read heterogeneous files into Records; anything unreadable becomes a Reject with its reason.

A malformed row (bad JSON, bad bytes, missing fields, nested too deep, binary data or a lone surrogate in a field:
tables.row_problem) is a Reject naming its file and row, and the run goes on.
A file that cannot be read at all is the wrong file more likely than a damaged record: curation refuses an
empty or binary input before any work (tables.detect_format, which the scan plan calls in the driver for an
input whose format comes from its name). Where it is only found here, in a scan worker (an input given an
explicit `format`, or damage that shows only while reading: a truncated JSON document, a damaged workbook),
the file becomes a single Reject with the reason, so the data card counts it.

Formats: JSONL / JSON, CSV, XLSX, Parquet, Hugging Face `datasets` saved to disk, and plain text or
Markdown documents (split into passages). Encodings: UTF-8, UTF-8 with BOM, GBK. A large JSONL, CSV or
Parquet file may come in `tables.Part`s, slices planned by scan.plan_units: its rows keep their numbers.

Record ids hash the input's path as records.id_path gives it (resolved, relative to the input's root), so
they do not depend on how the path was typed; provenance keeps the path as given.

Row shapes understood (field names can be remapped per input):
  messages / conversations (chat turns)      -> dialogue (qa when one user and one assistant turn)
  question + answer, options in the question -> mcq (Diabetica layout: stem + `Option X` lines, `B：...`)
  question + answer, a `（）` blank            -> cloze
  question + answer / instruction + output   -> qa
  text                                       -> passage
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from diabetica_jax.configuration import InputError
from diabetica_jax.curate.config import InputSection
from diabetica_jax.data.mcq import MCQParseError, parse_answer, parse_question, render
from diabetica_jax.data.records import KINDS, Record, Reject, id_path, record_id
from diabetica_jax.data.tables import (
    MAX_NESTING,
    Part,
    check_content,
    detect_format,
    hub_rows,
    missing_input,
    raw_text,
    read_rows,
    row_problem,
)
from diabetica_jax.data.text import bad_character, decode, language, undecodable
from diabetica_jax.errors import MissingInput

_BLANK = re.compile(r"[(（]\s*[)）]")


def collect(spec: InputSection, part: Part | None = None) -> Iterator[Record | Reject]:
    """The records of an input, or of one `Part` of it, and a Reject for each row (or file) that cannot be one."""
    path = Path(spec.path)
    if spec.format == "hf_hub":  # a dataset name on the Hugging Face hub, read when a network is there
        yield from _collect_rows(hub_rows(spec.path), spec, spec.source or spec.path.replace("/", "_"), spec.path,
                                 spec.path)
        return
    if not path.exists():
        raise MissingInput(missing_input(path))
    source = spec.source or path.stem
    if part is not None:  # planned in the driver, which checked the file's format and first bytes
        yield from _collect_rows(_whole_file(read_rows(path, part.format, part), path), spec, source, str(path),
                                 id_path(path))
        return
    try:
        fmt = spec.format if spec.format != "auto" else detect_format(path)  # detect_format checks the content
        if spec.format != "auto":
            check_content(path, fmt)
    except InputError as e:  # here in a scan worker: the record of why, not a crash of the unit
        yield _file_reject(path, e)
        return
    if fmt == "text":
        yield from _passages(path, source)
        return
    yield from _collect_rows(_whole_file(read_rows(path, fmt), path), spec, source, str(path), id_path(path))


def _file_reject(path: Path, error: InputError) -> Reject:
    return Reject("collect", str(error).removeprefix(f"{path}: "), {"file": str(path)})


def _whole_file(rows, path: Path):
    """`rows`, then, if reading the file fails as a whole, one Reject for it (row None)."""
    try:
        yield from rows
    except InputError as e:
        yield None, _file_reject(path, e)


def _collect_rows(rows, spec: InputSection, source: str, origin: str, id_file: str) -> Iterator[Record | Reject]:
    """Records of `rows`; `origin` is the file as provenance names it, `id_file` as record ids hash it."""
    for row_index, row in rows:
        where = {"file": origin, "row": row_index}
        if isinstance(row, Reject):
            yield row
            continue
        problem = row_problem(row)  # before anything walks the row or writes its text out
        if problem is not None:
            yield Reject("collect", problem, where, raw=raw_text(row))
            continue
        try:
            yield row_to_record(row, spec, source, where, id_file)
        except (KeyError, ValueError, TypeError, MCQParseError) as e:
            reason = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            yield Reject("collect", reason, where, raw=raw_text(row))


# ---- a row -> a record ---------------------------------------------------------------------------

def _field(row: dict, spec: InputSection, name: str, required: bool = True) -> str | None:
    column = spec.column(name)
    value = row.get(column)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise KeyError(f"missing field {column!r}")
        return None
    return str(value).strip()


def row_to_record(row: dict, spec: InputSection, source: str, where: dict, id_file: str | None = None) -> Record:
    """The record of a row read from `where` (id_file: the file as its id hashes it; where["file"] when None)."""
    make = functools.partial(_make, id_file=where["file"] if id_file is None else id_file)
    kind = spec.kind
    if kind != "auto" and kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {KINDS}")
    turns = row.get(spec.column("messages")) or row.get("conversations")
    if turns is not None and kind in ("auto", "dialogue", "qa"):
        messages = _messages(turns)
        n_user = sum(m["role"] == "user" for m in messages)
        kind = kind if kind != "auto" else ("qa" if n_user == 1 and len(messages) <= 3 else "dialogue")
        return make(source, where, kind, messages=messages)
    if kind == "passage" or (kind == "auto" and spec.column("text") in row and spec.column("question") not in row):
        text = _field(row, spec, "text")
        return make(source, where, "passage", text=text)
    if spec.column("instruction") in row and spec.column("question") not in row:
        question = _field(row, spec, "instruction")
        extra = _field(row, spec, "input", required=False)
        question = f"{question}\n{extra}" if extra else question
        return make(source, where, kind if kind != "auto" else "qa", messages=_qa(question, _field(row, spec, "output")))
    question, answer = _field(row, spec, "question"), _field(row, spec, "answer")
    parsed = _try_mcq(question) if kind in ("auto", "mcq") else None
    if kind == "mcq" and parsed is None:
        parse_question(question)  # raises with the reason
    if parsed is not None:
        stem, options = parsed
        letter = parse_answer(answer, options)
        messages = _qa(render(stem, options), f"{letter}. {options[letter]}")
        return make(source, where, "mcq", messages=messages, options=options, answer=letter)
    if kind == "cloze" or (kind == "auto" and _BLANK.search(question)):
        return make(source, where, "cloze", messages=_qa(question, answer))
    return make(source, where, kind if kind != "auto" else "qa", messages=_qa(question, answer))


def _try_mcq(question: str) -> tuple[str, dict[str, str]] | None:
    try:
        return parse_question(question)
    except MCQParseError:
        return None


def _qa(question: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


_ROLE_ALIASES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "bot": "assistant",
                 "system": "system"}


def _messages(turns: Any) -> list[dict[str, str]]:
    if isinstance(turns, str):  # a chat column of a CSV or a workbook, as JSON text: checked as rows are
        try:
            turns = json.loads(turns)
        except RecursionError:
            raise ValueError(f"messages nested deeper than {MAX_NESTING} levels") from None
        if (problem := row_problem({"messages": turns})) is not None:
            raise ValueError(problem)
    if not isinstance(turns, list) or not turns:
        raise ValueError("messages must be a non-empty list of turns")
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise ValueError(f"turn {i} is not an object with a role and content")
        role = _ROLE_ALIASES.get(str(turn.get("role", turn.get("from", ""))).lower())
        content = turn.get("content", turn.get("value"))
        if role is None:
            raise ValueError(f"turn {i} has no known role")
        if not isinstance(content, str) or not content.strip():
            raise ValueError(f"turn {i} ({role}) has empty content")
        out.append({"role": role, "content": content.strip()})
    if not any(m["role"] == "assistant" for m in out):
        raise ValueError("a dialogue needs at least one assistant turn")
    return out


def _make(source: str, where: dict, kind: str, id_file: str, **fields) -> Record:
    body = fields.get("text") or json.dumps(fields.get("messages"), ensure_ascii=False)
    return Record(id=record_id(source, id_file, where.get("row"), body), source=source, kind=kind,
                  language=language(body), provenance=dict(where), **fields)


# ---- documents -> passages ---------------------------------------------------------------------

def _passages(path: Path, source: str, max_chars: int = 1200) -> Iterator[Record | Reject]:
    """Passages of a text document: paragraphs up to max_chars under their heading; a passage with binary data
    in it (a NUL past the first bytes detect_format sniffs) is a Reject with its row."""
    try:
        text, _ = decode(path.read_bytes())
    except UnicodeDecodeError as e:
        yield Reject("collect", undecodable(e), {"file": str(path)})
        return
    heading, chunk, index, id_file = "", [], 0, id_path(path)

    def flush():
        nonlocal chunk, index
        body = "\n".join(chunk).strip()
        chunk = []
        if body:
            index += 1
            where = {"file": str(path), "row": index - 1, "heading": heading}
            text = f"{heading}\n{body}".strip() if heading else body
            if (problem := bad_character(text)) is not None:
                return Reject("collect", problem, where, raw=raw_text(text))
            return _make(source, where, "passage", id_file, text=text)
        return None

    for paragraph in re.split(r"\n\s*\n", text.replace("\r\n", "\n")):
        paragraph = paragraph.strip()
        if not paragraph:
            continue
        if paragraph.startswith("#"):
            first, _, rest = paragraph.partition("\n")
            if (record := flush()) is not None:
                yield record
            heading = first.lstrip("#").strip()
            paragraph = rest.strip()
            if not paragraph:
                continue
        if chunk and sum(len(c) for c in chunk) + len(paragraph) > max_chars:
            if (record := flush()) is not None:
                yield record
        chunk.append(paragraph)
    if (record := flush()) is not None:
        yield record
