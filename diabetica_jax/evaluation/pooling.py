"""Several seeds and several files of a task made one: per-seed statistics, and one summary over a task's files
with every mean weighted by the count it was taken over."""

from __future__ import annotations

import numpy as np

from diabetica_jax.evaluation import tasks as task_lib


def number(value) -> bool:
    """A real number (bools, which are ints to Python, are not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def seed_stats(per_seed: list[dict], keys) -> dict:
    """{metric: {mean, std, min, max, n}} over the seeds where the metric is a number (std: ddof 1, None
    for one seed)."""
    stats = {}
    for key in keys:
        values = [r[key] for r in per_seed if isinstance(r.get(key), (int, float)) and not isinstance(r[key], bool)
                  and not np.isnan(r[key])]
        if not values:
            continue
        stats[key] = {"mean": float(np.mean(values)),
                      "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                      "min": float(min(values)), "max": float(max(values)), "n": len(values)}
    return stats


# The count each mean of a file is taken over, so pooled means weigh each file by it.
DIALOG_WEIGHTS = {"mean_score": "n_scored", "mean_score_own": "n_scored_own",
                  "mean_score_original": "n_scored_original"}


def pool(per_file: dict, results: list[dict] | None = None) -> dict:
    """One summary over several files of a task (MCQ pools its items with mcq_metrics instead): counts add
    up; each mean is weighted by the count it was taken over (dialogue: n_scored / n_scored_own /
    n_scored_original; cloze: n_items - n_failed) over the files where it is a number; by_class and by_type
    recomputed from `results` (all files' items); other keys (bleu_kind, score_rule, judge, ...) are the
    first file's."""
    summaries = list(per_file.values())
    if len(summaries) == 1:
        return dict(summaries[0])
    pooled = dict(summaries[0])
    for key in summaries[0]:
        values = [s.get(key) for s in summaries]
        if key.startswith("n_") or key == "unanswered":
            pooled[key] = sum(v for v in values if number(v))
        elif key in ("by_class", "by_type"):
            pooled[key] = _merge_groups(summaries, key, results)
        elif any(number(v) for v in values) and all(number(v) or v is None for v in values):
            weights = [_weight(s, key) for s in summaries]
            pairs = [(v, w) for v, w in zip(values, weights) if number(v) and not np.isnan(v) and w > 0]
            total = sum(w for _, w in pairs)
            if total:
                pooled[key] = sum(v * w for v, w in pairs) / total
            else:
                pooled[key] = None if key in DIALOG_WEIGHTS else float("nan")
    return pooled


def _weight(summary: dict, key: str) -> int:
    if key in DIALOG_WEIGHTS:
        return summary.get(DIALOG_WEIGHTS[key]) or 0
    return summary.get("n_items", 0) - (summary.get("n_failed") or 0)


def _merge_groups(summaries: list[dict], key: str, results: list[dict] | None) -> dict:
    """by_class / by_type over all files: from the items when given, else merged from the files' groups."""
    column = {"by_class": "class", "by_type": "type"}[key]
    if results is not None:
        groups: dict = {}
        for r in results:
            if r.get(column) is not None:
                groups.setdefault(r[column], []).append(r)
        return {label: {"n_items": len(rows), **task_lib._score_stats(rows, "score")}
                for label, rows in sorted(groups.items())}
    merged: dict = {}
    for s in summaries:
        for label, g in (s.get(key) or {}).items():
            m = merged.setdefault(label, {"n_items": 0, "n_scored": 0, "total": 0.0})
            m["n_items"] += g["n_items"]
            if g.get("mean_score") is not None:
                m["n_scored"] += g["n_scored"]
                m["total"] += g["mean_score"] * g["n_scored"]
    return {label: {"n_items": m["n_items"],
                    "mean_score": m["total"] / m["n_scored"] if m["n_scored"] else None,
                    "n_scored": m["n_scored"]} for label, m in sorted(merged.items())}
