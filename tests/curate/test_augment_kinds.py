"""Teacher augmentation beyond single-turn QA (dialogues, MCQ rationales, cloze items) and refine's per-kind report.

One small corpus plants, per passage and MCQ, a teacher reply that must be kept or rejected for a known
reason; the fake teacher (tests/fake_openai.py) answers by prompt. Expected counts are derived from
the planted cases below, not copied from a run.
"""

import json
import threading

import numpy as np
import pytest
from fake_openai import FakeOpenAI

from diabetica_jax.configuration import ConfigFileError
from diabetica_jax.curate.answers import unigram_f1
from diabetica_jax.curate.augment import concluded_option, parse_dialogue, ungrounded_turns
from diabetica_jax.curate.config import load_curate_config
from diabetica_jax.curate.grounding import cloze_alignment, is_span, numbers, turn_support
from diabetica_jax.curate.pipeline import curate
from diabetica_jax.data.records import Record

PASSAGES = {
    "Fasting glucose": "A fasting plasma glucose of 7.0 mmol/L or higher is diagnostic of diabetes. Without clear "
                       "symptoms, the result should be confirmed by repeat testing on another day. An HbA1c of 6.5% "
                       "or higher is also a diagnostic criterion.",
    "Hypoglycaemia": "A conscious person with hypoglycaemia should take 15 to 20 g of glucose. Glucose should be "
                     "rechecked after 15 minutes and treatment repeated if it is still low. Once glucose normalises, "
                     "a meal or snack prevents recurrence.",
    "Metformin": "Metformin is the preferred first-line glucose-lowering drug for type 2 diabetes. It is "
                 "contraindicated when eGFR is below 30 mL/min. Long-term use can cause vitamin B12 deficiency.",
    "Foot care": "People with diabetes should inspect their feet daily and wear well-fitting footwear. A foot "
                 "examination with monofilament testing is recommended at least once a year.",
    "Blood pressure": "The blood pressure target for most people with diabetes is below 130/80 mmHg. An ACE "
                      "inhibitor or ARB is preferred when albuminuria is present.",
}
BENCHMARK_QUESTION = ("Which yearly examination of the feet is recommended for people with diabetes to find a loss "
                      "of protective sensation early?")


def _turns(*contents):
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": c} for i, c in enumerate(contents)]


