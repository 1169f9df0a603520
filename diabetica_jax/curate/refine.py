"""Refine by self-distillation: the base model rewrites each reference answer in its own words.

Training on the base model's own phrasing keeps the fine-tuning targets close to its output
distribution (Diabetica's remedy for forgetting). A rewrite replaces the reference only when it
keeps the reference's key content: for an MCQ the same option, otherwise at least `min_recall` of
the reference's distinct words. Otherwise, or when the model fails (after CachedChat's retries; an empty
rewrite counts as a failure), the reference stays ("kept_original:model failed").

`by_kind` reports, per record kind with a reference answer: records, replaced, kept_original, and
`overlap` (unigram F1 between each replaced reference and its rewrite, over `data.text.units`:
count, mean, p10, p50, p90), which shows how far the rewrites move from the references.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from diabetica_jax.curate.answers import recall, unigram_f1
from diabetica_jax.curate.config import RefineSection
from diabetica_jax.data.mcq import picked_option
from diabetica_jax.data.records import Record
from diabetica_jax.llm import CachedChat, LLMError

REWRITE_PROMPT = (
    "Rewrite the reference answer below in your own words. Keep every fact, number, option letter and "
    "recommendation, add nothing new, and keep its language. Reply with the rewritten answer only.\n\n"
    "Question:\n{question}\n\nReference answer:\n{answer}"
)


def refine(records: list[Record], model: CachedChat, cfg: RefineSection) -> tuple[list[Record], Counter, dict]:
    """All records back (none is dropped), counts (rewritten / kept_original:<reason> / skipped:passage)
    and the per-kind report (see the module docstring)."""

    def work(record: Record) -> tuple[Record, str, float | None]:
        if record.messages is None:
            return record, "skipped:passage", None
        last = max(i for i, m in enumerate(record.messages) if m["role"] == "assistant")
        reference = record.messages[last]["content"]
        question = "\n".join(m["content"] for m in record.messages[:last] if m["role"] == "user")
        try:
            rewrite = model.chat([{"role": "user", "content": REWRITE_PROMPT.format(question=question, answer=reference)}],
                                 max_tokens=cfg.max_tokens).strip()
        except LLMError:
            return record, "kept_original:model failed", None
        if record.kind == "mcq":
            if picked_option(rewrite) != record.answer:
                return record, "kept_original:changed or lost the option", None
        elif recall(reference, rewrite) < cfg.min_recall:
            return record, "kept_original:lost key content", None
        messages = [dict(m) for m in record.messages]
        messages[last]["content"] = rewrite
        refined = dataclasses.replace(record, messages=messages, meta={**record.meta, "refined_by": model.name})
        return refined, "rewritten", unigram_f1(reference, rewrite)

    counts: Counter = Counter()
    kinds: dict[str, dict] = {}
    out = []
    with ThreadPoolExecutor(max_workers=cfg.concurrency) as pool:
        for record, outcome, overlap in pool.map(work, records):
            counts[outcome] += 1
            out.append(record)
            if outcome.startswith("skipped"):
                continue
            kind = kinds.setdefault(record.kind, {"records": 0, "replaced": 0, "kept_original": 0, "f1": []})
            kind["records"] += 1
            if overlap is None:
                kind["kept_original"] += 1
            else:
                kind["replaced"] += 1
                kind["f1"].append(overlap)
    by_kind = {name: {"records": k["records"], "replaced": k["replaced"], "kept_original": k["kept_original"],
                      "overlap": overlap_summary(k["f1"])} for name, k in sorted(kinds.items())}
    return out, counts, by_kind


def overlap_summary(values: list[float]) -> dict:
    """count, mean and the 10th / 50th / 90th percentiles (numpy's linear interpolation), 4 decimals."""
    if not values:
        return {"count": 0}
    p10, p50, p90 = np.percentile(values, [10, 50, 90])
    return {"count": len(values), "mean": round(float(np.mean(values)), 4), "p10": round(float(p10), 4),
            "p50": round(float(p50), 4), "p90": round(float(p90), 4)}
