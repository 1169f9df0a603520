"""RUN_DIR/summary.md: what ran, the data card, the loss curve, the evaluation against base and published numbers."""

from __future__ import annotations

import json
from pathlib import Path


def _axes():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(7, 4))


def _save(fig, ax, out: Path, legend: bool) -> bool:
    import matplotlib.pyplot as plt

    if legend:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return True


def _metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def loss_plot(stages: list[tuple[str, list[dict]]], out: Path) -> bool:
    """Every stage's loss curve on one axis of cumulative steps, a colour and a boundary line per stage."""
    stages = [(name, records) for name, records in stages if records]
    if not stages:
        return False
    fig, ax = _axes()
    offset = 0
    for i, (name, records) in enumerate(stages):
        steps = [offset + r["step"] for r in records]
        ax.plot(steps, [r["loss"] for r in records], color=f"C{i}", label=name)
        if i:
            ax.axvline(offset, color="grey", lw=0.8, ls="--")
        offset = steps[-1]
    ax.set_xlabel("step (cumulative over stages)" if len(stages) > 1 else "step")
    ax.set_ylabel("loss (loss-masked tokens)")
    ax.set_title("training loss" + (" per stage" if len(stages) > 1 else ""))
    return _save(fig, ax, out, legend=len(stages) > 1)


# The learning table's figures (pipeline/run.py learning_table), in the order a reader should take them: what
# a small model can show (perplexity, answer format, cloze overlap) before accuracy on a few items.
FIGURES = [  # key, column head, kind
    ("domain_perplexity", "held-out domain perplexity", "ppl"),
    ("general_perplexity", "general-text perplexity", "ppl"),
    ("domain_mcq_letter_probability", "MCQ letter probability", "prob"),
    ("domain_mcq_answered", "MCQ answered", "pct"),
    ("general_mcq_answered", "general MCQ answered", "pct"),
    ("domain_cloze_rougeL", "cloze ROUGE-L", "score"),
    ("domain_dialog_mean", "dialogue judge mean", "score"),
    ("domain_mcq_accuracy", "MCQ accuracy [95% CI]", "acc"),
    ("general_mcq_accuracy", "general MCQ accuracy [95% CI]", "acc"),
]
# The plot's panels: title, figures drawn in it, log scale
PANELS = [
    ("perplexity (lower is better)", ("domain_perplexity", "general_perplexity"), True),
    ("MCQ answer format (0-1)", ("domain_mcq_letter_probability", "domain_mcq_answered", "general_mcq_answered"),
     False),
    ("fill-in-the-blank ROUGE-L", ("domain_cloze_rougeL",), False),
    ("dialogue judge mean (1-10)", ("domain_dialog_mean",), False),
    ("MCQ accuracy, 95% CI", ("domain_mcq_accuracy", "general_mcq_accuracy"), False),
]
HEADS = {key: head for key, head, _ in FIGURES}


def _measured(rows: list[dict], key: str) -> bool:
    return any(isinstance(r.get(key), (int, float)) for r in rows)


def _cell(row: dict, key: str, kind: str) -> str:
    value = row.get(key)
    if not isinstance(value, (int, float)):
        return "not measured"
    if kind == "ppl":
        return f"{value:,.1f}"
    if kind == "prob":
        return f"{value:.3f}" if value >= 0.001 else f"{value:.1e}"
    if kind == "pct":
        return f"{100 * value:.0f}%"
    if kind == "acc":
        ci = row.get(key.replace("accuracy", "ci95"))
        n = row.get(key.replace("accuracy", "n_items"))
        interval = f" [{100 * ci[0]:.0f}-{100 * ci[1]:.0f}]" if isinstance(ci, list) else ""
        return f"{100 * value:.0f}%{interval}" + (f" (n={n})" if n else "")
    return f"{value:.3f}"


def accuracy_verdicts(rows: list[dict]) -> list[str]:
    """One sentence per accuracy figure: whether its 95% intervals at the points measured all overlap (then the
    changes between points are within noise) or not."""
    lines = []
    for key, head, kind in FIGURES:
        intervals = [r[key.replace("accuracy", "ci95")] for r in rows
                     if kind == "acc" and isinstance(r.get(key.replace("accuracy", "ci95")), list)]
        if len(intervals) < 2:
            continue
        name = head.split(" [")[0]
        if max(low for low, _ in intervals) <= min(high for _, high in intervals):
            lines.append(f"- {name}: the 95% intervals of all {len(intervals)} points overlap, so its changes are "
                         "noise at this benchmark size, not evidence of learning or forgetting.")
        else:
            lines.append(f"- {name}: the 95% intervals do not all overlap: a change beyond noise.")
    return lines


def learning_plot(rows: list[dict], out: Path) -> bool:
    """learning_figure saved as a PNG; False when there is nothing to draw."""
    fig = learning_figure(rows)
    if fig is None:
        return False
    import matplotlib.pyplot as plt

    fig.savefig(out, dpi=90)
    plt.close(fig)
    return True


