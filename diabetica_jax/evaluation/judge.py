"""Judging open answers: a judge backend (OpenAI-compatible endpoint or local model) behind the disk
cache, and score parsing that never turns a missing score into zero.

Every judge reply is scored by both rules (metrics.py): `score_original` (the paper's rule, protocol.json
`dialog.judge.score`) and `score_own` (the project's robust parser). `score` is the mode's rule: the
original in faithful mode (`Prompts.score_rule == "first_digit"`), the own parser otherwise."""

from __future__ import annotations

from diabetica_jax.evaluation.metrics import parse_score, parse_score_original
from diabetica_jax.evaluation.prompts import Prompts
from diabetica_jax.llm import CachedChat, LLMError


def judge_answer(judge: CachedChat, prompts: Prompts, question: str, rules: str, answer: str) -> dict:
    """{'score', 'score_own', 'score_original': float | None, 'judge_reply': str | None,
    'judge_status': 'scored' | 'unparsed' | 'failed: ...'} (status by the mode's rule). The judge is asked
    with `prompts.judge_max_tokens` and `prompts.judge_temperature` (the protocol's in faithful mode).
    'failed: <reason>': no usable reply after the judge's retries (timeouts, 429, 5xx, malformed or empty
    replies are retried by CachedChat), so the item is counted as failed, never as unparsed or as zero."""
    message = prompts.judge.format(question=question, rules=rules, answer=answer)
    try:
        reply = judge.chat([{"role": "user", "content": message}], max_tokens=prompts.judge_max_tokens,
                           temperature=prompts.judge_temperature)
    except LLMError as e:
        return {"score": None, "score_own": None, "score_original": None, "judge_reply": None,
                "judge_status": f"failed: {e}"}
    own, original = parse_score(reply), parse_score_original(reply)
    score = original if prompts.score_rule == "first_digit" else own
    return {"score": score, "score_own": own, "score_original": original, "judge_reply": reply,
            "judge_status": "scored" if score is not None else "unparsed"}
