"""`diabetica-jax curate`: collect -> filter -> augment -> refine -> write, with every drop recorded."""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from pathlib import Path

from diabetica_jax.data.curate import filters
from diabetica_jax.data.curate.augment import augment
from diabetica_jax.data.curate.benchmarks import load_benchmark_items
from diabetica_jax.data.curate.collect import collect
from diabetica_jax.data.curate.config import CurateConfig, InputSection
from diabetica_jax.data.curate.refine import refine
from diabetica_jax.data.records import Record, Reject
from diabetica_jax.llm import make_backend

log = logging.getLogger(__name__)


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


def _reason_class(reason: str) -> str:
    """Group reasons for the card: 'near duplicate of x (Jaccard ~0.9)' -> 'near duplicate'."""
    for cut in (":", " of ", " (", " <", " >"):
        if cut in reason:
            reason = reason.split(cut)[0]
    return reason.strip()


def _stage(name: str, entered: list, kept: list[Record], rejects: list[Reject]) -> StageLog:
    return StageLog(name, len(entered), len(kept), len(rejects),
                    dict(Counter(_reason_class(r.reason) for r in rejects).most_common()),
                    dict(Counter(r.source for r in kept)), dict(Counter(r.kind for r in kept)),
                    dict(Counter(r.language for r in kept)))


def demo_inputs() -> list[InputSection]:
    from diabetica_jax.demo import CORPUS_DIR, DEMO_FILES

    return [InputSection(str(CORPUS_DIR / name)) for name in DEMO_FILES]


def curate(cfg: CurateConfig, out: str | Path, progress: bool = True) -> dict:
    """Run every stage; write shards, rejects.jsonl and the data card under `out`; return the card."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stages: list[StageLog] = []
    all_rejects: list[Reject] = []

    inputs = list(cfg.inputs) + (demo_inputs() if cfg.demo else [])
    records: list[Record] = []
    collect_rejects: list[Reject] = []
    for entry in inputs:
        for item in collect(entry):
            (records if isinstance(item, Record) else collect_rejects).append(item)
    collected = len(records) + len(collect_rejects)
    stages.append(_stage("collect", [None] * collected, records, collect_rejects))
    all_rejects += collect_rejects

    def run(name, fn, *args):
        nonlocal records
        entered = records
        records, rejects = fn(records, *args)
        stages.append(_stage(name, entered, records, rejects))
        all_rejects.extend(rejects)

    run("relevance", filters.relevance, cfg.relevance)
    run("quality", filters.quality, cfg.quality)
    run("exact_dedup", filters.exact_dedup)
    run("near_dedup", filters.near_dedup, cfg.dedup)
    semdedup_stats: dict = {"enabled": cfg.semantic_dedup.enabled}
    if cfg.semantic_dedup.enabled:
        from diabetica_jax.data.curate.semdedup import semantic_dedup

        run("semantic_dedup", semantic_dedup, cfg.semantic_dedup, semdedup_stats)
    benchmark_items = _benchmark_items(cfg)
    run("decontaminate", filters.decontaminate, benchmark_items, cfg.decontamination)

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

    total_in = collected + augment_stats.get("generated", 0)
    if len(records) + len(all_rejects) != total_in:
        raise AssertionError(f"curation lost records: kept {len(records)} + rejected {len(all_rejects)} != {total_in}")

    from diabetica_jax.data.curate.write import write_outputs

    return write_outputs(out, cfg, records, all_rejects, stages, collected, augment_stats, refine_stats, progress,
                         semdedup_stats=semdedup_stats)


def _benchmark_items(cfg: CurateConfig):
    paths = list(cfg.decontamination.benchmarks)
    if cfg.decontamination.embedded_benchmarks:
        from diabetica_jax.demo import BENCHMARK_DIR

        paths.append(str(BENCHMARK_DIR))
    items = []
    for path in paths:
        items += load_benchmark_items(path)
    return items
