"""Table readers: rows of JSONL / JSON / CSV / XLSX / Parquet files and Hugging Face `datasets`, as dicts.

Curation reads its inputs through them and evaluation its benchmark files. A row that cannot be
read (bad bytes, bad JSON, not an object) comes back as a `Reject` with the reason and where it
was, so callers decide whether that is a dropped record or an error. A file that cannot be read at
all is an `InputError` naming it: `detect_format` refuses what its first bytes show to be the wrong
file (empty, binary where text is expected, not the workbook or Parquet file its name says, not a
regular file), and `read_rows` a whole-file parse that fails (a truncated JSON document, a damaged
workbook).
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from diabetica_jax.configuration import InputError
from diabetica_jax.data.records import Reject
from diabetica_jax.data.text import decode, undecodable

FORMATS = ("auto", "jsonl", "json", "csv", "xlsx", "parquet", "hf_disk", "hf_hub", "text")


TEXT_FORMATS = ("jsonl", "json", "csv", "text")
SNIFF_BYTES = 1 << 16
# first bytes of files often given by mistake where text is expected
SIGNATURES = {b"\x1f\x8b": "gzip-compressed (decompress it first)", b"BZh": "bzip2-compressed (decompress it first)",
              b"\xfd7zXZ\x00": "xz-compressed (decompress it first)", b"(\xb5/\xfd": "zstd-compressed (decompress it first)",
              b"PK\x03\x04": "a zip archive (an .xlsx workbook? then name it .xlsx)", b"PAR1": "a Parquet file (name it .parquet)",
              b"\x89PNG": "a PNG image", b"%PDF": "a PDF document (extract its text first)",
              b"ARROW1": "an Arrow file", b"\x93NUMPY": "a NumPy array"}


def detect_format(path: Path) -> str:
    """The format of a table file from its name (a directory: a saved Hugging Face dataset), checked against
    its first bytes (`check_content`). InputError when the name says no format, the directory holds no
    dataset, or the content cannot be what the format needs."""
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            return "hf_disk"
        raise InputError(f"{path}: a directory that is not a saved Hugging Face dataset (no dataset_info.json, "
                         "dataset_dict.json or state.json); give the files in it one by one")
    suffix = path.suffix.lower()
    fmt = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".xlsx": "xlsx", ".parquet": "parquet",
           ".md": "text", ".markdown": "text", ".txt": "text"}.get(suffix) or _unknown(path)
    check_content(path, fmt)
    return fmt


def _unknown(path: Path) -> str:
    raise InputError(f"{path}: cannot tell the format from the name; set `format` ({', '.join(FORMATS[1:])})")


def check_content(path: Path, fmt: str) -> None:
    """InputError when the file's first bytes show it cannot hold rows of `fmt`: not a regular file (a FIFO
    would block the reader), empty, binary (NUL bytes, or a compressed or image file) where text is expected,
    or not the container that xlsx (a zip archive) and parquet name. Missing paths and directories are left
    to the readers, which name them."""
    if not path.exists() or path.is_dir():
        return
    if not path.is_file():
        raise InputError(f"{path}: not a regular file (a pipe or a device?); give a {fmt} file")
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    if not head.strip():
        raise InputError(f"{path}: empty file, nothing to read (a failed download or copy?); check the path")
    if fmt in TEXT_FORMATS:
        kind = next((what for magic, what in SIGNATURES.items() if head.startswith(magic)), None)
        nul = head.find(b"\x00")
        if kind is None and nul >= 0:
            kind = f"binary data (a NUL byte at byte {nul}; UTF-16 text has them too: save it as UTF-8)"
        if kind is not None:
            raise InputError(f"{path}: not {fmt} text but {kind}")
    elif fmt == "xlsx" and not head.startswith(b"PK\x03\x04"):
        raise InputError(f"{path}: not an .xlsx workbook (those are zip archives); an old .xls or a CSV named .xlsx?")
    elif fmt == "parquet" and not head.startswith(b"PAR1"):
        raise InputError(f"{path}: not a Parquet file (no PAR1 header)")


def read_rows(path: Path, fmt: str) -> Iterator[tuple[int, dict | Reject]]:
    """(row number, row as a dict) for each row of a table file; a row that cannot be read is a Reject, a
    file that cannot be read at all (not JSON as a whole, a damaged workbook) an InputError naming it."""
    try:
        yield from _rows(path, fmt)
    except InputError:
        raise
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: {undecodable(e)}") from e
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON (line {e.lineno} column {e.colno}: {e.msg})") from e
    except csv.Error as e:
        raise InputError(f"{path}: not a readable CSV file ({e})") from e
    except (ValueError, KeyError, TypeError, OSError, zipfile.BadZipFile) as e:
        if fmt not in ("xlsx", "parquet", "hf_disk"):
            raise
        first = str(e).splitlines()[0] if str(e) else ""
        raise InputError(f"{path}: cannot read it as {fmt} ({type(e).__name__}: {first})") from e


def _rows(path: Path, fmt: str) -> Iterator[tuple[int, dict | Reject]]:
    if fmt == "jsonl":
        yield from _jsonl_rows(path)
    elif fmt == "json":
        data = json.loads(decode(path.read_bytes())[0])
        if isinstance(data, dict):
            data = next((v for v in data.values() if isinstance(v, list)), [data])
        if not isinstance(data, list):
            raise InputError(f"{path}: expected a JSON array of rows (or an object holding one), got "
                             f"{type(data).__name__}")
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
        raise InputError(f"{path}: unknown format {fmt!r}; one of {FORMATS}")


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
