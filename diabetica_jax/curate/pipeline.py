"""`diabetica-jax curate`: collect -> filter -> augment -> refine -> write, with every drop recorded.

The filters stream: the inputs are cut into units (scan.plan_units), each unit's records are read,
filtered by relevance and quality, hashed and signed in a worker process (scan.scan_unit, through
engines.map_units: a local process pool, or datatrove's executors), and spilled to the work
directory; the driver then decides duplicates and benchmark leaks over the compact arrays in input
order (resolve.py) and streams the spill into shards and rejects.jsonl. No stage holds the records
as Python objects unless a stage that needs them all at once is on (semantic dedup, the teacher's
augmentation, refinement): those read the surviving records back from the spill.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from diabetica_jax.curate import filters, resolve
from diabetica_jax.curate.augment import augment
from diabetica_jax.curate.benchmarks import load_benchmark_items
from diabetica_jax.curate.config import CurateConfig, InputSection
from diabetica_jax.curate.refine import refine
from diabetica_jax.curate.scan import ScanContext, UnitSummary, plan_units, scan_unit
from diabetica_jax.curate.write import FinishUnit, ShardTask, plan_shards, write_parts
from diabetica_jax.data.records import Record, Reject, count_by, dumps, reason_class
from diabetica_jax.data.shards import DATA_CARD
from diabetica_jax.llm import make_backend
from diabetica_jax.run_lock import hold_lock

log = logging.getLogger(__name__)

# a scan worker costs a second or two to start: inputs smaller than this are scanned in this process
POOL_MIN_BYTES = 8 << 20
# what a unit's spill and summary hold: a change invalidates an interrupted run's finished units
SPILL_FORMAT = 1


@dataclasses.dataclass
class StageLog:
    name: str
    entered: int
    kept: int
    rejected: int
    reasons: dict[str, int]
    by_source: dict[str, int]
    by_kind: dict[str, int]
    by_language: dict[str, int]


def _stage(name: str, entered: list, kept: list[Record], rejects: list[Reject]) -> StageLog:
    return StageLog(name, len(entered), len(kept), len(rejects),
                    dict(Counter(reason_class(r.reason) for r in rejects).most_common()),
                    dict(Counter(r.source for r in kept)), dict(Counter(r.kind for r in kept)),
                    dict(Counter(r.language for r in kept)))


def _stage_from_labels(name: str, entered: int, kept: Counter, reasons: Counter) -> StageLog:
    """A StageLog from (source, kind, language) counts of the records kept after the stage."""
    n_kept = sum(kept.values())
    return StageLog(name, entered, n_kept, entered - n_kept, dict(reasons.most_common()),
                    count_by(kept, 0), count_by(kept, 1), count_by(kept, 2))


def demo_inputs() -> list[InputSection]:
    from diabetica_jax.demo import CORPUS_DIR, DEMO_FILES

    return [InputSection(str(CORPUS_DIR / name)) for name in DEMO_FILES]


def curate(cfg: CurateConfig, out: str | Path, progress: bool = True) -> dict:
    """Run every stage; write shards, rejects.jsonl and the data card under `out`; return the card."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _lock = hold_lock(out, "curation")  # another curation into `out` is refused; released when curate() returns
    (out / DATA_CARD).unlink(missing_ok=True)  # `out` holds no finished curation until this run writes its card
    for name in ("pairs.jsonl", "pairs_skipped.jsonl"):  # an earlier run's pairs are no pairs of this one
        (out / name).unlink(missing_ok=True)
    work = out / "work"
    if cfg.engine.work_dir:  # a shared directory may serve several outputs: one folder each
        work = Path(cfg.engine.work_dir) / f"{out.name}-{hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:8]}"
    inputs = list(cfg.inputs) + (demo_inputs() if cfg.demo else [])
    benchmark_items = _benchmark_items(cfg)
    ctx = ScanContext(cfg, benchmark_items, str(work))
    units = plan_units(inputs, cfg.engine.unit_mb << 20)
    resume = _prepare_work_dir(work, cfg, ctx, units)
    clock = time.perf_counter()
    summaries = _scan(units, ctx, cfg, work, progress, resume)
    seconds = {"scan": time.perf_counter() - clock}
    stages = _scan_stages(summaries)
    collected = stages[0].entered

    offsets = _offsets(summaries)
    run = _Tasks(cfg, work, summaries, progress)
    partitions = resolve.partition_count(offsets[-1], cfg.dedup.bands, run.workers)
    dedup = resolve.exact_and_near(offsets, cfg.dedup, work, partitions, run)
    log.info("dedup: %s", dedup)
    semdedup_stats: dict = {"enabled": cfg.semantic_dedup.enabled}
    codes = (resolve.EXACT, resolve.NEAR, resolve.SEMANTIC, resolve.LEAK)
    if cfg.semantic_dedup.enabled:
        _semantic_dedup(summaries, offsets, work, cfg, semdedup_stats)
    else:
        codes = tuple(c for c in codes if c != resolve.SEMANTIC)
    # else the teacher's (and the base model's) stages first
    writes = cfg.augment.backend == "none" and cfg.refine.backend == "none" and cfg.pairs.backend == "none"
    finished = run(FinishUnit(str(work), offsets, cfg.dedup.num_perm, codes, writes, cfg.output.tokenizer),
                   list(range(len(summaries))), "finish")
    by_stage = Counter({name: sum(sum(s.rejected[name].values()) for s in summaries) for name in _SCAN_STAGES})
    for code in codes:
        name, kept, reasons = resolve.STAGES[code], Counter(), Counter()
        for f in finished:
            kept.update(f["counts"][name][0])
            reasons.update(f["counts"][name][1])
        stages.append(_stage_from_labels(name, stages[-1].kept, kept, reasons))
        by_stage[name] = stages[-1].rejected
    kept_labels = kept
    seconds["resolve"] = time.perf_counter() - clock - seconds["scan"]

    if writes:
        shutil.rmtree(work / "shards", ignore_errors=True)  # a killed run's
        started = time.perf_counter()
        plan = plan_shards([f["kept"] for f in finished], cfg.output.shards)
        shards = run(ShardTask(str(work), len(plan)), plan, "shards")
        card = write_parts(out, cfg, work, shards, finished, stages[-1].kept, +by_stage, kept_labels, stages,
                           collected, progress, semdedup_stats=semdedup_stats, seconds=seconds, clock=started)
    else:
        card = _finish_with_teacher(out, cfg, summaries, work, stages, collected, benchmark_items, progress,
                                    semdedup_stats, seconds)
    _keep_engine_logs(work, out)
    shutil.rmtree(work, ignore_errors=True)
    return card