def learning_figure(rows: list[dict]):
    """One panel per kind of figure measured, evaluation points along x. A figure not measured at a point is NaN
    there: no marker, and the line breaks instead of joining the points around it. Panels with nothing measured
    are left out; None when no panel is left."""
    import math

    panels = [(title, [k for k in keys if _measured(rows, k)], log) for title, keys, log in PANELS]
    panels = [p for p in panels if p[1]]
    if not rows or not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    points = [r["point"] for r in rows]
    for ax, (title, keys, log) in zip(axes[0], panels):
        for i, key in enumerate(keys):
            values = [r[key] if isinstance(r.get(key), (int, float)) else math.nan for r in rows]
            ax.plot(range(len(rows)), values, marker="o", color=f"C{i}", label=HEADS[key].split(" [")[0])
            intervals = [r.get(key.replace("accuracy", "ci95")) for r in rows] if "accuracy" in key else []
            shown = [(x, v, ci) for x, (v, ci) in enumerate(zip(values, intervals)) if isinstance(ci, list)]
            if shown:
                ax.errorbar([x for x, _, _ in shown], [v for _, v, _ in shown],
                            yerr=[[v - ci[0] for _, v, ci in shown], [ci[1] - v for _, v, ci in shown]],
                            fmt="none", ecolor=f"C{i}", capsize=3, alpha=0.6)
        if log:
            ax.set_yscale("log")
        elif "ROUGE" in title:  # small overlaps: scaled to the data, from 0
            ax.set_ylim(bottom=0)
        elif "perplexity" not in title and "judge" not in title:  # shares and probabilities
            ax.set_ylim(-0.02, 1.05)
        ax.set_xticks(range(len(rows)), points)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def write_summary(run_dir: Path, result: dict) -> None:
    lines = ["# Run summary", "", f"Run directory: `{run_dir}`", "", "| stage | status | seconds (when it ran) |", "|---|---|---|"]
    for stage, status in result["stages"].items():
        seconds = result["seconds"].get(stage)
        lines.append(f"| {stage} | {status} | {seconds:.0f} |" if seconds is not None else f"| {stage} | {status} | - |")
    card = run_dir / "data" / "data_card.json"
    if card.is_file():
        c = json.loads(card.read_text())
        lines += ["", "## Data", "", f"{c['collected']} records collected, {c['generated']} generated, {c['kept']} kept, "
                  f"{c['rejected']} rejected (`data/data_card.md`, `data/rejects.jsonl`).", "",
                  "![data card](data/data_card.png)"]
    stages = [(t["name"], _metrics(run_dir / t["dir"])) for t in result.get("training", [{"name": "train",
                                                                                        "dir": "train"}])]
    if loss_plot(stages, run_dir / "loss.png"):
        lines += ["", "## Training", ""]
        for name, records in stages:
            if records:
                lines.append(f"- {name}: {len(records)} steps logged; loss {records[0]['loss']:.3f} at step "
                             f"{records[0]['step']} -> {records[-1]['loss']:.3f} at step {records[-1]['step']}.")
        lines += ["", "![loss](loss.png)"]
    evaluation = run_dir / "eval" / "summary.md"
    if evaluation.is_file():
        lines += ["", "## Evaluation", "", evaluation.read_text().split("\n", 2)[2].strip(), "",
                  "![evaluation](eval/comparison.png)", "",
                  "The plot draws MCQ accuracy, cloze ROUGE-L and the judged dialogue mean where measured; the "
                  "answered share, log-likelihood accuracy and BLEU are in the table only (the answered share "
                  "per stage is drawn below)."]
    learning = run_dir / "eval" / "learning.json"
    if learning.is_file():
        rows = json.loads(learning.read_text())
        figures = [(key, head, kind) for key, head, kind in FIGURES if _measured(rows, key)]
        lines += ["", "## What training changed, per stage", "",
                  "Held-out domain text (never trained on) against general text; the answer format (letter "
                  "probability: the chance that a reply starts with an option letter; answered: the share of "
                  "greedy replies with a readable letter); cloze overlap; then accuracy with its 95% interval: "
                  "on benchmarks of a few items accuracy moves by chance, so read it last.", "",
                  "| point | " + " | ".join(head for _, head, _ in figures) + " |", "|---" * (len(figures) + 1) + "|"]
        for r in rows:
            lines.append(f"| {r['name']} | " + " | ".join(_cell(r, key, kind) for key, _, kind in figures) + " |")
        verdicts = accuracy_verdicts(rows)
        if verdicts:
            lines += ["", *verdicts]
        if learning_plot(rows, run_dir / "learning.png"):
            lines += ["", "![what training changed](learning.png)"]
    verify = run_dir / "hf" / "verify.json"
    if verify.is_file():
        v = json.loads(verify.read_text())
        if "skipped" in v:
            check = f"; {v['skipped']}."
        else:
            verdict = "identical" if v["identical"] else f"NOT identical ({v['agreement']:.0%} of prompts agree)"
            check = (f". transformers reloaded it; greedy tokens on {v['prompts']} prompts x {v['tokens_per_prompt']} "
                     f"tokens: {verdict} to the JAX engine's.")
        lines += ["", "## Export", "", "Hugging Face checkpoint in `hf/`" + check]
    (run_dir / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
