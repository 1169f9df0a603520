"""Curation's `pairs` stage: the base model's wrong replies become rejected sides, counted on the data card."""

import csv
import json

import pytest
from fake_openai import FakeOpenAI

from diabetica_jax.configuration import FieldError
from diabetica_jax.curate.benchmarks import load_benchmark_items
from diabetica_jax.curate.config import PairsSection, load_curate_config
from diabetica_jax.curate.pairs import wrong_reply
from diabetica_jax.curate.pipeline import curate
from diabetica_jax.data.pair_files import read_pairs
from diabetica_jax.data.records import Record
from diabetica_jax.demo import BENCHMARK_DIR

MCQS = [  # (question, key): the fake base model always answers B
    ("Which drug is first-line for type 2 diabetes mellitus?\nA. Metformin\nB. Insulin glargine\nC. Acarbose\n"
     "D. Sitagliptin", "A"),
    ("Which test reflects average blood glucose over the past three months?\nA. Fasting glucose\nB. HbA1c\n"
     "C. Fructosamine\nD. C-peptide", "B"),
    ("Which complication of diabetes is screened for with a yearly dilated eye exam?\nA. Neuropathy\n"
     "B. Nephropathy\nC. Retinopathy\nD. Gastroparesis", "C"),
]
QAS = [  # question -> the fake's reply: a copy of the reference, a reply with a number the reference lacks,
    # a reply that echoes an embedded benchmark item (decontaminated), and a failing request
    ("How should insulin pens in use be stored by a patient with diabetes?",
     "Insulin pens in use can be kept at room temperature below 30 degrees for up to four weeks, away from sunlight."),
    ("What blood glucose level defines hypoglycaemia in diabetes treatment?",
     "In diabetes treatment hypoglycaemia is a blood glucose below 3.9 mmol/L, treated with fast-acting sugar."),
    ("How often should a person with type 2 diabetes have their kidney function checked?",
     "A person with type 2 diabetes should have kidney function (eGFR and urine albumin) checked at least yearly."),
    ("Why is foot care important for people with diabetes and neuropathy?",
     "Neuropathy in diabetes hides small foot injuries, which can ulcerate; daily inspection prevents amputation."),
]


def _benchmark_question() -> str:
    return load_benchmark_items(BENCHMARK_DIR / "mini_mcq.csv")[0].text


def _base_model(messages, model):
    question = messages[-1]["content"]
    if "\nA. " in question:
        return "B. That one."
    reference = dict(QAS)[question]
    if "insulin pens" in question:
        return reference  # right: makes no pair
    if "hypoglycaemia" in question:
        return "Hypoglycaemia in diabetes is a blood glucose below 5.5 mmol/L."  # a number the reference lacks
    if "kidney" in question:
        return _benchmark_question()  # wrong, and copies a benchmark item: dropped by decontamination
    return 500  # every attempt fails


def _inputs(tmp_path):
    with open(tmp_path / "mcq.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["question", "answer"])
        writer.writerows(MCQS)
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in QAS))
    return [str(tmp_path / "mcq.csv"), str(tmp_path / "qa.jsonl")]


