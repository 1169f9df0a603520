"""The run summary tells the truth: measured points only, every figure drawn, timings kept, checks skipped aloud."""

import json
import math

import pytest

from diabetica_jax.evaluation.compare import comparison_figure, comparison_table
from diabetica_jax.pipeline import summary
from diabetica_jax.pipeline.run import learning_table


def _report(mcq=None, ppl=None, cloze=None):
    tasks = {}
    if mcq is not None:
        tasks["mcq"] = {"accuracy": mcq, "accuracy_ci95": [max(0.0, mcq - 0.3), min(1.0, mcq + 0.3)],
                        "answered_rate": 0.5, "n_items": 10}
    if ppl is not None:
        tasks["perplexity"] = {"perplexity": ppl}
    if cloze is not None:
        tasks["cloze"] = {"rougeL": cloze, "n_items": 6}
    return {"model": "m", "mode": "own", "tasks": tasks}


def _points():
    # the domain tasks ran before training and after the last stage only; the general ones at every point
    return [{"point": "base", "name": "base", "domain": _report(mcq=0.2, ppl=150000.0, cloze=0.0),
             "general": _report(mcq=0.1, ppl=140000.0)},
            {"point": "adapt", "name": "after adapt", "domain": None, "general": _report(mcq=0.1, ppl=900.0)},
            {"point": "instruct", "name": "after instruct", "domain": _report(mcq=0.0, ppl=400.0, cloze=0.1),
             "general": _report(mcq=0.0, ppl=1000.0)}]


def test_learning_table_leaves_unmeasured_figures_out_of_their_row():
    rows = learning_table(_points())
    assert [r["point"] for r in rows] == ["base", "adapt", "instruct"]
    assert "domain_mcq_accuracy" not in rows[1] and "domain_perplexity" not in rows[1]
    assert rows[1]["general_perplexity"] == 900.0 and rows[2]["domain_cloze_rougeL"] == 0.1
    assert rows[0]["domain_mcq_ci95"] == [0.0, 0.5] and rows[0]["domain_mcq_n_items"] == 10


def test_learning_plot_draws_no_line_through_an_unmeasured_point():
    fig = summary.learning_figure(learning_table(_points()))
    try:
        titles = [ax.get_title() for ax in fig.axes]
        accuracy = fig.axes[titles.index("MCQ accuracy, 95% CI")]
        domain = next(line for line in accuracy.get_lines() if line.get_label() == "MCQ accuracy")
        ys = list(domain.get_ydata())
        assert ys[0] == 0.2 and math.isnan(ys[1]) and ys[2] == 0.0  # broken at adapt, not joined across it
        # every figure of the table is in some panel; the dialogue panel (never measured) is left out
        drawn = {line.get_label() for ax in fig.axes for line in ax.get_lines()}
        table = {head.split(" [")[0] for key, head, _ in summary.FIGURES if summary._measured(
            learning_table(_points()), key)}
        assert table <= drawn
        assert not any("dialogue" in t for t in titles)
        assert fig.axes[titles.index("perplexity (lower is better)")].get_yscale() == "log"
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_accuracy_within_overlapping_intervals_is_called_noise():
    verdicts = summary.accuracy_verdicts(learning_table(_points()))
    assert any(v.startswith("- MCQ accuracy:") and "noise" in v for v in verdicts)


def test_comparison_plot_drops_empty_panels_and_shows_cloze():
    runs = [_report(mcq=0.2, cloze=0.05), _report(mcq=0.0, cloze=0.2)]
    for run in runs:  # a dialogue that was generated but not judged has no mean
        run["tasks"]["dialog"] = {"mean_score": None, "n_items": 4, "n_scored": 0}
    fig = comparison_figure(comparison_table(runs, published={}))
    try:
        titles = [ax.get_title() for ax in fig.axes]
        assert titles == ["multiple choice (bars: 95% CI or ± std over seeds)", "fill-in-the-blank"]
        assert "open dialogue" in " ".join(t.get_text() for t in fig.texts)  # named as not shown
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_a_rerun_keeps_the_stage_timings(tmp_path):
    from diabetica_jax.pipeline.run import Stage

    stage = Stage(tmp_path, "data", "abc")
    stage.begin()
    stage.finish({"kept": 3, "seconds": 12.5})
    assert stage.done() and json.loads(stage.marker.read_text())["seconds"] == 12.5
    summary.write_summary(tmp_path, {"stages": {"curate": "skipped (up to date)"}, "seconds": {"curate": 12.5}})
    assert "| curate | skipped (up to date) | 12 |" in (tmp_path / "summary.md").read_text()


def test_without_torch_the_export_check_is_skipped_with_a_note(monkeypatch, caplog):
    import importlib.util

    from diabetica_jax.pipeline import run as run_module
    from diabetica_jax.pipeline.config import load_run_config

    cfg = load_run_config(str(run_module.Path(__file__).resolve().parents[2] / "configs" / "recipes" / "demo.yaml"), [])
    assert cfg.export.verify
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    with caplog.at_level("WARNING"):
        checked = run_module.without_unavailable_checks(cfg)
    assert checked.export.verify is False and "export check skipped" in caplog.text


@pytest.mark.parametrize("skipped", [True, False])
def test_summary_says_whether_transformers_checked_the_export(tmp_path, skipped):
    (tmp_path / "hf").mkdir()
    verify = {"skipped": "export check skipped: no torch"} if skipped else {
        "identical": True, "agreement": 1.0, "prompts": 2, "tokens_per_prompt": 8}
    (tmp_path / "hf" / "verify.json").write_text(json.dumps(verify))
    summary.write_summary(tmp_path, {"stages": {}, "seconds": {}})
    text = (tmp_path / "summary.md").read_text()
    assert ("export check skipped" in text) is skipped and ("identical to the JAX engine" in text) is not skipped
