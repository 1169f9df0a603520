"""How the clinical tasks' results are shown: Markdown tables for summary.md and one bar chart per task.

The tables put the groups of a task side by side per rubric dimension (consult and summarize: the model, the
reference texts, and their paired difference; educate: all items and the right-key items), each cell
"mean [95% t-interval] (scored/rated)". The charts draw the same means as bars with their intervals as error
bars (matplotlib, Agg backend), into the run's output folder. A chart is a convenience: a failure to draw it
is logged and reported as False, never raised into a finished evaluation.
"""

from __future__ import annotations

import logging
from pathlib import Path

from diabetica_jax.evaluation.config import CLINICAL_TASKS

log = logging.getLogger(__name__)

TITLES = {"consult": "Patient consultation (consult)", "educate": "Exam explanations for students (educate)",
          "summarize": "Clinical note summaries (summarize)"}
COLORS = {"model": "tab:blue", "reference": "tab:gray", "all": "tab:blue", "right_key": "tab:green"}


def _number(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _cell(stats: dict | None, digits: int = 2) -> str:
    """'mean [low, high] (scored/rated)' of one dimension of one group."""
    if not stats or stats.get("mean") is None:
        rated = (stats or {}).get("n_scored", 0) + (stats or {}).get("n_unparsed", 0)
        return f"- (0/{rated})" if rated else "-"
    text = _number(stats["mean"], digits)
    if stats.get("ci95"):
        low, high = stats["ci95"]
        text += f" [{low:.{digits}f}, {high:.{digits}f}]"
    if "n_scored" in stats:
        text += f" ({stats['n_scored']}/{stats['n_scored'] + stats['n_unparsed']})"
    elif "n_pairs" in stats:
        text += f" ({stats['n_pairs']} pairs)"
    return text


def _task_lines(run: dict, task: str, summary: dict) -> list[str]:
    low, high = summary.get("scale") or (None, None)
    lines = ["", f"## {TITLES[task]}: {run['model']} ({run['mode']})", ""]
    counts = (f"{summary['n_items']} items, {summary.get('n_failed', 0)} failed to generate, "
              f"{summary.get('n_rejected', 0)} rows rejected"
              + (f" ({summary['rejects_file']})" if summary.get("n_rejected") else ""))
    if summary.get("judge"):
        lines.append(f"Judge `{summary['judge']}`, rubric `{Path(summary['rubric']).name}`, scale {low}-{high} "
                     f"(higher is better). Cells: mean [95% t-interval] (scored/rated). {counts}; "
                     f"judge replies with an unparsed dimension: {summary.get('n_unparsed', 0)}, "
                     f"judge failures: {summary.get('n_judge_failed', 0)}.")
    else:
        lines.append(f"Not judged (judge.backend: none): no ratings. {counts}.")
    if task == "educate":
        rate, ci = summary.get("wrong_key_rate"), summary.get("wrong_key_rate_ci95")
        rate_text = f"{100 * rate:.1f}% [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}] (Wilson)" if rate is not None else "-"
        lines += ["", f"Key picked in the explanations: {summary.get('right_key', 0)} right, "
                      f"{summary.get('wrong_key', 0)} wrong, {summary.get('no_key', 0)} without a letter; "
                      f"wrong-key rate {rate_text}."]
    if task == "summarize" and summary.get("rouge"):
        rouge = summary["rouge"]
        n = rouge["rouge1"]["n"]
        lines += ["", (f"ROUGE F1 over word tokens against the reference summaries ({n} items): "
                       + ", ".join(f"{label} {_cell(rouge[key], 3)}" for key, label in
                                   (("rouge1", "ROUGE-1"), ("rouge2", "ROUGE-2"), ("rougeL", "ROUGE-L")))
                       if n else "ROUGE: no item has a reference summary.")]
    ratings = summary.get("ratings") or {}
    if not summary.get("judge") or not ratings:
        return lines
    groups = [g for g in summary.get("groups", {}) if g in ratings]
    labels = [summary["groups"][g] for g in groups]
    difference = summary.get("difference")
    header = ["dimension", *labels] + (["model - reference (paired)"] if difference else [])
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in summary.get("dimensions", []):
        cells = [_cell(ratings[g].get(name)) for g in groups]
        if difference:
            cells.append(_cell(difference.get(name)))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    overall = summary.get("overall") or {}
    lines.append("| overall (mean of the dimensions) | " + " | ".join(_number(overall.get(g)) for g in groups)
                 + (" |  |" if difference else " |"))
    if summary.get("plot"):  # named, not linked: summary.md may sit a folder above the run's files
        lines += ["", f"Chart: `{summary['plot']}` in this run's output folder."]
    return lines


def clinical_markdown(runs: list[dict]) -> list[str]:
    """summary.md's sections for the clinical tasks of every run (none when no run has one)."""
    lines: list[str] = []
    for run in runs:
        for task in CLINICAL_TASKS:
            summary = run["tasks"].get(task)
            if summary:
                lines += _task_lines(run, task, summary)
    return lines


def clinical_plot(task: str, summary: dict, path: str | Path, title: str = "") -> bool:
    """Bars of each rubric dimension's mean per group with their 95% intervals (summarize: beside the ROUGE
    means); False when there is nothing to draw (no rating, no ROUGE) or drawing failed (logged)."""
    try:
        return _draw(task, summary, Path(path), title)
    except Exception:
        log.exception("could not draw the %s plot %s; the report is complete without it", task, path)
        return False


def _bars(ax, names: list[str], series: list[tuple[str, list, str]], bounds: tuple[float, float]) -> None:
    """Grouped vertical bars: one group of bars per name, one bar per series (label, [stats], color); the
    error bars are the 95% intervals drawn within `bounds` (the scale: a t-interval of a few items can reach
    past its ends, which the reports keep as computed)."""
    width = 0.8 / max(1, len(series))
    for k, (label, stats, color) in enumerate(series):
        xs = [i - 0.4 + width * (k + 0.5) for i in range(len(names))]
        means = [s["mean"] if s and s.get("mean") is not None else 0.0 for s in stats]
        ax.bar(xs, means, width, label=label, color=color)
        shown = [i for i, s in enumerate(stats) if s and s.get("mean") is not None and s.get("ci95")]
        if shown:
            below = [max(0.0, means[i] - max(bounds[0], stats[i]["ci95"][0])) for i in shown]
            above = [max(0.0, min(bounds[1], stats[i]["ci95"][1]) - means[i]) for i in shown]
            ax.errorbar([xs[i] for i in shown], [means[i] for i in shown], yerr=[below, above], fmt="none",
                        ecolor="black", capsize=3)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")


def _draw(task: str, summary: dict, path: Path, title: str) -> bool:
    ratings = summary.get("ratings") or {}
    groups = [g for g in summary.get("groups", {}) if g in ratings
              and any(s.get("mean") is not None for s in ratings[g].values())]
    rouge = summary.get("rouge") if task == "summarize" else None
    has_rouge = bool(rouge) and rouge["rouge1"]["n"] > 0
    if not groups and not has_rouge:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (1 if groups else 0) + (1 if has_rouge else 0)
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels if panels > 1 else 8, 4.5), squeeze=False)
    try:
        axes = list(axes[0])
        if groups:
            ax = axes.pop(0)
            names = summary["dimensions"]
            low, high = summary["scale"]
            _bars(ax, names, [(summary["groups"][g], [ratings[g].get(n) for n in names], COLORS.get(g, "tab:orange"))
                              for g in groups], (low, high))
            ax.set_ylim(0, high + 0.25 * (high - low) + 0.5)  # head room for the legend above the bars
            ax.axhline(high, color="lightgray", linewidth=0.8, zorder=0)
            if high - low <= 10:  # whole-number ticks over the scale, none in the legend's head room
                ax.set_yticks(range(0, high + 1))
            ax.set_ylabel(f"judge rating ({low}-{high}, higher is better)")
            ax.set_title("mean rating, 95% t-interval (drawn within the scale)")
            ax.legend(loc="upper center", ncol=len(groups), fontsize="small", frameon=False)
        if has_rouge:
            ax = axes.pop(0)
            keys = ["rouge1", "rouge2", "rougeL"]
            _bars(ax, ["ROUGE-1", "ROUGE-2", "ROUGE-L"], [("model vs reference", [rouge[k] for k in keys],
                                                          "tab:purple")], (0.0, 1.0))
            ax.set_ylim(0, 1.05)
            ax.set_ylabel("F1 over word tokens")
            ax.set_title(f"ROUGE against the reference summaries (n={rouge['rouge1']['n']})")
        fig.suptitle(f"{TITLES[task]}" + (f": {title}" if title else ""))
        fig.tight_layout()
        fig.savefig(path, dpi=90)
    finally:
        plt.close(fig)
    return True
