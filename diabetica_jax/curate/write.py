"""Write curation outputs: ArrayRecord shards, rejects.jsonl, samples, the data card (JSON, Markdown, PNG),
and the kept records as a Hugging Face `datasets` dataset.

The dataset (`OUT/hf_dataset/`, open it with `datasets.load_from_disk`) holds the same records as the
shards, in the same order, one row per record. Arrow wants one type per column, and `options`, `meta`
and `provenance` are free-form dicts, so the schema is:

    id, source, kind, language   string
    messages                     list of {role: string, content: string}; null for passages
    text                         string; null unless kind is passage
    answer                       string; the keyed MCQ letter, else null
    options                      string: the option dict as JSON (null unless kind is mcq)
    meta, provenance             string: the dict as JSON

`record_from_row` turns a row back into the `Record`. `datasets` is an optional extra: without it the
dataset is skipped and the data card says so (`"hf_dataset": "not written: pip install datasets"`).

A process killed while writing (kill -9, a lost node) leaves nothing that passes for finished: the data card
(data_card.json) is the last file written and an earlier card is removed before anything else; the shards are
written in `shards.partial/` and renamed to `shards/` whole, the dataset likewise, and rejects.jsonl under a
temporary name. Curating into the same directory again replaces all of it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from diabetica_jax.configuration import to_dict
from diabetica_jax.data.records import Record, count_by, dumps
from diabetica_jax.data.shards import CURATED_FORMAT, DATA_CARD, SHARD_PATTERN, shard_paths

log = logging.getLogger(__name__)

HF_DATASET_DIR = "hf_dataset"
JSON_COLUMNS = ("options", "meta", "provenance")
PARTIAL = ".partial"  # what is being written: renamed to its name without this once complete


@contextlib.contextmanager
def written_whole(path: Path):
    """The path to write `path`'s content to (`path` + PARTIAL), renamed to `path` when the block ends
    without an error: a reader, or a rerun after a crash, never takes a half-written file for a whole one."""
    partial = path.with_name(path.name + PARTIAL)
    yield partial
    os.replace(partial, path)


def write_shards(out: Path, records: list[Record], count: int) -> list[Path]:
    """The records as `count` ArrayRecord shards (fewer when there are fewer records)."""
    return write_shard_lines(out, (dumps(r.to_json()) for r in records), len(records), count)


def write_shard_lines(out: Path, lines: Iterable[str], total: int, count: int) -> list[Path]:
    """`total` records, given as their JSON lines, streamed into `count` shards of equal size (the last smaller)
    under out/shards/, which is replaced whole at the end (until then it holds the earlier shards, if any)."""
    from array_record.python.array_record_module import ArrayRecordWriter

    final = out / "shards"
    directory = out / ("shards" + PARTIAL)
    shutil.rmtree(directory, ignore_errors=True)  # a killed writer's
    directory.mkdir(parents=True)
    count = max(1, min(count, total or 1))
    per_shard = math.ceil(total / count) if total else 0
    paths = [directory / SHARD_PATTERN.format(index=index, count=count) for index in range(count)]
    writers = iter(paths)
    writer, written = ArrayRecordWriter(str(next(writers)), "group_size:1"), 0
    for line in lines:
        if written == per_shard:
            writer.close()
            writer, written = ArrayRecordWriter(str(next(writers)), "group_size:1"), 0
        writer.write(line.encode("utf-8"))
        written += 1
    writer.close()
    for path in writers:  # nothing left for them (no records at all): still one file each, empty
        ArrayRecordWriter(str(path), "group_size:1").close()
    shutil.rmtree(final, ignore_errors=True)
    directory.rename(final)
    return [final / path.name for path in paths]


def write_hf_dataset(out: Path, count: int, progress: bool = True) -> str:
    """Save the `count` records of out's shards under out/hf_dataset; returns what the data card says about it."""
    target = out / HF_DATASET_DIR
    if target.exists():  # a stale copy from an earlier run must not sit beside the new shards
        shutil.rmtree(target)
    for scratch in out.glob(".hf-*"):  # a killed run's
        shutil.rmtree(scratch, ignore_errors=True)
    try:
        import datasets
    except ImportError:
        log.warning("curated set not written as a datasets dataset: pip install datasets")
        return "not written: pip install datasets"

    string = datasets.Value("string")
    features = datasets.Features({
        "id": string, "source": string, "kind": string, "language": string,
        "messages": [{"role": string, "content": string}],
        "text": string, "answer": string, "options": string, "meta": string, "provenance": string,
    })
    quiet = not progress and datasets.is_progress_bar_enabled()
    if quiet:
        datasets.disable_progress_bars()
    try:
        with tempfile.TemporaryDirectory(dir=out, prefix=".hf-") as scratch:
            if count:  # streamed: shards -> Parquet in batches (pyarrow) -> Arrow (datasets, in C++)
                rows = Path(scratch) / "rows.parquet"
                _write_parquet(out, rows, features.arrow_schema)
                dataset = datasets.Dataset.from_parquet(str(rows), features=features, cache_dir=scratch)
            else:  # column-wise, so an empty curated set still gets every column
                dataset = datasets.Dataset.from_dict({name: [] for name in features}, features=features)
            # an empty set left to its default writes zero shards, which load_from_disk cannot read back
            dataset.save_to_disk(str(Path(scratch) / HF_DATASET_DIR), num_shards=None if count else 1)
            del dataset  # its cache files live in scratch
            (Path(scratch) / HF_DATASET_DIR).rename(target)  # whole, or not at all
    finally:
        if quiet:
            datasets.enable_progress_bars()
    return HF_DATASET_DIR


