"""RUN_DIR/summary.md: what ran, the data card, the loss curve, the evaluation against base and published numbers."""

from __future__ import annotations

import json
from pathlib import Path


def loss_plot(metrics_file: Path, out: Path) -> bool:
    if not metrics_file.is_file():
        return False
    records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    if not records:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in records], [r["loss"] for r in records], color="tab:blue")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.set_title("training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return True


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
    if loss_plot(run_dir / "train" / "metrics.jsonl", run_dir / "loss.png"):
        records = [json.loads(x) for x in (run_dir / "train" / "metrics.jsonl").read_text().splitlines() if x.strip()]
        lines += ["", "## Training", "", f"{len(records)} steps logged; loss {records[0]['loss']:.3f} at step "
                  f"{records[0]['step']} -> {records[-1]['loss']:.3f} at step {records[-1]['step']}.", "",
                  "![loss](loss.png)"]
    evaluation = run_dir / "eval" / "summary.md"
    if evaluation.is_file():
        lines += ["", "## Evaluation", "", evaluation.read_text().split("\n", 2)[2].strip(), "",
                  "![evaluation](eval/comparison.png)"]
    verify = run_dir / "hf" / "verify.json"
    if verify.is_file():
        v = json.loads(verify.read_text())
        verdict = "identical" if v["identical"] else f"NOT identical ({v['agreement']:.0%} of prompts agree)"
        lines += ["", "## Export", "", f"Hugging Face checkpoint in `hf/`. transformers reloaded it; greedy tokens on "
                  f"{v['prompts']} prompts x {v['tokens_per_prompt']} tokens: {verdict} to the JAX engine's."]
    (run_dir / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