# dialogue per passage (dialogue_turns=2): the reply, and the reason class it must end with (None: kept)
DIALOGUES = {
    "Fasting glucose": (json.dumps(_turns(
        "My fasting test came back high. What level means diabetes?",
        "Good question. A fasting plasma glucose of 7.0 mmol/L or higher is diagnostic of diabetes.",
        "Do I need another test?",
        "Without clear symptoms, the result should be confirmed by repeat testing on another day.")), None),
    "Hypoglycaemia": (json.dumps(_turns(
        "I feel shaky and my sugar is low. What should I take?",
        "Take 15 to 20 g of glucose and recheck after 15 minutes.",
        "Anything else?",
        "Drink 500 ml of orange juice and take cinnamon capsules every morning.")), "ungrounded turn"),
    "Metformin": (json.dumps([{"role": "user", "content": "Is metformin safe for my kidneys?"},
                              {"role": "nurse", "content": "It is contraindicated when eGFR is below 30 mL/min."},
                              {"role": "user", "content": "Anything else?"},
                              {"role": "assistant", "content": "Long-term use can cause vitamin B12 deficiency."}]),
                  "malformed dialogue"),
    "Foot care": ("```json\n" + json.dumps(_turns(
        BENCHMARK_QUESTION,
        "People with diabetes should inspect their feet daily and wear well-fitting footwear.",
        "How often do I need a foot examination?",
        "A foot examination with monofilament testing is recommended at least once a year.")) + "\n```",
                  "benchmark overlap"),
    "Blood pressure": ("Patient: What is my blood pressure target?\nDoctor: Below 130/80 mmHg.", "malformed dialogue"),
}
# cloze items per passage (cloze_per_passage=2): (item, reason class or None)
CLOZES = {
    "Fasting glucose": [({"sentence": "A fasting plasma glucose of ____ or higher is diagnostic of diabetes.",
                          "answer": "7.0 mmol/L"}, None),
                        ({"sentence": "An HbA1c of ____ or higher is also a diagnostic criterion.", "answer": "6.0%"},
                         "answer not in passage")],
    "Hypoglycaemia": [({"sentence": "A conscious person with hypoglycaemia should take ____ of glucose.",
                        "answer": "15 minutes"}, "answer misplaced"),
                      ({"sentence": "Glucose should be rechecked after 15 minutes.", "answer": "15 minutes"},
                       "malformed cloze")],
    "Metformin": [({"sentence": "It is contraindicated when eGFR is below ____.", "answer": "30 mL/min"}, None),
                  ({"sentence": "Metformin should be stopped before ____ surgery in all patients.",
                    "answer": "glucose-lowering"}, "sentence not in passage")],
    "Foot care": [({"sentence": "People with diabetes should inspect their ____ daily and wear well-fitting footwear.",
                    "answer": "feet"}, None)],
    "Blood pressure": [({"sentence": "The blood pressure target for most people with diabetes is below ____.",
                         "answer": "130/80 mmHg"}, None)],
}
FLAKY_CLOZE = "Blood pressure"  # its cloze request fails once with HTTP 503, then succeeds on the retry
# MCQs: (question, key, the teacher's rationale, reason class or None)
MCQS = [
    ("Which drug is the preferred first-line glucose-lowering treatment for type 2 diabetes?",
     {"A": "Insulin glargine", "B": "Metformin", "C": "Sulfonylurea", "D": "Acarbose"}, "B",
     "Metformin lowers glucose without weight gain and is the preferred first-line drug; the others are added "
     "later.\nAnswer: B", None),
    ("Below which eGFR is metformin contraindicated in people with diabetes?",
     {"A": "30 mL/min", "B": "45 mL/min", "C": "60 mL/min", "D": "90 mL/min"}, "A",
     "Answer: A would be the textbook reply, but kidney clearance matters more.\nAnswer: C",
     "rationale picks another option"),
    ("How much glucose should a conscious person with diabetes take for hypoglycaemia?",
     {"A": "5 g", "B": "10 g", "C": "15 to 20 g", "D": "50 g"}, "C",
     "Take enough glucose, then recheck after a while.", "rationale names no option"),
]
REFINE_SUFFIX = " In short, as stated."


def _heading(prompt: str) -> str:
    return next(h for h in PASSAGES if f"Passage:\n{h}\n" in prompt)


class Teacher:
    def __init__(self):
        self.flaky_left = 1
        self.lock = threading.Lock()

    def __call__(self, messages, model):
        prompt = messages[-1]["content"]
        if model == "base-model":  # refine: keeps every word and adds a few; a cloze answer loses its content
            question, reference = prompt.split("Question:\n", 1)[1].split("\n\nReference answer:\n", 1)
            return "I am not sure." if "____" in question or "（）" in question else reference + REFINE_SUFFIX
        if prompt.startswith("Write a consultation"):
            return DIALOGUES[_heading(prompt)][0]
        if "fill-in-the-blank" in prompt:
            heading = _heading(prompt)
            with self.lock:
                if heading == FLAKY_CLOZE and self.flaky_left:
                    self.flaky_left -= 1
                    return 503
            return json.dumps([item for item, _ in CLOZES[heading]])
        if prompt.startswith("Answer this exam question"):
            return next(m[3] for m in MCQS if m[0] in prompt)
        raise AssertionError(f"unexpected prompt: {prompt[:80]}")


def _corpus(tmp_path):
    guide = tmp_path / "guide.md"
    guide.write_text("".join(f"## {h}\n\n{t}\n\n" for h, t in PASSAGES.items()), encoding="utf-8")
    exam = tmp_path / "exam.csv"
    rows = ["question,answer"]
    for question, options, key, _, _ in MCQS:
        text = "Question: " + question + "".join(f"\nOption {k}: {v}" for k, v in options.items())
        rows.append(f'"{text}",{key}：{options[key]}')
    exam.write_text("\n".join(rows) + "\n", encoding="utf-8")
    bench = tmp_path / "bench.csv"
    bench.write_text(f'question,answer\n"{BENCHMARK_QUESTION}",x\n', encoding="utf-8")
    return [str(guide), str(exam)], bench