def _write_parquet(out: Path, path: Path, schema, batch: int = 16384) -> None:
    """The records of out's shards as dataset rows (see the module docstring) in a Parquet file."""
    import grain
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = grain.sources.ArrayRecordDataSource([str(p) for p in shard_paths(out)])
    with pq.ParquetWriter(str(path), schema) as writer:
        for start in range(0, len(source), batch):
            rows = []
            for i in range(start, min(start + batch, len(source))):
                record = json.loads(source[i])
                record.setdefault("meta", {})
                row = {name: record.get(name) for name in schema.names}
                for name in JSON_COLUMNS:
                    row[name] = None if row[name] is None else dumps(row[name])
                rows.append(row)
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))


def record_from_row(row: dict[str, Any]) -> Record:
    """The `Record` a row of the curated `datasets` dataset holds (the inverse of write_hf_dataset)."""
    data = dict(row)
    for name in JSON_COLUMNS:
        data[name] = None if data[name] is None else json.loads(data[name])
    if data["messages"] is not None:
        data["messages"] = [dict(m) for m in data["messages"]]
    return Record(**data)


@dataclasses.dataclass
class FinishUnit:
    """A task per unit: every record's final stage (resolve.UnitDecisions) saved for the shard tasks, the unit's
    part of rejects.jsonl (its spill's rejects in input order), with `tokenize` its kept records' part of the
    token store (token_store.StorePart, under work/tokens/), and the counts the data card adds up."""

    work: str
    offsets: list[int]
    num_perm: int
    stages: tuple[int, ...]  # stage codes counted for the card (semantic dedup's only when it ran)
    tokenize: bool = False
    tokenizer: str | None = None  # output.tokenizer (None: the default)

    def __call__(self, unit: int) -> dict:
        from diabetica_jax.curate import resolve
        from diabetica_jax.data.records import Reject

        code, reason = resolve.UnitDecisions(self.work, self.offsets, self.num_perm).stages(unit)
        np.save(resolve.unit_file(self.work, unit, "stage.npy"), code)
        stage = code.tolist()
        part, batch, fingerprint = None, [], None
        if self.tokenize:
            from diabetica_jax.data.token_store import StorePart

            tokenizer, fingerprint = _tokenizer(self.tokenizer)
            part = StorePart(token_part(self.work, unit), tokenizer)
        with open(resolve.unit_file(self.work, unit, "rejects.jsonl"), "w", encoding="utf-8") as out:
            for row, body in _spill(resolve.unit_file(self.work, unit, "spill")):
                if row is None:
                    out.write(body + "\n")
                elif stage[row]:
                    record = json.loads(body)
                    out.write(dumps(Reject(resolve.STAGES[stage[row]], reason[row], record["provenance"],
                                           record=record).to_json()) + "\n")
                elif part is not None:
                    batch.append(Record.from_json(json.loads(body)))
                    if len(batch) == 256:
                        part.add(batch)
                        batch = []
        result = {"kept": stage.count(resolve.KEPT), "counts": resolve.stage_counts(
            code, reason, *resolve.unit_labels(self.work, unit), self.stages)}
        if part is not None:
            if batch:
                part.add(batch)
            values, counts = np.unique(part.close(), return_counts=True)
            result.update(tokenizer=fingerprint, lengths=dict(zip(values.tolist(), counts.tolist())))
        return result


