"""Collect: read heterogeneous files into Records; anything unreadable becomes a Reject with its reason.

Formats: JSONL / JSON, CSV, XLSX, Parquet, Hugging Face `datasets` saved to disk, and plain text or
Markdown documents (split into passages). Encodings: UTF-8, UTF-8 with BOM, GBK.

Row shapes understood (field names can be remapped per input):
  messages / conversations (chat turns)      -> dialogue (qa when one user and one assistant turn)
  question + answer, options in the question -> mcq (Diabetica layout: stem + `Option X` lines, `B：...`)
  question + answer, a `（）` blank            -> cloze
  question + answer / instruction + output   -> qa
  text                                       -> passage
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from diabetica_jax.data.curate.mcq import MCQParseError, parse_answer, parse_question, render
from diabetica_jax.data.records import KINDS, Record, Reject, record_id
from diabetica_jax.data.text import decode, language

FORMATS = ("auto", "jsonl", "json", "csv", "xlsx", "parquet", "hf_disk", "hf_hub", "text")
_BLANK = re.compile(r"[(（]\s*[)）]")


@dataclasses.dataclass(frozen=True)
class InputSpec:
    path: str
    format: str = "auto"
    kind: str = "auto"
    source: str | None = None
    fields: dict[str, str] = dataclasses.field(default_factory=dict)  # our name -> column name

    def column(self, name: str) -> str:
        return self.fields.get(name, name)


def detect_format(path: Path) -> str:
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            return "hf_disk"
        raise ValueError(f"{path}: a directory that is not a saved Hugging Face dataset")
    suffix = path.suffix.lower()
    return {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".xlsx": "xlsx", ".parquet": "parquet",
            ".md": "text", ".markdown": "text", ".txt": "text"}.get(suffix) or _unknown(path)


def _unknown(path: Path) -> str:
    raise ValueError(f"{path}: cannot tell the format from the name; set `format` ({', '.join(FORMATS[1:])})")


def collect(spec: InputSpec) -> Iterator[Record | Reject]:
    path = Path(spec.path)
    if spec.format == "hf_hub":  # a dataset name on the Hugging Face hub, read when a network is there
        yield from _collect_rows(_hub_rows(spec.path), spec, spec.source or spec.path.replace("/", "_"), spec.path)
        return
    if not path.exists():
        raise FileNotFoundError(f"{path}: input not found")
    fmt = detect_format(path) if spec.format == "auto" else spec.format
    source = spec.source or path.stem
    if fmt == "text":
        yield from _passages(path, source)
        return
    yield from _collect_rows(_rows(path, fmt), spec, source, str(path))


def _collect_rows(rows, spec: InputSpec, source: str, origin: str) -> Iterator[Record | Reject]:
    for row_index, row in rows:
        where = {"file": origin, "row": row_index}
        if isinstance(row, Reject):
            yield row
            continue
        try:
            yield row_to_record(row, spec, source, where)
        except (KeyError, ValueError, TypeError, MCQParseError) as e:
            reason = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            yield Reject("collect", reason, where, raw=json.dumps(row, ensure_ascii=False, default=str)[:2000])


# ---- rows from each format ---------------------------------------------------------------------

def _rows(path: Path, fmt: str) -> Iterator[tuple[int, dict | Reject]]:
    if fmt == "jsonl":
        yield from _jsonl_rows(path)
    elif fmt == "json":
        data = json.loads(decode(path.read_bytes())[0])
        if isinstance(data, dict):
            data = next((v for v in data.values() if isinstance(v, list)), [data])
        for i, row in enumerate(data):
            yield i, row if isinstance(row, dict) else _not_object(path, i, row)
    elif fmt == "csv":
        yield from _csv_rows(path)
    elif fmt == "xlsx":
        yield from _xlsx_rows(path)
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist()):
            yield i, row
    elif fmt == "hf_disk":
        import datasets

        yield from _dataset_rows(datasets.load_from_disk(str(path)))
    else:
        raise ValueError(f"{path}: unknown format {fmt!r}; one of {FORMATS}")


def _hub_rows(name: str) -> Iterator[tuple[int, dict]]:
    import datasets

    try:
        loaded = datasets.load_dataset(name)
    except Exception as e:  # offline, unknown name, gated: say which dataset and why
        raise FileNotFoundError(f"{name}: cannot load this dataset from the Hugging Face hub ({type(e).__name__}: {e})") from e
    yield from _dataset_rows(loaded)


def _dataset_rows(loaded) -> Iterator[tuple[int, dict]]:
    """Rows of a `datasets` Dataset, or of every split of a DatasetDict, numbered across splits."""
    import datasets

    splits = loaded.values() if isinstance(loaded, datasets.DatasetDict) else [loaded]
    i = 0
    for split in splits:
        for row in split:
            yield i, row
            i += 1


def _not_object(path: Path, i: int, row: Any) -> Reject:
    return Reject("collect", "row is not a JSON object", {"file": str(path), "row": i}, raw=str(row)[:2000])


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict | Reject]]:
    for i, raw in enumerate(path.read_bytes().splitlines()):
        where = {"file": str(path), "row": i}
        if not raw.strip():
            continue
        try:
            line = decode(raw)[0]
        except UnicodeDecodeError:
            yield i, Reject("collect", "undecodable bytes (neither UTF-8 nor GBK)", where, raw=raw[:2000].decode("latin-1"))
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            yield i, Reject("collect", f"bad JSON: {e.msg} at column {e.colno}", where, raw=line[:2000])
            continue
        yield i, row if isinstance(row, dict) else _not_object(path, i, row)


def _csv_rows(path: Path) -> Iterator[tuple[int, dict | Reject]]:
    data = path.read_bytes()
    try:
        text, _ = decode(data)
        bad_bytes = False
    except UnicodeDecodeError:  # keep going row by row: only the rows with bad bytes are rejected
        text, bad_bytes = data.decode("utf-8", errors="surrogateescape").lstrip("\ufeff"), True
    for i, row in enumerate(csv.DictReader(io.StringIO(text, newline=""))):
        if bad_bytes and any(_has_surrogates(v) for v in row.values() if isinstance(v, str)):
            raw = json.dumps(row, ensure_ascii=False, default=str).encode("utf-8", "surrogateescape")
            yield i, Reject("collect", "undecodable bytes (neither UTF-8 nor GBK)", {"file": str(path), "row": i},
                            raw=raw.decode("utf-8", "replace")[:2000])
            continue
        yield i, row


def _has_surrogates(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def _xlsx_rows(path: Path) -> Iterator[tuple[int, dict]]:
    import openpyxl

    sheet = openpyxl.load_workbook(path, read_only=True, data_only=True).active
    rows = sheet.iter_rows(values_only=True)
    header = [str(h).strip() if h is not None else "" for h in next(rows, [])]
    for i, values in enumerate(rows):
        if all(v is None for v in values):
            continue
        yield i, {h: ("" if v is None else str(v)) for h, v in zip(header, values) if h}


# ---- a row -> a record ---------------------------------------------------------------------------

def _field(row: dict, spec: InputSpec, name: str, required: bool = True) -> str | None:
    column = spec.column(name)
    value = row.get(column)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise KeyError(f"missing field {column!r}")
        return None
    return str(value).strip()


def row_to_record(row: dict, spec: InputSpec, source: str, where: dict) -> Record:
    kind = spec.kind
    if kind != "auto" and kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {KINDS}")
    turns = row.get(spec.column("messages")) or row.get("conversations")
    if turns is not None and kind in ("auto", "dialogue", "qa"):
        messages = _messages(turns)
        n_user = sum(m["role"] == "user" for m in messages)
        kind = kind if kind != "auto" else ("qa" if n_user == 1 and len(messages) <= 3 else "dialogue")
        return _make(source, where, kind, messages=messages)
    if kind == "passage" or (kind == "auto" and spec.column("text") in row and spec.column("question") not in row):
        text = _field(row, spec, "text")
        return _make(source, where, "passage", text=text)
    if spec.column("instruction") in row and spec.column("question") not in row:
        question = _field(row, spec, "instruction")
        extra = _field(row, spec, "input", required=False)
        question = f"{question}\n{extra}" if extra else question
        return _make(source, where, kind if kind != "auto" else "qa", messages=_qa(question, _field(row, spec, "output")))
    question, answer = _field(row, spec, "question"), _field(row, spec, "answer")
    parsed = _try_mcq(question) if kind in ("auto", "mcq") else None
    if kind == "mcq" and parsed is None:
        parse_question(question)  # raises with the reason
    if parsed is not None:
        stem, options = parsed
        letter = parse_answer(answer, options)
        messages = _qa(render(stem, options), f"{letter}. {options[letter]}")
        return _make(source, where, "mcq", messages=messages, options=options, answer=letter)
    if kind == "cloze" or (kind == "auto" and _BLANK.search(question)):
        return _make(source, where, "cloze", messages=_qa(question, answer))
    return _make(source, where, kind if kind != "auto" else "qa", messages=_qa(question, answer))


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
    if isinstance(turns, str):
        turns = json.loads(turns)
    if not isinstance(turns, list) or not turns:
        raise ValueError("messages must be a non-empty list of turns")
    out = []
    for i, turn in enumerate(turns):
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


def _make(source: str, where: dict, kind: str, **fields) -> Record:
    body = fields.get("text") or json.dumps(fields.get("messages"), ensure_ascii=False)
    return Record(id=record_id(source, where["file"], where.get("row"), body), source=source, kind=kind,
                  language=language(body), provenance=dict(where), **fields)


# ---- documents -> passages ---------------------------------------------------------------------

def _passages(path: Path, source: str, max_chars: int = 1200) -> Iterator[Record | Reject]:
    try:
        text, _ = decode(path.read_bytes())
    except UnicodeDecodeError:
        yield Reject("collect", "undecodable bytes (neither UTF-8 nor GBK)", {"file": str(path)})
        return
    heading, chunk, index = "", [], 0

    def flush():
        nonlocal chunk, index
        body = "\n".join(chunk).strip()
        chunk = []
        if body:
            index += 1
            where = {"file": str(path), "row": index - 1, "heading": heading}
            return _make(source, where, "passage", text=f"{heading}\n{body}".strip() if heading else body)
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
