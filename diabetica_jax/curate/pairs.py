"""Preference pairs from curation: the base model's own wrong replies against the records' answers.

For each kept record with a reference answer (its last assistant turn) the base model answers the
conversation up to that turn. The reply is the rejected side of a pair, and the reference the chosen
side, only when the reply is wrong by the rule the record's kind has:

mcq        the reply commits to an option other than the key (`data.mcq.picked_option`: a standalone
           letter), or to none
cloze      the reference span does not occur in the reply (`grounding.is_span`)
qa,        the grounding rule with the reference as the passage: less than `min_support` of the reply's
dialogue   content words occur in the reference, or the reply states a number the reference does not

With `pairs.judge` set, a reply that passes its rule is rated by the judge beside the reference, each
alone on the same 1-10 rubric (the judge is not told which is the reference, nor shown the other); the
reply is wrong when it scores at least `judge_margin` below the reference. Both ratings go with the pair.

A reply that passes (its rule, and the judge when there is one) makes no pair: it is no worse than the
reference by anything this stage can check. Nor does a failed request, or a rating the judge gave no
score in. Both sides are then decontaminated against the benchmarks, as
the teacher's output is. Every record that made no pair is written with its reason to
pairs_skipped.jsonl: the records themselves stay in the shards either way.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from diabetica_jax.curate import filters
from diabetica_jax.curate.config import DecontaminationSection, PairsSection
from diabetica_jax.curate.grounding import is_span, turn_support
from diabetica_jax.data.mcq import picked_option
from diabetica_jax.data.records import Record, reason_class
from diabetica_jax.llm import CachedChat, LLMError
from diabetica_jax.llm.scores import parse_score

JUDGE_PROMPT = (
    "You are a diabetes specialist grading an answer written for a patient, a clinician or a medical student. "
    "Judge its medical accuracy, safety and helpfulness for the conversation below, against current diabetes "
    "guidelines. Reason in a few sentences, then give a last line of the form 'Score: N', N from 1 (wrong or "
    "unsafe) to 10 (accurate, safe and complete).\n\nConversation:\n{conversation}\n\nAnswer to grade:\n{answer}"
)
JUDGE_MAX_TOKENS = 512


@dataclasses.dataclass
class PairsResult:
    pairs: list[dict]  # pairs.jsonl's records: id, prompt (messages), chosen, rejected, and where they came from
    skipped: list[dict]  # {"id", "source", "kind", "reason"} per record that made no pair
    stats: dict  # the data card's `pairs` section


def wrong_reply(record: Record, reference: str, reply: str, cfg: PairsSection) -> str | None:
    """Why `reply` is wrong as an answer to `record` (whose answer is `reference`), or None if it passes."""
    if record.kind == "mcq":
        picked = picked_option(reply)
        if picked is None:
            return f"no option: the key is {record.answer}"
        return None if picked == record.answer else f"wrong option: picks {picked}, the key is {record.answer}"
    if record.kind == "cloze":
        return None if is_span(reference, reply) else "misses the reference span"
    support, _, numbers = turn_support(reply, reference)
    if numbers:
        return f"numbers the reference lacks: {', '.join(numbers[:5])}"
    return None if support >= cfg.min_support else f"low support: {support:.2f} < {cfg.min_support}"


def rating(judge: CachedChat, prompt: list[dict], answer: str) -> float | None:
    """The judge's 1-10 score of `answer` to the conversation `prompt` (None: no score in its reply)."""
    conversation = "\n".join(f"{m['role']}: {m['content']}" for m in prompt)
    reply = judge.chat([{"role": "user", "content": JUDGE_PROMPT.format(conversation=conversation, answer=answer)}],
                       max_tokens=JUDGE_MAX_TOKENS, temperature=0.0)
    return parse_score(reply)


