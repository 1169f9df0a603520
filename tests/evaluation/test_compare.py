"""The comparison report: hand-written report.json files laid out in the paper's table, markdown, JSON and plot."""

import json

import pytest

from diabetica_jax.evaluation import compare

PUBLISHED = {"mcq_pooled_accuracy_pct": {"Model-X": 80.5, "Model-Y": 60.0, "Model-Z": 12.0},
             "dialog_gpt4_judge_mean": {"Model-X": 7.5, "Model-Y": 6.1}}


def _mcq(acc, n, ci=None, **extra):
    return {"n_items": n, "accuracy": acc, "accuracy_ci95": ci or [acc - 0.05, acc + 0.05],
            "loglik_accuracy": acc - 0.1, **extra}


def _write(path, report):
    path.mkdir(parents=True, exist_ok=True)
    (path / "report.json").write_text(json.dumps(report), encoding="utf-8")
    return path / "report.json"


@pytest.fixture
def runs(tmp_path):
    own = {"model": "tiny-own", "mode": "own",
           "tasks": {"mcq": {**_mcq(0.6, 200, [0.53, 0.665]),
                             "per_file": {"ZhiCheng_MCQ_A1.csv": _mcq(0.7, 100), "ZhiCheng_MCQ_A2.csv": _mcq(0.5, 100)}},
                     "cloze": {"n_items": 10, "rouge1": 0.41, "rouge2": 0.22, "rougeL": 0.39, "bleu": 0.18,
                               "bleu_char": 0.27, "bleu_kind": "bleu_char",
                               "bertscore_f1": "not computed (no local BERT model given)"},
                     "dialog": {"n_items": 5, "mean_score": 6.4, "n_scored": 4, "mean_score_own": 6.4,
                                "mean_score_original": 6.0}},
           "published": PUBLISHED}
    per_seed = [{"seed": s, "accuracy": a, "loglik_accuracy": 0.5} for s, a in ((0, 0.70), (1, 0.74), (2, 0.72))]
    faithful = {"model": "tiny-faithful", "mode": "faithful", "seeds": [0, 1, 2],
                "decoding": {"temperature": 0.7, "top_p": 0.9},
                "tasks": {"mcq": {**_mcq(0.70, 200), "per_seed": per_seed,
                                  "seed_stats": {"accuracy": {"mean": 0.72, "std": 0.02, "n": 3}},
                                  "per_file": {"ZhiCheng_MCQ_A1.csv": _mcq(0.8, 100),
                                               "ZhiCheng_MCQ_A2.csv": _mcq(0.6, 100)}},
                          "cloze": {"n_items": 10, "rouge1": 0.5, "rouge2": 0.3, "rougeL": 0.45, "bleu": 0.2,
                                    "bertscore_f1": 0.81},
                          "dialog": {"n_items": 5, "mean_score": None, "n_scored": 0}},
                "published": PUBLISHED}
    api = {"model": "api-model", "mode": "faithful",
           "tasks": {"mcq": {**_mcq(0.85, 200, [0.79, 0.89]), "loglik_accuracy": "not available",
                             "per_file": {"ZhiCheng_MCQ_A1.csv": {**_mcq(0.9, 100), "loglik_accuracy": "not available"},
                                          "ZhiCheng_MCQ_A2.csv": {**_mcq(0.8, 100),
                                                                  "loglik_accuracy": "not available"}}}},
           "published": PUBLISHED}
    root = tmp_path / "eval"
    paths = [_write(root / "own", own), _write(root / "runs" / "faithful", faithful), _write(tmp_path / "api", api)]
    protocol = tmp_path / "protocol.json"
    protocol.write_text(json.dumps({"source": "test", "published_results": PUBLISHED}), encoding="utf-8")
    return root, paths, protocol


def _by_model(rows):
    return {(r["model"], r["mode"]): r for r in rows}


def test_load_reports_finds_reports_one_or_two_levels_down(runs, tmp_path):
    root, paths, _ = runs
    reports = compare.load_reports([root, paths[2]])
    assert [r["model"] for r in reports] == ["tiny-own", "tiny-faithful", "api-model"]
    assert reports[0]["_path"] == str(paths[0])
    assert [r["model"] for r in compare.load_reports(paths[0].parent)] == ["tiny-own"]