def token_part(work: str | Path, unit: int) -> Path:
    return Path(work) / "tokens" / f"unit-{unit:06d}"


_TOKENIZERS: dict = {}


def _tokenizer(path: str | None):
    """(tokenizer, its fingerprint), loaded once per process."""
    if path not in _TOKENIZERS:
        from diabetica_jax.data.token_store import tokenizer_fingerprint
        from diabetica_jax.hf.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(path)
        _TOKENIZERS[path] = tokenizer, tokenizer_fingerprint(tokenizer)
    return _TOKENIZERS[path]


def _spill(path: Path):
    """(row among the unit's records that reached dedup, or None for a reject, line body) of each spill line."""
    row = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line[0] == "R":
                yield row, line[2:-1]
                row += 1
            else:
                yield None, line[2:-1]


def kept_lines(work: str | Path, unit: int) -> Iterable[str]:
    """The unit's kept records' JSON lines, in order (after FinishUnit saved its stages)."""
    from diabetica_jax.curate import resolve

    stage = np.load(resolve.unit_file(work, unit, "stage.npy")).tolist()
    for row, body in _spill(resolve.unit_file(work, unit, "spill")):
        if row is not None and not stage[row]:
            yield body


def plan_shards(kept: list[int], count: int) -> list[tuple[int, list[tuple[int, int, int]]]]:
    """What `write_shard_lines` would put in each shard, as (shard, [(unit, first, end) kept records of the
    unit]): `count` shards of equal size, the last smaller, fewer when there are fewer records."""
    total = sum(kept)
    count = max(1, min(count, total or 1))
    per_shard = math.ceil(total / count) if total else 0
    starts = np.concatenate([[0], np.cumsum(kept)]).tolist()
    plan = []
    for shard in range(count):
        lo, hi = min(shard * per_shard, total), min((shard + 1) * per_shard, total)
        plan.append((shard, [(unit, max(lo - a, 0), min(hi, b) - a) for unit, (a, b) in enumerate(zip(starts, starts[1:]))
                             if a < hi and b > lo]))
    return plan


@dataclasses.dataclass
class ShardTask:
    """A task per output shard: its kept records, streamed from the units' spills, into work/shards/."""

    work: str
    count: int

    def __call__(self, item: tuple[int, list[tuple[int, int, int]]]) -> dict:
        from array_record.python.array_record_module import ArrayRecordWriter

        shard, pieces = item
        directory = Path(self.work) / "shards"
        directory.mkdir(exist_ok=True)
        writer = ArrayRecordWriter(str(directory / SHARD_PATTERN.format(index=shard, count=self.count)), "group_size:1")
        samples, written = [], 0
        for unit, first, end in pieces:
            for k, line in enumerate(kept_lines(self.work, unit)):
                if k >= end:
                    break
                if k >= first:
                    writer.write(line.encode("utf-8"))
                    written += 1
                    if len(samples) < 20:
                        samples.append(line)
        writer.close()
        return {"shard": shard, "records": written, "samples": samples}


def write_outputs(out: Path, cfg, kept: Iterable[str], kept_count: int, rejects: Iterable[str], kept_labels: Counter,
                  stages, collected: int, augment_stats: dict, refine_stats: dict, progress: bool = True, *,
                  semdedup_stats: dict | None = None, seconds: dict | None = None, pairs_stats: dict | None = None) -> dict:
    """Write everything under `out` from the kept records' and the rejects' JSON lines (streamed: neither is
    held whole); `kept_labels` counts the kept records by (source, kind, language); `seconds` the time
    the earlier phases took (the card adds its own). Returns the card, which is written last."""
    (out / DATA_CARD).unlink(missing_ok=True)  # the directory is no finished curation until the new card is there
    clock = time.perf_counter()
    samples: list[str] = []

    def sampled(lines):
        for line in lines:
            if len(samples) < 20:
                samples.append(line)
            yield line

    shards = write_shard_lines(out, sampled(kept), kept_count, cfg.output.shards)
    by_stage = Counter()
    with written_whole(out / "rejects.jsonl") as partial, open(partial, "w", encoding="utf-8") as f:
        for line in rejects:
            f.write(line + "\n")
            by_stage[json.loads(line)["stage"]] += 1
    return _write_card(out, cfg, shards, samples, kept_count, by_stage, kept_labels, stages, collected, augment_stats,
                       refine_stats, progress, semdedup_stats, dict(seconds or {}), clock, pairs_stats=pairs_stats)


