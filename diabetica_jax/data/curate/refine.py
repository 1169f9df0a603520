"""Refine by self-distillation: the base model rewrites each reference answer in its own words.

Training on the base model's own phrasing keeps the fine-tuning targets close to its output
distribution (Diabetica's remedy for forgetting). A rewrite replaces the reference only when it
keeps the reference's key content: for an MCQ the same option, otherwise at least `min_recall` of
the reference's distinct words. Otherwise, or when the model fails, the reference stays.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from diabetica_jax.data.curate.answers import recall
from diabetica_jax.data.curate.config import RefineSection
from diabetica_jax.data.mcq import picked_option
from diabetica_jax.data.records import Record
from diabetica_jax.llm import CachedChat, LLMError

REWRITE_PROMPT = (
    "Rewrite the reference answer below in your own words. Keep every fact, number, option letter and "
    "recommendation, add nothing new, and keep its language. Reply with the rewritten answer only.\n\n"
    "Question:\n{question}\n\nReference answer:\n{answer}"
)


def refine(records: list[Record], model: CachedChat, cfg: RefineSection) -> tuple[list[Record], Counter]:
    """All records back (none is dropped), and counts: rewritten / kept_original:<reason>."""

    def work(record: Record) -> tuple[Record, str]:
        if record.messages is None:
            return record, "skipped:passage"
        last = max(i for i, m in enumerate(record.messages) if m["role"] == "assistant")
        reference = record.messages[last]["content"]
        question = "\n".join(m["content"] for m in record.messages[:last] if m["role"] == "user")
        try:
            rewrite = model.chat([{"role": "user", "content": REWRITE_PROMPT.format(question=question, answer=reference)}],
                                 max_tokens=cfg.max_tokens).strip()
        except LLMError:
            return record, "kept_original:model failed"
        if record.kind == "mcq":
            if picked_option(rewrite) != record.answer:
                return record, "kept_original:changed or lost the option"
        elif recall(reference, rewrite) < cfg.min_recall:
            return record, "kept_original:lost key content"
        messages = [dict(m) for m in record.messages]
        messages[last]["content"] = rewrite
        return dataclasses.replace(record, messages=messages, meta={**record.meta, "refined_by": model.name}), "rewritten"

    counts: Counter = Counter()
    out = []
    with ThreadPoolExecutor(max_workers=cfg.concurrency) as pool:
        for record, outcome in pool.map(work, records):
            counts[outcome] += 1
            out.append(record)
    return out, counts
