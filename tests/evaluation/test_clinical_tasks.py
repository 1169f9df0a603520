"""The clinical tasks (consult, educate, summarize): word ROUGE and t-intervals by hand, the judge's JSON read
robustly, rubrics, bad rows kept as rejects, and the three tasks end to end with the tiny random model."""

import hashlib
import json
import math

import numpy as np
import pytest
from fake_openai import FakeOpenAI

from diabetica_jax.configuration import FieldError, load_config
from diabetica_jax.demo import BENCHMARK_DIR
from diabetica_jax.evaluation import metrics
from diabetica_jax.evaluation.clinical_data import load_clinical_items
from diabetica_jax.evaluation.config import EvalConfig, TaskSection
from diabetica_jax.evaluation.data import EvalDataError
from diabetica_jax.evaluation.rubric import RubricError, default_rubric_path, load_rubric, parse_ratings
from diabetica_jax.evaluation.runner import evaluate

EMBEDDED = {"consult": "mini_consult.jsonl", "educate": "mini_educate.jsonl", "summarize": "mini_summarize.jsonl"}


# ---------------------------------------------------------------------------------------------- metrics


def test_word_rouge_on_hand_computed_strings():
    # tokens the/cat/sat/on/the/mat vs the/cat/lay/on/the/mat: 5 of 6 unigrams shared (the twice), bigrams
    # the-cat, on-the, the-mat shared of 5 each, LCS the cat on the mat (5)
    scores = metrics.rouge_words("The cat sat on the mat.", "the cat lay on the mat")
    assert scores == pytest.approx({"rouge1": 5 / 6, "rouge2": 3 / 5, "rougeL": 5 / 6})
    # punctuation splits and is dropped, case and full-width forms folded
    assert metrics.rouge_tokens("HbA1c 7.2%, on Metformin!") == ["hba1c", "7", "2", "on", "metformin"]
    assert metrics.rouge_tokens("ＨｂＡ１ｃ") == ["hba1c"]
    assert metrics.rouge_words("HbA1c: 7.2 %", "hba1c 7.2") == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    # each Chinese character is a token: 高血糖 vs 血糖高 share every character, one bigram of two, LCS 血糖
    expected = {"rouge1": 1.0, "rouge2": 0.5, "rougeL": 2 / 3}
    assert metrics.rouge_words("高血糖。", "血糖高") == pytest.approx(expected)
    # reordering costs ROUGE-L and ROUGE-2 but not ROUGE-1; a one-word pair has no bigram
    assert metrics.rouge_words("b a", "a b") == pytest.approx({"rouge1": 1.0, "rouge2": 0.0, "rougeL": 0.5})
    assert metrics.rouge_words("insulin", "insulin")["rouge2"] == 0.0
    for candidate, reference in (("", "insulin"), ("insulin", ""), ("...", "!!")):
        assert metrics.rouge_words(candidate, reference) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}


@pytest.mark.parametrize("df, expected", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (30, 2.0423),
                                          (120, 1.9799), (5000, 1.9604)])
def test_t_critical_values_match_the_tables(df, expected):
    assert metrics.t_critical(df) == pytest.approx(expected, abs=1e-4)


def test_mean_ci95_is_the_student_t_interval():
    summary = metrics.mean_ci95([3, 4, 5, None])  # None: not rated, left out
    half = 4.3027 * 1.0 / math.sqrt(3)  # s = 1, t(0.975, 2) = 4.3027
    assert summary["mean"] == 4.0 and summary["n"] == 3 and summary["std"] == pytest.approx(1.0)
    assert summary["ci95"] == pytest.approx([4.0 - half, 4.0 + half], abs=1e-4)
    assert metrics.mean_ci95([2, 2, 2])["ci95"] == [2.0, 2.0]
    assert metrics.mean_ci95([4]) == {"mean": 4.0, "ci95": None, "n": 1, "std": None}
    assert metrics.mean_ci95([None, None]) == {"mean": None, "ci95": None, "n": 0, "std": None}
    with pytest.raises(ValueError):
        metrics.t_critical(0)


# ------------------------------------------------------------------------------------ rubric and judge replies

CONSULT = ["readability", "relevance", "correctness", "completeness", "safety", "empathy"]