def write_parts(out: Path, cfg, work: Path, shards: list[dict], finished: list[dict], kept_count: int,
                by_stage: Counter, kept_labels: Counter, stages, collected: int, progress: bool = True, *,
                semdedup_stats: dict | None = None, seconds: dict | None = None, clock: float | None = None) -> dict:
    """`write_outputs` from what the tasks wrote, by moving and copying bytes: ShardTask's shards (results
    `shards`, in order) moved into place, FinishUnit's rejects parts (results `finished`, one per unit) joined
    into rejects.jsonl and their token store parts into the store. `clock`: when the shard tasks started (the
    card's write seconds count from there)."""
    from diabetica_jax.curate.resolve import unit_file

    (out / DATA_CARD).unlink(missing_ok=True)
    clock = time.perf_counter() if clock is None else clock
    directory, final = out / ("shards" + PARTIAL), out / "shards"
    shutil.rmtree(directory, ignore_errors=True)
    shutil.move(str(work / "shards"), str(directory))  # a rename when the work dir is under out (the default)
    shutil.rmtree(final, ignore_errors=True)
    directory.rename(final)
    paths = [final / SHARD_PATTERN.format(index=s["shard"], count=len(shards)) for s in shards]
    with written_whole(out / "rejects.jsonl") as partial, open(partial, "wb") as f:
        for unit in range(len(finished)):
            with open(unit_file(work, unit, "rejects.jsonl"), "rb") as part:
                shutil.copyfileobj(part, f, 1 << 20)
    samples = [line for s in shards for line in s["samples"]][:20]

    def lengths() -> tuple[np.ndarray, np.ndarray]:
        from diabetica_jax.data.token_store import assemble_token_store

        prints = {f["tokenizer"] for f in finished}
        assemble_token_store(out, prints.pop() if prints else _tokenizer(cfg.output.tokenizer)[1],
                             [token_part(work, unit) for unit in range(len(finished))])
        total = Counter()
        for f in finished:
            total.update(f["lengths"])
        values = np.asarray(sorted(total), dtype=np.int64)
        return values, np.asarray([total[v] for v in values.tolist()], dtype=np.int64)

    return _write_card(out, cfg, paths, samples, kept_count, by_stage, kept_labels, stages, collected,
                       {"enabled": False}, {"enabled": False}, progress, semdedup_stats, dict(seconds or {}), clock,
                       lengths)


def _write_card(out: Path, cfg, shards: list[Path], samples: list[str], kept_count: int, by_stage: Counter,
                kept_labels: Counter, stages, collected: int, augment_stats: dict, refine_stats: dict, progress: bool,
                semdedup_stats: dict | None, seconds: dict, clock: float, lengths=None,
                pairs_stats: dict | None = None) -> dict:
    """samples.jsonl, the token store, the `datasets` copy and the data card (last) beside written shards.
    `lengths()` writes the token store and returns the kept records' token lengths as (values, counts); by
    default the store is built from the shards (`_token_lengths`)."""
    (out / "samples.jsonl").write_text("".join(line + "\n" for line in samples), encoding="utf-8")
    seconds["write"] = time.perf_counter() - clock
    if lengths is None:
        values, counts = np.unique(_token_lengths(out, cfg.output.tokenizer, cfg.engine.processes(), progress),
                                   return_counts=True)
    else:
        values, counts = lengths()
    if not cfg.output.hf_dataset:  # nor a stale copy of an earlier run's
        shutil.rmtree(out / HF_DATASET_DIR, ignore_errors=True)
    seconds["tokens"] = time.perf_counter() - clock - seconds["write"]

    card = {
        "format": CURATED_FORMAT,  # data/shards.py: training refuses a directory of another format
        "collected": collected,
        "generated": augment_stats.get("generated", 0),
        "kept": kept_count,
        "rejected": sum(by_stage.values()),
        "stages": [dataclasses.asdict(s) for s in stages],
        "rejected_by_stage": dict(by_stage),
        "kept_by_source": count_by(kept_labels, 0),
        "kept_by_kind": count_by(kept_labels, 1),
        "kept_by_language": count_by(kept_labels, 2),
        "augment": augment_stats,
        "refine": refine_stats,
        "pairs": pairs_stats or {"enabled": False},
        "semantic_dedup": semdedup_stats or {"enabled": False},
        "tokens": token_summary(values, counts),
        "shards": [str(p.relative_to(out)) for p in shards],
        "hf_dataset": (write_hf_dataset(out, kept_count, progress) if cfg.output.hf_dataset
                       else "not written: output.hf_dataset is false"),
        "config": to_dict(cfg),
    }
    seconds["hf_dataset"] = time.perf_counter() - clock - seconds["write"] - seconds["tokens"]
    card["seconds"] = {name: round(value, 2) for name, value in seconds.items()}
    if card["kept"] + card["rejected"] != card["collected"] + card["generated"]:
        raise AssertionError("data card does not add up: kept + rejected != collected + generated")
    (out / "data_card.md").write_text(_markdown(card), encoding="utf-8")
    _plot(out / "data_card.png", card, values, counts)
    with written_whole(out / DATA_CARD) as partial:
        partial.write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return card


