"""The Diabetica paper's clinical roles as evaluation tasks, rated by the judge on a replaceable rubric.

- consult:   a patient's question -> the model's answer. The judge rates it on the rubric's dimensions
             (default `rubrics/consult.txt`: readability, relevance, correctness, completeness, safety,
             empathy, each 1-5). A reference answer in the file (e.g. a physician's) is rated the same way in
             the same run, blind (the judge is not told which text it rates), so model and reference sit in
             one table, with their paired difference.
- educate:   an exam MCQ and its key -> an explanation for a student that starts with "Answer: X". The
             judge, who sees the key, rates correctness, readability and helpfulness (1-5). The letter the
             explanation commits to is read with `data.mcq.picked_option` (`Answer: B`, `答案：B`, a leading
             `B.`): `right_key`, `wrong_key` (a letter other than the key) and `no_key` (no letter) are
             counted, `wrong_key_rate` = wrong_key / explanations generated, with its 95% Wilson interval, and
             the ratings are reported over all items and over the right-key items.
- summarize: a clinical note -> a summary. ROUGE-1/2/L F1 over word tokens (metrics.rouge_words) against the
             reference summary where the file gives one, and the judge's completeness, accuracy and
             hallucination_free (1-5; hallucination_free 5 = no fact absent from the note, 1 = much of the
             summary unsupported by it); a reference summary is rated too.

One judge call per (item, text rated) asks for every dimension at once and a JSON reply (rubric.py reads it).
A dimension the reply does not give a usable number for is None: counted in `n_unparsed`, left out of its
mean, never scored 0. Per-dimension means carry a 95% Student t interval (metrics.mean_ci95: mean +-
t(0.975, n-1) * s / sqrt(n) over the items the judge rated on that dimension; None below two items).
Items whose generation failed (an endpoint's request after its retries) are counted in `n_failed` and left
out of every metric; the judge's own failures in `n_judge_failed`.

These tasks have no faithful variant (the paper published no protocol for them): both modes ask with the
prompts below, under the mode's system prompt, decoding and judge settings.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from diabetica_jax.data.mcq import picked_option
from diabetica_jax.evaluation import metrics
from diabetica_jax.evaluation.clinical_data import ClinicalItem
from diabetica_jax.evaluation.config import CLINICAL_TASKS
from diabetica_jax.evaluation.prompts import Prompts
from diabetica_jax.evaluation.rubric import Rubric, parse_ratings
from diabetica_jax.evaluation.tasks import conversation
from diabetica_jax.llm import LLMError

# Own decoding of the long-form tasks: greedy with the dialogue task's mild repetition penalty, since a small
# model decoding greedily over hundreds of tokens otherwise tends to loop.
DECODING = {"consult": {"max_new_tokens": 512, "repetition_penalty": 1.1},
            "educate": {"max_new_tokens": 384, "repetition_penalty": 1.1},
            "summarize": {"max_new_tokens": 384, "repetition_penalty": 1.1}}

USER_PROMPTS = {
    "consult": "{text}",  # the patient's own words, as a patient would ask
    "educate": ("Explain this exam question to a medical student. Begin with the line \"Answer: X\", X being "
                "the letter of the best option; then explain why it is right and why each other option is wrong. "
                "Write in the language of the question.\n\n{text}"),
    "summarize": ("Summarise this clinical note for the care team: diagnoses, key results with their values, "
                  "current medications and changes, and the plan. Use only facts stated in the note; at most "
                  "120 words, in the language of the note.\n\nNote:\n{text}"),
}

JUDGE_PROMPT = """You are rating {subject} for an evaluation of a diabetes care assistant. Rate only what is \
written, against the rubric; a longer text is not a better one.

{context}

{label} to rate:
<<<
{answer}
>>>

Rubric (every dimension from {low} = worst to {high} = best):

{rubric}

