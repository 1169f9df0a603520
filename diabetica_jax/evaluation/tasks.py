"""The three Diabetica tasks, run against one model: MCQ, fill-in-the-blank, judged open dialogue.

A task talks to the model under test through two methods and two attributes only, which the local JAX
model (`ModelUnderTest` here) and an OpenAI-compatible endpoint (`evaluation.remote.RemoteModel`) both have:

- `generate(conversations, max_new_tokens, sampling) -> list[str]`: one reply per conversation (a list of
  chat messages: the system message, if any, and the user message; the model applies its own chat
  template). `sampling` is a `SamplingParams`, or None for the model's defaults (local: greedy; an
  endpoint: its own defaults).
- `letter_logprobs(conversations, letters) -> np.ndarray | None`: [n, len(letters)] log-probabilities of
  each letter as the next token after the generation prompt (a row of NaN: that item failed); None when the
  model cannot say (the MCQ log-likelihood metric is then reported as not available).
- `name`, and `decoding`: the model's default decoding as a dict (local: read from its
  generation_config.json by `hf.read_generation_config`; an endpoint: None).

An endpoint may also list failed requests in `failures` ([(index, reason)], read after `generate`): those
items are recorded as failed and left out of the task's metrics (counted in `n_failed`), not scored wrong.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from diabetica_jax.data.mcq import PICKED_RULE, picked_option
from diabetica_jax.evaluation import metrics
from diabetica_jax.evaluation.data import Item
from diabetica_jax.evaluation.judge import judge_answer
from diabetica_jax.evaluation.perplexity import MAX_TOKENS, passage_nll
from diabetica_jax.evaluation.prompts import Prompts
from diabetica_jax.generate import SamplingParams, left_pad
from diabetica_jax.generate.chat import chat_prompt, engine_for
from diabetica_jax.hf.generation_config import FILTER_OFF, HF_SAMPLING_DEFAULTS, read_generation_config

LETTERS = "ABCDEFGH"
NOT_AVAILABLE = "not available (the model gives no letter log-probabilities)"
NO_USABLE_SCORE = "not available (no item has a usable letter log-probability: NaN or -inf over its options)"


def task_sampling(prompts: Prompts, task: str, faithful: bool, decoding: dict | None,
                  seed: int) -> SamplingParams | None:
    """How one task decodes. Own mode: greedy, with the own prompts' repetition penalty. Faithful mode: the
    model's `decoding` (its generation_config.json) with the protocol's explicit per-task settings on top
    (the dialogue task's repetition_penalty 1.1) and `seed`; None for a model without `decoding` (an
    endpoint): the endpoint's own defaults, since the protocol defines no temperature for API models."""
    overrides = prompts.decoding.get(task, {})
    if not faithful:
        return SamplingParams(repetition_penalty=float(overrides.get("repetition_penalty", 1.0)), seed=seed)
    if decoding is None:
        return None
    penalty = float(overrides.get("repetition_penalty", decoding.get("repetition_penalty", 1.0)))
    if not decoding.get("do_sample"):
        return SamplingParams(repetition_penalty=penalty, seed=seed)
    def value(key):
        v = decoding.get(key)
        return (FILTER_OFF.get(key, HF_SAMPLING_DEFAULTS[key])) if v is None else v

    return SamplingParams(temperature=float(value("temperature")), top_k=int(value("top_k")),
                          top_p=float(value("top_p")), repetition_penalty=penalty, seed=seed)


def describe_sampling(sampling: SamplingParams | None, max_new_tokens: int) -> dict:
    if sampling is None:
        return {"strategy": "endpoint defaults", "max_new_tokens": max_new_tokens}
    if sampling.greedy:
        return {"strategy": "greedy", "repetition_penalty": sampling.repetition_penalty,
                "max_new_tokens": max_new_tokens}
    return {"strategy": "sampling", "temperature": sampling.temperature, "top_p": sampling.top_p,
            "top_k": sampling.top_k, "repetition_penalty": sampling.repetition_penalty,
            "max_new_tokens": max_new_tokens}


def conversation(prompts: Prompts, text: str) -> list[dict[str, str]]:
    return ([{"role": "system", "content": prompts.system}] if prompts.system else []) + [
        {"role": "user", "content": text}]