def test_default_rubrics_have_the_papers_dimensions():
    assert load_rubric(default_rubric_path("consult")).names == CONSULT
    assert load_rubric(default_rubric_path("educate")).names == ["correctness", "readability", "helpfulness"]
    summarize = load_rubric(default_rubric_path("summarize"))
    assert summarize.names == ["completeness", "accuracy", "hallucination_free"]
    assert (summarize.low, summarize.high) == (1, 5)
    assert "absent from the note" in summarize.dimensions["hallucination_free"]  # guidance reaches the judge
    assert "#" not in summarize.text()  # comments do not


@pytest.mark.parametrize("reply, expected", [
    ('{"readability": 4, "relevance": 5, "correctness": 3, "completeness": 2, "safety": 5, "empathy": 1}',
     [4, 5, 3, 2, 5, 1]),
    # prose around a fenced block; keys in any case; numeric strings, "4/5", objects with a score
    ('Reasoning first.\n```json\n{"Readability": "4", "RELEVANCE": "5/5", "correctness": {"score": 3, "why": "x"},'
     ' "completeness": 2.5, "safety": 5, "empathy": 1}\n```', [4, 5, 3, 2.5, 5, 1]),
    # out of scale, a bool, text and a missing key: None, never 0 and never clipped
    ('{"readability": 7, "relevance": 0, "correctness": true, "completeness": "n/a", "safety": 5}',
     [None, None, None, None, 5, None]),
    # no JSON object at all, or broken JSON: "name: N" in the text counts
    ("Readability: 4\nRelevance = 3\nsafety: 5/5\nEmpathy 2", [4, 3, None, None, 5, None]),
    ('{"readability": 4, "relevance": 3,}', [4, 3, None, None, None, None]),
    # two objects: the last one naming a dimension is the verdict
    ('draft {"readability": 1} final {"readability": 5, "relevance": 5}', [5, 5, None, None, None, None]),
    ("I cannot rate this.", [None] * 6),
    ("", [None] * 6),
])
def test_judge_ratings_are_read_robustly(reply, expected):
    ratings = parse_ratings(reply, load_rubric(default_rubric_path("consult")))
    assert list(ratings) == CONSULT
    assert list(ratings.values()) == expected


@pytest.mark.parametrize("text, message", [
    ("[clarity]\nclear\n", "no 'scale: LOW-HIGH' line"),
    ("scale: 1-5\n", "no dimension"),
    ("scale: 5-1\n[clarity]\n", "line 1: scale 5-1"),
    ("scale: 1-5\nsome guidance\n[clarity]\n", "line 2: 'some guidance' before the first"),
    ("scale: 1-5\n[Clarity Score]\n", "line 2: '[Clarity Score]' is not a dimension name"),
    ("scale: 1-5\n[clarity]\n[clarity]\n", "line 3: dimension 'clarity' given twice"),
])
def test_bad_rubric_files_name_file_and_line(tmp_path, text, message):
    path = tmp_path / "rubric.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RubricError, match=str(path)) as error:
        load_rubric(path)
    assert message in str(error.value)
    with pytest.raises(RubricError, match="rubric file not found"):
        load_rubric(tmp_path / "missing.txt")


def test_config_takes_a_rubric_and_max_new_tokens_for_clinical_tasks_only():
    EvalConfig(tasks=[TaskSection("consult", ["a.jsonl"], rubric="r.txt", max_new_tokens=8)])
    with pytest.raises(FieldError, match="mcq: a rubric is read by the clinical tasks only"):
        EvalConfig(tasks=[TaskSection("mcq", ["a.csv"], rubric="r.txt")])
    with pytest.raises(FieldError, match="summarize: max_new_tokens must be positive"):
        EvalConfig(tasks=[TaskSection("summarize", ["a.jsonl"], max_new_tokens=0)])


# --------------------------------------------------------------------------------------------- data