Reply with one JSON object and nothing else, one number from {low} to {high} for every dimension:
{reply_format}"""

# task -> (what is rated, the context the judge reads, the name of the rated text)
JUDGED = {
    "consult": ("an answer to a patient's question", "Patient's question:\n{text}", "Answer"),
    "educate": ("an explanation of an exam question written for a medical student; it should argue for the "
                "keyed option", "Exam question:\n{text}\n\nAnswer key: {key}. {key_text}", "Explanation"),
    "summarize": ("a summary of a clinical note; judge every fact against the note only",
                  "Clinical note:\n{text}", "Summary"),
}

# task -> {group: label}: whose ratings the report holds, in table order
GROUPS = {"consult": {"model": "model", "reference": "reference"},
          "educate": {"all": "all items", "right_key": "right-key items"},
          "summarize": {"model": "model", "reference": "reference summary"}}
CI_METHOD = "95% Student t interval: mean +- t(0.975, n-1) * s / sqrt(n), s the sample std (ddof 1); None for n < 2"
KEY_RULE = ("data.mcq.picked_option: the first 'Answer: X' / '答案：X' or a leading 'X.' in the explanation, "
            "among the item's options")


def max_new_tokens(prompts: Prompts, task: str) -> int:
    return prompts.decoding.get(task, {}).get("max_new_tokens", DECODING[task]["max_new_tokens"])


def judge_message(task: str, item: ClinicalItem, answer: str, rubric: Rubric) -> str:
    subject, context, label = JUDGED[task]
    key_text = (item.options or {}).get(item.key or "", "")
    return JUDGE_PROMPT.format(subject=subject, context=context.format(text=item.text, key=item.key,
                                                                       key_text=key_text),
                               label=label, answer=answer, low=rubric.low, high=rubric.high,
                               rubric=rubric.text(), reply_format=rubric.reply_format())


def judge_ratings(judge, prompts: Prompts, rubric: Rubric, message: str) -> dict:
    """{'ratings': {dimension: value or None}, 'judge_status', 'judge_reply'}. Status: 'rated' (every
    dimension read), 'unparsed: a, b' (those dimensions not), 'unparsed' (none), 'failed: ...' (no reply)."""
    try:
        reply = judge.chat([{"role": "user", "content": message}], max_tokens=prompts.judge_max_tokens,
                           temperature=prompts.judge_temperature)
    except LLMError as e:
        return {"ratings": dict.fromkeys(rubric.names), "judge_status": f"failed: {e}", "judge_reply": None}
    ratings = parse_ratings(reply, rubric)
    missing = [name for name, value in ratings.items() if value is None]
    status = "rated" if not missing else "unparsed" if len(missing) == len(ratings) else (
        "unparsed: " + ", ".join(missing))
    return {"ratings": ratings, "judge_status": status, "judge_reply": reply}


def run_clinical(task: str, model, items: list[ClinicalItem], prompts: Prompts, rubric: Rubric, judge=None,
                 concurrency: int = 4, sampling=None) -> tuple[list[dict], dict]:
    """Generate, score and judge one file's items of a clinical task: (per-item results, summary)."""
    if task not in CLINICAL_TASKS:
        raise ValueError(f"{task!r} is not a clinical task ({', '.join(CLINICAL_TASKS)})")
    texts = [USER_PROMPTS[task].format(text=item.text) for item in items]
    outputs = model.generate([conversation(prompts, t) for t in texts], max_new_tokens(prompts, task), sampling)
    failed = dict(getattr(model, "failures", None) or [])
    results = []
    for i, (item, text, output) in enumerate(zip(items, texts, outputs)):
        row = {"id": item.id, "row": item.row, "prompt": text, "output": output}
        if task == "educate":
            picked = picked_option(output)
            picked = picked if picked in (item.options or {}) else None
            row.update(key=item.key, picked=None if i in failed else picked,
                       key_status=None if i in failed else "no letter" if picked is None
                       else "right" if picked == item.key else "wrong")
        else:
            row["reference"] = item.reference
        if task == "summarize":
            scores = (metrics.rouge_words(output, item.reference) if item.reference is not None and i not in failed
                      else dict.fromkeys(("rouge1", "rouge2", "rougeL")))
            row.update(scores)
        if i in failed:
            row.update(status=f"failed: {failed[i]}", ratings=None, judge_status=f"failed: generation: {failed[i]}",
                       judge_reply=None)
        results.append(row)

    # one job per text the judge rates: the model's output, and a reference where the file gives one
    jobs = [(i, "") for i in range(len(items)) if i not in failed]
    jobs += [(i, "reference_") for i, item in enumerate(items) if task != "educate" and item.reference is not None]
    if judge is None:
        verdicts = [{"ratings": None, "judge_status": "not judged", "judge_reply": None} for _ in jobs]
    else:
        def rate(job):
            i, prefix = job
            answer = items[i].reference if prefix else outputs[i]
            return judge_ratings(judge, prompts, rubric, judge_message(task, items[i], answer, rubric))

        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            verdicts = list(pool.map(rate, jobs))
    for (i, prefix), verdict in zip(jobs, verdicts):
        results[i].update({prefix + k: v for k, v in verdict.items()})
    if task != "educate":
        for row in results:
            if row["reference"] is None:
                row.update(reference_ratings=None, reference_judge_status="no reference", reference_judge_reply=None)
    return results, task_summary(task, results, rubric, getattr(judge, "name", None))


def _group_stats(rows: list[dict], prefix: str, rubric: Rubric) -> dict:
    """{dimension: {mean, ci95, n_scored, n_unparsed}} over the rows the judge replied for (`prefix`:
    '' for the model's texts, 'reference_' for the references)."""
    replied = [r for r in rows if r.get(prefix + "judge_reply") is not None]
    stats = {}
    for name in rubric.names:
        values = [r[prefix + "ratings"][name] for r in replied]
        summary = metrics.mean_ci95(values)
        stats[name] = {"mean": summary["mean"], "ci95": summary["ci95"], "n_scored": summary["n"],
                       "n_unparsed": len(values) - summary["n"]}
    return stats