def _expected_reasons(cases):
    counts = {}
    for reason in cases:
        if reason is not None:
            counts[reason] = counts.get(reason, 0) + 1
    return counts


def _shard_records(out):
    from array_record.python.array_record_module import ArrayRecordReader

    from diabetica_jax.data.shards import shard_paths

    records = []
    for path in shard_paths(out):
        reader = ArrayRecordReader(str(path))
        records += [Record.from_json(json.loads(raw)) for raw in reader.read_all()]
        reader.close()
    return records


def test_dialogues_rationales_and_cloze_through_the_pipeline(tmp_path):
    inputs, bench = _corpus(tmp_path)
    teacher = Teacher()
    with FakeOpenAI(teacher) as server:
        overrides = [
            "augment.backend=openai", f"augment.base_url={server.base_url}", "augment.model=teacher",
            "augment.retries=2", "augment.qa_per_passage=0", "augment.explain_mcqs=false",
            "augment.dialogue_turns=2", "augment.mcq_rationales=true", "augment.cloze_per_passage=2",
            "refine.backend=openai", f"refine.base_url={server.base_url}", "refine.model=base-model",
            "decontamination.embedded_benchmarks=false", f"decontamination.benchmarks=[{bench}]",
        ]
        cfg = load_curate_config(None, overrides, inputs=inputs)
        card = curate(cfg, tmp_path / "out", progress=False)
        prompts = [r["messages"][-1]["content"] for r in server.requests if r["model"] == "teacher"]

    # switched-off tasks asked nothing; every source record was asked once per enabled task (+1 retry)
    assert not any(p.startswith(("You are preparing study material", "Explain the keyed answer")) for p in prompts)
    assert len(prompts) == 2 * len(PASSAGES) + len(MCQS) + 1
    assert all(f"The keyed answer is {key}." in next(p for p in prompts if q in p) for q, _, key, _, _ in MCQS)

    kinds = card["augment"]["kinds"]
    assert set(kinds) == {"dialogue", "mcq_rationale", "cloze"}
    planted = {
        "dialogue": [reason for _, reason in DIALOGUES.values()],
        "cloze": [reason for items in CLOZES.values() for _, reason in items],
        "mcq_rationale": [m[4] for m in MCQS],
    }
    for task, reasons in planted.items():
        assert kinds[task]["rejected_by_reason"] == _expected_reasons(reasons), task
        assert kinds[task]["generated"] == reasons.count(None), task
        assert kinds[task]["rejected"] == len(reasons) - reasons.count(None)
    assert kinds["dialogue"]["asked"] == kinds["cloze"]["asked"] == len(PASSAGES)
    assert kinds["mcq_rationale"]["asked"] == len(MCQS)
    # every teacher output is either kept or a reject, and the card adds up
    assert card["generated"] == sum(k["generated"] + k["rejected"] for k in kinds.values())
    assert card["kept"] + card["rejected"] == card["collected"] + card["generated"]
    assert card["augment"]["calls"] == len(prompts) and card["augment"]["failures"] == 0

    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    reasons = [r["reason"] for r in rejects]
    ungrounded = next(r for r in reasons if r.startswith("ungrounded turn"))
    assert "assistant turn 2 of 2" in ungrounded and "500" in ungrounded and "turn 1 of" not in ungrounded
    assert any("turn 2 has role 'nurse'" in r for r in reasons)
    assert any("no JSON list of turns" in r for r in reasons)
    assert "rationale picks C, key is A" in reasons and "rationale names no option: key is C" in reasons
    assert any("'6.0%' is not a span of the passage" in r for r in reasons)
    leaked = [r for r in rejects if r["stage"] == "decontaminate"]
    assert len(leaked) == 1 and leaked[0]["record"]["provenance"]["augment"] == "dialogue"

    records = _shard_records(tmp_path / "out")
    by_kind = {k: [r for r in records if r.provenance.get("augment") == k] for k in planted}
    assert {k: len(v) for k, v in by_kind.items()} == {k: v.count(None) for k, v in planted.items()}
    # the kept dialogue trains on both doctor turns and on nothing the patient says
    from diabetica_jax.data.chat import encode_record
    from diabetica_jax.hf.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(None)
    (dialogue,) = by_kind["dialogue"]
    assert [m["role"] for m in dialogue.messages] == ["user", "assistant"] * 2 and dialogue.kind == "dialogue"
    ids, mask = encode_record(tokenizer, dialogue)
    trained = tokenizer.decode(ids[mask.astype(bool)])
    assert all(m["content"] in trained for m in dialogue.messages if m["role"] == "assistant")
    assert not any(m["content"] in trained for m in dialogue.messages if m["role"] == "user")
    (rationale,) = by_kind["mcq_rationale"]
    assert rationale.kind == "mcq" and rationale.answer == "B" and rationale.options == MCQS[0][1]
    assert {r.messages[0]["content"] for r in by_kind["cloze"]} >= {"It is contraindicated when eGFR is below ____."}

    # refine: per kind, the references it replaced and how much of each it kept (unigram F1)
    refine = card["refine"]["by_kind"]
    n_mcq = len(MCQS) + kinds["mcq_rationale"]["generated"]
    assert refine["mcq"]["records"] == refine["mcq"]["replaced"] == n_mcq
    assert refine["dialogue"]["replaced"] == kinds["dialogue"]["generated"]
    assert refine["cloze"]["replaced"] == 0 and refine["cloze"]["kept_original"] == kinds["cloze"]["generated"]
    assert refine["cloze"]["overlap"] == {"count": 0}
    for kind in ("mcq", "dialogue"):
        rewrites = [r.messages[-1]["content"] for r in records if r.kind == kind and "refined_by" in r.meta]
        f1 = [unigram_f1(text.removesuffix(REFINE_SUFFIX), text) for text in rewrites]
        summary = refine[kind]["overlap"]
        assert summary["count"] == len(f1) == refine[kind]["replaced"]
        assert summary["mean"] == pytest.approx(np.mean(f1), abs=1e-4) and summary["mean"] < 1.0
        for q in (10, 50, 90):
            assert summary[f"p{q}"] == pytest.approx(np.percentile(f1, q), abs=1e-4)
    markdown = (tmp_path / "out" / "data_card.md").read_text()
    for task, k in kinds.items():
        assert f"| {task} | {k['asked']} | {k['generated']} | {k['rejected']} |" in markdown
    assert f"| mcq | {n_mcq} | {n_mcq} | 0 |" in markdown

    # a rerun pays for nothing: every teacher reply comes from the cache, the failed attempt is not cached
    with FakeOpenAI(Teacher()) as server:
        overrides = [o.replace(o.split("=", 1)[1], server.base_url) if "base_url" in o else o for o in overrides]
        again = curate(load_curate_config(None, overrides, inputs=inputs), tmp_path / "out", progress=False)
        assert not server.requests
    assert again["augment"]["kinds"] == kinds and again["augment"]["cache_hits"] == len(prompts) - 1


