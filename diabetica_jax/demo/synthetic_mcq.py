"""A synthetic diabetes MCQ set for showing reinforcement learning on CPU: rewards a tiny model can move.

Four question families, each with its options in a fixed order, so each family has one keyed letter
(A, B, C, D); items differ by a case number. A model that answers with a letter picks the key a quarter
of the time by chance; learning which letter each family's question wants is the reward's whole signal.
`format_records` are SFT records that teach only the answer format: each item answered with a
random letter, so after them the model replies with a letter but knows no keys.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

FAMILIES = [
    ("Which of these drugs is a biguanide?", ["metformin", "insulin glargine", "glucagon", "sitagliptin"]),
    ("Which hormone raises blood glucose?", ["insulin", "glucagon", "metformin", "amylin"]),
    ("Which HbA1c value meets the diagnostic threshold for diabetes?", ["5.4%", "5.9%", "6.5%", "6.1%"]),
    ("Which symptom is typical of hypoglycaemia?", ["polyuria", "weight gain", "thirst", "sweating"]),
]
KEYS = ["A", "B", "C", "D"]  # family k's answer: metformin A, glucagon B, 6.5% C, sweating D
LETTERS = "ABCD"


def items(n: int = 32) -> list[dict[str, str]]:
    """n items, families in turn: {id, question (stem and `Option X:` lines), answer (the key)}."""
    out = []
    for i in range(n):
        stem, options = FAMILIES[i % len(FAMILIES)]
        lines = [f"Question: Case {i + 1}. {stem}"] + [f"Option {x}: {o}" for x, o in zip(LETTERS, options)]
        out.append({"id": f"synthetic-mcq-{i + 1}", "question": "\n".join(lines), "answer": KEYS[i % len(FAMILIES)]})
    return out


def write_items(path: str | Path, n: int = 32) -> Path:
    """The items as an MCQ file in the evaluation's format (columns question, answer)."""
    path = Path(path)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["question", "answer"])
        writer.writeheader()
        for item in items(n):
            writer.writerow({"question": item["question"], "answer": item["answer"]})
    return path


def format_records(n: int = 32, seed: int = 0, system: str | None = None, template: str = "{question}"):
    """Chat records (curate's Record, kind mcq) answering each item with a random letter: the answer format
    without the keys. `system` and `template` should be the prompts the rollouts use."""
    from diabetica_jax.data.records import Record

    rng = np.random.default_rng(seed)
    records = []
    for item in items(n):
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": template.format(question=item["question"])},
            {"role": "assistant", "content": LETTERS[int(rng.integers(4))]}]
        records.append(Record(id=f"format-{item['id']}", source="synthetic_mcq", kind="mcq", language="en",
                              provenance={"generator": "diabetica_jax.demo.synthetic_mcq"}, messages=messages))
    return records
