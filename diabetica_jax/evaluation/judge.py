"""Judging open answers: a judge backend (OpenAI-compatible endpoint or local model) behind the disk
cache, and score parsing that never turns a missing score into zero."""

from __future__ import annotations

import re

from diabetica_jax.evaluation.metrics import parse_score
from diabetica_jax.evaluation.prompts import Prompts
from diabetica_jax.llm import CachedChat, LLMError


def parse_score_first_digit(reply: str) -> float | None:
    """The protocol's original rule: after the last 'Score: ', '10' or else the first digit (7.5 -> 7)."""
    if "Score: " not in (reply or ""):
        return None
    tail = reply.rsplit("Score: ", 1)[1].strip()
    if tail.startswith("10"):
        return 10.0
    match = re.match(r"\D*(\d)", tail)
    return float(match.group(1)) if match else None


def judge_answer(judge: CachedChat, prompts: Prompts, question: str, rules: str, answer: str) -> dict:
    """{'score': float | None, 'judge_reply': str | None, 'judge_status': 'scored' | 'unparsed' | 'failed: ...'}"""
    message = prompts.judge.format(question=question, rules=rules, answer=answer)
    try:
        reply = judge.chat([{"role": "user", "content": message}], max_tokens=1024,
                           temperature=prompts.judge_temperature)
    except LLMError as e:
        return {"score": None, "judge_reply": None, "judge_status": f"failed: {e}"}
    score = parse_score_first_digit(reply) if prompts.score_rule == "first_digit" else parse_score(reply)
    return {"score": score, "judge_reply": reply, "judge_status": "scored" if score is not None else "unparsed"}