def test_pairs_stage_writes_the_base_models_wrong_replies_against_the_records_answers(tmp_path):
    with FakeOpenAI(_base_model) as server:
        cfg = load_curate_config(None, ["pairs.backend=openai", f"pairs.base_url={server.base_url}",
                                        "pairs.model=base", "pairs.retries=1", "pairs.concurrency=2"],
                                 inputs=_inputs(tmp_path))
        card = curate(cfg, tmp_path / "out", progress=False)
    out = tmp_path / "out"
    assert card["kept"] == len(MCQS) + len(QAS)  # the records stay in the shards, pairs or not
    pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text(encoding="utf-8").splitlines()]
    skipped = {s["id"].split(":")[-1]: s["reason"] for s in
               map(json.loads, (out / "pairs_skipped.jsonl").read_text(encoding="utf-8").splitlines())}
    assert len(pairs) + len(skipped) == card["kept"]

    # MCQs: keyed A and C lose to the model's B; keyed B makes no pair
    mcq = {p["chosen"][:1]: p for p in pairs if p["kind"] == "mcq"}
    assert sorted(mcq) == ["A", "C"]
    assert mcq["A"]["rejected"] == "B. That one." and mcq["A"]["why_rejected"] == "wrong option: picks B, the key is A"
    assert mcq["A"]["prompt"][-1] == {"role": "user", "content": MCQS[0][0]}
    qa = [p for p in pairs if p["kind"] == "qa"]
    assert len(qa) == 1 and qa[0]["chosen"] == QAS[1][1]
    assert qa[0]["why_rejected"] == "numbers the reference lacks: 5.5"
    reasons = sorted(skipped.values())
    assert reasons.count("reply passes the rule") == 2  # keyed-B MCQ, the insulin-pen answer
    assert sum(r.startswith("decontaminate: ") for r in reasons) == 1
    assert sum(r.startswith("model failed: ") for r in reasons) == 1

    # the data card counts them with their sources; the file is what train.method dpo reads
    section = card["pairs"]
    assert section["pairs"] == 3 and section["records"] == card["kept"] and section["model"] == "openai:base"
    assert section["by_kind"] == {"mcq": 2, "qa": 1}
    assert section["by_source"] == {"mcq": 2, "qa": 1}
    assert section["why_rejected"] == {"wrong option": 2, "numbers the reference lacks": 1}
    assert section["skipped"] == {"reply passes the rule": 2, "decontaminate": 1, "model failed": 1}
    assert "Preference pairs (openai:base, in pairs.jsonl): 3 of 7 records" in (out / "data_card.md").read_text()
    records, rejected = read_pairs(out / "pairs.jsonl")
    assert len(records) == 3 and not rejected

    # a rerun without the stage leaves no stale pairs behind
    card = curate(load_curate_config(None, [], inputs=_inputs(tmp_path)), out, progress=False)
    assert card["pairs"] == {"enabled": False} and not (out / "pairs.jsonl").exists()