@pytest.mark.parametrize("reply, problem", [
    ("Sure, here it is: patient asks, doctor answers.", "no JSON list of turns"),
    ('[{"role": "user", "content": "Hi"}, "doctor: hello"]', "turn 2 is not an object"),
    ('[{"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Hi"}]', "turn 1 is assistant, expected user"),
    ('[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  "}]', "turn 2 (assistant) is empty"),
    ('[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]', "2 turns, asked for 4"),
    ('[{"role": "user", "content": "Hi"}, {"role": "system", "content": "x"}]', "turn 2 has role 'system'"),
])
def test_malformed_dialogue_replies_say_what_is_wrong(reply, problem):
    messages, reason = parse_dialogue(reply, 2)
    assert messages is None and problem in reason


def test_dialogue_parsing_accepts_aliases_and_cuts_extra_turns():
    turns = [{"role": r, "content": f"turn {i}"} for i, r in enumerate(["patient", "doctor", "user", "assistant",
                                                                         "user"])]
    messages, reason = parse_dialogue("Here you go:\n" + json.dumps(turns), 2)
    assert reason is None and [m["role"] for m in messages] == ["user", "assistant"] * 2
    assert messages[-1]["content"] == "turn 3"


def test_grounding_rules():
    passage = PASSAGES["Fasting glucose"] + " Metformin is contraindicated below 30 mL/min/1.73 m²."
    assert numbers("HbA1c 6.50% and 7.0 mmol/L, 1,200 kcal, SGLT2, 15–20 g") == ["6.5", "7", "1200", "15", "20"]
    support, missing, missing_numbers = turn_support("Yes: 7 mmol/L or higher is diagnostic.", passage)
    assert support == 1.0 and not missing and not missing_numbers  # 7 == 7.0; function words do not count
    support, missing, missing_numbers = turn_support("A fasting plasma glucose of 8.5 mmol/L is diagnostic.", passage)
    assert support == 1.0 and missing_numbers == ["8.5"]  # the words are all there, a number is not
    messages = _turns("q1", "A fasting plasma glucose of 7.0 mmol/L or higher is diagnostic of diabetes.",
                      "q2", "Cinnamon tea cures it within 3 weeks.")
    (problem,) = ungrounded_turns(messages, passage, 0.6)
    assert problem.startswith("assistant turn 2 of 2") and "3" in problem and "cinnamon" in problem
    assert ungrounded_turns(messages[:2], passage, 0.6) == []
    assert is_span("repeat  testing", passage) and is_span("7.0 mmol/L", passage)
    assert not is_span("ear", "five years") and not is_span("6.0%", passage)
    score, aligned, _ = cloze_alignment("An HbA1c of ", "7.0", " or higher is also a diagnostic criterion.", passage)
    assert score >= 0.8 and not aligned  # a span of the passage, put in another sentence's place
    score, aligned, _ = cloze_alignment("An HbA1c of ", "6.5%", " or higher is also a diagnostic criterion.", passage)
    assert score == 1.0 and aligned


