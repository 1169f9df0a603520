"""The evaluation summary a person reads: summary.md's tables over runs (paper benchmarks, perplexity, decoding,
dialogue groups, clinical tasks, published numbers) and the comparison plot."""

from __future__ import annotations

from pathlib import Path

from diabetica_jax.evaluation.clinical_report import clinical_markdown
from diabetica_jax.evaluation.compare import comparison_plot, comparison_table
from diabetica_jax.evaluation.config import PAPER_TASKS
from diabetica_jax.evaluation.pooling import number


def _pct(value) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, (int, float)) else "n/a"


def _spread(task: dict, key: str, scale: float = 1.0, digits: int = 1) -> str:
    stats = (task.get("seed_stats") or {}).get(key)
    if not stats or stats["n"] < 2:
        return ""
    return (f"; {stats['n']} seeds: mean {scale * stats['mean']:.{digits}f} ± {scale * stats['std']:.{digits}f} "
            f"[{scale * stats['min']:.{digits}f}, {scale * stats['max']:.{digits}f}]")


def summary_markdown(runs: list[dict]) -> str:
    lines = ["# Evaluation summary"]
    paper = [run for run in runs if any(task in run["tasks"] for task in PAPER_TASKS)]
    if paper:  # the paper's benchmarks in one table; a suite of clinical tasks only has no row for it
        lines += ["", "| model | mode | MCQ acc. (95% CI) | MCQ answered | MCQ log-lik acc. | cloze ROUGE-L | "
                  "cloze BLEU | dialog judge mean (scored/n) |", "|---|---|---|---|---|---|---|---|"]
    for run in paper:
        t = run["tasks"]
        mcq = t.get("mcq", {})
        cloze = t.get("cloze", {})
        dialog = t.get("dialog", {})
        acc = (f"{100 * mcq['accuracy']:.1f}% ({100 * mcq['accuracy_ci95'][0]:.1f}-{100 * mcq['accuracy_ci95'][1]:.1f})"
               + _spread(mcq, "accuracy", 100) if mcq else "-")
        ll = _pct(mcq["loglik_accuracy"]) if mcq else "-"
        answered = _pct(mcq.get("answered_rate")) if mcq else "-"
        rl = f"{cloze['rougeL']:.3f}" + _spread(cloze, "rougeL", digits=3) if cloze else "-"
        bl = (f"{cloze['bleu']:.3f} ({cloze.get('bleu_kind', 'bleu')})" + _spread(cloze, "bleu", digits=3)
              if cloze else "-")
        dm = (f"{dialog['mean_score']:.2f} ({dialog['n_scored']}/{dialog['n_items']})" + _spread(dialog, "mean_score",
                                                                                                digits=2)
              if dialog and dialog.get("mean_score") is not None else ("not judged" if dialog else "-"))
        if dialog and dialog.get("mean_score") is not None and dialog.get("mean_score_own") != dialog.get(
                "mean_score_original"):
            own, orig = dialog.get("mean_score_own"), dialog.get("mean_score_original")
            dm += (f"; own rule {own:.2f}" if own is not None else "; own rule -") + (
                f", original rule {orig:.2f} ({dialog.get('n_scored_original')} parsed)" if orig is not None
                else ", original rule -")
        lines.append(f"| {run['model']} | {run['mode']} | {acc} | {answered} | {ll} | {rl} | {bl} | {dm} |")
    rules = sorted({r["tasks"]["mcq"]["answer_rule"] for r in paper if r["tasks"].get("mcq", {}).get("answer_rule")})
    if rules:
        lines += ["", "MCQ letters read by: " + "; ".join(rules) + ". Answered: the share of replies with a "
                  "readable letter (answer-format compliance)."]
    scored = [r for r in runs if isinstance(r["tasks"].get("perplexity"), dict)]
    if scored:
        lines += ["", "| model | mode | perplexity | mean NLL (nats/token) | passages | tokens |", "|---|---|---|---|---|---|"]
        for run in scored:
            t = run["tasks"]["perplexity"]
            ppl = f"{t['perplexity']:.1f}" if number(t.get("perplexity")) else str(t.get("perplexity"))
            nll = f"{t['mean_nll']:.3f}" if number(t.get("mean_nll")) else "-"
            lines.append(f"| {run['model']} | {run['mode']} | {ppl} | {nll} | {t['n_items']} | {t['n_tokens']} |")
    harnessed = [r for r in runs if isinstance(r["tasks"].get("lm_eval"), dict)]
    if harnessed:
        lines += ["", "| model | mode | lm-eval task | metric | value | stderr |", "|---|---|---|---|---|---|"]
        for run in harnessed:
            for task, metrics in run["tasks"]["lm_eval"]["results"].items():
                for metric, value in metrics.items():
                    if metric.endswith("_stderr"):
                        continue
                    err = metrics.get(f"{metric}_stderr")
                    shown_err = f"{err:.4f}" if number(err) else "-"
                    lines.append(f"| {run['model']} | {run['mode']} | {task} | {metric} | {value:.4f} | {shown_err} |")
    decoded = [r for r in runs if r.get("decoding")]
    if decoded:
        lines += ["", "Decoding:", ""]
        for run in decoded:
            d = run["decoding"]
            per_task = "; ".join(f"{task}: " + ", ".join(f"{k} {v}" for k, v in spec.items())
                                 for task, spec in d.get("tasks", {}).items())
            lines.append(f"- {run['model']} ({run['mode']}), seeds {run.get('seeds')}: from {d.get('source')}: "
                         f"{per_task}")
    for run in runs:
        dialog = run["tasks"].get("dialog", {})
        for key, column in (("by_class", "class"), ("by_type", "type")):
            groups = dialog.get(key) or {}
            if not groups:
                continue
            lines += ["", f"Dialogue judge mean per {column}: {run['model']} ({run['mode']})", "",
                      f"| {column} | mean | scored/n |", "|---|---|---|"]
            for label, g in groups.items():
                mean = f"{g['mean_score']:.2f}" if g.get("mean_score") is not None else "-"
                lines.append(f"| {label} | {mean} | {g['n_scored']}/{g['n_items']} |")
    lines += clinical_markdown(runs)
    ref = next((r for r in runs if r.get("published")), None)
    if ref:
        published = ref["published"]
        path = (ref.get("protocol") or {}).get("path")  # reports of older versions do not record it
        lines += ["", f"Published numbers (protocol file {path or ''}".rstrip() + "), for reference:", "",
                  "| model | MCQ pooled acc. | dialog judge mean |", "|---|---|---|"]
        mcq_pub = published.get("mcq_pooled_accuracy_pct", {})
        dialog_pub = published.get("dialog_gpt4_judge_mean", {})
        for model in sorted(set(mcq_pub) | set(dialog_pub), key=lambda m: -mcq_pub.get(m, 0)):
            lines.append(f"| {model} | {mcq_pub.get(model, '-')}% | {dialog_pub.get(model, '-')} |")
    return "\n".join(lines) + "\n"


def compare_plot(runs: list[dict], path: Path) -> bool:
    """MCQ accuracy (95% interval, or spread over seeds) and dialogue judge means of several runs, beside the
    published reference rows they carry: the comparison report's plot (evaluation/compare.py). A failure to
    draw is logged and reported as False, never raised into a finished evaluation."""
    return comparison_plot(comparison_table(runs), path)



