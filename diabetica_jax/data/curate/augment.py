"""Augment with a teacher LLM: passages become grounded QA pairs; MCQs get an explained answer.

Generated QA pairs are kept only when grounded (most of the answer's words appear in the passage);
an explanation is kept only when it picks the keyed option. A record whose teacher call still fails
after the retries is rejected with that reason.
"""

from __future__ import annotations

import dataclasses
import json
import re
from concurrent.futures import ThreadPoolExecutor

from diabetica_jax.data.curate.answers import recall
from diabetica_jax.data.curate.config import AugmentSection
from diabetica_jax.data.mcq import picked_option
from diabetica_jax.data.records import Record, Reject, record_id
from diabetica_jax.data.text import language
from diabetica_jax.llm import CachedChat, LLMError

PASSAGE_PROMPT = (
    "You are preparing study material on diabetes care. Read the passage and write {n} question-answer pairs "
    "that the passage itself answers. Use only facts stated in the passage, write in the passage's language, and "
    "reply with a JSON list of objects with the keys \"question\" and \"answer\" and nothing else.\n\n"
    "Passage:\n{passage}"
)
MCQ_PROMPT = (
    "Explain the keyed answer of this exam question. Begin with \"Answer: {letter}\", then explain in two to four "
    "sentences, in the language of the question, why {letter} is correct and why the other options are not.\n\n"
    "{question}"
)


@dataclasses.dataclass
class AugmentResult:
    kept: list[Record]
    rejects: list[Reject]
    generated: list[Record]
    generated_rejects: list[Reject]
    explained: int = 0


def augment(records: list[Record], teacher: CachedChat, cfg: AugmentSection) -> AugmentResult:
    def work(record: Record):
        try:
            if record.kind == "passage":
                return _passage_to_qa(record, teacher, cfg)
            if record.kind == "mcq":
                return _explain_mcq(record, teacher, cfg)
        except LLMError as e:
            return Reject("augment", str(e), record.provenance, record=record.to_json())
        return record

    result = AugmentResult([], [], [], [])
    with ThreadPoolExecutor(max_workers=cfg.concurrency) as pool:
        for record, outcome in zip(records, pool.map(work, records)):
            if isinstance(outcome, Reject):
                result.rejects.append(outcome)
            elif isinstance(outcome, tuple):  # passage: (passage, generated, rejected pairs)
                passage, generated, bad = outcome
                result.kept.append(passage)
                result.generated.extend(generated)
                result.generated_rejects.extend(bad)
            else:
                result.explained += outcome is not record
                result.kept.append(outcome)
    return result


def _passage_to_qa(record: Record, teacher: CachedChat, cfg: AugmentSection):
    prompt = PASSAGE_PROMPT.format(n=cfg.qa_per_passage, passage=record.text)
    reply = teacher.chat([{"role": "user", "content": prompt}], max_tokens=cfg.max_tokens)
    generated, bad = [], []
    for i, pair in enumerate(_json_pairs(reply)):
        where = {**record.provenance, "augmented_from": record.id, "pair": i}
        question, answer = str(pair.get("question", "")).strip(), str(pair.get("answer", "")).strip()
        if not question or not answer:
            bad.append(Reject("augment", "generated pair has an empty question or answer", where,
                              raw=json.dumps(pair, ensure_ascii=False)))
            continue
        candidate = Record(id=record_id(f"{record.source}+teacher", where["file"], f"{where.get('row')}/{i}", question),
                           source=f"{record.source}+teacher", kind="qa", language=language(question + answer),
                           provenance=where,
                           messages=[{"role": "user", "content": question}, {"role": "assistant", "content": answer}])
        grounding = recall(answer, record.text)
        if grounding < cfg.min_grounding:
            bad.append(Reject("augment", f"ungrounded answer: {grounding:.0%} of its words are in the passage "
                                         f"< {cfg.min_grounding:.0%}", where, record=candidate.to_json()))
            continue
        generated.append(candidate)
    if not generated and not bad:
        raise LLMError("teacher reply held no JSON list of question-answer pairs")
    return record, generated, bad


def _json_pairs(reply: str) -> list[dict]:
    match = re.search(r"\[.*\]", reply, re.S)
    if not match:
        return []
    try:
        data = json.loads(match.group(0))
    except json.JSONDecodeError:
        return []
    return [d for d in data if isinstance(d, dict)]


def _explain_mcq(record: Record, teacher: CachedChat, cfg: AugmentSection):
    question = record.messages[0]["content"]
    reply = teacher.chat([{"role": "user", "content": MCQ_PROMPT.format(letter=record.answer, question=question)}],
                         max_tokens=cfg.max_tokens).strip()
    picked = picked_option(reply)
    if picked is None:
        return Reject("augment", "explanation names no option", record.provenance, record=record.to_json())
    if picked != record.answer:
        return Reject("augment", f"explanation picks {picked}, the key is {record.answer}", record.provenance,
                      record=record.to_json())
    messages = [record.messages[0], {"role": "assistant", "content": reply}]
    return dataclasses.replace(record, messages=messages, meta={**record.meta, "explained_by": teacher.name})