def token_summary(values: np.ndarray, counts: np.ndarray) -> dict:
    """The card's token statistics from the distinct lengths and how many records have each: what numpy gives
    over the lengths themselves (np.percentile's default linear interpolation), without holding a length per
    record."""
    n = int(counts.sum())
    if not n:
        return {"total": 0, "mean": 0.0, "p50": 0.0, "p95": 0.0, "max": 0}
    total = int((values * counts).sum())
    ends = np.cumsum(counts)

    def at(rank: int) -> int:  # the rank-th smallest length
        return int(values[np.searchsorted(ends, rank, side="right")])

    def percentile(q: float) -> float:
        h = (n - 1) * (q / 100)
        below = int(np.floor(h))
        if h >= n - 1:
            return float(at(n - 1))
        a, b, gamma = at(below), at(below + 1), h - below
        diff = b - a
        return float(b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma)

    return {"total": total, "mean": total / n, "p50": percentile(50), "p95": percentile(95), "max": int(values[-1])}


def _token_lengths(out: Path, tokenizer_path: str | None, workers: int, progress: bool) -> np.ndarray:
    """Token lengths of the kept records (the chat template applied), in shard order. Tokenizing them writes
    the token store training reads (data/token_store.py), so a train run on this directory with the same
    tokenizer starts without tokenizing anything."""
    from diabetica_jax.data.token_store import build_token_store
    from diabetica_jax.hf.tokenizer import load_tokenizer

    store = build_token_store(out, load_tokenizer(tokenizer_path), workers=workers, progress=progress)
    return np.asarray(store.lengths, dtype=np.int64)


def _markdown(card: dict) -> str:
    lines = [
        "# Data card", "",
        f"Collected **{card['collected']}** records, generated **{card['generated']}** with the teacher; "
        f"kept **{card['kept']}**, rejected **{card['rejected']}** (every rejected record is in `rejects.jsonl` "
        "with its stage and reason).", "",
        "| stage | entered | kept | rejected | main reasons |", "|---|---|---|---|---|",
    ]
    for s in card["stages"]:
        reasons = ", ".join(f"{k} ({v})" for k, v in list(s["reasons"].items())[:3])
        lines.append(f"| {s['name']} | {s['entered']} | {s['kept']} | {s['rejected']} | {reasons} |")
    lines += ["", "| kept by kind | count |", "|---|---|"] + [f"| {k} | {v} |" for k, v in card["kept_by_kind"].items()]
    lines += ["", "| kept by language | count |", "|---|---|"] + [
        f"| {k} | {v} |" for k, v in card["kept_by_language"].items()]
    lines += ["", "| kept by source | count |", "|---|---|"] + [f"| {k} | {v} |" for k, v in card["kept_by_source"].items()]
    t = card["tokens"]
    lines += ["", f"Tokens: {t['total']} in total; per record mean {t['mean']:.0f}, median {t['p50']:.0f}, "
              f"95th percentile {t['p95']:.0f}, max {t['max']}.", ""]
    if card["hf_dataset"] == HF_DATASET_DIR:
        lines += [f"The kept records are also a `datasets` dataset: `datasets.load_from_disk(\"{HF_DATASET_DIR}\")` "
                  "(options, meta and provenance are JSON strings).", ""]
    else:
        lines += [f"`datasets` dataset: {card['hf_dataset']}.", ""]
    if card["augment"].get("enabled"):
        a = card["augment"]
        lines.append(f"Augmentation ({a['teacher']}): {a['explained_mcqs']} MCQs explained, {a['generated_kept']} of "
                     f"{a['generated']} generated records kept; {a['calls']} calls, {a['cache_hits']} cache hits, "
                     f"{a['failures']} failures.")
        lines += _augment_kind_lines(a.get("kinds", {}))
    if card["semantic_dedup"].get("enabled"):
        s = card["semantic_dedup"]
        lines.append(f"Semantic dedup ({s['model']}, cosine >= {s['threshold']}): {s['dropped']} of {s['records']} "
                     f"records dropped; {s['clusters']} clusters (largest {s['largest_cluster']}); embedding "
                     f"{s['embed_seconds']} s, search {s['search_seconds']} s.")
    if card["refine"].get("enabled"):
        r = {k: v for k, v in card["refine"].items() if k not in ("enabled", "model", "by_kind")}
        lines.append(f"Refinement ({card['refine']['model']}): " + ", ".join(f"{k}: {v}" for k, v in r.items()) + ".")
        lines += _refine_kind_lines(card["refine"].get("by_kind", {}))
    if card.get("pairs", {}).get("enabled"):
        p = card["pairs"]
        judged = f", judged by {p['judge']}" if p.get("judge") else ""
        lines.append(f"Preference pairs ({p['model']}{judged}, in {p['file']}): {p['pairs']} of {p['records']} records, "
                     f"by kind {_counts(p['by_kind'])}, by source {_counts(p['by_source'])}; rejected replies: "
                     f"{_counts(p['why_rejected'])}; no pair: {_counts(p['skipped'])}.")
    lines += ["", "![records per stage](data_card.png)", ""]
    return "\n".join(lines)