def test_the_embedded_items_load_and_say_they_are_synthetic():
    for task, name in EMBEDDED.items():
        items, rejects = load_clinical_items(BENCHMARK_DIR / name, task)
        assert 4 <= len(items) <= 6 and rejects == []
        rows = [json.loads(line) for line in (BENCHMARK_DIR / name).read_text(encoding="utf-8").splitlines()]
        assert all("synthetic, written by diabetica-jax, not for clinical use" in r["source"] for r in rows)
    assert "mini_consult.jsonl" in (BENCHMARK_DIR / "NOTICE.txt").read_text()
    consult, _ = load_clinical_items(BENCHMARK_DIR / EMBEDDED["consult"], "consult")
    assert 0 < sum(i.reference is not None for i in consult) < len(consult)  # some with a physician's answer
    # the MCQ benchmark files serve the educate task as they are
    mcq, _ = load_clinical_items(BENCHMARK_DIR / "mini_mcq.csv", "educate")
    assert all(item.key in item.options and f"\n{item.key}. " in item.text for item in mcq)


def test_bad_rows_become_rejects_naming_file_row_and_field(tmp_path):
    educate = tmp_path / "educate.jsonl"
    rows = [
        {"id": "ok-lines", "question": "Stem one?\nA. x\nB. y", "answer": "B"},
        {"id": "ok-dict", "question": "Stem two?", "options": {"a": "x", "b": "y", "c": "z"}, "key": "答案：C"},
        {"id": "ok-list", "question": "Stem three?", "options": ["x", "y"], "answer": "A：x"},
        {"id": "no-key", "question": "Stem?\nA. x\nB. y"},
        {"id": "blank-question", "question": "  ", "answer": "A"},
        {"id": "key-outside", "question": "Stem?\nA. x\nB. y", "answer": "D"},
        {"id": "no-options", "question": "Stem without options?", "answer": "A"},
        {"id": "one-option", "question": "Stem?", "options": ["only"], "answer": "A"},
    ]
    educate.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken json\n", encoding="utf-8")
    items, rejects = load_clinical_items(educate, "educate")
    assert [i.id for i in items] == ["ok-lines", "ok-dict", "ok-list"]
    assert [i.key for i in items] == ["B", "C", "A"] and items[1].options == {"A": "x", "B": "y", "C": "z"}
    assert [(r.row, r.field) for r in rejects] == [(3, "answer"), (4, "question"), (5, "answer"),
                                                   (6, "question"), (7, "options"), (8, None)]
    assert all(r.file == str(educate) for r in rejects)
    reasons = [r.reason for r in rejects]
    assert "no 'answer' or 'key' in this row" in reasons[0] and reasons[1] == "empty 'question'"
    assert "answer letter D is not among" in reasons[2] and reasons[5].startswith("bad JSON")
    assert str(rejects[1]) == f"{educate}: row 4: 'question': empty 'question'"

    summarize = tmp_path / "notes.csv"
    summarize.write_text("note,summary\nA note.,A summary.\n,orphan summary\nSecond note.,\n", encoding="utf-8")
    items, rejects = load_clinical_items(summarize, "summarize")
    assert [(i.text, i.reference) for i in items] == [("A note.", "A summary."), ("Second note.", None)]
    assert [(r.row, r.field, r.reason) for r in rejects] == [(1, "note", "empty 'note'")]

    nothing = tmp_path / "consult.csv"
    nothing.write_text("query,reference\nhello,hi\n,\n", encoding="utf-8")
    with pytest.raises(EvalDataError, match=rf"{nothing}: no usable consult row \(needs 'question'\); 2 rejected: "
                                            r"row 0: 'question': no 'question' in this row"):
        load_clinical_items(nothing, "consult")


# ------------------------------------------------------------------------------------------ end to end


def _rating(text: str, dimension: str, low: int = 1, high: int = 5) -> int:
    """A fixed, text-dependent rating: the fake judge's ratings vary over items, so intervals have width."""
    digest = hashlib.sha256(f"{dimension}|{text}".encode()).digest()
    return low + digest[0] % (high - low + 1)


def _rated_text(message: str) -> str:
    return message.split("<<<\n", 1)[1].split("\n>>>", 1)[0]


