"""The per-record half of curation, run on slices of the input in parallel.

A `Unit` is a picklable slice of the inputs (`plan_units`): a whole file, or a `tables.Part` of a file
larger than the unit size: a byte range of whole lines of JSONL, a byte range of whole records of CSV (read
after the header record), a range of row groups of Parquet. Rows keep their numbers in the whole file, so
what a unit yields does not depend on the cut. `scan_unit` reads its records and applies every stage whose verdict
depends on the record alone, in the pipeline's order:

    collect      rows -> records (unreadable rows are rejects)
    relevance    weighted diabetes terms
    quality      length, garbage characters, repetition
    then, for the records that pass, what the order-dependent stages need later:
    exact key    SHA-1 of the normalised text
    signature    MinHash (uint32) for near dedup
    leak         the benchmark overlap verdict, applied later only if the record survives dedup

Each record is normalised once and its comparison units computed once for all of these. The unit's
records go to a spill file in the work directory, one line each, in input order:
`R\\t<record JSON>` for a record that reached dedup, `X\\t<reject JSON>` for one dropped here. What
the order-dependent stages need of the records that reached dedup (ids, labels, exact keys,
signatures, LSH band entries, leaks) goes to files beside it (resolve.save_unit), and the
`UnitSummary` returned holds only counts. `resolve.py`'s tasks make the order-dependent decisions
(exact and near duplicates: keep the first) over those files in unit order, so the result does not
depend on how the input was cut into units or how many processes scanned them.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import hashlib
import io
from collections import Counter
from pathlib import Path

from diabetica_jax.curate import filters, resolve
from diabetica_jax.curate.collect import collect
from diabetica_jax.curate.config import CurateConfig, InputSection
from diabetica_jax.data.records import Record, Reject, dumps, reason_class
from diabetica_jax.data.tables import Part, detect_format, missing_input
from diabetica_jax.data.text import decode, normalize, normalized_units, unit_ngrams
from diabetica_jax.errors import MissingInput

DEFAULT_UNIT_BYTES = 16 << 20  # a JSONL, CSV or Parquet file larger than this is scanned in slices of about this size


@dataclasses.dataclass(frozen=True)
class Unit:
    """A slice of one input: all of it (part None), or a `tables.Part` of it."""

    index: int
    input: InputSection
    part: Part | None = None

    # the bytes [start, end) the unit reads (end None: the whole input), its first row, the file's encoding
    start = property(lambda self: 0 if self.part is None else self.part.start)
    end = property(lambda self: None if self.part is None else self.part.end)
    first_row = property(lambda self: 0 if self.part is None else self.part.first_row)
    encoding = property(lambda self: None if self.part is None else self.part.encoding)

    def __repr__(self) -> str:
        part, span = self.part, ""
        if part is not None and part.groups is not None:
            span = f" row groups {part.groups[0]}-{part.groups[1] - 1} (row {part.first_row})"
        elif part is not None:
            span = f" bytes {part.start}-{part.end} ({'line' if part.format == 'jsonl' else 'row'} {part.first_row})"
        return f"Unit({self.index}: {self.input.path}{span})"


def plan_units(inputs: list[InputSection], unit_bytes: int = DEFAULT_UNIT_BYTES) -> list[Unit]:
    """The inputs cut into units, in input order: a file is cut into parts of about unit_bytes when it is larger
    (JSONL, CSV, Parquet) and its format allows more than one."""
    units: list[Unit] = []
    for entry in inputs:
        path = Path(entry.path)
        if entry.format != "hf_hub" and not path.exists():  # before any work, not in a worker
            raise MissingInput(missing_input(path))
        if entry.format == "hf_hub" or not path.is_file():  # a saved dataset's directory, a hub name
            units.append(Unit(len(units), entry))
            continue
        fmt = detect_format(path) if entry.format == "auto" else entry.format
        parts: list[Part | None] = _parts(path, fmt, unit_bytes) if path.stat().st_size > unit_bytes else []
        if len(parts) < 2:  # read whole
            parts = [None]
        units += [Unit(len(units) + i, entry, part) for i, part in enumerate(parts)]
    return units


def _parts(path: Path, fmt: str, unit_bytes: int) -> list[Part]:
    """The parts of one file, or [] when it is read whole (a format that is not cut; a file the reader should
    refuse as a whole, which it does with one reject naming it)."""
    if fmt == "parquet":
        return _row_group_parts(path, unit_bytes)
    if fmt not in ("jsonl", "csv"):
        return []
    encoding, error = _file_encoding(path)
    if fmt == "jsonl":
        return [Part("jsonl", start, end, row, encoding=encoding, error=error)
                for start, end, row in _line_ranges(path, unit_bytes)]
    try:
        header_end, ranges = _csv_ranges(path, unit_bytes)
    except csv.Error:  # a field past the csv module's limit: the reader refuses the file, once
        return []
    return [Part("csv", start, end, row, header_end=header_end, encoding=encoding, error=error)
            for start, end, row in ranges]


def _file_encoding(path: Path) -> tuple[str | None, UnicodeDecodeError | None]:
    """`text.decode`'s verdict on the whole file, without holding it decoded: UTF-8 is checked block by
    block; only a file that is not UTF-8 is read whole for detection (legacy encodings: small files)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(path, "rb") as f:
            while block := f.read(8 << 20):
                decoder.decode(block)
            decoder.decode(b"", final=True)
        return "utf-8", None
    except UnicodeDecodeError:
        try:
            return decode(path.read_bytes())[1], None
        except UnicodeDecodeError as e:
            return None, e