class ModelUnderTest:
    """A local JAX model (and its tokenizer) as the model under test; `decoding` as read_generation_config
    gives it (None: greedy)."""

    def __init__(self, model, tokenizer, name: str, mesh=None, batch_size: int = 16, progress: bool = True,
                 decoding: dict | None = None):
        self.tokenizer, self.name, self.batch_size, self.progress = tokenizer, name, batch_size, progress
        self.decoding = decoding if decoding is not None else read_generation_config(None)
        self.engine = engine_for(model, tokenizer, mesh, slots=batch_size)
        self.model = model  # lm-eval tasks (harness.py) score with it beside the engine
        self.graphdef, self.state = nnx.split(model)
        self.failures: list[tuple[int, str]] = []  # a local model does not fail per item

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        return chat_prompt(self.tokenizer, messages)

    def generate(self, conversations: list[list[dict[str, str]]], max_new_tokens: int,
                 sampling: SamplingParams | None = None) -> list[str]:
        params = sampling or SamplingParams()
        prompt_ids = [self.prompt_ids(c) for c in conversations]
        outputs: list[str] = []
        for start in tqdm(range(0, len(prompt_ids), self.batch_size), desc="generating", unit="batch",
                          disable=not self.progress):
            chunk = prompt_ids[start : start + self.batch_size]
            for ids in self.engine.generate(chunk, max_new_tokens, batch_sampling(params, start)):
                outputs.append(self.tokenizer.decode(ids, skip_special_tokens=True))
        return outputs

    def text_nll(self, texts: list[str]) -> list[tuple[float, int]]:
        """(summed negative log-likelihood, predicted tokens) of each text, read as plain text (no template)."""
        ids = [self.tokenizer.encode(t, add_special_tokens=False)[:MAX_TOKENS] or [self.engine.pad_id]
               for t in texts]
        return passage_nll(self.graphdef, self.state, ids, self.engine.pad_id, self.batch_size)

    def letter_logprobs(self, conversations: list[list[dict[str, str]]], letters: str) -> np.ndarray:
        """Log-probabilities of each letter's (first) token as the next token: [n, len(letters)]."""
        token_ids = jnp.asarray([self.tokenizer.encode(ch, add_special_tokens=False)[0] for ch in letters],
                                jnp.int32)
        prompt_ids = [self.prompt_ids(c) for c in conversations]
        rows = []
        for start in range(0, len(prompt_ids), self.batch_size):
            chunk = prompt_ids[start : start + self.batch_size]
            padded = left_pad(chunk, self.engine.pad_id, bucketed=True)
            rows.append(np.asarray(_last_logprobs(self.graphdef)(self.state, padded, token_ids))[: len(chunk)])
        return np.concatenate(rows) if rows else np.zeros((0, len(letters)))


def batch_sampling(params: SamplingParams, start: int) -> SamplingParams:
    """The sampling of the batch that starts at item `start`: its own seed, derived deterministically from
    (seed, start), so that items i, i + batch_size, ... do not share the same sampling noise (within the
    batch, the batcher gives prompt j a seed of its own from this one: generate/batcher.py's prompt_seed).
    Greedy decoding draws no noise and is returned unchanged."""
    if params.greedy:
        return params
    return dataclasses.replace(params, seed=(params.seed * 1_000_003 + start) % 2**31)


@functools.cache
def _last_logprobs(graphdef):
    @jax.jit
    def run(state, padded, token_ids):
        model = nnx.merge(graphdef, state)
        segments = padded.valid.astype(jnp.int32)  # padding is segment 0, real tokens segment 1
        hidden = model.hidden_states(padded.tokens, padded.positions, segments)
        logits = model.logits(hidden[:, -1]).astype(jnp.float32)
        return jax.nn.log_softmax(logits, axis=-1)[:, token_ids]

    return run


# The rule each mode reads a reply's letter with, in words, for the report (`answer_rule`).
ANSWER_RULES = {
    "picked": f"own: {PICKED_RULE}; a reply without one is unanswered",
    "first_letter": "the paper's (faithful): the first A-E character anywhere in the reply, inside words too",
}


