"""A synthetic diabetes QA corpus of any size, for curation and start-up benchmarks.

Each line is a JSONL question/answer pair of about 117 Qwen2 tokens: a short template with random
slots (drug, population, values) around runs of random diabetes words, so that distinct records
share few shingles, as unrelated real text does, and are not near duplicates of one another.
Planted among them, at fixed rates and from the same seed, so the curation stages have work to do:

    exact copies         1%   an earlier record again, case and punctuation changed
    near copies          2%   an earlier record with one word of its answer swapped for another
    off-topic            2%   a question about football or the stock market
    too short            1%   a one-word question with a one-word answer
    malformed lines     0.2%  broken JSON
    benchmark leaks      0.1% a question of the embedded MCQ benchmark, copied

`write_corpus(path, n, seed)` writes the file and returns the planted counts.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

DRUGS = ["metformin", "insulin glargine", "empagliflozin", "dapagliflozin", "semaglutide", "liraglutide",
         "sitagliptin", "gliclazide", "pioglitazone", "insulin aspart", "dulaglutide", "linagliptin"]
GROUPS = ["older adults", "pregnant women", "adolescents", "people with chronic kidney disease", "shift workers",
          "people with heart failure", "athletes", "people fasting during Ramadan", "people with obesity",
          "newly diagnosed patients", "people with retinopathy", "people living alone"]
TOPICS = ["HbA1c target", "fasting glucose goal", "hypoglycaemia risk", "weight change", "renal dosing",
          "cardiovascular benefit", "sick day rules", "foot examination interval", "eye screening interval",
          "carbohydrate counting", "exercise advice", "blood pressure goal"]
ADVICE = ["check blood glucose more often", "review the dose with the care team", "carry fast-acting glucose",
          "keep a food and glucose diary", "adjust the timing of meals", "attend structured education",
          "monitor kidney function", "have the feet examined", "plan exercise around insulin doses",
          "discuss the target at every visit", "reduce refined carbohydrate", "stop smoking"]
OFF_TOPIC = ["Who won the football league in {n}?", "Should I buy shares when the stock market falls {n} points?",
             "Which movie won the award in {n}?", "What is the best video game of {n}?"]


WORDS = ("glucose insulin dose meal fasting evening morning target review kidney retina foot nerve heart weight "
         "diet fibre protein walking resistance training sleep stress infection fever vomiting ketones sensor pump "
         "pen injection site rotation lipohypertrophy storage travel alcohol driving pregnancy breastfeeding "
         "contraception lipids statin aspirin pressure smoking education family support depression anxiety cost "
         "adherence reminder diary trend variability night snack dawn rebound threshold symptom sweating tremor "
         "confusion glucagon partner school work shift fasting festival holiday surgery steroid antibiotic").split()


def _qa(rng: random.Random) -> dict:
    # random words after a short template: distinct records share few shingles, as unrelated real text does
    drug, group, topic = rng.choice(DRUGS), rng.choice(GROUPS), rng.choice(TOPICS)
    advice = rng.sample(ADVICE, 2)
    n1, n2 = rng.randint(5, 95), rng.randint(2, 14)
    question = (f"For {group} on {drug}, what {topic} fits when HbA1c is {n2}.{rng.randint(0, 9)}% at age {n1}: "
                + " ".join(rng.choices(WORDS, k=12)) + "?")
    answer = (f"Set the {topic} individually; " + " ".join(rng.choices(WORDS, k=14)) + f". First {advice[0]}, then "
              f"{advice[1]}; " + " ".join(rng.choices(WORDS, k=10)) + f". Review in {rng.randint(2, 12)} weeks.")
    return {"question": question, "answer": answer}


def _edited(row: dict, rng: random.Random) -> dict:
    words = row["answer"].split()
    words[rng.randrange(len(words))] = rng.choice(["usually", "often", "also", "then"])
    return {"question": row["question"], "answer": " ".join(words)}


def _benchmark_questions() -> list[str]:
    import csv

    from diabetica_jax.demo import BENCHMARK_DIR

    with open(BENCHMARK_DIR / "mini_mcq.csv", encoding="utf-8-sig") as f:
        return [row["question"] for row in csv.DictReader(f)]


def write_corpus(path: str | Path, records: int, seed: int = 0) -> dict[str, int]:
    """Write `records` JSONL lines to `path`; returns how many of each planted kind it holds."""
    rng = random.Random(seed)
    leaks = _benchmark_questions()
    counts = {"clean": 0, "exact_copy": 0, "near_copy": 0, "off_topic": 0, "too_short": 0, "malformed": 0,
              "benchmark_leak": 0}
    recent: list[dict] = []
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(records):
            draw = rng.random()
            if draw < 0.01 and recent:
                row = dict(rng.choice(recent))
                row["answer"] = row["answer"].upper().replace(",", " ,")
                kind = "exact_copy"
            elif draw < 0.03 and recent:
                row, kind = _edited(rng.choice(recent), rng), "near_copy"
            elif draw < 0.05:
                row, kind = {"question": rng.choice(OFF_TOPIC).format(n=rng.randint(1990, 2030)),
                             "answer": f"It was decided on day {rng.randint(1, 300)} by a close margin."}, "off_topic"
            elif draw < 0.06:
                row, kind = {"question": "HbA1c?", "answer": "7."}, "too_short"
            elif draw < 0.062:
                f.write('{"question": "broken line about insulin", "answer": \n')
                counts["malformed"] += 1
                continue
            elif draw < 0.063:
                row, kind = {"question": rng.choice(leaks), "answer": "A"}, "benchmark_leak"
            else:
                row, kind = _qa(rng), "clean"
                recent.append(row)
                if len(recent) > 1000:
                    recent.pop(rng.randrange(len(recent)))
            counts[kind] += 1
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return counts
