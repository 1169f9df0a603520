"""`diabetica-jax compare`: several eval reports side by side, in the Diabetica paper's table layout.

Reads the `report.json` files that `diabetica-jax eval` writes (one per model and mode) and lays them
out as the paper does: MCQ accuracy on A1, A2 and pooled, fill-in-the-blank ROUGE-1/2/L, BLEU and
BERTScore, and the judged dialogue mean, followed by the published reference rows of the protocol
file (`published_results`; only the columns the paper published, the others left empty): the file given,
else the one the reports were run with, else the paper's protocol shipped with the package.

Optional report keys (`decoding`, `seeds`, `seed_stats` with the mean and standard deviation over
seeds, `bleu_char`, `mean_score_original`, a `loglik_accuracy` of "not available") are shown when
present and skipped when absent (reports of older versions lack them). A pooled MCQ accuracy is shown with its 95% interval
for a single run and as mean ± std over seeds when the report carries several seeds.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any, Iterable

from diabetica_jax.configuration import InputError
from diabetica_jax.errors import MissingInput
from diabetica_jax.evaluation.prompts import default_protocol_path

log = logging.getLogger(__name__)

REPORT = "report.json"
MCQ_PUBLISHED = "mcq_pooled_accuracy_pct"
DIALOG_PUBLISHED = "dialog_gpt4_judge_mean"
CLOZE_KEYS = ("rouge1", "rouge2", "rougeL", "bleu", "bleu_char")

# every row carries every column (None where unknown or unpublished), so the JSON is one flat table
COLUMNS = ("model", "mode", "published", "mcq_a1_pct", "mcq_a1_std_pct", "mcq_a2_pct", "mcq_a2_std_pct",
           "mcq_pooled_pct", "mcq_pooled_ci95_pct", "mcq_pooled_std_pct", "mcq_n_items", "mcq_loglik_pct",
           "n_seeds", "seeds", "cloze_rouge1", "cloze_rouge2", "cloze_rougeL", "cloze_bleu", "cloze_bleu_char",
           "cloze_bleu_kind", "cloze_bertscore_f1", "cloze_bertscore_note", "cloze_n_items", "dialog_mean", "dialog_std",
           "dialog_n_scored", "dialog_n_items", "dialog_mean_original_rule", "decoding", "report")

# ------------------------------------------------------------------------------------------ loading


def load_reports(paths: Iterable[str | Path] | str | Path) -> list[dict]:
    """The reports under `paths`: report.json files, or directories holding one directly or one or two levels down.

    `eval/base/` + `eval/trained/`, or `OUT/` holding `own/report.json` and `faithful/report.json`, all work.
    Each loaded report gets `_path` (the file it came from). Raises FileNotFoundError naming the path
    when a path does not exist or holds no report, InputError (a ValueError) naming the file when one is unreadable."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    reports = []
    for raw in paths:
        for file in _report_files(Path(raw)):
            reports.append(_read_report(file))
    if not reports:
        raise MissingInput("no report paths given: pass report.json files or directories holding them")
    return reports


def _report_files(path: Path) -> list[Path]:
    if not path.exists():
        raise MissingInput(f"{path}: no such file or directory (expected a {REPORT} or a directory holding one)")
    if path.is_file():
        return [path]
    if (path / REPORT).is_file():
        return [path / REPORT]
    found = sorted(p for p in path.glob(f"*/{REPORT}") if p.is_file())
    found += sorted(p for p in path.glob(f"*/*/{REPORT}") if p.is_file())
    if not found:
        raise MissingInput(f"{path}: no {REPORT} in this directory nor one or two levels below it "
                                "(run `diabetica-jax eval` first, or point at its output directory)")
    return found


def _read_report(file: Path) -> dict:
    try:
        report = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{file}: not a readable report ({e})") from e
    if not isinstance(report, dict) or not isinstance(report.get("tasks"), dict):
        raise InputError(f"{file}: not an eval report (expected a JSON object with a 'tasks' object)")
    report["_path"] = str(file)
    return report


def load_published(protocol: str | Path) -> dict:
    """The `published_results` block of a protocol file (a protocol.json, or a directory holding one)."""
    path = Path(protocol)
    if path.is_dir():
        path = path / "protocol.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not a readable protocol file ({e})") from e
    published = data.get("published_results") if isinstance(data, dict) else None
    if not isinstance(published, dict):
        raise InputError(f"{path}: no 'published_results' object in this protocol file")
    return published


