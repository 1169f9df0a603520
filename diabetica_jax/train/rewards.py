"""Verifiable rewards for GRPO on the Diabetica task kinds: checked by rule, no judge needed.

MCQ: 1 when the reply commits to the keyed option as a standalone letter (the evaluation's own rule,
data/mcq.py `picked_option`: 'Answer: B', a reply opening with 'B', never the B of 'Basal'), else 0.
Cloze: 1 when the expected span appears in the reply (whitespace and case ignored), else 0.
An optional format reward adds `format_weight` when the reply is only the answer: a letter alone for
MCQ, at most twice the expected span's length for cloze. An optional judge reward adds
`judge_weight x (score - 1) / 9` for the judge's 1-10 rating of the reply against the key (the
evaluation's judge prompt and score rule); a reply the judge fails to rate earns none of it.
"""

from __future__ import annotations

import re
import unicodedata

from diabetica_jax.evaluation.data import Item
from diabetica_jax.evaluation.judge import judge_answer
from diabetica_jax.evaluation.prompts import OWN
from diabetica_jax.evaluation.tasks import extract_letter
from diabetica_jax.llm import CachedChat

TASKS = ("mcq", "cloze")


def _squeeze(text: str) -> str:
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", text)).lower()


def answer_of(task: str, item: Item, reply: str) -> str | None:
    """What the reply answers: the picked letter (MCQ) or the reply stripped (cloze)."""
    if task == "mcq":
        return extract_letter(reply, item.options, "picked")
    return reply.strip()


def reward(task: str, item: Item, reply: str, format_weight: float = 0.0) -> float:
    if task == "mcq":
        correct = extract_letter(reply, item.options, "picked") == item.answer
        well_formed = re.fullmatch(r"\s*[(（]?[A-H][)）.]?\s*", unicodedata.normalize("NFKC", reply)) is not None
    else:
        expected, got = _squeeze(item.answer), _squeeze(reply)
        correct = bool(expected) and expected in got
        well_formed = 0 < len(got) <= 2 * max(len(expected), 1)
    return float(correct) + (format_weight if well_formed else 0.0)


def judge_rules(task: str, item: Item) -> str:
    """What the judge checks a reply against: the keyed option, or the text that fills the blank."""
    if task == "mcq":
        option = (item.options or {}).get(item.answer)
        keyed = f"{item.answer} ({option})" if option else item.answer
        return f"The correct option is {keyed}. The answer must choose it, and only it."
    return f"The blank is filled by: {item.answer}. The answer must give this, and nothing that contradicts it."


def judged(judge: CachedChat, task: str, item: Item, reply: str, weight: float) -> dict:
    """The judge's verdict on `reply` (judge_answer's fields) and `judge_reward`, its share of the reward."""
    verdict = judge_answer(judge, OWN, item.question, judge_rules(task, item), reply)
    score = verdict["score"]
    return {"judge_score": score, "judge_status": verdict["judge_status"],
            "judge_reward": 0.0 if score is None else weight * (score - 1.0) / 9.0}
