"""Table readers: rows of JSONL / JSON / CSV / XLSX / Parquet files and Hugging Face `datasets`, as dicts.

Curation reads its inputs through them and evaluation its benchmark files. A row that cannot be
read (bad bytes, bad JSON, not an object) comes back as a `Reject` with the reason and where it
was, so callers decide whether that is a dropped record or an error; so does a row that parsed but
cannot become a record (`row_problem`: nested too deep to walk, binary data or a lone surrogate in a
field). A file that cannot be read at all is an `InputError` naming it: `detect_format` refuses what
its first bytes show to be the wrong file (empty, binary where text is expected, not the workbook or
Parquet file its name says, a zip bomb, not a regular file), and `read_rows` a whole-file parse that
fails (a truncated JSON document, a damaged workbook).

Large JSONL, CSV and Parquet files are read in `Part`s (scan.plan_units cuts them); a part's rows keep
the numbers they have in the whole file, so the rows read do not depend on the cut.
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import io
import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from diabetica_jax.configuration import InputError
from diabetica_jax.data.records import Reject
from diabetica_jax.data.text import bad_character, decode, escape_bad_characters, undecodable
from diabetica_jax.errors import MissingInput

FORMATS = ("auto", "jsonl", "json", "csv", "xlsx", "parquet", "hf_disk", "hf_hub", "text")


TEXT_FORMATS = ("jsonl", "json", "csv", "text")
SNIFF_BYTES = 1 << 16
# first bytes of files often given by mistake where text is expected
SIGNATURES = {b"\x1f\x8b": "gzip-compressed (decompress it first)", b"BZh": "bzip2-compressed (decompress it first)",
              b"\xfd7zXZ\x00": "xz-compressed (decompress it first)", b"(\xb5/\xfd": "zstd-compressed (decompress it first)",
              b"PK\x03\x04": "a zip archive (an .xlsx workbook? then name it .xlsx)", b"PAR1": "a Parquet file (name it .parquet)",
              b"\x89PNG": "a PNG image", b"%PDF": "a PDF document (extract its text first)",
              b"ARROW1": "an Arrow file", b"\x93NUMPY": "a NumPy array"}
# A row nested deeper than this is junk, not a record (a chat is 3 levels deep), and walking it recursively, as
# json.dumps and repr do, would exhaust the stack: refused as a reject before anything walks it.
MAX_NESTING = 100
# A workbook is a zip archive: refused before openpyxl opens it when its central directory says it unpacks to
# more than MAX_UNZIPPED_BYTES, or to more than MAX_ZIP_RATIO times its packed size (and past ZIP_RATIO_FLOOR:
# below that no ratio costs memory). zipfile stops each entry at its declared size, so the directory can be trusted.
MAX_UNZIPPED_BYTES = 1 << 30
MAX_ZIP_RATIO = 100
ZIP_RATIO_FLOOR = 8 << 20


@dataclasses.dataclass(frozen=True)
class Part:
    """A slice of a large table file, read on its own in a scan worker; its first row is row `first_row` of the
    whole file. jsonl: bytes [start, end) of whole lines. csv: bytes [start, end) of whole records, read after the
    header record, bytes [0, header_end). parquet: row groups [groups[0], groups[1]), which span bytes [start, end).
    `encoding` / `error`: a text file's encoding verdict (`text.decode`), taken once over all its bytes."""

    format: str
    start: int
    end: int
    first_row: int
    header_end: int = 0
    groups: tuple[int, int] | None = None
    encoding: str | None = None
    error: UnicodeDecodeError | None = None