def _counts(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"


def _augment_kind_lines(kinds: dict) -> list[str]:
    """The teacher's tasks: requests, outputs kept, what was rejected and why."""
    if not kinds:
        return []
    lines = ["", "| augment task | asked | generated | rejected | reasons |", "|---|---|---|---|---|"]
    for task, k in kinds.items():
        reasons = ", ".join(f"{name} ({n})" for name, n in k["rejected_by_reason"].items())
        lines.append(f"| {task} | {k['asked']} | {k['generated']} | {k['rejected']} | {reasons} |")
    return lines + [""]


def _refine_kind_lines(by_kind: dict) -> list[str]:
    """Per kind: references replaced by the rewrite, and the unigram F1 between reference and rewrite."""
    if not by_kind:
        return []
    lines = ["", "| refine kind | records | replaced | kept original | F1 mean | p10 | p50 | p90 |",
             "|---|---|---|---|---|---|---|---|"]
    for kind, k in by_kind.items():
        o = k["overlap"]
        stats = " | ".join(f"{o[q]:.2f}" if q in o else "–" for q in ("mean", "p10", "p50", "p90"))
        lines.append(f"| {kind} | {k['records']} | {k['replaced']} | {k['kept_original']} | {stats} |")
    return lines + [""]


def _plot(path: Path, card: dict, lengths: np.ndarray, counts: np.ndarray) -> None:
    """The card's figure; `lengths` are the distinct token lengths, `counts` how many records have each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    stages = card["stages"]
    ax = axes[0, 0]
    ax.bar([s["name"] for s in stages], [s["kept"] for s in stages], color="tab:blue", label="kept")
    ax.bar([s["name"] for s in stages], [s["rejected"] for s in stages], bottom=[s["kept"] for s in stages],
           color="tab:red", alpha=0.6, label="rejected")
    ax.set_title("records after each stage")
    ax.tick_params(axis="x", rotation=30)
    ax.legend()
    for ax, key, title in ((axes[0, 1], "by_kind", "kind after each stage"),
                           (axes[1, 0], "by_language", "language after each stage")):
        names = sorted({k for s in stages for k in s[key]})
        bottom = np.zeros(len(stages))
        for name in names:
            values = np.array([s[key].get(name, 0) for s in stages])
            ax.bar([s["name"] for s in stages], values, bottom=bottom, label=name)
            bottom += values
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=30)
        ax.legend(fontsize=8)
    ax = axes[1, 1]
    ax.hist(lengths if len(lengths) else [0], bins=30, weights=counts if len(lengths) else None, color="tab:green")
    ax.set_title("token length of kept records")
    ax.set_xlabel("tokens")
    fig.suptitle(f"curation: {card['collected']} collected, {card['kept']} kept, {card['rejected']} rejected")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