def _line_ranges(path: Path, unit_bytes: int):
    """(start, end, first line number) of consecutive byte ranges of about unit_bytes that end after a
    newline. Line numbers follow bytes.splitlines (\\n, \\r and \\r\\n end a line), as the reader does."""
    size = path.stat().st_size
    start, row = 0, 0
    with open(path, "rb") as f:
        while start < size:
            f.seek(start)
            data = f.read(unit_bytes)
            while start + len(data) < size and not data.endswith(b"\n"):  # finish the last line
                more = f.read(1 << 16)
                cut = more.find(b"\n")
                data += more if cut < 0 else more[: cut + 1]
            end = start + len(data)
            yield start, end, row
            row += data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n")
            start = end


def _csv_ranges(path: Path, unit_bytes: int) -> tuple[int, list[tuple[int, int, int]]]:
    """(where the header record ends, [(start, end, first row)]): consecutive byte ranges of about unit_bytes
    that end after a whole record. The csv module finds the record ends, so quoted fields with newlines in them
    are never cut, and records end where csv.DictReader ends them (a line ends at \\n, \\r or \\r\\n); rows
    are numbered as it numbers them: the first record is the header, blank lines are no rows. The bytes are read
    as Latin-1, one character a byte: the quote, comma and line-end bytes are never part of a UTF-8 or GBK
    character, so the records are the same as in the decoded text."""
    with open(path, "rb") as f:
        text = io.TextIOWrapper(f, encoding="latin-1", newline="")
        offset = 0

        def lines():
            nonlocal offset
            for line in text:
                offset += len(line)
                yield line

        records = csv.reader(lines())
        next(records, None)
        header_end = start = offset
        ranges, first, rows = [], 0, 0
        for record in records:
            if not record:  # a blank line: DictReader skips it
                continue
            rows += 1
            if offset - start >= unit_bytes:
                ranges.append((start, offset, first))
                start, first = offset, rows
        if offset > start:  # the last records, and any blank lines after them
            ranges.append((start, offset, first))
    return header_end, ranges