def extract_letter(reply: str, options: dict[str, str] | None, rule: str) -> str | None:
    """The letter a reply answers with. `first_letter`, the protocol's rule kept exactly: the first A-E
    character anywhere (so 'Answer: B' reads as A). `picked` (own mode): the option the reply commits to as a
    standalone letter (data.mcq.picked_option), None when it commits to none or to a letter that is not an
    option: random text never scores."""
    if rule == "first_letter":
        return next((ch for ch in reply if ch in "ABCDE"), None)
    picked = picked_option(reply)
    return picked if picked in (options or {}) else None


def _generate(model, prompts: Prompts, texts: list[str], max_new_tokens: int, sampling):
    outputs = model.generate([conversation(prompts, t) for t in texts], max_new_tokens, sampling)
    return outputs, dict(getattr(model, "failures", None) or [])


def run_mcq(model, items: list[Item], prompts: Prompts, sampling: SamplingParams | None = None,
            letter_scores: dict | None = None) -> tuple[list[dict], dict]:
    """`letter_scores`: a dict that keeps the (deterministic) letter log-probabilities between seeds."""
    texts = [prompts.mcq.format(question=item.question) for item in items]
    max_new = prompts.decoding.get("mcq", {}).get("max_new_tokens", 16)
    outputs, failed = _generate(model, prompts, texts, max_new, sampling)
    key = tuple((item.id, text) for item, text in zip(items, texts))
    if letter_scores is not None and key in letter_scores:
        scores = letter_scores[key]
    else:
        scores = model.letter_logprobs([conversation(prompts, t) for t in texts], LETTERS)
        if letter_scores is not None:
            letter_scores[key] = scores
    results = []
    for i, (item, text, output) in enumerate(zip(items, texts, outputs)):
        prediction = extract_letter(output, item.options, prompts.mcq_rule)
        row = {"id": item.id, "prompt": text, "output": output, "answer": item.answer,
               "prediction": prediction, "correct": prediction == item.answer}
        if i in failed:
            row.update(prediction=None, correct=None, status=f"failed: {failed[i]}")
        row.update(loglik_prediction=None, loglik_correct=None)
        if scores is not None:
            row["letter_probability"] = _letter_probability(np.asarray(scores[i], dtype=float), item.options)
            best = _loglik_letter(np.asarray(scores[i], dtype=float), item.options)
            if best is None:  # no usable score over the allowed letters: left out of loglik_accuracy
                row["loglik_status"] = "unavailable"
            else:
                row.update(loglik_prediction=best, loglik_correct=best == item.answer)
        results.append(row)
    return results, mcq_metrics(results, prompts.mcq_rule)


def _letter_probability(score: np.ndarray, options: dict[str, str] | None) -> float | None:
    """The probability that the reply starts with one of the item's option letters: how well the model learned
    the answer format, smoothly (a tiny model moves it by orders of magnitude long before its greedy reply
    starts with a letter). None where the options are unknown or the scores failed (NaN)."""
    allowed = [j for j, letter in enumerate(LETTERS) if letter in (options or {})]
    values = score[allowed]
    if not allowed or np.isnan(values).any():
        return None
    return float(np.exp(values).sum())


def _loglik_letter(score: np.ndarray, options: dict[str, str] | None) -> str | None:
    """The most likely allowed letter, or None where the row says nothing: the item's options unknown, or
    every allowed letter's score NaN (a failed log-probability request) or -inf (no allowed letter among
    the endpoint's top log-probabilities)."""
    if not options:
        return None
    allowed = [j for j, letter in enumerate(LETTERS) if letter in options]
    values = score[allowed]
    if not allowed or not np.isfinite(values[~np.isnan(values)]).any():
        return None
    return LETTERS[allowed[int(np.nanargmax(values))]]