@pytest.mark.parametrize("reply, letter", [
    ("Metformin first.\nAnswer: B", "B"),
    ("Answer: A looks tempting, but the kidney matters.\nAnswer: C", "C"),  # the conclusion, not the first letter
    ("The answer is B because it is first-line.", "B"),
    ("No option committed to.", None),
])
def test_rationale_reads_the_concluded_option(reply, letter):
    assert concluded_option(reply) == letter


def test_new_augment_settings_are_validated():
    with pytest.raises(ConfigFileError, match="augment.dialogue_turns: must be 0"):
        load_curate_config(None, ["augment.dialogue_turns=-1"])
    with pytest.raises(ConfigFileError, match=r"augment.cloze_min_similarity: must be in \[0, 1\]"):
        load_curate_config(None, ["augment.cloze_min_similarity=1.5"])
    cfg = load_curate_config(None, [])
    assert (cfg.augment.dialogue_turns, cfg.augment.cloze_per_passage, cfg.augment.mcq_rationales) == (0, 0, False)


def test_a_failed_teacher_call_rejects_the_output_not_the_passage(tmp_path):
    from diabetica_jax.curate.augment import augment
    from diabetica_jax.curate.config import AugmentSection
    from diabetica_jax.llm import CachedChat, LLMError

    class Refusing:
        name = "stub"

        def chat(self, messages, max_tokens, temperature):
            raise LLMError("HTTP 400: context too long")  # not retryable

    passage = Record("p1", "guide", "passage", "en", {"file": "guide.md", "row": 0}, text=PASSAGES["Metformin"])
    cfg = AugmentSection(backend="openai", model="stub", qa_per_passage=0, explain_mcqs=False, dialogue_turns=1,
                         cloze_per_passage=1)
    result = augment([passage], CachedChat(Refusing(), tmp_path / "cache", retries=1), cfg)
    assert result.kept == [passage] and not result.rejects and not result.generated
    report = result.kind_report()
    assert report == {task: {"asked": 1, "generated": 0, "rejected": 1, "rejected_by_reason": {"teacher call failed": 1}}
                      for task in ("dialogue", "cloze")}
    assert {r.provenance["augment"] for r in result.generated_rejects} == {"dialogue", "cloze"}
    assert all("context too long" in r.reason for r in result.generated_rejects)