def test_directory_without_report_is_a_clear_error(tmp_path):
    empty = tmp_path / "nothing_here"
    (empty / "sub").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="nothing_here.*no report.json"):
        compare.load_reports([empty])
    with pytest.raises(FileNotFoundError, match="missing"):
        compare.load_reports([tmp_path / "missing"])
    bad = tmp_path / "bad" / "report.json"
    bad.parent.mkdir()
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad"):
        compare.load_reports([bad])


def test_table_rows(runs):
    root, paths, protocol = runs
    rows = compare.comparison_table(compare.load_reports(paths), compare.load_published(protocol))
    assert [r["published"] for r in rows] == [False] * 3 + [True] * 3
    assert all(set(r) == set(compare.COLUMNS) for r in rows)
    t = _by_model(rows)

    own = t["tiny-own", "own"]
    assert own["mcq_pooled_pct"] == pytest.approx(60.0)
    assert own["mcq_a1_pct"] == pytest.approx(70.0) and own["mcq_a2_pct"] == pytest.approx(50.0)
    assert own["mcq_pooled_ci95_pct"] == pytest.approx([53.0, 66.5]) and own["mcq_pooled_std_pct"] is None
    assert own["mcq_loglik_pct"] == pytest.approx(50.0)
    assert own["cloze_rougeL"] == 0.39 and own["cloze_bleu_char"] == 0.27
    assert own["cloze_bertscore_f1"] is None and "not computed" in own["cloze_bertscore_note"]
    assert (own["dialog_mean"], own["dialog_n_scored"], own["dialog_n_items"]) == (6.4, 4, 5)
    assert own["dialog_mean_original_rule"] == 6.0 and own["cloze_bleu_kind"] == "bleu_char"

    faithful = t["tiny-faithful", "faithful"]
    assert faithful["mcq_pooled_pct"] == pytest.approx(72.0) and faithful["mcq_pooled_std_pct"] == pytest.approx(2.0)
    assert faithful["n_seeds"] == 3 and faithful["seeds"] == [0, 1, 2]
    assert faithful["mcq_a1_pct"] == pytest.approx(80.0) and faithful["mcq_a1_std_pct"] is None
    assert faithful["mcq_a2_pct"] == pytest.approx(60.0)
    assert faithful["cloze_bertscore_f1"] == 0.81 and faithful["dialog_mean"] is None

    api = t["api-model", "faithful"]
    assert api["mcq_pooled_pct"] == pytest.approx(85.0) and api["mcq_loglik_pct"] is None
    assert api["cloze_rouge1"] is None and api["dialog_mean"] is None

    pub = [r for r in rows if r["published"]]
    assert [r["model"] for r in pub] == ["Model-X", "Model-Y", "Model-Z"]
    assert all(r["mode"] == "published" for r in pub)
    assert t["Model-X", "published"]["mcq_pooled_pct"] == 80.5 and t["Model-X", "published"]["dialog_mean"] == 7.5
    assert t["Model-Z", "published"]["dialog_mean"] is None
    assert all(r["mcq_a1_pct"] is None and r["cloze_rouge1"] is None for r in pub)  # only published columns


def test_the_spread_over_seeds_is_the_runners():
    """The runner's own seed_stats of per-seed figures become the row's mean and std."""
    from diabetica_jax.evaluation.pooling import seed_stats

    per_seed = [{"seed": 42, "accuracy": 0.5}, {"seed": 43, "accuracy": 0.7}]
    report = {"model": "m", "mode": "faithful", "seeds": [42, 43],
              "tasks": {"mcq": {"n_items": 10, "accuracy": 0.5, "accuracy_ci95": [0.2, 0.8], "per_seed": per_seed,
                                "seed_stats": seed_stats(per_seed, ["accuracy"])}}}
    (row,) = compare.comparison_table([report], {})
    assert (row["n_seeds"], row["seeds"], row["mcq_pooled_pct"]) == (2, [42, 43], pytest.approx(60.0))
    assert row["mcq_pooled_std_pct"] == pytest.approx(14.142, abs=1e-3)
    one = {**report, "seeds": [42], "tasks": {"mcq": {"n_items": 10, "accuracy": 0.5, "accuracy_ci95": [0.2, 0.8]}}}
    (row,) = compare.comparison_table([one], {})  # one seed: the figure with its interval, no spread
    assert row["mcq_pooled_pct"] == pytest.approx(50.0) and row["mcq_pooled_std_pct"] is None