def missing_input(path: Path) -> str:
    """Why `path`, which does not exist, cannot be read, naming it: a symbolic link along it that loops or points
    nowhere (pathlib's exists() says only False for both), else plainly not found."""
    for step in (*reversed(path.parents), path):
        if not step.is_symlink():
            continue
        try:
            os.stat(step)
        except OSError as e:
            target = os.readlink(step)
            if e.errno == errno.ELOOP:
                return f"{path}: a symbolic link loop ({step} -> {target} never reaches a file)"
            if e.errno == errno.ENOENT:
                return f"{path}: input not found: {step} is a dangling symbolic link to {target}"
    return f"{path}: input not found"


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
    elif fmt == "xlsx":
        check_zip(path)
    elif fmt == "parquet" and not head.startswith(b"PAR1"):
        raise InputError(f"{path}: not a Parquet file (no PAR1 header)")


def check_zip(path: Path) -> None:
    """InputError when the zip archive's central directory says it unpacks to too much (a zip bomb, see
    MAX_UNZIPPED_BYTES). A damaged archive is left to the reader, which names what is wrong."""
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError):
        return
    unpacked = sum(e.file_size for e in entries)
    ratio = unpacked / max(1, sum(e.compress_size for e in entries))
    if unpacked > MAX_UNZIPPED_BYTES or (unpacked > ZIP_RATIO_FLOOR and ratio > MAX_ZIP_RATIO):
        raise InputError(f"{path}: refused as a zip bomb: it unpacks to {unpacked / 2**20:,.0f} MiB, {ratio:,.0f} "
                         f"times its packed size (limits: {MAX_UNZIPPED_BYTES >> 20:,} MiB, {MAX_ZIP_RATIO} times)")


def row_problem(row: dict) -> str | None:
    """Why a row that parsed cannot become a record, naming the field: nested deeper than MAX_NESTING levels, or a
    text (value or field name) that `text.bad_character` refuses. None when it can. Walked without recursion."""
    stack = [(row, "", 1)]  # (value, its field path, how many containers deep it is); the first field first
    while stack:
        value, name, depth = stack.pop()
        if isinstance(value, str):
            if (problem := bad_character(value)) is not None:
                return f"{problem} in field {escape_bad_characters(name)!r}"
            continue
        if isinstance(value, (dict, list, tuple)) and depth > MAX_NESTING:
            return f"nested deeper than {MAX_NESTING} levels (field {name.split('.')[0].split('[')[0]!r})"
        if isinstance(value, dict):
            for key in value:
                if (problem := bad_character(str(key))) is not None:
                    return f"{problem} in a field name ({escape_bad_characters(str(key))!r})"
            stack.extend((item, f"{name}.{key}" if name else str(key), depth + 1)
                         for key, item in reversed(value.items()))
        elif isinstance(value, (list, tuple)):  # Parquet maps read as lists of (key, value) tuples
            stack.extend((item, f"{name}[{i}]", depth + 1) for i, item in reversed(list(enumerate(value))))
    return None


def raw_text(value: Any) -> str | None:
    """A value as JSON for a reject's `raw`: cut to 2000 characters, safe to write (escape_bad_characters); None
    when it is nested too deep to write at all."""
    try:
        return escape_bad_characters(json.dumps(value, ensure_ascii=False, default=str)[:2000])
    except RecursionError:
        return None


def read_rows(path: Path, fmt: str, part: Part | None = None) -> Iterator[tuple[int, dict | Reject]]:
    """(row number, row as a dict) for each row of a table file, or of one `Part` of it; a row that cannot be
    read is a Reject, a file that cannot be read at all (not JSON as a whole, a damaged workbook) an InputError
    naming it."""
    try:
        yield from _rows(path, fmt, part)
    except InputError:
        raise
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: {undecodable(e)}") from e
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON (line {e.lineno} column {e.colno}: {e.msg})") from e
    except RecursionError as e:  # json.loads of a document nested some thousand levels deep
        raise InputError(f"{path}: nested deeper than {MAX_NESTING} levels (arrays or objects inside each other); "
                         "not a table of rows") from e
    except csv.Error as e:
        raise InputError(f"{path}: not a readable CSV file ({e})") from e
    except (ValueError, KeyError, TypeError, OSError, zipfile.BadZipFile) as e:
        if fmt == "json" and isinstance(e, ValueError):  # a number json.loads will not convert (4300+ digits)
            raise InputError(f"{path}: not readable JSON ({e})") from e
        if fmt not in ("xlsx", "parquet", "hf_disk"):
            raise
        first = str(e).splitlines()[0] if str(e) else ""
        raise InputError(f"{path}: cannot read it as {fmt} ({type(e).__name__}: {first})") from e


