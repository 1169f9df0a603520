"""`diabetica-jax eval`: run a suite against a model and write report.json, summary.md and a comparison plot."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from diabetica_jax.evaluation import tasks as task_lib
from diabetica_jax.evaluation.config import EvalConfig
from diabetica_jax.evaluation.data import load_items
from diabetica_jax.evaluation.prompts import OWN, from_protocol
from diabetica_jax.llm import make_backend

log = logging.getLogger(__name__)


def resolve(path: str, data_dir: str | None) -> Path:
    if path.startswith("embedded:"):
        from diabetica_jax.demo import BENCHMARK_DIR

        return BENCHMARK_DIR / path.split(":", 1)[1]
    p = Path(path)
    return p if p.is_absolute() or data_dir is None else Path(data_dir) / p


def evaluate(cfg: EvalConfig, out: str | Path, model=None, tokenizer=None, progress: bool = True) -> dict:
    """Run every task of the suite; return {task: summary} and write the reports under `out`."""
    from diabetica_jax import hf
    from diabetica_jax.model import QwenConfig, create_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prompts = from_protocol(cfg.protocol) if cfg.mode == "faithful" else OWN
    items = {(t.task, f): load_items(resolve(f, cfg.data_dir), t.task)[: t.limit] for t in cfg.tasks for f in t.files}
    if model is None:  # data problems are reported above, before any model is loaded
        if cfg.model:
            model, _ = hf.load(cfg.model, dtype=cfg.dtype, progress=progress)
        else:
            model = create_model(QwenConfig.preset(cfg.preset, dtype=cfg.dtype))
        tokenizer = hf.load_tokenizer(cfg.model)
    name = cfg.name or (Path(cfg.model).name if cfg.model else f"{cfg.preset} (random)")
    mut = task_lib.ModelUnderTest(model, tokenizer, name, batch_size=cfg.batch_size, progress=progress)
    judge = make_backend(cfg.judge, out / "cache" / "judge") if cfg.judge.backend != "none" else None

    summaries = {}
    for section in cfg.tasks:
        all_results, per_file = [], {}
        for f in section.files:
            subset = items[(section.task, f)]
            if section.task == "mcq":
                results, summary = task_lib.run_mcq(mut, subset, prompts)
            elif section.task == "cloze":
                results, summary = task_lib.run_cloze(mut, subset, prompts, cfg.bertscore_model)
            else:
                results, summary = task_lib.run_dialog(mut, subset, prompts, judge, cfg.judge.concurrency)
            for r in results:
                r["file"] = Path(f).name
            per_file[Path(f).name] = summary
            all_results += results
        pooled = task_lib.mcq_metrics(all_results) if section.task == "mcq" else _pool(per_file)
        report = {"task": section.task, "model": name, "mode": cfg.mode, "files": section.files,
                  **pooled, "per_file": per_file, "items": all_results}
        (out / f"report_{section.task}.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        summaries[section.task] = {k: v for k, v in report.items() if k != "items"}
    combined = {"model": name, "mode": cfg.mode, "tasks": summaries, "published": prompts.published}
    (out / "report.json").write_text(json.dumps(combined, indent=2, ensure_ascii=False) + "\n")
    (out / "summary.md").write_text(summary_markdown([combined]), encoding="utf-8")
    compare_plot([combined], out / "comparison.png")
    return combined


def _pool(per_file: dict) -> dict:
    if len(per_file) == 1:
        return dict(next(iter(per_file.values())))
    n = sum(s["n_items"] for s in per_file.values())
    pooled = {"n_items": n}
    for key in next(iter(per_file.values())):
        values = [s[key] for s in per_file.values()]
        if key != "n_items" and all(isinstance(v, (int, float)) for v in values):
            pooled[key] = sum(v * s["n_items"] for v, s in zip(values, per_file.values())) / n
    return pooled


def summary_markdown(runs: list[dict]) -> str:
    lines = ["# Evaluation summary", "", "| model | mode | MCQ acc. (95% CI) | MCQ log-lik acc. | cloze ROUGE-L | "
             "cloze BLEU | dialog judge mean (scored/n) |", "|---|---|---|---|---|---|---|"]
    for run in runs:
        t = run["tasks"]
        mcq = t.get("mcq", {})
        cloze = t.get("cloze", {})
        dialog = t.get("dialog", {})
        acc = (f"{100 * mcq['accuracy']:.1f}% ({100 * mcq['accuracy_ci95'][0]:.1f}-{100 * mcq['accuracy_ci95'][1]:.1f})"
               if mcq else "-")
        ll = f"{100 * mcq['loglik_accuracy']:.1f}%" if mcq else "-"
        rl = f"{cloze['rougeL']:.3f}" if cloze else "-"
        bl = f"{cloze['bleu']:.3f}" if cloze else "-"
        dm = (f"{dialog['mean_score']:.2f} ({dialog['n_scored']}/{dialog['n_items']})"
              if dialog and dialog.get("mean_score") is not None else ("not judged" if dialog else "-"))
        lines.append(f"| {run['model']} | {run['mode']} | {acc} | {ll} | {rl} | {bl} | {dm} |")
    published = next((r["published"] for r in runs if r.get("published")), {})
    if published:
        lines += ["", "Published numbers (protocol file), for reference:", "",
                  "| model | MCQ pooled acc. | dialog judge mean |", "|---|---|---|"]
        mcq_pub = published.get("mcq_pooled_accuracy_pct", {})
        dialog_pub = published.get("dialog_gpt4_judge_mean", {})
        for model in sorted(set(mcq_pub) | set(dialog_pub), key=lambda m: -mcq_pub.get(m, 0)):
            lines.append(f"| {model} | {mcq_pub.get(model, '-')}% | {dialog_pub.get(model, '-')} |")
    return "\n".join(lines) + "\n"


def compare_plot(runs: list[dict], path: Path) -> bool:
    """MCQ accuracy (with 95% CIs) and dialog judge means of several runs, beside published reference rows.

    Callers draw the plot after the reports are written, and a plot is a convenience: a failure
    to draw it is logged and reported as False, never raised into a finished evaluation."""
    try:
        _draw_comparison(runs, path)
    except Exception:
        log.exception("could not draw the comparison plot %s; the reports are complete without it", path)
        return False
    return True


def _draw_comparison(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    published = next((r["published"] for r in runs if r.get("published")), {})
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    names, values, errors, colors = [], [], [], []
    for run in runs:
        mcq = run["tasks"].get("mcq")
        if mcq:
            names.append(run["model"])
            values.append(100 * mcq["accuracy"])
            low, high = mcq["accuracy_ci95"]
            errors.append((100 * (mcq["accuracy"] - low), 100 * (high - mcq["accuracy"])))
            colors.append("tab:blue")
    for model, acc in sorted(published.get("mcq_pooled_accuracy_pct", {}).items(), key=lambda kv: kv[1]):
        names.append(f"{model} (published)")
        values.append(acc)
        errors.append((0, 0))
        colors.append("lightgray")
    ax = axes[0]
    # matplotlib refuses negative error bars; an interval that misses its point estimate (a bad
    # report, or rounding) shows as no bar on that side rather than failing the plot
    xerr = np.clip(np.array(errors, dtype=float).T, 0.0, None) if errors else None
    ax.barh(names, values, xerr=xerr, color=colors)
    ax.set_xlabel("MCQ accuracy (%)")
    ax.set_title("multiple choice")
    names, values, colors = [], [], []
    for run in runs:
        dialog = run["tasks"].get("dialog")
        if dialog and dialog.get("mean_score") is not None:
            names.append(run["model"])
            values.append(dialog["mean_score"])
            colors.append("tab:orange")
    for model, score in sorted(published.get("dialog_gpt4_judge_mean", {}).items(), key=lambda kv: kv[1]):
        names.append(f"{model} (published)")
        values.append(score)
        colors.append("lightgray")
    axes[1].barh(names or ["(no judged dialogue)"], values or [0], color=colors or ["white"])
    axes[1].set_xlabel("judge score (1-10)")
    axes[1].set_title("open dialogue")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)