def mcq_metrics(results: list[dict], rule: str) -> dict:
    """accuracy over the items that did not fail, its letters read by `rule` (named in `answer_rule`);
    loglik_accuracy over the items with a log-likelihood prediction (`loglik_unavailable`: the items without
    one), 'not available' when no item has one."""
    scored = [r for r in results if r.get("correct") is not None]
    n = len(scored)
    correct = sum(bool(r["correct"]) for r in scored)
    summary = {"n_items": len(results), "accuracy": correct / n if n else float("nan"),
               "accuracy_ci95": metrics.wilson_interval(correct, n)}
    by_loglik = [r for r in results if r.get("loglik_correct") is not None]
    if results and not by_loglik:
        unusable = any(r.get("loglik_status") == "unavailable" for r in results)
        summary.update(loglik_accuracy=NO_USABLE_SCORE if unusable else NOT_AVAILABLE, loglik_accuracy_ci95=None)
    else:
        by_likelihood = sum(bool(r["loglik_correct"]) for r in by_loglik)
        total = len(by_loglik)
        summary.update(loglik_accuracy=by_likelihood / total if total else float("nan"),
                       loglik_accuracy_ci95=metrics.wilson_interval(by_likelihood, total))
    summary["loglik_unavailable"] = len(results) - len(by_loglik)
    summary["unanswered"] = sum(r["prediction"] is None and r.get("correct") is not None for r in results)
    # answer-format compliance: the share of replies with a readable letter (a model can learn the format
    # long before it knows the answers, so this is reported apart from accuracy)
    summary["unanswered_rate"] = summary["unanswered"] / n if n else float("nan")
    summary["answered_rate"] = 1.0 - summary["unanswered_rate"] if n else float("nan")
    summary["n_failed"] = len(results) - n
    masses = [r["letter_probability"] for r in results if r.get("letter_probability") is not None]
    summary["letter_probability"] = float(np.mean(masses)) if masses else None
    summary["answer_rule"] = ANSWER_RULES[rule]
    return summary


def run_cloze(model, items: list[Item], prompts: Prompts, bertscore_model: str | None = None,
              sampling: SamplingParams | None = None, faithful: bool = False):
    """Own mode: the stripped reply against the answer, ROUGE over non-whitespace characters, `bleu` =
    `bleu_char`. Faithful: the raw reply, ROUGE over raw characters (whitespace included), `bleu` =
    `bleu_word` (the paper's). Both BLEUs are always reported."""
    texts = [prompts.cloze.format(question=item.question) for item in items]
    max_new = prompts.decoding.get("cloze", {}).get("max_new_tokens", 32)
    outputs, failed = _generate(model, prompts, texts, max_new, sampling)
    results = []
    for i, (item, text, output) in enumerate(zip(items, texts, outputs)):
        prediction = output if faithful else output.strip()
        row = {"id": item.id, "prompt": text, "output": output, "answer": item.answer, "prediction": prediction}
        if i in failed:
            row["status"] = f"failed: {failed[i]}"
        else:
            row.update(rouge1=metrics.rouge_n(prediction, item.answer, 1, keep_whitespace=faithful),
                       rouge2=metrics.rouge_n(prediction, item.answer, 2, keep_whitespace=faithful),
                       rougeL=metrics.rouge_l(prediction, item.answer, keep_whitespace=faithful),
                       bleu_char=metrics.bleu_char(prediction, item.answer),
                       bleu_word=metrics.bleu_word(prediction, item.answer))
            row["bleu"] = row["bleu_word"] if faithful else row["bleu_char"]
        results.append(row)
    scored = [r for r in results if "status" not in r]
    summary = {"n_items": len(results), "n_failed": len(results) - len(scored)}
    for key in ("rouge1", "rouge2", "rougeL", "bleu", "bleu_char", "bleu_word"):
        summary[key] = float(np.mean([r[key] for r in scored])) if scored else float("nan")
    summary["bleu_kind"] = "bleu_word" if faithful else "bleu_char"
    summary["bleu_word_tokenizer"] = metrics.bleu_word_tokenizer()
    summary["rouge_whitespace"] = "kept (raw characters)" if faithful else "dropped"
    summary["bertscore_f1"] = _bertscore([r["prediction"] for r in scored],
                                         [r["answer"] for r in scored], bertscore_model)
    return results, summary


MBERT_LAYERS = 9  # bert_score's layer for bert-base-multilingual-cased (the paper's BERTScore model)
NEEDS_MBERT = "not computed (bertscore_model must be a local bert-base-multilingual-cased directory)"