def _rows(path: Path, fmt: str, part: Part | None) -> Iterator[tuple[int, dict | Reject]]:
    if fmt == "jsonl" and part is not None:
        yield from jsonl_rows(path, _read_bytes(path, part.start, part.end), part.encoding, part.error, part.first_row)
    elif fmt == "jsonl":
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
        yield from _csv_rows(path, part)
    elif fmt == "xlsx":
        yield from _xlsx_rows(path)
    elif fmt == "parquet":
        yield from _parquet_rows(path, part)
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
        raise MissingInput(f"{name}: cannot load this dataset from the Hugging Face hub ({type(e).__name__}: {e})") from e
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
    return Reject("collect", "row is not a JSON object", {"file": str(path), "row": i}, raw=raw_text(row))


def _read_bytes(path: Path, start: int, end: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(end - start)


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
        except RecursionError:  # the C parser's own depth guard, some thousand levels deep
            yield i, Reject("collect", f"nested deeper than {MAX_NESTING} levels", where, raw=line[:2000])
            continue
        except ValueError as e:  # an integer of more than 4300 digits
            yield i, Reject("collect", f"bad JSON: {e}", where, raw=line[:2000])
            continue
        if isinstance(row, dict):
            yield i, row
        else:
            yield i, Reject("collect", "row is not a JSON object", where, raw=line[:2000])


def _csv_rows(path: Path, part: Part | None) -> Iterator[tuple[int, dict | Reject]]:
    if part is None:
        data, first_row = path.read_bytes(), 0
        try:
            text, reason = decode(data)[0], None
        except UnicodeDecodeError as e:  # keep going row by row: only the rows with bad bytes are rejected
            text, reason = data.decode("utf-8", errors="surrogateescape").lstrip("\ufeff"), undecodable(e)
    else:  # the header record, then the part's records, decoded as the verdict over the whole file says
        data = _read_bytes(path, 0, part.header_end) + _read_bytes(path, part.start, part.end)
        first_row, reason = part.first_row, None if part.encoding else undecodable(part.error)
        if part.encoding:
            text = data.decode("gb18030" if part.encoding == "gbk" else "utf-8-sig")
        else:
            text = data.decode("utf-8", errors="surrogateescape").lstrip("\ufeff")
    for i, row in enumerate(csv.DictReader(io.StringIO(text, newline="")), start=first_row):
        if reason and any(_has_surrogates(v) for v in row.values() if isinstance(v, str)):
            raw = json.dumps(row, ensure_ascii=False, default=str).encode("utf-8", "surrogateescape")
            yield i, Reject("collect", reason, {"file": str(path), "row": i}, raw=raw.decode("utf-8", "replace")[:2000])
            continue
        yield i, row


def _has_surrogates(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def _parquet_rows(path: Path, part: Part | None) -> Iterator[tuple[int, dict]]:
    """Rows read a row group at a time (not the whole table at once), numbered across the file."""
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as f:
        first, last = part.groups if part is not None else (0, f.num_row_groups)
        i = part.first_row if part is not None else 0
        for group in range(first, last):
            for row in f.read_row_group(group).to_pylist():
                yield i, row
                i += 1


def _xlsx_rows(path: Path) -> Iterator[tuple[int, dict]]:
    import openpyxl

    sheet = openpyxl.load_workbook(path, read_only=True, data_only=True).active
    rows = sheet.iter_rows(values_only=True)
    header = [str(h).strip() if h is not None else "" for h in next(rows, [])]
    for i, values in enumerate(rows):
        if all(v is None for v in values):
            continue
        yield i, {h: ("" if v is None else str(v)) for h, v in zip(header, values) if h}
