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


def forgetting_plot(rows: list[dict], out: Path) -> bool:
    """Domain MCQ accuracy and each general task's metric at every evaluation point."""
    keys = sorted({k for r in rows for k in r if k.startswith("general_") or k == "domain_mcq_accuracy"})
    if not rows or not keys:
        return False
    fig, ax = _axes()
    points = [r["point"] for r in rows]
    for i, key in enumerate(keys):
        values = [r.get(key) for r in rows]
        xs = [x for x, v in enumerate(values) if isinstance(v, (int, float))]
        ax.plot(xs, [values[x] for x in xs], marker="o", color=f"C{i}",
                label=key.replace("general_", "general ").replace("domain_mcq_accuracy", "domain MCQ"))
    ax.set_xticks(range(len(points)), points)
    ax.set_ylabel("accuracy / score")
    ax.set_title("domain gain and general ability per stage")
    return _save(fig, ax, out, legend=True)


def write_summary(run_dir: Path, result: dict) -> None:
    lines = ["# Run summary", "", f"Run directory: `{run_dir}`", "", "| stage | status | seconds |", "|---|---|---|"]
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
                  "![evaluation](eval/comparison.png)"]
    forgetting = run_dir / "eval" / "forgetting.json"
    if forgetting.is_file():
        rows = json.loads(forgetting.read_text())
        keys = sorted({k for r in rows for k in r if k.startswith("general_") or k == "domain_mcq_accuracy"})
        lines += ["", "## Domain gain and general ability", "", "| point | " + " | ".join(keys) + " |",
                  "|---" * (len(keys) + 1) + "|"]
        for r in rows:
            cells = [f"{r[k]:.3f}" if isinstance(r.get(k), (int, float)) else "-" for k in keys]
            lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
        if forgetting_plot(rows, run_dir / "forgetting.png"):
            lines += ["", "![forgetting](forgetting.png)"]
    verify = run_dir / "hf" / "verify.json"
    if verify.is_file():
        v = json.loads(verify.read_text())
        verdict = "identical" if v["identical"] else f"NOT identical ({v['agreement']:.0%} of prompts agree)"
        lines += ["", "## Export", "", f"Hugging Face checkpoint in `hf/`. transformers reloaded it; greedy tokens on "
                  f"{v['prompts']} prompts x {v['tokens_per_prompt']} tokens: {verdict} to the JAX engine's."]
    (run_dir / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