# ------------------------------------------------------------------------------------------ numbers


def _num(value: Any) -> float | None:
    """A finite number, or None (strings such as "not available", None, NaN, bools)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _pct(value: Any) -> float | None:
    value = _num(value)
    return None if value is None else 100.0 * value


def _stat(section: dict, key: str) -> tuple[float | None, float | None, int]:
    """(value, std across seeds or None, number of seeds) of one figure of a report section: the runner's
    `seed_stats` (mean over the seeds) when several seeds ran, else the figure itself."""
    if not isinstance(section, dict):
        return None, None, 0
    stats = (section.get("seed_stats") or {}).get(key)
    if isinstance(stats, dict) and (stats.get("n") or 0) > 1 and _num(stats.get("mean")) is not None:
        return _num(stats["mean"]), _num(stats.get("std")), int(stats["n"])
    value = _num(section.get(key))
    return value, None, 0 if value is None else 1


def _seeds(report: dict) -> list[int]:
    seeds = report.get("seeds")
    return list(seeds) if isinstance(seeds, list) else []


_A = {"A1": re.compile(r"(?i)(?<![a-z])a1(?!\d)"), "A2": re.compile(r"(?i)(?<![a-z])a2(?!\d)")}


def _mcq_split(per_file: dict, part: str) -> tuple[float | None, float | None]:
    """Accuracy (%) and std (%) of the per-file MCQ results whose file name names `part` (A1 or A2),
    pooled by item count when several files match."""
    if not isinstance(per_file, dict):
        return None, None
    hits = [s for name, s in per_file.items() if _A[part].search(str(name)) and isinstance(s, dict)]
    figures = [(_stat(s, "accuracy"), _num(s.get("n_items")) or 0) for s in hits]
    figures = [(v, sd, n) for (v, sd, _), n in figures if v is not None]
    if not figures:
        return None, None
    if len(figures) == 1:
        v, sd, _ = figures[0]
        return 100 * v, None if sd is None else 100 * sd
    total = sum(n for _, _, n in figures)
    if total <= 0:
        return 100 * sum(v for v, _, _ in figures) / len(figures), None
    return 100 * sum(v * n for v, _, n in figures) / total, None


# ------------------------------------------------------------------------------------------ table


def _empty_row() -> dict:
    return dict.fromkeys(COLUMNS)


def _run_row(report: dict) -> dict:
    tasks = report.get("tasks") or {}
    mcq = tasks.get("mcq") if isinstance(tasks.get("mcq"), dict) else {}
    cloze = tasks.get("cloze") if isinstance(tasks.get("cloze"), dict) else {}
    dialog = tasks.get("dialog") if isinstance(tasks.get("dialog"), dict) else {}
    row = _empty_row()
    row.update(model=str(report.get("model", "?")), mode=str(report.get("mode", "?")), published=False,
               report=report.get("_path"), decoding=report.get("decoding"))
    seeds = _seeds(report)
    row["seeds"] = seeds or None
    n_seeds = len(seeds)

    if mcq:
        acc, std, n_seed = _stat(mcq, "accuracy")
        row["mcq_pooled_pct"] = _pct(acc)
        n_seeds = max(n_seeds, n_seed)
        if n_seeds > 1 and std is not None:
            row["mcq_pooled_std_pct"] = 100 * std
        ci = mcq.get("accuracy_ci95")
        if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_num(c) is not None for c in ci):
            row["mcq_pooled_ci95_pct"] = [100 * float(ci[0]), 100 * float(ci[1])]
        row["mcq_n_items"] = mcq.get("n_items")
        row["mcq_loglik_pct"] = _pct(_stat(mcq, "loglik_accuracy")[0])
        row["mcq_a1_pct"], row["mcq_a1_std_pct"] = _mcq_split(mcq.get("per_file"), "A1")
        row["mcq_a2_pct"], row["mcq_a2_std_pct"] = _mcq_split(mcq.get("per_file"), "A2")

    if cloze:
        for key in CLOZE_KEYS:
            row[f"cloze_{key}"] = _stat(cloze, key)[0]
        bert = cloze.get("bertscore_f1")
        row["cloze_bertscore_f1"] = _stat(cloze, "bertscore_f1")[0]
        if row["cloze_bertscore_f1"] is None and isinstance(bert, str):
            row["cloze_bertscore_note"] = bert
        row["cloze_n_items"] = cloze.get("n_items")
        row["cloze_bleu_kind"] = cloze.get("bleu_kind") if isinstance(cloze.get("bleu_kind"), str) else None

    if dialog:
        mean, std, _ = _stat(dialog, "mean_score")
        row["dialog_mean"], row["dialog_std"] = mean, std if n_seeds > 1 else None
        row["dialog_n_scored"], row["dialog_n_items"] = dialog.get("n_scored"), dialog.get("n_items")
        row["dialog_mean_original_rule"] = _stat(dialog, "mean_score_original")[0]
    row["n_seeds"] = n_seeds or None
    return row


def published_rows(published: dict | None) -> list[dict]:
    """One row per model of a protocol's `published_results`, MCQ-ranked (then dialogue-only models)."""
    if not isinstance(published, dict):
        return []
    if isinstance(published.get("published_results"), dict):  # a whole protocol was passed
        published = published["published_results"]
    mcq = published.get(MCQ_PUBLISHED) if isinstance(published.get(MCQ_PUBLISHED), dict) else {}
    dialog = published.get(DIALOG_PUBLISHED) if isinstance(published.get(DIALOG_PUBLISHED), dict) else {}
    models = list(dict.fromkeys([*mcq, *dialog]))
    models.sort(key=lambda m: (_num(mcq.get(m)) is None, -(_num(mcq.get(m)) or 0.0), -(_num(dialog.get(m)) or 0.0)))
    rows = []
    for model in models:
        row = _empty_row()
        row.update(model=str(model), mode="published", published=True,
                   mcq_pooled_pct=_num(mcq.get(model)), dialog_mean=_num(dialog.get(model)))
        rows.append(row)
    return rows