def _prepare_work_dir(work: Path, cfg: CurateConfig, ctx: ScanContext, units: list) -> bool:
    """Empty `work` for this run, unless an interrupted run with the same inputs, settings and units left its
    finished units there and the engine keeps them (datatrove's result files, with engine.resume): then keep
    them and return True."""
    manifest = work / "manifest.json"
    inputs = [(str(Path(u.input.path).resolve()), *_file_stamp(Path(u.input.path))) for u in units]
    key = hashlib.sha1(repr((ctx.key(), [repr(u) for u in units], inputs, cfg.engine.name, cfg.engine.executor,
                             SPILL_FORMAT)).encode()).hexdigest()
    reusable = cfg.engine.name == "datatrove" and cfg.engine.resume
    if reusable and manifest.is_file() and manifest.read_text() == key:
        log.warning("%s: resuming an interrupted curation: units already finished are not scanned again", work)
        return True
    if work.exists():  # a killed earlier run's spill, or one of other inputs or settings
        shutil.rmtree(work)
    work.mkdir(parents=True)
    manifest.write_text(key)
    return False


def _file_stamp(path: Path) -> tuple[int, int]:
    """(size, modification time) of an input file; a directory or a hub name: (0, 0)."""
    if not path.is_file():
        return 0, 0
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def _keep_engine_logs(work: Path, out: Path) -> None:
    """datatrove's and Slurm's task logs of every engine job move to OUT/engine_logs/JOB before the work
    directory (spill, results) is removed."""
    # the scan's jobs are in WORK/datatrove, the later phases' in WORK/tasks/PHASE/datatrove
    for job in sorted(p for p in work.rglob("*") if p.is_dir() and p.parent.name == "datatrove"):
        kept = out / "engine_logs" / job.name
        if kept.exists():
            shutil.rmtree(kept)
        kept.mkdir(parents=True)
        for name in ("logs", "slurm_logs", "stats", "errors", "launch_script.slurm"):
            if (job / name).exists():
                shutil.move(str(job / name), str(kept / name))


