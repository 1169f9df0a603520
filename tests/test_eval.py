"""Evaluation: metrics by hand, the A1 file end to end, a fake judge, and clear data errors."""

import json

import pytest
from conftest import DIABETICA
from fake_openai import FakeOpenAI

from diabetica_jax.configuration import load_config
from diabetica_jax.evaluation import metrics
from diabetica_jax.evaluation.config import EvalConfig
from diabetica_jax.evaluation.data import EvalDataError, load_items
from diabetica_jax.evaluation.judge import parse_score_first_digit
from diabetica_jax.evaluation.runner import evaluate


def test_metrics_on_hand_computed_cases():
    assert metrics.wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert metrics.rouge_n("高血糖", "血糖高", 1) == 1.0
    assert metrics.rouge_n("高血糖", "血糖高", 2) == pytest.approx(0.5)  # bigrams {高血, 血糖} vs {血糖, 糖高}
    assert metrics.rouge_l("高血糖", "血糖高") == pytest.approx(2 / 3)  # LCS 血糖
    assert metrics.rouge_l("体重 减轻", "体重减轻") == 1.0  # whitespace does not count
    assert metrics.bleu("高血糖", "高血糖") == pytest.approx(0.5757, abs=1e-4)  # short: smoothing method 4
    assert metrics.bleu("胰岛素", "高血糖") == 0.0


@pytest.mark.parametrize("reply, own, first_digit", [
    ("Reasons...\nScore: 8", 8.0, 8.0),
    ("I'd give it 8/10.", 8.0, None),
    ("评分：7.5分", 7.5, None),
    ("Score: 7.5", 7.5, 7.0),
    ("Score: 10", 10.0, 10.0),
    ("Score: 12", None, 1.0),
    ("The answer is fine.", None, None),
])
def test_judge_score_parsing(reply, own, first_digit):
    assert metrics.parse_score(reply) == own
    assert parse_score_first_digit(reply) == first_digit


@pytest.mark.shared
def test_mcq_a1_end_to_end_in_faithful_mode(tmp_path):
    cfg = load_config(EvalConfig, None, [
        "mode=faithful", f"protocol={DIABETICA / 'protocol.json'}", f"data_dir={DIABETICA}",
        "tasks=[{task: mcq, files: [ZhiCheng_MCQ_A1.csv]}]", "batch_size=32"])
    result = evaluate(cfg, tmp_path, progress=False)
    report = json.loads((tmp_path / "report_mcq.json").read_text())
    assert report["n_items"] == 235 and len(report["items"]) == 235
    assert all(item["answer"] in "ABCDE" and len(item["answer"]) == 1 for item in report["items"])
    assert sum(item["answer"] == "E" for item in report["items"]) > 10
    assert report["accuracy"] == sum(i["correct"] for i in report["items"]) / 235
    low, high = report["accuracy_ci95"]
    assert low <= report["accuracy"] <= high
    assert report["items"][0]["prompt"].endswith("不要输出汉字。")  # the protocol's prompt, not ours
    assert result["published"]["mcq_pooled_accuracy_pct"]["Diabetica-7B"] == 87.2
    for name in ("report.json", "summary.md", "comparison.png"):
        assert (tmp_path / name).is_file()


def _judge(messages, model):
    prompt = messages[-1]["content"]
    if "手抖" in prompt:
        return ("sleep", 2.0, "Score: 9")  # slower than the judge timeout
    if "眼底" in prompt:
        return "The answer is acceptable overall."  # no score
    if "feet" in prompt:
        return "Reasonable.\n6/10"
    return "Covers the rules.\nScore: 8"


