"""Table readers: rows of JSONL / JSON / CSV / XLSX / Parquet files and Hugging Face `datasets`, as dicts.

Curation reads its inputs through them and evaluation its benchmark files. A row that cannot be
read (bad bytes, bad JSON, not an object) comes back as a `Reject` with the reason and where it
was, so callers decide whether that is a dropped record or an error.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from diabetica_jax.data.records import Reject
from diabetica_jax.data.text import decode, undecodable

FORMATS = ("auto", "jsonl", "json", "csv", "xlsx", "parquet", "hf_disk", "hf_hub", "text")


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


def read_rows(path: Path, fmt: str) -> Iterator[tuple[int, dict | Reject]]:
    """(row number, row as a dict) for each row of a table file; a row that cannot be read is a Reject."""
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
        yield from _dataset_rows(_datasets().load_from_disk(str(path)))
    else:
        raise ValueError(f"{path}: unknown format {fmt!r}; one of {FORMATS}")


def _datasets():
    """The optional `datasets` package, or an error that says how to get it."""
    try:
        import datasets
    except ImportError:
        raise ImportError("reading Hugging Face datasets (format hf_disk / hf_hub) needs the `datasets` package: "
                          "pip install 'diabetica-jax[datasets]'") from None
    return datasets


def hub_rows(name: str) -> Iterator[tuple[int, dict]]:
    datasets = _datasets()
    try:
        loaded = datasets.load_dataset(name)
    except Exception as e:  # offline, unknown name, gated: say which dataset and why
        raise FileNotFoundError(f"{name}: cannot load this dataset from the Hugging Face hub ({type(e).__name__}: {e})") from e
    yield from _dataset_rows(loaded)


def _dataset_rows(loaded) -> Iterator[tuple[int, dict]]:
    """Rows of a `datasets` Dataset, or of every split of a DatasetDict, numbered across splits."""
    splits = loaded.values() if isinstance(loaded, _datasets().DatasetDict) else [loaded]
    i = 0
    for split in splits:
        for row in split:
            yield i, row
            i += 1


def _not_object(path: Path, i: int, row: Any) -> Reject:
    return Reject("collect", "row is not a JSON object", {"file": str(path), "row": i}, raw=str(row)[:2000])


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict | Reject]]:
    data = path.read_bytes()
    try:  # one encoding verdict for the file: detection on a single line is guesswork
        encoding, error = decode(data)[1], None
    except UnicodeDecodeError as e:
        encoding, error = None, e
    yield from jsonl_rows(path, data, encoding, error)


def jsonl_rows(path: Path, data: bytes, encoding: str | None, error: UnicodeDecodeError | None,
               first_row: int = 0) -> Iterator[tuple[int, dict | Reject]]:
    """The rows of `data`, whole lines of a JSONL file starting at line `first_row`, given the file's
    encoding verdict (`text.decode` of the whole file: "utf-8" or "gbk", or None with its error)."""
    for i, raw in enumerate(data.splitlines(), start=first_row):
        where = {"file": str(path), "row": i}
        if not raw.strip():
            continue
        try:  # UTF-8 lines are read as such in any file; the others only when the file is GBK
            line = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            if encoding != "gbk":
                yield i, Reject("collect", undecodable(error), where, raw=raw[:2000].decode("latin-1"))
                continue
            line = raw.decode("gb18030")  # GB18030 never uses the newline bytes: the lines of a GBK file decode
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
        reason = None
    except UnicodeDecodeError as e:  # keep going row by row: only the rows with bad bytes are rejected
        text, reason = data.decode("utf-8", errors="surrogateescape").lstrip("\ufeff"), undecodable(e)
    for i, row in enumerate(csv.DictReader(io.StringIO(text, newline=""))):
        if reason and any(_has_surrogates(v) for v in row.values() if isinstance(v, str)):
            raw = json.dumps(row, ensure_ascii=False, default=str).encode("utf-8", "surrogateescape")
            yield i, Reject("collect", reason, {"file": str(path), "row": i}, raw=raw.decode("utf-8", "replace")[:2000])
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