def _scan(units: list, ctx: ScanContext, cfg: CurateConfig, work: Path, progress: bool, resume: bool):
    """Every unit's summary, in unit order, from a process pool (or datatrove) when the input is large."""
    from diabetica_jax.curate.engines import map_units

    size = sum(Path(u.input.path).stat().st_size if u.end is None else u.end - u.start
               for u in units if Path(u.input.path).is_file())
    workers = cfg.engine.processes()
    if cfg.engine.name == "local" and size < POOL_MIN_BYTES:
        workers = 1
    return map_units(_ScanCall(ctx), units, engine=cfg.engine.name, workers=workers, work_dir=work,
                     progress=progress, desc="scan", executor=cfg.engine.executor,
                     executor_options=dict(cfg.engine.executor_options), resume=resume,
                     timeout=cfg.engine.timeout_s)


class _ScanCall:
    """scan_unit with its context bound: picklable for the pool and datatrove's tasks."""

    def __init__(self, ctx: ScanContext):
        self.ctx = ctx

    def __call__(self, unit) -> UnitSummary:
        return scan_unit(unit, self.ctx)


def _scan_stages(summaries: list[UnitSummary]) -> list[StageLog]:
    """collect, relevance and quality, added up over the units."""
    stages, entered = [], sum(s.items for s in summaries)
    for name in _SCAN_STAGES:
        kept, reasons = Counter(), Counter()
        for s in summaries:
            kept.update(s.kept_labels[name])
            reasons.update(s.rejected[name])
        stages.append(_stage_from_labels(name, entered, kept, reasons))
        entered = stages[-1].kept
    return stages


_SCAN_STAGES = ("collect", "relevance", "quality")


def _offsets(summaries: list[UnitSummary]) -> list[int]:
    """The global row of each unit's first record that reached dedup, and their total at the end."""
    if [s.index for s in summaries] != list(range(len(summaries))):
        raise AssertionError("unit summaries out of order")  # their files are named by index
    offsets = [0]
    for s in summaries:
        offsets.append(offsets[-1] + s.records)
    return offsets


class _Tasks:
    """`run(fn, items, name)`: fn over items as tasks of the scan's engine (on a cluster: its nodes), each phase
    in its own folder of the work dir. The local engine runs them in this process when the spill is small,
    as the scan does below POOL_MIN_BYTES: a pool costs more to start than such phases take."""

    def __init__(self, cfg: CurateConfig, work: Path, summaries: list[UnitSummary], progress: bool):
        self.cfg, self.work, self.progress = cfg, work, progress
        self.workers = cfg.engine.processes()
        if cfg.engine.name == "local" and sum(Path(s.spill).stat().st_size for s in summaries) < POOL_MIN_BYTES:
            self.workers = 1

    def __call__(self, fn, items: list, name: str) -> list:
        from diabetica_jax.curate.engines import map_units

        engine = self.cfg.engine
        return map_units(fn, items, engine=engine.name, workers=self.workers, work_dir=self.work / "tasks" / name,
                         progress=self.progress, desc=name, executor=engine.executor,
                         executor_options=dict(engine.executor_options), timeout=engine.timeout_s)


def _spilled_records(work: Path, unit: int, code: np.ndarray, wanted) -> Iterator[tuple[int, Record]]:
    """(row in the unit, Record) of the unit's records that reached dedup and whose stage code is `wanted`."""
    from diabetica_jax.curate.write import _spill

    for row, body in _spill(resolve.unit_file(work, unit, "spill")):
        if row is not None and code[row] == wanted:
            yield row, Record.from_json(json.loads(body))


def _semantic_dedup(summaries, offsets: list[int], work: Path, cfg: CurateConfig, stats: dict) -> None:
    """SemDeDup over every record exact and near dedup kept, here (it needs them at once); its drops go to
    dedup/semantic.json for the finish tasks."""
    from diabetica_jax.curate.semdedup import semantic_dedup

    decisions = resolve.UnitDecisions(work, offsets, cfg.dedup.num_perm)
    indexed = []
    for unit in range(len(summaries)):
        code, _ = decisions.stages(unit, leaks=False)
        indexed += [(offsets[unit] + row, r) for row, r in _spilled_records(work, unit, code, resolve.KEPT)]
    _, rejects = semantic_dedup([r for _, r in indexed], cfg.semantic_dedup, stats)
    index_of = {record.id: i for i, record in indexed}
    dropped = {index_of[r.record["id"]]: r.reason for r in rejects}
    (resolve.dedup_dir(work) / "semantic.json").write_text(json.dumps(dropped, ensure_ascii=False), encoding="utf-8")