def comparison_table(reports: list[dict], published: dict | None = None) -> list[dict]:
    """Rows in the paper's layout: one per report, then the published rows.

    Every row has the keys of COLUMNS (None where unknown); accuracies are percentages, cloze figures
    as the reports give them (0-1), `published` is True on the reference rows. `published` is the
    protocol's `published_results` block (or the whole protocol); None takes the block the reports
    carry (from the protocol they were run with), {} adds no reference rows."""
    rows = [_run_row(r) for r in reports]
    if published is None:
        published = next((r["published"] for r in reports if isinstance(r.get("published"), dict) and r["published"]),
                         {})
    return rows + published_rows(published)


# ------------------------------------------------------------------------------------------ markdown


def _fmt(value: Any, digits: int = 1, suffix: str = "") -> str:
    value = _num(value)
    return "–" if value is None else f"{value:.{digits}f}{suffix}"


def _pm(value: Any, std: Any, digits: int) -> str:
    if _num(value) is None:
        return "–"
    return _fmt(value, digits) + (f" ± {_fmt(abs(_num(std)), digits)}" if _num(std) is not None else "")


def _pooled_cell(row: dict) -> str:
    if _num(row.get("mcq_pooled_pct")) is None:
        return "–"
    if _num(row.get("mcq_pooled_std_pct")) is not None:
        seeds = f" (n={row['n_seeds']})" if row.get("n_seeds") else ""
        return f"{_pm(row['mcq_pooled_pct'], row['mcq_pooled_std_pct'], 1)}{seeds}"
    ci = row.get("mcq_pooled_ci95_pct")
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_num(c) is not None for c in ci):
        return f"{_fmt(row['mcq_pooled_pct'])} [{_fmt(ci[0])}–{_fmt(ci[1])}]"
    return _fmt(row["mcq_pooled_pct"])


def _dialog_cell(row: dict) -> str:
    if _num(row.get("dialog_mean")) is None:
        if row.get("dialog_n_items"):
            return f"not judged (0/{row['dialog_n_items']})"
        return "–"
    cell = _pm(row["dialog_mean"], row.get("dialog_std"), 2)
    if row.get("dialog_n_scored") is not None and row.get("dialog_n_items") is not None:
        cell += f" ({row['dialog_n_scored']}/{row['dialog_n_items']})"
    return cell


def _labels(rows: list[dict]) -> list[str]:
    """Model names, with the report's directory added where two runs share a model and mode."""
    keys = [(r.get("model"), r.get("mode")) for r in rows]
    labels = []
    for row, key in zip(rows, keys):
        label = str(row.get("model"))
        if not row.get("published") and keys.count(key) > 1 and row.get("report"):
            label += f" ({Path(row['report']).parent.name})"
        labels.append(label)
    return labels