def _row_group_parts(path: Path, unit_bytes: int) -> list[Part]:
    """Parts of consecutive row groups spanning about unit_bytes each, from the Parquet footer; [] when the
    footer cannot be read (the reader then refuses the file, once)."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_metadata(path)
    except (OSError, ValueError):  # pyarrow's ArrowInvalid is a ValueError
        return []
    parts, first_group, first_row, rows, start, end = [], 0, 0, 0, None, 0
    for group in range(meta.num_row_groups):
        g = meta.row_group(group)
        columns = [g.column(c) for c in range(g.num_columns)]
        # a column chunk starts at its dictionary page when it has one, else at its first data page
        begins = [c.dictionary_page_offset if c.has_dictionary_page else c.data_page_offset for c in columns]
        lo = min(begins, default=end)
        end = max((b + c.total_compressed_size for b, c in zip(begins, columns)), default=lo)
        start = lo if start is None else start
        rows += g.num_rows
        if end - start >= unit_bytes or group == meta.num_row_groups - 1:
            parts.append(Part("parquet", start, end, first_row, groups=(first_group, group + 1)))
            first_group, first_row, start = group + 1, rows, None
    return parts


@dataclasses.dataclass
class ScanContext:
    """What every unit's scan needs: the per-record stages' settings and the benchmark items."""

    cfg: CurateConfig
    benchmark_items: list[filters.BenchmarkItem]
    work_dir: str

    def key(self) -> str:
        text = repr((self.cfg.relevance, self.cfg.quality, self.cfg.dedup, self.cfg.decontamination,
                     [(i.id, i.text) for i in self.benchmark_items]))
        return hashlib.sha1(text.encode()).hexdigest()


@dataclasses.dataclass
class UnitSummary:
    """What the driver needs of a scanned unit: counts. The records are in `spill`, what dedup needs of them
    in the unit's files beside it (resolve.save_unit)."""

    index: int
    spill: str
    items: int  # records and unreadable rows collected
    rejected: dict[str, Counter]  # stage -> reason class -> count (collect, relevance, quality)
    kept_labels: dict[str, Counter]  # stage -> (source, kind, language) -> records kept after it
    records: int  # that reached dedup (the spill's R lines)
    leaks: int  # of them that overlap a benchmark (dropped if they survive dedup)


class _Scanner:
    """A worker process's state for one context: term lists, hash coefficients, the benchmark n-gram index."""

    def __init__(self, ctx: ScanContext):
        cfg = ctx.cfg
        self.cfg = cfg
        self.relevance = filters.RelevanceScorer(cfg.relevance)
        self.a, self.b = filters.minhash_coefficients(cfg.dedup.num_perm)
        self.leaks = filters.BenchmarkIndex(ctx.benchmark_items, cfg.decontamination)


_SCANNERS: dict[str, _Scanner] = {}


def _unit_items(unit: Unit):
    return collect(unit.input, unit.part)


def scan_unit(unit: Unit, ctx: ScanContext) -> UnitSummary:
    """Collect, relevance and quality for one unit, plus what dedup and decontamination need later."""
    key = ctx.key()
    scanner = _SCANNERS.get(key)
    if scanner is None:
        scanner = _SCANNERS[key] = _Scanner(ctx)
    cfg = scanner.cfg
    spill = Path(ctx.work_dir) / f"unit-{unit.index:06d}.spill"
    rejected = {stage: Counter() for stage in ("collect", "relevance", "quality")}
    kept = {stage: Counter() for stage in ("collect", "relevance", "quality")}
    ids, labels, keys, unit_lists, leaks = [], [], [], [], {}
    items = 0
    with open(spill, "w", encoding="utf-8") as out:
        for item in _unit_items(unit):
            items += 1
            if isinstance(item, Reject):
                rejected["collect"][reason_class(item.reason)] += 1
                out.write("X\t" + dumps(item.to_json()) + "\n")
                continue
            label = (item.source, item.kind, item.language)
            kept["collect"][label] += 1
            content = item.content()
            normalized = normalize(content)
            problem = scanner.relevance.problem(normalized)
            if problem is not None:
                _drop(out, rejected, "relevance", item, problem)
                continue
            kept["relevance"][label] += 1
            u = normalized_units(normalized)
            problem = filters.quality_problem(content, u, cfg.quality)
            if problem is not None:
                _drop(out, rejected, "quality", item, problem)
                continue
            kept["quality"][label] += 1
            leak = scanner.leaks.overlap(unit_ngrams(u, cfg.decontamination.n))
            if leak is not None:
                leaks[len(ids)] = leak
            ids.append(item.id)
            labels.append(label)
            keys.append(filters.exact_key(normalized))
            unit_lists.append(u)
            out.write("R\t" + dumps(item.to_json()) + "\n")
    signatures = filters.minhash_many(unit_lists, cfg.dedup.shingle, scanner.a, scanner.b)
    resolve.save_unit(ctx.work_dir, unit.index, ids, labels, keys, signatures, leaks, cfg.dedup.bands)
    return UnitSummary(unit.index, str(spill), items, rejected, kept, len(ids), len(leaks))


def _drop(out, rejected: dict[str, Counter], stage: str, record: Record, reason: str) -> None:
    rejected[stage][reason_class(reason)] += 1
    out.write("X\t" + dumps(Reject(stage, reason, record.provenance, record=record.to_json()).to_json()) + "\n")