def _record(kind, reference, answer=None):
    return Record(id="r", source="s", kind=kind, language="en", provenance={}, answer=answer,
                  messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": reference}])


def test_each_kind_has_its_rule():
    cfg = PairsSection()
    mcq = _record("mcq", "C. Retinopathy", answer="C")
    assert wrong_reply(mcq, "C. Retinopathy", "The answer is C.", cfg) is None
    assert wrong_reply(mcq, "C. Retinopathy", "Answer: D", cfg) == "wrong option: picks D, the key is C"
    assert wrong_reply(mcq, "C. Retinopathy", "I cannot say.", cfg) == "no option: the key is C"
    cloze = _record("cloze", "胰岛素")
    assert wrong_reply(cloze, "胰岛素", "答案是胰岛素。", cfg) is None
    assert wrong_reply(cloze, "胰岛素", "二甲双胍", cfg) == "misses the reference span"
    reference = "Check feet daily for cuts and blisters."
    qa = _record("qa", reference)
    assert wrong_reply(qa, reference, "Check your feet daily for blisters and cuts.", cfg) is None
    assert wrong_reply(qa, reference, "Drink plenty of sugary juice instead.", cfg).startswith("low support: ")


JUDGED = {  # question -> (the base model's reply, which passes the grounding rule; the judge's verdicts)
    # the judge rates a complete reply like the reference: no pair
    "How should insulin pens in use be stored by a patient with diabetes?":
        ("Insulin pens in use can be kept at room temperature below 30 degrees for up to four weeks, away "
         "from sunlight.", "Accurate. Score: 8", "Accurate. Score: 8"),
    # a reply that drops the hypoglycaemia treatment: grounded, but rated well below the reference
    "What blood glucose level defines hypoglycaemia in diabetes treatment?":
        ("In diabetes treatment hypoglycaemia is a blood glucose below 3.9 mmol/L.", "Complete. Score: 9",
         "It omits the treatment. Score: 4"),
    # a rating without a score, and a judge that fails: no pair, and said why
    "How often should a person with type 2 diabetes have their kidney function checked?":
        ("A person with type 2 diabetes should have kidney function checked at least yearly.", "Score: 9",
         "A fine answer."),
    "Why is foot care important for people with diabetes and neuropathy?":
        ("Neuropathy in diabetes hides small foot injuries, which can ulcerate.", 500, 500),
}


def _base_or_judge(messages, model):
    if model == "judge":
        prompt = messages[-1]["content"]
        conversation, graded = prompt.split("Conversation:\nuser: ")[1].split("\n\nAnswer to grade:\n")
        if "\nA. " in conversation:  # the MCQ the base model gets right (keyed B): as good as its key
            return "Score: 7"
        reply, reference_verdict, reply_verdict = JUDGED[conversation]
        return reply_verdict if graded == reply else reference_verdict
    question = messages[-1]["content"]
    return "B. That one." if "\nA. " in question else JUDGED[question][0]


def test_a_judge_rejects_replies_that_pass_the_rules_but_score_lower(tmp_path):
    with FakeOpenAI(_base_or_judge) as server:
        cfg = load_curate_config(None, ["pairs.backend=openai", f"pairs.base_url={server.base_url}",
                                        "pairs.model=base", "pairs.judge.backend=openai", "pairs.judge.model=judge",
                                        f"pairs.judge.base_url={server.base_url}", "pairs.judge.retries=1",
                                        "pairs.judge_margin=2"],
                                 inputs=_inputs(tmp_path))
        card = curate(cfg, tmp_path / "out", progress=False)
        judge_requests = [r for r in server.requests if r["model"] == "judge"]
    out = tmp_path / "out"
    pairs = {p["kind"] + ":" + p["chosen"][:1 if p["kind"] == "mcq" else 12]: p for p in
             map(json.loads, (out / "pairs.jsonl").read_text(encoding="utf-8").splitlines())}
    skipped = sorted(s["reason"] for s in
                     map(json.loads, (out / "pairs_skipped.jsonl").read_text(encoding="utf-8").splitlines()))

    judged = pairs.pop("qa:In diabetes ")
    assert judged["why_rejected"] == "judge: scores 4, the reference 9"
    assert judged["judge_scores"] == {"chosen": 9.0, "rejected": 4.0}
    assert judged["rejected"] == JUDGED["What blood glucose level defines hypoglycaemia in diabetes treatment?"][0]
    # the MCQs that pick a wrong option are wrong by their rule: the judge rates only the one it gets right
    assert sorted(pairs) == ["mcq:A", "mcq:C"] and not any("judge_scores" in p for p in pairs.values())
    rated_mcqs = {r["messages"][-1]["content"].split("Conversation:\nuser: ")[1].split("\n")[0]
                  for r in judge_requests if "\nA. " in r["messages"][-1]["content"]}
    assert rated_mcqs == {MCQS[1][0].split("\n")[0]}
    assert skipped[0].startswith("judge failed: ")
    assert skipped[1:] == ["judge unscored: no score in the judge's rating of the rejected side",
                           "reply passes the rule and the judge (scores 7, the reference 7)",  # the MCQ keyed B
                           "reply passes the rule and the judge (scores 8, the reference 8)"]

    section = card["pairs"]
    assert section["judge"] == "openai:judge" and section["pairs"] == 3
    assert section["why_rejected"] == {"wrong option": 2, "judge": 1}
    assert section["skipped"] == {"reply passes the rule and the judge": 2, "judge failed": 1, "judge unscored": 1}
    assert "Preference pairs (openai:base, judged by openai:judge, in pairs.jsonl)" in (out / "data_card.md").read_text()


def test_a_judge_margin_outside_the_score_range_is_refused():
    for margin in (0, -1, 9.5):
        with pytest.raises(FieldError, match="judge_margin"):
            PairsSection(judge_margin=margin)