def test_published_default_comes_from_reports(runs):
    _, paths, _ = runs
    reports = compare.load_reports(paths)
    assert sum(r["published"] for r in compare.comparison_table(reports, None)) == 3
    assert sum(r["published"] for r in compare.comparison_table(reports, {})) == 0


def test_markdown_and_files(runs, tmp_path):
    root, paths, protocol = runs
    out = tmp_path / "cmp"
    result = compare.write_comparison([root, paths[2].parent], out, str(protocol))
    md = (out / "comparison.md").read_text(encoding="utf-8")
    for text in ("| tiny-own | own | 70.0 | 50.0 | 60.0 [53.0–66.5] |", "72.0 ± 2.0 (n=3)",
                 "| api-model | faithful | 90.0 | 80.0 | 85.0 [79.0–89.0] |", "Model-X *(published)*",
                 "| Model-X *(published)* | published | – | – | 80.5 |", "6.40 (4/5)", "not judged (0/5)", "n/c",
                 "seeds 0, 1, 2", "BLEU (char)", "cloze BLEU is bleu_char", "MCQ log-lik %", "0.390", "0.810"):
        assert text in md, text
    data = json.loads((out / "comparison.json").read_text())
    assert len(data["rows"]) == 6 and data["rows"][0]["model"] == "tiny-own"
    assert result["plot"] == str(out / "comparison.png")
    png = (out / "comparison.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000


def test_plot_never_raises_on_odd_rows(tmp_path):
    odd = [{"model": "a", "mode": "own", "mcq_pooled_pct": 50.0, "mcq_pooled_ci95_pct": [60.0, 40.0]},  # inverted CI
           {"model": "b", "mode": "own", "mcq_pooled_pct": float("nan"), "dialog_mean": "x"},
           {"model": "c", "mode": "own", "mcq_pooled_pct": 30.0, "mcq_pooled_std_pct": -4.0, "dialog_mean": 5.0,
            "dialog_std": -1.0}]
    assert compare.comparison_plot(odd, tmp_path / "odd.png") is True
    assert compare.comparison_plot([], tmp_path / "empty.png") is True
    assert compare.comparison_plot([None], tmp_path / "broken.png") is False  # logged, not raised
    md = compare.comparison_markdown(odd)
    assert md.count("\n| ") == 4 and "30.0 ± 4.0" in md  # header + 3 rows; a negative std shows as its size


@pytest.mark.shared
def test_merges_real_published_rows(runs, tmp_path):
    from benchmark_files import DIABETICA

    _, paths, _ = runs
    protocol = DIABETICA / "protocol.json"
    published = json.loads(protocol.read_text(encoding="utf-8"))["published_results"]
    models = set(published["mcq_pooled_accuracy_pct"]) | set(published["dialog_gpt4_judge_mean"])
    result = compare.write_comparison(paths, tmp_path / "cmp", str(protocol))
    pub = [r for r in result["rows"] if r["published"]]
    assert len(pub) == len(models) and {r["model"] for r in pub} == models
    for r in pub:
        assert r["mcq_pooled_pct"] == published["mcq_pooled_accuracy_pct"].get(r["model"])
        assert r["dialog_mean"] == published["dialog_gpt4_judge_mean"].get(r["model"])
    md = (tmp_path / "cmp" / "comparison.md").read_text(encoding="utf-8")
    assert all(f"| {m} *(published)* |" in md for m in models)


def test_same_model_in_two_runs_is_labelled_by_directory(tmp_path):
    report = {"model": "Qwen2-0.5B", "mode": "own", "tasks": {"mcq": _mcq(0.5, 10)}}
    _write(tmp_path / "eval" / "base", report)
    _write(tmp_path / "eval" / "trained", {**report, "tasks": {"mcq": _mcq(0.6, 10)}})
    md = compare.comparison_markdown(compare.comparison_table(compare.load_reports([tmp_path / "eval"]), {}))
    assert "| Qwen2-0.5B (base) | own |" in md and "| Qwen2-0.5B (trained) | own |" in md