def judged_worse(judge: CachedChat, prompt: list[dict], reference: str, reply: str,
                 margin: float) -> tuple[str | None, dict]:
    """(why the reply is wrong by the judge, or None; the ratings). Raises LLMError when a request fails and
    ValueError when a rating holds no score."""
    scores = {"chosen": rating(judge, prompt, reference), "rejected": rating(judge, prompt, reply)}
    unscored = [side for side, score in scores.items() if score is None]
    if unscored:
        raise ValueError(f"no score in the judge's rating of the {' and the '.join(unscored)} side")
    if scores["chosen"] - scores["rejected"] >= margin:
        return f"judge: scores {scores['rejected']:g}, the reference {scores['chosen']:g}", scores
    return None, scores


def make_pairs(records: list[Record], model: CachedChat, cfg: PairsSection, benchmark_items: list,
               decontamination: DecontaminationSection, judge: CachedChat | None = None) -> PairsResult:
    """Ask `model` for a reply to every eligible record (cfg.concurrency at a time), keep the wrong ones as
    pairs (by the kind's rule, then by `judge` when given), decontaminate both sides; in record order."""
    kinds = set(cfg.kinds)

    def work(record: Record) -> tuple[dict | None, str]:
        if record.messages is None or record.kind not in kinds:
            return None, f"kind not paired: {record.kind}" if record.messages else "passage: no answer to pair"
        last = max(i for i, m in enumerate(record.messages) if m["role"] == "assistant")
        prompt, reference = record.messages[:last], record.messages[last]["content"]
        try:
            reply = model.chat(prompt, max_tokens=cfg.max_tokens, temperature=cfg.temperature).strip()
        except LLMError as e:
            return None, f"model failed: {e}"
        why, scores = wrong_reply(record, reference, reply, cfg), None
        if why is None and judge is not None:
            try:
                why, scores = judged_worse(judge, prompt, reference, reply, cfg.judge_margin)
            except LLMError as e:
                return None, f"judge failed: {e}"
            except ValueError as e:
                return None, f"judge unscored: {e}"
            if why is None:
                return None, (f"reply passes the rule and the judge (scores {scores['rejected']:g}, the reference "
                              f"{scores['chosen']:g})")
        if why is None:
            return None, "reply passes the rule"
        pair = {"id": f"{record.id}/pair", "prompt": prompt, "chosen": reference, "rejected": reply,
                "source": record.source, "kind": record.kind, "language": record.language, "why_rejected": why,
                "record": record.id}
        return (pair if scores is None else {**pair, "judge_scores": scores}), "pair"

    with ThreadPoolExecutor(max_workers=cfg.concurrency) as pool:
        outcomes = list(pool.map(work, records))
    candidates = [(r, pair) for r, (pair, _) in zip(records, outcomes) if pair is not None]
    skipped = [{"id": r.id, "source": r.source, "kind": r.kind, "reason": why}
               for r, (pair, why) in zip(records, outcomes) if pair is None]

    # each side as the record it would train on: the prompt and that reply
    sides = [dataclasses.replace(r, id=f"{pair['id']}/{side}", text=None,
                                 messages=[*pair["prompt"], {"role": "assistant", "content": pair[side]}])
             for r, pair in candidates for side in ("chosen", "rejected")]
    _, leaked = filters.decontaminate(sides, benchmark_items, decontamination)
    leaks = {reject.record["id"].rsplit("/", 1)[0]: reject.reason for reject in leaked}
    pairs = []
    for record, pair in candidates:
        if pair["id"] in leaks:
            skipped.append({"id": record.id, "source": record.source, "kind": record.kind,
                            "reason": f"decontaminate: {leaks[pair['id']]}"})
        else:
            pairs.append(pair)
    stats = {"enabled": True, "model": model.name, "judge": judge.name if judge else None,
             "records": len(records), "pairs": len(pairs),
             "file": "pairs.jsonl", "by_source": dict(Counter(p["source"] for p in pairs)),
             "by_kind": dict(Counter(p["kind"] for p in pairs)),
             "why_rejected": dict(Counter(reason_class(p["why_rejected"]) for p in pairs).most_common()),
             "skipped": dict(Counter(reason_class(s["reason"]) for s in skipped).most_common())}
    return PairsResult(pairs, skipped, stats)