def _fake_judge(dimensions: dict[str, list[str]], skip=None):
    """A judge replying with JSON ratings of every dimension its prompt names; `skip(message)` names a
    dimension to leave out of the reply (an unparsed one)."""
    def reply(messages, model):
        message = messages[-1]["content"]
        task = next(t for t, words in (("summarize", "Clinical note:"), ("educate", "Exam question:"),
                                        ("consult", "Patient's question:")) if words in message)
        left_out = skip(message) if skip else None
        ratings = {d: _rating(_rated_text(message), d) for d in dimensions[task] if d != left_out}
        return "Rated against the rubric.\n" + json.dumps(ratings)
    return reply


DIMENSIONS = {task: load_rubric(default_rubric_path(task)).names for task in EMBEDDED}


def _check_group(stats: dict, values_by_dimension: dict):
    """A group's per-dimension stats against values recomputed from the items (scipy's t for the interval)."""
    from scipy import stats as scipy_stats

    for dimension, values in values_by_dimension.items():
        scored = [v for v in values if v is not None]
        entry = stats[dimension]
        assert (entry["n_scored"], entry["n_unparsed"]) == (len(scored), len(values) - len(scored))
        assert entry["mean"] == pytest.approx(np.mean(scored))
        if len(scored) > 1:
            half = scipy_stats.t.ppf(0.975, len(scored) - 1) * np.std(scored, ddof=1) / math.sqrt(len(scored))
            assert entry["ci95"] == pytest.approx([np.mean(scored) - half, np.mean(scored) + half])
            assert entry["ci95"][0] <= entry["mean"] <= entry["ci95"][1]


@pytest.mark.slow
def test_the_three_clinical_tasks_end_to_end_with_the_tiny_model(tmp_path):
    skip = lambda message: "empathy" if "religious holiday" in message else None  # noqa: E731
    with FakeOpenAI(_fake_judge(DIMENSIONS, skip)) as judge:
        sections = ", ".join(f"{{task: {task}, files: ['embedded:{name}'], max_new_tokens: 3}}"
                             for task, name in EMBEDDED.items())
        cfg = load_config(EvalConfig, None, [f"tasks=[{sections}]", "judge.backend=openai",
                                             f"judge.base_url={judge.base_url}", "judge.model=judge"])
        result = evaluate(cfg, tmp_path, progress=False)
    references = {task: [i.reference for i in load_clinical_items(BENCHMARK_DIR / name, task)[0]]
                  for task, name in EMBEDDED.items()}
    # one judge call per text rated: every model output, and every reference of consult and summarize
    assert len(judge.requests) == sum(len(refs) + (task != "educate") * sum(r is not None for r in refs)
                                      for task, refs in references.items())
    for task in EMBEDDED:
        report = json.loads((tmp_path / f"report_{task}.json").read_text())
        items = report["items"]
        assert report["n_items"] == len(items) == len(references[task]) and report["n_failed"] == 0
        assert report["dimensions"] == DIMENSIONS[task] and report["scale"] == [1, 5]
        assert report["decoding"]["max_new_tokens"] == 3
        assert report["n_rejected"] == 0 and (tmp_path / f"rejects_{task}.jsonl").read_text() == ""
        assert report["plot"] == f"clinical_{task}.png" and (tmp_path / report["plot"]).stat().st_size > 0
        assert result["tasks"][task]["n_items"] == len(items) and "rejects" not in result["tasks"][task]
        model_group = "all" if task == "educate" else "model"
        _check_group(report["ratings"][model_group], {d: [i["ratings"][d] for i in items] for d in DIMENSIONS[task]})
        for item in items:  # the judge's reply is read back into each dimension
            assert all(item["ratings"][d] in (None, _rating(item["output"], d)) for d in DIMENSIONS[task])
        means = [s["mean"] for s in report["ratings"][model_group].values()]
        assert report["overall_mean"] == pytest.approx(np.mean(means))
        assert report["per_seed"][0]["overall_mean"] == report["overall_mean"]
    consult = json.loads((tmp_path / "report_consult.json").read_text())
    # the left-out dimension is unparsed (None), not zero, and is counted
    holiday = next(i for i in consult["items"] if "religious holiday" in i["prompt"])
    assert holiday["ratings"]["empathy"] is None and holiday["judge_status"] == "unparsed: empathy"
    assert consult["ratings"]["model"]["empathy"]["n_unparsed"] == 1 and consult["n_unparsed"] == 1
    # model vs reference: the references rated blind, the same way, their paired difference beside them
    with_reference = [i for i in consult["items"] if i["reference"] is not None]
    assert consult["n_with_reference"] == len(with_reference) > 0
    _check_group(consult["ratings"]["reference"], {d: [i["reference_ratings"][d] for i in with_reference]
                                                   for d in CONSULT})
    for d in CONSULT:
        pairs = [i["ratings"][d] - i["reference_ratings"][d] for i in with_reference if i["ratings"][d] is not None]
        assert consult["difference"][d]["n_pairs"] == len(pairs)
        assert consult["difference"][d]["mean"] == pytest.approx(np.mean(pairs))
    assert all(i["reference_judge_status"] == "no reference" for i in consult["items"] if i["reference"] is None)
    educate = json.loads((tmp_path / "report_educate.json").read_text())
    statuses = [i["key_status"] for i in educate["items"]]
    assert (educate["right_key"], educate["wrong_key"], educate["no_key"]) == (
        statuses.count("right"), statuses.count("wrong"), statuses.count("no letter"))
    assert all((i["picked"] == i["key"]) == (i["key_status"] == "right") for i in educate["items"])
    summarize = json.loads((tmp_path / "report_summarize.json").read_text())
    scored = [i for i in summarize["items"] if i["reference"] is not None]
    for item in scored:
        assert {k: item[k] for k in ("rouge1", "rouge2", "rougeL")} == metrics.rouge_words(item["output"],
                                                                                          item["reference"])
    assert summarize["rouge"]["rougeL"]["n"] == len(scored)
    assert summarize["rougeL"] == pytest.approx(np.mean([i["rougeL"] for i in scored]))
    markdown = (tmp_path / "summary.md").read_text()
    assert "| dimension | model | reference | model - reference (paired) |" in markdown
    assert "| dimension | all items | right-key items |" in markdown and "wrong-key rate" in markdown
    assert "ROUGE F1 over word tokens" in markdown and "MCQ acc." not in markdown  # no paper task, no paper table


