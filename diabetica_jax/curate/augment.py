"""Augment with a teacher LLM, one request per (record, task). The tasks, each switched in `augment`:

qa               passage -> question-answer pairs (`qa_per_passage`); a pair is kept when grounded (most of
                 the answer's words appear in the passage). A failed call or a reply with no JSON list
                 rejects the passage itself (as it always has).
mcq_explanation  MCQ -> its answer replaced by the teacher's explanation (`explain_mcqs`); an explanation
                 that picks another option, or none, rejects the MCQ.
dialogue         passage -> one patient-doctor dialogue of `dialogue_turns` user+assistant pairs, asked for as
                 a JSON list of turns. Rejected whole when malformed (no JSON list, a role other than
                 user/assistant or out of turn, an empty turn, fewer turns than asked; turns beyond the asked
                 number are cut off) or when any doctor turn is ungrounded (see grounding.py: every number
                 in the turn must occur in the passage, and at least `dialogue_min_support` of its content
                 words). Dropping the ungrounded turn instead would leave the next question answering a
                 reply that is no longer there, so the dialogue goes, with a reason naming each bad turn.
mcq_rationale    MCQ -> a new record: the same question, answered by reasoning that ends in a final
                 "Answer: X" line (`mcq_rationales`; `rationale_reveal_key` says whether the teacher is told
                 the key). The committed letter is read with `picked_option` from the last line (from the
                 whole reply when the last line names none); another letter, or none, rejects it.
cloze            passage -> fill-in-the-blank items (`cloze_per_passage`), asked for as a JSON list of
                 {sentence with one blank, answer}. Kept when the answer is a span of the passage and the
                 sentence with the answer filled in lines up with one passage sentence
                 (`cloze_min_similarity`) with the answer in the blank's place.

New records (qa, dialogue, mcq_rationale, cloze) carry `provenance.augment` (the task) and
`provenance.augmented_from` (the source record's id); the pipeline sends them through benchmark
decontamination before they join. A failed call (after CachedChat's retries: timeouts, 429, 5xx, and
replies that are not JSON, have no choices or are empty) rejects the record itself for qa and
mcq_explanation and is one rejected output of the dialogue, rationale and cloze tasks, with the reason
class "teacher call failed" and the error (attempts, status) as the reason; a malformed reply of those
tasks is one rejected output too, so the data card still adds up. Failures are not cached: a rerun asks
the teacher again for exactly those (record, task) requests and answers the others from the cache.
`AugmentResult.kind_report` gives per task: asked (requests), generated (outputs kept, after
decontamination), rejected and rejected_by_reason.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from diabetica_jax.curate.answers import recall
from diabetica_jax.curate.config import AugmentSection
from diabetica_jax.curate.grounding import cloze_alignment, is_span, turn_support
from diabetica_jax.data.mcq import picked_option
from diabetica_jax.data.records import Record, Reject, record_id
from diabetica_jax.data.text import language, units
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
DIALOGUE_PROMPT = (
    "Write a consultation between a patient and a doctor about the diabetes care topic of the passage below, in "
    "the passage's language. It has exactly {turns} exchanges: the patient asks or describes a concern, the doctor "
    "replies, {turns} times. Everything the doctor says (facts, numbers, advice) must come from the passage; do "
    "not add anything the passage does not state. Reply with only a JSON list of {entries} objects, each with the "
    "keys \"role\" (\"user\" for the patient, \"assistant\" for the doctor) and \"content\", alternating and "
    "starting with the patient.\n\nPassage:\n{passage}"
)
RATIONALE_PROMPT = (
    "Answer this exam question as a tutor would, in the language of the question: reason step by step through "
    "the question and the options, say why the correct option is right and why the others are wrong, and end "
    "with a final line of the form \"Answer: X\" naming exactly one option.{hint}\n\n{question}"
)
RATIONALE_HINT = " The keyed answer is {letter}."
CLOZE_PROMPT = (
    "Write {n} fill-in-the-blank items that test key facts of the passage below. For each, take one sentence of "
    "the passage, replace one key term, number or short phrase in it with \"____\", and give the removed text, "
    "copied exactly from the passage, as the answer. Keep the passage's language. Reply with only a JSON list of "
    "objects with the keys \"sentence\" and \"answer\".\n\nPassage:\n{passage}"
)

TASKS = ("qa", "mcq_explanation", "dialogue", "mcq_rationale", "cloze")
_DIALOGUE_ROLES = {"user": "user", "patient": "user", "assistant": "assistant", "doctor": "assistant"}
_BLANK = re.compile(r"_{2,}|[(（]\s*[)）]|\[\s*blank\s*\]", re.IGNORECASE)
MIN_CLOZE_CONTEXT = 3  # units around the blank: fewer, and the item is a bare term, not a sentence


class _Malformed(Exception):
    """A teacher reply that held nothing usable."""


@dataclasses.dataclass
class _Outcome:
    """What one (record, task) request produced."""

    task: str
    source: Record | Reject | None = None  # qa / mcq_explanation: what becomes of the record itself
    source_class: str | None = None  # the reason class when `source` is a Reject
    generated: list[Record] = dataclasses.field(default_factory=list)
    rejected: list[tuple[str, Reject]] = dataclasses.field(default_factory=list)  # (reason class, reject)

    def reject(self, reason_class: str, reason: str, where: dict, candidate: Record | None = None,
               raw: str | None = None) -> None:
        reject = Reject("augment", f"{reason_class}: {reason}" if reason else reason_class, where,
                        record=candidate.to_json() if candidate else None, raw=raw)
        self.rejected.append((reason_class, reject))


@dataclasses.dataclass
class AugmentResult:
    kept: list[Record]
    rejects: list[Reject]
    generated: list[Record]
    generated_rejects: list[Reject]
    explained: int = 0
    # per task: requests made, outputs kept, reasons of what was turned away
    kinds: dict[str, dict] = dataclasses.field(default_factory=dict)

    def kind_report(self, leaked: list[Reject] = ()) -> dict[str, dict]:
        """Per task: asked, generated, rejected, rejected_by_reason; `leaked` are the generated records that
        decontamination dropped afterwards (counted as rejected for 'benchmark overlap')."""
        report = {task: {"asked": s["asked"], "generated": s["generated"], "reasons": Counter(s["reasons"])}
                  for task, s in self.kinds.items()}
        for reject in leaked:
            task = (reject.record or {}).get("provenance", {}).get("augment")
            if task in report:
                report[task]["generated"] -= 1
                report[task]["reasons"]["benchmark overlap"] += 1
        return {task: {"asked": s["asked"], "generated": s["generated"], "rejected": sum(s["reasons"].values()),
                       "rejected_by_reason": dict(s["reasons"].most_common())} for task, s in report.items()}


def enabled_tasks(cfg: AugmentSection) -> list[str]:
    on = {"qa": cfg.qa_per_passage > 0, "mcq_explanation": cfg.explain_mcqs, "dialogue": cfg.dialogue_turns > 0,
          "mcq_rationale": cfg.mcq_rationales, "cloze": cfg.cloze_per_passage > 0}
    return [task for task in TASKS if on[task]]


def _tasks_for(record: Record, tasks: list[str]) -> list[str]:
    if record.kind == "passage":
        return [t for t in tasks if t in ("qa", "dialogue", "cloze")]
    if record.kind == "mcq" and record.answer:
        return [t for t in tasks if t in ("mcq_explanation", "mcq_rationale")]
    return []


def augment(records: list[Record], teacher: CachedChat, cfg: AugmentSection) -> AugmentResult:
    tasks = enabled_tasks(cfg)
    run = {"qa": _passage_to_qa, "mcq_explanation": _explain_mcq, "dialogue": _passage_to_dialogue,
           "mcq_rationale": _mcq_rationale, "cloze": _passage_to_cloze}

    def work(item: tuple[Record, str]) -> _Outcome:
        record, task = item
        try:
            return run[task](record, teacher, cfg)
        except (LLMError, _Malformed) as e:
            reason_class = "teacher call failed" if isinstance(e, LLMError) else "malformed reply"
            if task in ("qa", "mcq_explanation"):  # the record itself goes, as it always has
                return _Outcome(task, source=Reject("augment", str(e), record.provenance, record=record.to_json()),
                                source_class=reason_class)
            outcome = _Outcome(task)
            outcome.rejected.append((reason_class, Reject("augment", str(e), _where(record, task))))
            return outcome

    items = [(record, task) for record in records for task in _tasks_for(record, tasks)]
    owners = [index for index, record in enumerate(records) for _ in _tasks_for(record, tasks)]
    result = AugmentResult([], [], [], [])
    result.kinds = {task: {"asked": 0, "generated": 0, "reasons": Counter()} for task in tasks}
    with ThreadPoolExecutor(max_workers=cfg.concurrency) as pool:
        outcomes = list(pool.map(work, items))
    by_record: dict[int, list[_Outcome]] = {}
    for index, outcome in zip(owners, outcomes):
        by_record.setdefault(index, []).append(outcome)
    for index, record in enumerate(records):
        fate: Record | Reject = record
        for outcome in by_record.get(index, []):
            stats = result.kinds[outcome.task]
            stats["asked"] += 1
            if isinstance(outcome.source, Reject):
                fate = outcome.source
                stats["reasons"][outcome.source_class] += 1
            elif outcome.source is not None and outcome.source is not record:
                fate = outcome.source
                result.explained += 1
                stats["generated"] += 1
            stats["generated"] += len(outcome.generated)
            for reason_class, reject in outcome.rejected:
                stats["reasons"][reason_class] += 1
                result.generated_rejects.append(reject)
            result.generated.extend(outcome.generated)
        (result.rejects if isinstance(fate, Reject) else result.kept).append(fate)
    return result


def _where(record: Record, task: str, **extra) -> dict:
    return {**record.provenance, "augmented_from": record.id, "augment": task, **extra}


def _new_record(record: Record, task: str, where: dict, index: str, kind: str, messages: list[dict], **fields):
    body = json.dumps(messages, ensure_ascii=False)
    # from the source record's id (stable however its input path was spelled), not the path
    return Record(id=record_id(f"{record.source}+teacher", record.id, f"{where.get('row')}/{index}", body),
                  source=f"{record.source}+teacher", kind=kind,
                  language=language("\n".join(m["content"] for m in messages)), provenance=where,
                  messages=messages, **fields)


def _ask(teacher: CachedChat, prompt: str, cfg: AugmentSection) -> str:
    return teacher.chat([{"role": "user", "content": prompt}], max_tokens=cfg.max_tokens)


# ---- qa (passage -> question-answer pairs) -------------------------------------------------------

def _passage_to_qa(record: Record, teacher: CachedChat, cfg: AugmentSection) -> _Outcome:
    reply = _ask(teacher, PASSAGE_PROMPT.format(n=cfg.qa_per_passage, passage=record.text), cfg)
    outcome = _Outcome("qa", source=record)
    for i, pair in enumerate(_json_pairs(reply)):
        where = {**record.provenance, "augmented_from": record.id, "pair": i, "augment": "qa"}
        question, answer = str(pair.get("question", "")).strip(), str(pair.get("answer", "")).strip()
        if not question or not answer:
            outcome.rejected.append(("empty question or answer", Reject(
                "augment", "generated pair has an empty question or answer", where,
                raw=json.dumps(pair, ensure_ascii=False))))
            continue
        candidate = Record(id=record_id(f"{record.source}+teacher", record.id, f"{where.get('row')}/{i}", question),
                           source=f"{record.source}+teacher", kind="qa", language=language(question + answer),
                           provenance=where,
                           messages=[{"role": "user", "content": question}, {"role": "assistant", "content": answer}])
        grounding = recall(answer, record.text)
        if grounding < cfg.min_grounding:
            outcome.reject("ungrounded answer", f"{grounding:.0%} of its words are in the passage "
                                                f"< {cfg.min_grounding:.0%}", where, candidate)
            continue
        outcome.generated.append(candidate)
    if not outcome.generated and not outcome.rejected:
        raise _Malformed("teacher reply held no JSON list of question-answer pairs")
    return outcome


def _json_list(reply: str) -> list | None:
    """The JSON list in a reply (from its first '[' to its last ']', so code fences and chatter around it
    do no harm); None when there is none."""
    start, end = reply.find("["), reply.rfind("]")
    if start < 0 or end <= start:
        return None
    try:
        data = json.loads(reply[start : end + 1])
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, list) else None


def _json_pairs(reply: str) -> list[dict]:
    return [d for d in _json_list(reply) or [] if isinstance(d, dict)]


# ---- MCQs ----------------------------------------------------------------------------------------

def _explain_mcq(record: Record, teacher: CachedChat, cfg: AugmentSection) -> _Outcome:
    question = record.messages[0]["content"]
    reply = _ask(teacher, MCQ_PROMPT.format(letter=record.answer, question=question), cfg).strip()
    picked = picked_option(reply)
    if picked is None:
        return _Outcome("mcq_explanation", source=Reject("augment", "explanation names no option", record.provenance,
                                                         record=record.to_json()),
                        source_class="explanation names no option")
    if picked != record.answer:
        return _Outcome("mcq_explanation", source=Reject("augment", f"explanation picks {picked}, the key is "
                                                                    f"{record.answer}", record.provenance,
                                                         record=record.to_json()),
                        source_class="explanation picks another option")
    messages = [record.messages[0], {"role": "assistant", "content": reply}]
    return _Outcome("mcq_explanation", source=dataclasses.replace(record, messages=messages,
                                                                  meta={**record.meta, "explained_by": teacher.name}))


def concluded_option(reply: str) -> str | None:
    """The option a rationale concludes with: `picked_option` of its last non-empty line, else of the whole."""
    lines = [line for line in reply.strip().splitlines() if line.strip()]
    return (picked_option(lines[-1]) if lines else None) or picked_option(reply)


def _mcq_rationale(record: Record, teacher: CachedChat, cfg: AugmentSection) -> _Outcome:
    question = record.messages[0]["content"]
    hint = RATIONALE_HINT.format(letter=record.answer) if cfg.rationale_reveal_key else ""
    reply = _ask(teacher, RATIONALE_PROMPT.format(hint=hint, question=question), cfg).strip()
    outcome = _Outcome("mcq_rationale")
    where = _where(record, "mcq_rationale")
    if not reply:
        outcome.reject("malformed reply", "empty rationale", where)
        return outcome
    candidate = _new_record(record, "mcq_rationale", where, "mcq_rationale", "mcq",
                            [record.messages[0], {"role": "assistant", "content": reply}],
                            options=dict(record.options or {}), answer=record.answer,
                            meta={"generated_by": teacher.name})
    picked = concluded_option(reply)
    if picked is None:
        outcome.reject("rationale names no option", f"key is {record.answer}", where, candidate)
    elif picked != record.answer:
        outcome.rejected.append(("rationale picks another option", Reject(
            "augment", f"rationale picks {picked}, key is {record.answer}", where, record=candidate.to_json())))
    else:
        outcome.generated.append(candidate)
    return outcome


# ---- dialogue (passage -> patient-doctor consultation) --------------------------------------------

def parse_dialogue(reply: str, turns: int) -> tuple[list[dict[str, str]] | None, str | None]:
    """(messages, None) for a well-formed reply of at least `turns` user+assistant pairs (cut to that many),
    else (None, what is wrong)."""
    data = _json_list(reply)
    if data is None:
        return None, "no JSON list of turns in the reply"
    messages: list[dict[str, str]] = []
    for i, turn in enumerate(data[: 2 * turns]):
        expected = "user" if i % 2 == 0 else "assistant"
        if not isinstance(turn, dict):
            return None, f"turn {i + 1} is not an object with role and content"
        given = str(turn.get("role", "")).strip().lower()
        role = _DIALOGUE_ROLES.get(given)
        if role is None:
            return None, f"turn {i + 1} has role {given!r}, not user (patient) or assistant (doctor)"
        if role != expected:
            return None, f"turn {i + 1} is {role}, expected {expected} (turns alternate, the patient first)"
        content = turn.get("content")
        if not isinstance(content, str) or not content.strip():
            return None, f"turn {i + 1} ({role}) is empty"
        messages.append({"role": role, "content": content.strip()})
    if len(messages) < 2 * turns:
        return None, f"{len(messages)} turns, asked for {2 * turns} ({turns} user+assistant pairs)"
    return messages, None


def ungrounded_turns(messages: list[dict[str, str]], passage: str, min_support: float) -> list[str]:
    """One description per assistant turn that the passage does not support (empty: all grounded)."""
    problems = []
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    for k, content in enumerate(answers, 1):
        support, missing, missing_numbers = turn_support(content, passage)
        found = []
        if missing_numbers:
            found.append(f"numbers not in the passage: {', '.join(missing_numbers)}")
        if support < min_support:
            found.append(f"{support:.0%} of its content words are in the passage < {min_support:.0%} "
                         f"(not found: {', '.join(missing[:8])})")
        if found:
            problems.append(f"assistant turn {k} of {len(answers)}: " + "; ".join(found))
    return problems


def _passage_to_dialogue(record: Record, teacher: CachedChat, cfg: AugmentSection) -> _Outcome:
    n = cfg.dialogue_turns
    reply = _ask(teacher, DIALOGUE_PROMPT.format(turns=n, entries=2 * n, passage=record.text), cfg)
    outcome = _Outcome("dialogue")
    where = _where(record, "dialogue")
    messages, problem = parse_dialogue(reply, n)
    if messages is None:
        outcome.reject("malformed dialogue", problem, where, raw=reply[:2000])
        return outcome
    candidate = _new_record(record, "dialogue", where, "dialogue", "dialogue", messages,
                            meta={"generated_by": teacher.name})
    problems = ungrounded_turns(messages, record.text, cfg.dialogue_min_support)
    if problems:
        outcome.reject("ungrounded turn", " | ".join(problems), where, candidate)
    else:
        outcome.generated.append(candidate)
    return outcome


# ---- cloze (passage -> fill-in-the-blank items) ---------------------------------------------------

def _passage_to_cloze(record: Record, teacher: CachedChat, cfg: AugmentSection) -> _Outcome:
    reply = _ask(teacher, CLOZE_PROMPT.format(n=cfg.cloze_per_passage, passage=record.text), cfg)
    outcome = _Outcome("cloze")
    items = _json_list(reply)
    if not items:
        outcome.reject("malformed cloze", "no JSON list of items in the reply", _where(record, "cloze"),
                       raw=reply[:2000])
        return outcome
    for i, item in enumerate(items[: cfg.cloze_per_passage]):
        where = _where(record, "cloze", item=i)
        raw = json.dumps(item, ensure_ascii=False)
        if not isinstance(item, dict):
            outcome.reject("malformed cloze", f"item {i} is not an object with sentence and answer", where, raw=raw)
            continue
        sentence, answer = str(item.get("sentence", "")).strip(), str(item.get("answer", "")).strip()
        if not sentence or not answer:
            outcome.reject("malformed cloze", f"item {i} has an empty sentence or answer", where, raw=raw)
            continue
        blanks = len(_BLANK.findall(sentence))
        if blanks != 1:
            outcome.reject("malformed cloze", f"item {i} has {blanks} blanks, needs exactly one", where, raw=raw)
            continue
        left, right = _BLANK.split(sentence, maxsplit=1)
        blank = "（）" if language(sentence + answer) == "zh" else "____"
        candidate = _new_record(record, "cloze", where, f"cloze/{i}", "cloze",
                                [{"role": "user", "content": f"{left}{blank}{right}".strip()},
                                 {"role": "assistant", "content": answer}], meta={"generated_by": teacher.name})
        if len(units(left)) + len(units(right)) < MIN_CLOZE_CONTEXT:
            outcome.reject("malformed cloze", f"item {i}: too little context around the blank", where, candidate)
            continue
        if not is_span(answer, record.text):
            outcome.reject("answer not in passage", f"item {i}: {answer!r} is not a span of the passage", where,
                           candidate)
            continue
        score, aligned, closest = cloze_alignment(left, answer, right, record.text)
        if score < cfg.cloze_min_similarity:
            outcome.reject("sentence not in passage", f"item {i}: at best {score:.0%} of the filled-in sentence "
                                                      f"lines up with a passage sentence < "
                                                      f"{cfg.cloze_min_similarity:.0%}", where, candidate)
        elif not aligned:
            outcome.reject("answer misplaced", f"item {i}: {answer!r} does not fill the blank's place in the "
                                               f"closest passage sentence ({closest[:80]!r})", where, candidate)
        else:
            outcome.generated.append(candidate)
    return outcome
