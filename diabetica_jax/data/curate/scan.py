"""The per-record half of curation, run on slices of the input in parallel.

A `Unit` is a picklable slice of the inputs: a whole file, or a byte range of whole lines of a large
JSONL file (`plan_units`). `scan_unit` reads its records and applies every stage whose verdict
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
import dataclasses
import hashlib
from collections import Counter
from pathlib import Path

from diabetica_jax.data.curate import filters, resolve
from diabetica_jax.data.curate.collect import collect, collect_jsonl_range
from diabetica_jax.data.curate.config import CurateConfig, InputSection
from diabetica_jax.data.records import Record, Reject, dumps, reason_class
from diabetica_jax.data.tables import detect_format
from diabetica_jax.data.text import decode, normalize, normalized_units, unit_ngrams

DEFAULT_UNIT_BYTES = 16 << 20  # a JSONL file larger than this is scanned in slices of about this size


@dataclasses.dataclass(frozen=True)
class Unit:
    """A slice of one input: all of it, or bytes [start, end) of a JSONL file (whole lines, the first
    being line `first_row`), with the file's encoding verdict taken once over all its bytes."""

    index: int
    input: InputSection
    start: int = 0
    end: int | None = None
    first_row: int = 0
    encoding: str | None = None
    encoding_error: UnicodeDecodeError | None = None

    def __repr__(self) -> str:
        span = "" if self.end is None else f" bytes {self.start}-{self.end} (line {self.first_row})"
        return f"Unit({self.index}: {self.input.path}{span})"


def plan_units(inputs: list[InputSection], unit_bytes: int = DEFAULT_UNIT_BYTES) -> list[Unit]:
    """The inputs cut into units, in input order."""
    units: list[Unit] = []
    for entry in inputs:
        path = Path(entry.path)
        if entry.format != "hf_hub" and not path.exists():  # before any work, not in a worker
            raise FileNotFoundError(f"{path}: input not found")
        if entry.format == "hf_hub" or not path.is_file():  # a saved dataset's directory, a hub name
            units.append(Unit(len(units), entry))
            continue
        fmt = detect_format(path) if entry.format == "auto" else entry.format
        if fmt != "jsonl" or path.stat().st_size <= unit_bytes:
            units.append(Unit(len(units), entry))
            continue
        encoding, error = _file_encoding(path)
        for start, end, first_row in _line_ranges(path, unit_bytes):
            units.append(Unit(len(units), entry, start, end, first_row, encoding, error))
    return units


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
    if unit.end is None:
        return collect(unit.input)
    return collect_jsonl_range(unit.input, unit.start, unit.end, unit.first_row, unit.encoding, unit.encoding_error)


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