def _scripted_model(messages, model):
    """The model under test behind an endpoint, with fixed replies: educate picks by the item's id word."""
    prompt = messages[-1]["content"]
    if "Begin with the line" in prompt:
        if "Stem right" in prompt:
            return "Answer: B\nB is right because..."
        if "Stem wrong" in prompt:
            return "答案：A。因为..."
        return "Because insulin... (no letter committed to)"
    return "A plain answer."


def test_wrong_keys_rejects_a_user_rubric_and_judge_failures_through_the_runner(tmp_path):
    user = tmp_path / "exam.csv"
    user.write_text('question,answer\n"Stem right 1\nA. x\nB. y",B\n"Stem right 2\nA. x\nB. y\nC. z",B\n'
                    '"Stem wrong\nA. x\nB. y",B\n"Stem none\nA. x\nB. y",A\n"Stem bad key\nA. x\nB. y",E\n'
                    ',A\n', encoding="utf-8")
    rubric = tmp_path / "my_rubric.txt"
    rubric.write_text("# mine\nscale: 0-10\n[clarity]\nclear?\n[warmth]\nkind?\n", encoding="utf-8")
    questions = tmp_path / "questions.jsonl"
    questions.write_text(json.dumps({"question": "Is this fine?", "reference": "Yes, physician says."}) + "\n"
                         + json.dumps({"question": "Make the judge fail"}) + "\n", encoding="utf-8")

    def reply(messages, model):
        if model == "mut":
            return _scripted_model(messages, model)
        message = messages[-1]["content"]
        if "Make the judge fail" in message:
            return 400  # not retried: the judge's failure is recorded, the run goes on
        if "Exam question:" in message:
            return json.dumps({d: _rating(_rated_text(message), d) for d in DIMENSIONS["educate"]})
        return json.dumps({"clarity": 10 if "physician" in message else 3, "warmth": 11})  # 11: off the scale

    with FakeOpenAI(reply) as server:
        overrides = ["model.path=openai:mut", f"endpoint.base_url={server.base_url}", "judge.backend=openai",
                     f"judge.base_url={server.base_url}", "judge.model=judge", "judge.retries=1",
                     f"tasks=[{{task: educate, files: [{json.dumps(str(user))}]}}, "
                     f"{{task: consult, files: [{json.dumps(str(questions))}], rubric: {json.dumps(str(rubric))}}}]"]
        result = evaluate(load_config(EvalConfig, None, overrides), tmp_path / "out", progress=False)
    out = tmp_path / "out"
    educate = json.loads((out / "report_educate.json").read_text())
    assert [i["key_status"] for i in educate["items"]] == ["right", "right", "wrong", "no letter"]
    assert (educate["right_key"], educate["wrong_key"], educate["no_key"]) == (2, 1, 1)
    assert educate["wrong_key_rate"] == 0.25
    assert educate["wrong_key_rate_ci95"] == pytest.approx(list(metrics.wilson_interval(1, 4)))
    right = [i for i in educate["items"] if i["key_status"] == "right"]
    _check_group(educate["ratings"]["right_key"], {d: [i["ratings"][d] for i in right] for d in DIMENSIONS["educate"]})
    assert educate["ratings"]["right_key"]["correctness"]["n_scored"] == 2
    assert educate["ratings"]["all"]["correctness"]["n_scored"] == 4
    # the bad rows: in the report and in OUT/rejects_educate.jsonl, with file, row, field and reason
    rejects = [json.loads(line) for line in (out / "rejects_educate.jsonl").read_text().splitlines()]
    assert rejects == educate["rejects"] and educate["n_rejected"] == 2 == result["tasks"]["educate"]["n_rejected"]
    assert [(r["file"], r["row"], r["field"]) for r in rejects] == [(str(user), 4, "answer"),
                                                                    (str(user), 5, "question")]
    assert "answer letter E is not among" in rejects[0]["reason"]
    # the user's rubric: its dimensions and scale in the judge's prompt and the report
    consult = json.loads((out / "report_consult.json").read_text())
    assert consult["dimensions"] == ["clarity", "warmth"] and consult["scale"] == [0, 10]
    assert consult["rubric"] == str(rubric)
    judged = [r["messages"][-1]["content"] for r in server.requests if r["model"] == "judge"]
    assert any('{"clarity": <0-10>, "warmth": <0-10>}' in m and "clear?" in m for m in judged)
    assert consult["ratings"]["model"]["clarity"]["mean"] == 3.0
    assert consult["ratings"]["reference"]["clarity"]["mean"] == 10.0
    assert consult["ratings"]["model"]["warmth"] == {"mean": None, "ci95": None, "n_scored": 0, "n_unparsed": 1}
    assert consult["difference"]["clarity"] == {"mean": -7.0, "ci95": None, "n_pairs": 1}
    failed = next(i for i in consult["items"] if "judge fail" in i["prompt"])
    assert failed["judge_status"].startswith("failed: ") and failed["ratings"] == {"clarity": None, "warmth": None}
    assert consult["n_judge_failed"] == 1 and consult["n_judged"] == 1


def test_without_a_judge_the_counts_and_rouge_remain(tmp_path):
    with FakeOpenAI(_scripted_model) as server:
        overrides = ["model.path=openai:mut", f"endpoint.base_url={server.base_url}",
                     "tasks=[{task: summarize, files: ['embedded:mini_summarize.jsonl']}, "
                     "{task: educate, files: ['embedded:mini_mcq.csv'], limit: 3}]"]
        result = evaluate(load_config(EvalConfig, None, overrides), tmp_path, progress=False)
    summarize, educate = result["tasks"]["summarize"], result["tasks"]["educate"]
    assert summarize["judge"] is None and summarize["n_judged"] == 0 and summarize["overall_mean"] is None
    assert all(s["mean"] is None and s["n_scored"] == 0 for s in summarize["ratings"]["model"].values())
    assert summarize["rouge"]["rouge1"]["n"] == summarize["n_with_reference"] > 0
    assert summarize["plot"] == "clinical_summarize.png"  # the ROUGE panel alone
    assert educate["n_items"] == 3 and educate["no_key"] == 3 and educate["plot"] is None  # nothing to draw
    assert "Not judged (judge.backend: none)" in (tmp_path / "summary.md").read_text()