def test_dialog_with_a_fake_judge(tmp_path):
    with FakeOpenAI(_judge) as server:
        overrides = ["tasks=[{task: dialog, files: ['embedded:mini_dialog.jsonl']}]", "judge.backend=openai",
                     f"judge.base_url={server.base_url}", "judge.model=judge", "judge.timeout=0.5", "judge.retries=1"]
        result = evaluate(load_config(EvalConfig, None, overrides), tmp_path, progress=False)
        first_calls = len(server.requests)
    dialog = result["tasks"]["dialog"]
    assert (dialog["n_items"], dialog["n_scored"], dialog["n_unparsed"], dialog["n_failed"]) == (4, 2, 1, 1)
    assert dialog["mean_score"] == pytest.approx((8 + 6) / 2)
    items = json.loads((tmp_path / "report_dialog.json").read_text())["items"]
    unparsed = next(i for i in items if i["judge_status"] == "unparsed")
    assert unparsed["score"] is None and "acceptable" in unparsed["judge_reply"]
    assert first_calls == 4
    # a rerun asks the judge only about what is still missing (the timed-out item)
    with FakeOpenAI(_judge) as server:
        overrides = [o if "base_url" not in o else f"judge.base_url={server.base_url}" for o in overrides]
        evaluate(load_config(EvalConfig, None, overrides), tmp_path, progress=False)
        assert len(server.requests) == 1


def test_bad_benchmark_files_name_file_and_row(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("question,answer\n\"Question: x\nOption A: a\nOption B: b\",C：c\n", encoding="utf-8")
    with pytest.raises(EvalDataError, match=rf"{bad}: row 0: answer letter C is not among"):
        load_items(bad, "mcq")
    bad.write_text("question,answer\n\"Question: x\nOption A: a\nOption B: b\",\n", encoding="utf-8")
    with pytest.raises(EvalDataError, match=rf"{bad}: row 0: empty 'answer'"):
        load_items(bad, "mcq")
    bad.write_text("stem,key\nx,A\n", encoding="utf-8")
    with pytest.raises(EvalDataError, match=r"missing column 'question'"):
        load_items(bad, "mcq")


@pytest.mark.shared
def test_the_dialogue_workbook_reads_with_rules_and_references():
    items = load_items(DIABETICA / "120_benchmark.xlsx", "dialog")
    assert len(items) == 120 and items[0].answer.startswith("1.") and items[0].reference


def test_wilson_interval_contains_the_estimate_at_0_and_100_percent():
    # float rounding once put the 0% lower bound at 3e-17 (n=11) and the 100% upper bound at
    # 0.9999999999999999 (n=6): both outside the point estimate
    for total in range(1, 301):
        low, high = metrics.wilson_interval(0, total)
        assert low == 0.0 < high, total
        low, high = metrics.wilson_interval(total, total)
        assert low < high == 1.0, total


def _mcq_run(name, correct, total):
    from diabetica_jax.evaluation.tasks import mcq_metrics

    results = [{"correct": i < correct, "loglik_correct": i < correct, "prediction": "A"} for i in range(total)]
    return {"model": name, "mode": "own", "tasks": {"mcq": mcq_metrics(results)},
            "published": {"mcq_pooled_accuracy_pct": {"Diabetica-7B": 87.2}}}


@pytest.mark.parametrize("correct, total", [(0, 11), (6, 6), (0, 235), (77, 77)])
def test_comparison_plot_of_an_all_wrong_or_all_right_model(tmp_path, correct, total):
    from diabetica_jax.evaluation.runner import compare_plot

    run = _mcq_run("m", correct, total)
    low, high = run["tasks"]["mcq"]["accuracy_ci95"]
    assert low <= run["tasks"]["mcq"]["accuracy"] <= high
    assert compare_plot([run], tmp_path / "comparison.png") is True
    assert (tmp_path / "comparison.png").stat().st_size > 0


def test_a_failing_plot_is_logged_not_raised(tmp_path, caplog):
    from diabetica_jax.evaluation.runner import compare_plot

    run = _mcq_run("m", 3, 10)
    run["tasks"]["mcq"]["accuracy_ci95"] = (0.9, 0.1)  # an interval that misses its estimate: clipped, drawn
    assert compare_plot([run], tmp_path / "clipped.png") is True
    run["tasks"]["mcq"]["accuracy_ci95"] = None  # not an interval at all: logged, no exception
    with caplog.at_level("ERROR"):
        assert compare_plot([run], tmp_path / "broken.png") is False
    assert "comparison plot" in caplog.text and not (tmp_path / "broken.png").exists()