def comparison_markdown(rows: list[dict]) -> str:
    """The table as Markdown: the runs, then the published rows (marked), then notes on seeds and decoding."""
    runs = [r for r in rows if not r.get("published")]
    extras = [(key, head, digits) for key, head, digits in
              (("mcq_loglik_pct", "MCQ log-lik %", 1), ("cloze_bleu_char", "BLEU (char)", 3),
               ("dialog_mean_original_rule", "dialogue (original rule)", 2))
              if any(_num(r.get(key)) is not None for r in runs)]
    head = ["model", "mode", "MCQ A1 %", "MCQ A2 %", "MCQ pooled %", "ROUGE-1", "ROUGE-2", "ROUGE-L", "BLEU",
            "BERTScore", "dialogue mean (scored/n)", *[h for _, h, _ in extras]]
    lines = ["# Diabetica benchmarks: comparison", "",
             "MCQ pooled: 95% Wilson interval in brackets for a single run, mean ± std over seeds otherwise. "
             "Cloze figures on a 0-1 scale. Published rows are the paper's numbers (protocol file).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes = []
    for row, label in zip(rows, _labels(rows)):
        bert = _fmt(row.get("cloze_bertscore_f1"), 3)
        if bert == "–" and row.get("cloze_bertscore_note"):
            bert = "n/c"
            notes.append(f"- {label} ({row.get('mode')}): BERTScore {row['cloze_bertscore_note']}")
        cells = [label + (" *(published)*" if row.get("published") else ""), str(row.get("mode") or "–"),
                 _pm(row.get("mcq_a1_pct"), row.get("mcq_a1_std_pct"), 1),
                 _pm(row.get("mcq_a2_pct"), row.get("mcq_a2_std_pct"), 1), _pooled_cell(row),
                 *[_fmt(row.get(f"cloze_{k}"), 3) for k in ("rouge1", "rouge2", "rougeL", "bleu")], bert,
                 _dialog_cell(row), *[_fmt(row.get(k), d) for k, _, d in extras]]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        if row.get("cloze_bleu_kind"):
            notes.append(f"- {label} ({row.get('mode')}): cloze BLEU is {row['cloze_bleu_kind']}")
        if row.get("seeds"):
            notes.append(f"- {label} ({row.get('mode')}): seeds {', '.join(map(str, row['seeds']))}")
        if row.get("decoding"):
            notes.append(f"- {label} ({row.get('mode')}): decoding {json.dumps(row['decoding'], ensure_ascii=False)}")
    if notes:
        lines += ["", "Notes:", "", *notes]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ plot


def comparison_plot(rows: list[dict], path: str | Path) -> bool:
    """MCQ pooled accuracy bars (95% CI or ± std; published bars grey), cloze ROUGE-L and dialogue means, in one
    PNG (only the panels some row has).

    A plot is a convenience: any failure to draw it is logged and reported as False, never raised."""
    try:
        _draw(rows, Path(path))
    except Exception:
        log.exception("could not draw the comparison plot %s; the tables are complete without it", path)
        return False
    return True


def _error(row: dict) -> tuple[float, float]:
    value = _num(row.get("mcq_pooled_pct"))
    std = _num(row.get("mcq_pooled_std_pct"))
    if std is not None:
        return abs(std), abs(std)
    ci = row.get("mcq_pooled_ci95_pct")
    if value is not None and isinstance(ci, (list, tuple)) and len(ci) == 2:
        low, high = _num(ci[0]), _num(ci[1])
        if low is not None and high is not None:
            # an interval that misses its point estimate (a bad report, rounding) shows no bar on that side
            return max(0.0, value - low), max(0.0, high - value)
    return 0.0, 0.0


def _bars(ax, names: list[str], values: list[float], errs: list[list[float]], colors: list[str]) -> None:
    """Horizontal bars, with error bars (already clipped at 0) only where there is an error to show."""
    positions = list(range(len(names)))
    ax.barh(positions, values, color=colors)
    ax.set_yticks(positions, names)
    shown = [i for i in positions if errs[0][i] > 0 or errs[1][i] > 0]
    if shown:
        ax.errorbar([values[i] for i in shown], shown, xerr=[[errs[0][i] for i in shown], [errs[1][i] for i in shown]],
                    fmt="none", ecolor="black", capsize=3)


def _draw(rows: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = comparison_figure(rows)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=90)
    finally:
        plt.close(fig)


def comparison_figure(rows: list[dict]):
    """One panel per figure that some row has (MCQ accuracy, cloze ROUGE-L, judged dialogue): a panel with
    nothing to show is left out, and a figure no row has is named in the caption instead."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [lbl + (" (published)" if r.get("published") else f" [{r.get('mode')}]")
              for lbl, r in zip(_labels(rows), rows)]
    panels = []  # (title, x label, x limit, colour, [(label, value, (low err, high err), published)])
    mcq = [(lbl, _num(r.get("mcq_pooled_pct")), _error(r), r.get("published"))
           for lbl, r in zip(labels, rows) if _num(r.get("mcq_pooled_pct")) is not None]
    panels.append(("multiple choice (bars: 95% CI or ± std over seeds)", "MCQ pooled accuracy (%)", 100.0,
                   "tab:blue", mcq))
    cloze = [(lbl, _num(r.get("cloze_rougeL")), (0.0, 0.0), r.get("published"))
             for lbl, r in zip(labels, rows) if _num(r.get("cloze_rougeL")) is not None]
    panels.append(("fill-in-the-blank", "ROUGE-L F1 (0-1)", 1.0, "tab:green", cloze))
    dialog = [(lbl, _num(r.get("dialog_mean")), (abs(_num(r.get("dialog_std")) or 0.0),) * 2, r.get("published"))
              for lbl, r in zip(labels, rows) if _num(r.get("dialog_mean")) is not None]
    panels.append(("open dialogue", "judge score (1-10)", 10.0, "tab:orange", dialog))
    missing = [title for title, _, _, _, entries in panels if not entries]
    panels = [p for p in panels if p[4]]
    height = max(4.0, 0.35 * max([len(p[4]) for p in panels] + [1]) + 1.5)
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(7 * max(1, len(panels)), height), squeeze=False)
    try:
        for ax, (title, xlabel, limit, colour, entries) in zip(axes[0], panels):
            names = [e[0] for e in entries][::-1]
            values = [e[1] for e in entries][::-1]
            errs = [[max(0.0, e[2][0]) for e in entries][::-1], [max(0.0, e[2][1]) for e in entries][::-1]]
            _bars(ax, names, values, errs, ["lightgray" if e[3] else colour for e in entries][::-1])
            ax.set_xlim(0, max(limit, max(v + e for v, e in zip(values, errs[1]))))
            ax.set_xlabel(xlabel)
            ax.set_title(title)
        if not panels:
            axes[0][0].text(0.5, 0.5, "no results to plot", ha="center", va="center", transform=axes[0][0].transAxes)
            axes[0][0].set_axis_off()
        if missing:
            fig.text(0.01, 0.01, "not shown (no result in these reports): " + "; ".join(m.split(" (")[0] for m in missing),
                     fontsize=8, color="dimgray")
        fig.tight_layout(rect=(0, 0.04 if missing else 0, 1, 1))
    except Exception:
        plt.close(fig)
        raise
    return fig


# ------------------------------------------------------------------------------------------ all


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_comparison(report_paths: Iterable[str | Path] | str | Path, out_dir: str | Path,
                     protocol: str | Path | None = None) -> dict:
    """Load the reports, write `comparison.md`, `comparison.json` and `comparison.png` under `out_dir`.

    Published rows come from `protocol` (a protocol.json or its directory) when given, else from the
    `published` block the reports carry, else (reports run without a protocol: own mode) from the paper's
    protocol shipped with the package. Returns {"rows", "markdown", "json", "plot" (path or None
    when the plot could not be drawn), "out_dir"}. Raises FileNotFoundError / InputError (naming the
    path) for missing or unreadable reports or protocol; never for the plot."""
    reports = load_reports(report_paths)
    if protocol is None and not any(isinstance(r.get("published"), dict) and r["published"] for r in reports):
        protocol = default_protocol_path()
    published = load_published(protocol) if protocol is not None else None
    rows = comparison_table(reports, published)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, js, png = out / "comparison.md", out / "comparison.json", out / "comparison.png"
    md.write_text(comparison_markdown(rows), encoding="utf-8")
    payload = {"reports": [r.get("_path") for r in reports], "protocol": None if protocol is None else str(protocol),
               "columns": list(COLUMNS), "rows": rows}
    js.write_text(json.dumps(_jsonable(payload), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    drawn = comparison_plot(rows, png)
    return {"rows": rows, "markdown": str(md), "json": str(js), "plot": str(png) if drawn else None,
            "out_dir": str(out)}