def _is_mbert(model_dir: str) -> bool:
    """The directory's config.json is bert-base-multilingual-cased's: a BERT of 12 layers, vocabulary 119547."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (isinstance(config, dict) and config.get("model_type") == "bert"
            and config.get("num_hidden_layers") == 12 and config.get("vocab_size") == 119547)


def _bertscore(candidates, references, model_dir: str | None):
    """BERTScore F1 mean, or a "not computed (...)" string: it runs after all generation, so no error of
    bert_score ends the run. The layer (9) is bert_score's for bert-base-multilingual-cased and is passed
    only for that model; for another directory bert_score picks its own default where it knows the model."""
    if not model_dir:
        return "not computed (no local BERT model given: eval bertscore_model)"
    try:
        from bert_score import score
    except ImportError:
        return "not computed (bert-score is not installed: pip install 'diabetica-jax[bertscore]')"
    layers = {"num_layers": MBERT_LAYERS} if _is_mbert(model_dir) else {}
    try:
        _, _, f1 = score(candidates, references, model_type=model_dir, lang="zh", **layers)
    except Exception as e:  # noqa: BLE001 - a metric must not end a finished evaluation
        if isinstance(e, KeyError) and not layers:  # bert_score knows no default layer for this path
            return NEEDS_MBERT
        return f"not computed ({type(e).__name__}: {e})"
    return float(f1.mean())


def run_dialog(model, items: list[Item], prompts: Prompts, judge=None, concurrency: int = 4,
               sampling: SamplingParams | None = None):
    """Replies judged against the physician rules; each item scored by both rules (see judge.py):
    `mean_score` by the mode's rule, `mean_score_own` and `mean_score_original` by each, and the mode's
    mean per workbook `class` (`by_class`) and `type` (`by_type`)."""
    texts = [prompts.dialog.format(question=item.question) for item in items]
    max_new = prompts.decoding.get("dialog", {}).get("max_new_tokens", 512)
    outputs, failed = _generate(model, prompts, texts, max_new, sampling)
    blank = {"score": None, "score_own": None, "score_original": None, "judge_reply": None}
    to_judge = [i for i in range(len(items)) if i not in failed] if judge is not None else []
    verdicts = {i: {**blank, "judge_status": f"failed: generation: {failed[i]}"} for i in failed}
    if judge is None:
        verdicts.update({i: {**blank, "judge_status": "not judged"} for i in range(len(items)) if i not in failed})
    else:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            judged = pool.map(lambda i: judge_answer(judge, prompts, items[i].question, items[i].answer,
                                                     outputs[i]), to_judge)
            verdicts.update(zip(to_judge, judged))
    results = [{"id": item.id, "class": item.item_class, "type": item.item_type, "prompt": text,
                "output": output, "answer": item.answer, **verdicts[i]}
               for i, (item, text, output) in enumerate(zip(items, texts, outputs))]
    summary = {"n_items": len(results), **_score_stats(results, "score"),
               "n_unparsed": sum(r["judge_status"] == "unparsed" for r in results),
               "n_failed": sum(r["judge_status"].startswith("failed") for r in results),
               "judge": getattr(judge, "name", None),
               "score_rule": "original" if prompts.score_rule == "first_digit" else "own"}
    judged_ok = [r for r in results if r["judge_reply"] is not None]
    for rule in ("own", "original"):
        stats = _score_stats(judged_ok, f"score_{rule}")
        summary[f"mean_score_{rule}"] = stats["mean_score"]
        summary[f"n_scored_{rule}"] = stats["n_scored"]
        summary[f"n_unparsed_{rule}"] = len(judged_ok) - stats["n_scored"]
    for column, key in (("class", "by_class"), ("type", "by_type")):
        groups = defaultdict(list)
        for r in results:
            if r[column] is not None:
                groups[r[column]].append(r)
        summary[key] = {label: {"n_items": len(rows), **_score_stats(rows, "score")}
                        for label, rows in sorted(groups.items())}
    return results, summary


def _score_stats(rows: list[dict], key: str) -> dict:
    scores = [r[key] for r in rows if r.get(key) is not None]
    return {"mean_score": float(np.mean(scores)) if scores else None, "n_scored": len(scores)}