def _finish_with_teacher(out: Path, cfg: CurateConfig, summaries, work: Path, stages: list[StageLog], collected: int,
                         benchmark_items, progress: bool, semdedup_stats: dict, seconds: dict) -> dict:
    """Augmentation and refinement need the kept records at once: read them back from the spill, and the
    rejects from the finish tasks' parts."""
    records, all_rejects = [], []
    for unit in range(len(summaries)):
        code = np.load(resolve.unit_file(work, unit, "stage.npy"))
        records += [r for _, r in _spilled_records(work, unit, code, resolve.KEPT)]
        with open(resolve.unit_file(work, unit, "rejects.jsonl"), encoding="utf-8") as f:
            all_rejects += [Reject(**json.loads(line)) for line in f]

    generated: list[Record] = []
    augment_stats = {"enabled": cfg.augment.backend != "none"}
    if cfg.augment.backend != "none":
        teacher = make_backend(cfg.augment, out / "cache" / "augment")
        entered = records
        result = augment(records, teacher, cfg.augment)
        records = result.kept
        stages.append(_stage("augment", entered, records, result.rejects))
        all_rejects += result.rejects + result.generated_rejects
        # teacher output can echo benchmark text too: it passes decontamination before joining
        clean, leaked = filters.decontaminate(result.generated, benchmark_items, cfg.decontamination)
        all_rejects += leaked
        generated = clean
        augment_stats.update(teacher=teacher.name, calls=teacher.calls, cache_hits=teacher.cache_hits,
                             failures=teacher.failures, explained_mcqs=result.explained,
                             generated=len(result.generated) + len(result.generated_rejects),
                             generated_kept=len(clean),
                             generated_rejected=len(result.generated_rejects) + len(leaked),
                             kinds=result.kind_report(leaked))
        records = records + generated

    refine_stats: dict = {"enabled": cfg.refine.backend != "none"}
    if cfg.refine.backend != "none":
        model = make_backend(cfg.refine, out / "cache" / "refine")
        records, counts, by_kind = refine(records, model, cfg.refine)
        refine_stats.update(model=model.name, **dict(counts), by_kind=by_kind)

    pairs_stats: dict = {"enabled": False}
    if cfg.pairs.backend != "none":
        pairs_stats = _write_pairs(out, cfg, records, benchmark_items)

    total_in = collected + augment_stats.get("generated", 0)
    if len(records) + len(all_rejects) != total_in:
        raise AssertionError(f"curation lost records: kept {len(records)} + rejected {len(all_rejects)} != {total_in}")

    from diabetica_jax.curate.write import write_outputs

    labels = Counter((r.source, r.kind, r.language) for r in records)
    return write_outputs(out, cfg, (dumps(r.to_json()) for r in records), len(records),
                         (dumps(r.to_json()) for r in all_rejects), labels, stages, collected, augment_stats,
                         refine_stats, progress, semdedup_stats=semdedup_stats, seconds=seconds,
                         pairs_stats=pairs_stats)


def _write_pairs(out: Path, cfg: CurateConfig, records: list[Record], benchmark_items) -> dict:
    """pairs.jsonl (what train.method dpo reads) and pairs_skipped.jsonl, each written whole then renamed;
    the card's `pairs` section."""
    from diabetica_jax.curate.pairs import make_pairs
    from diabetica_jax.curate.write import written_whole

    model = make_backend(cfg.pairs, out / "cache" / "pairs")
    judge = make_backend(cfg.pairs.judge, out / "cache" / "pairs_judge") if cfg.pairs.judge.backend != "none" else None
    result = make_pairs(records, model, cfg.pairs, benchmark_items, cfg.decontamination, judge)
    for name, rows in (("pairs.jsonl", result.pairs), ("pairs_skipped.jsonl", result.skipped)):
        with written_whole(out / name) as partial:
            partial.write_text("".join(dumps(row) + "\n" for row in rows), encoding="utf-8")
    log.info("pairs: %d of %d records (%s)", result.stats["pairs"], len(records), result.stats["skipped"])
    return result.stats


def _benchmark_items(cfg: CurateConfig):
    paths = list(cfg.decontamination.benchmarks)
    if cfg.decontamination.embedded_benchmarks:
        from diabetica_jax.demo import BENCHMARK_DIR

        paths.append(str(BENCHMARK_DIR))
    items = []
    for path in paths:
        items += load_benchmark_items(path)
    return items