def _paired_difference(rows: list[dict], rubric: Rubric) -> dict:
    """{dimension: {mean, ci95, n_pairs}} of model - reference over the items where both were rated on it."""
    difference = {}
    for name in rubric.names:
        pairs = [r["ratings"][name] - r["reference_ratings"][name] for r in rows
                 if (r.get("ratings") or {}).get(name) is not None
                 and (r.get("reference_ratings") or {}).get(name) is not None]
        summary = metrics.mean_ci95(pairs)
        difference[name] = {"mean": summary["mean"], "ci95": summary["ci95"], "n_pairs": summary["n"]}
    return difference


def _judge_failed(row: dict, prefix: str) -> bool:
    return str(row.get(prefix + "judge_status") or "").startswith("failed: ")


def _overall(stats: dict) -> float | None:
    """The mean of a group's dimension means (each dimension weighs the same), None when none has one."""
    means = [s["mean"] for s in stats.values() if s["mean"] is not None]
    return sum(means) / len(means) if means else None


def task_summary(task: str, results: list[dict], rubric: Rubric, judge_name: str | None) -> dict:
    """The summary of a clinical task over `results` (one file's, or every file's: computed from the items, so
    files pool by item). Keys in report_<task>.json: see the module docstring and docs/evaluate.md."""
    generated = [r for r in results if "status" not in r]
    replied = [r for r in generated if r.get("judge_reply") is not None]
    summary = {
        "n_items": len(results), "n_failed": len(results) - len(generated), "judge": judge_name,
        "n_judged": len(replied), "n_unparsed": sum(r["judge_status"] != "rated" for r in replied),
        # the judge's own failures (no reply after its retries), over the model's texts and the references
        "n_judge_failed": sum(_judge_failed(r, "") for r in generated) + sum(_judge_failed(r, "reference_")
                                                                              for r in results),
        "rubric": rubric.path, "scale": [rubric.low, rubric.high], "dimensions": rubric.names,
        "ci_method": CI_METHOD, "groups": GROUPS[task],
    }
    if task == "educate":
        right = [r for r in generated if r["key_status"] == "right"]
        wrong = sum(r["key_status"] == "wrong" for r in generated)
        ratings = {"all": _group_stats(generated, "", rubric), "right_key": _group_stats(right, "", rubric)}
        summary.update(right_key=len(right), wrong_key=wrong, no_key=sum(r["key_status"] == "no letter"
                                                                         for r in generated),
                       wrong_key_rate=wrong / len(generated) if generated else None,
                       wrong_key_rate_ci95=list(metrics.wilson_interval(wrong, len(generated))) if generated
                       else None, key_rule=KEY_RULE)
    else:
        with_reference = [r for r in results if r["reference"] is not None]
        ratings = {"model": _group_stats(generated, "", rubric)}
        summary["n_with_reference"] = len(with_reference)
        if with_reference:
            ratings["reference"] = _group_stats(with_reference, "reference_", rubric)
            summary["difference"] = _paired_difference(results, rubric)
    summary["ratings"] = ratings
    summary["overall"] = {group: _overall(stats) for group, stats in ratings.items()}
    summary["overall_mean"] = summary["overall"]["all" if task == "educate" else "model"]
    if task == "summarize":
        scored = [r for r in generated if r["rouge1"] is not None]
        summary["rouge"] = {}
        for key in ("rouge1", "rouge2", "rougeL"):
            stats = metrics.mean_ci95([r[key] for r in scored])
            summary["rouge"][key] = {"mean": stats["mean"], "ci95": stats["ci95"], "n": stats["n"]}
            summary[key] = stats["mean"]
        summary["rouge_tokens"] = "NFKC, lower case, split at whitespace and punctuation, one token per CJK character"
    return summary


def headline(task: str, summary: dict) -> dict:
    """The flat numbers of a clinical summary that the runner tracks over seeds: overall_mean, mean_<dimension>
    of the model's texts (educate: all items), and wrong_key_rate (educate) or rouge1/2/L (summarize)."""
    group = "all" if task == "educate" else "model"
    flat = {"overall_mean": summary.get("overall_mean")}
    flat.update({f"mean_{name}": stats["mean"] for name, stats in summary.get("ratings", {}).get(group, {}).items()})
    if task == "educate":
        flat["wrong_key_rate"] = summary.get("wrong_key_rate")
    if task == "summarize":
        flat.update({key: summary.get(key) for key in ("rouge1", "rouge2", "rougeL")})
    return flat
