"""The three Diabetica tasks, run against one model: MCQ, fill-in-the-blank, judged open dialogue."""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from diabetica_jax.data.mcq import picked_option
from diabetica_jax.evaluation import metrics
from diabetica_jax.evaluation.data import Item
from diabetica_jax.evaluation.judge import judge_answer
from diabetica_jax.evaluation.prompts import Prompts
from diabetica_jax.generate import SamplingParams, left_pad
from diabetica_jax.generate.chat import chat_prompt, engine_for

LETTERS = "ABCDEFGH"


class ModelUnderTest:
    def __init__(self, model, tokenizer, name: str, mesh=None, batch_size: int = 16, progress: bool = True):
        self.tokenizer, self.name, self.batch_size, self.progress = tokenizer, name, batch_size, progress
        self.engine = engine_for(model, tokenizer, mesh)
        self.graphdef, self.state = nnx.split(model)

    def prompt_ids(self, prompts: Prompts, text: str) -> list[int]:
        messages = ([{"role": "system", "content": prompts.system}] if prompts.system else []) + [
            {"role": "user", "content": text}]
        return chat_prompt(self.tokenizer, messages)

    def generate(self, prompt_ids: list[list[int]], max_new_tokens: int, repetition_penalty: float = 1.0) -> list[str]:
        params = SamplingParams(repetition_penalty=repetition_penalty)
        outputs: list[str] = []
        for start in tqdm(range(0, len(prompt_ids), self.batch_size), desc="generating", unit="batch",
                          disable=not self.progress):
            chunk = prompt_ids[start : start + self.batch_size]
            for ids in self.engine.generate(chunk, max_new_tokens, params):
                outputs.append(self.tokenizer.decode(ids, skip_special_tokens=True))
        return outputs

    def next_token_logits(self, prompt_ids: list[list[int]], token_ids: list[int]) -> np.ndarray:
        """Logits of `token_ids` as the next token after each prompt: [n_prompts, len(token_ids)]."""
        rows = []
        for start in range(0, len(prompt_ids), self.batch_size):
            chunk = prompt_ids[start : start + self.batch_size]
            padded = left_pad(chunk, self.engine.pad_id, bucketed=True)
            logits = _last_logits(self.graphdef)(self.state, padded, jnp.asarray(token_ids, jnp.int32))
            rows.append(np.asarray(logits)[: len(chunk)])
        return np.concatenate(rows)


@functools.cache
def _last_logits(graphdef):
    @jax.jit
    def run(state, padded, token_ids):
        model = nnx.merge(graphdef, state)
        segments = padded.valid.astype(jnp.int32)  # padding is segment 0, real tokens segment 1
        hidden = model.hidden_states(padded.tokens, padded.positions, segments)
        return model.logits(hidden[:, -1])[:, token_ids]

    return run


def extract_letter(reply: str, options: dict[str, str], rule: str) -> str | None:
    if rule == "first_letter":  # the protocol's rule: the first A-E character anywhere in the reply
        return next((ch for ch in reply if ch in "ABCDE"), None)
    picked = picked_option(reply)
    if picked in options:
        return picked
    return next((ch for ch in reply.upper() if ch in options), None)


def run_mcq(mut: ModelUnderTest, items: list[Item], prompts: Prompts) -> tuple[list[dict], dict]:
    texts = [prompts.mcq.format(question=item.question) for item in items]
    ids = [mut.prompt_ids(prompts, t) for t in texts]
    decoding = prompts.decoding.get("mcq", {})
    outputs = mut.generate(ids, decoding.get("max_new_tokens", 16), decoding.get("repetition_penalty", 1.0))
    letter_ids = [mut.tokenizer.encode(letter, add_special_tokens=False)[0] for letter in LETTERS]
    scores = mut.next_token_logits(ids, letter_ids)
    results = []
    for item, text, output, score in zip(items, texts, outputs, scores):
        prediction = extract_letter(output, item.options, prompts.mcq_rule)
        allowed = [i for i, letter in enumerate(LETTERS) if letter in item.options]
        by_likelihood = LETTERS[allowed[int(np.argmax(score[allowed]))]]
        results.append({"id": item.id, "prompt": text, "output": output, "answer": item.answer,
                        "prediction": prediction, "correct": prediction == item.answer,
                        "loglik_prediction": by_likelihood, "loglik_correct": by_likelihood == item.answer})
    return results, mcq_metrics(results)


def mcq_metrics(results: list[dict]) -> dict:
    n = len(results)
    correct = sum(r["correct"] for r in results)
    by_likelihood = sum(r["loglik_correct"] for r in results)
    return {"n_items": n, "accuracy": correct / n if n else float("nan"),
            "accuracy_ci95": metrics.wilson_interval(correct, n),
            "loglik_accuracy": by_likelihood / n if n else float("nan"),
            "loglik_accuracy_ci95": metrics.wilson_interval(by_likelihood, n),
            "unanswered": sum(r["prediction"] is None for r in results)}


def run_cloze(mut: ModelUnderTest, items: list[Item], prompts: Prompts, bertscore_model: str | None = None):
    texts = [prompts.cloze.format(question=item.question) for item in items]
    decoding = prompts.decoding.get("cloze", {})
    outputs = mut.generate([mut.prompt_ids(prompts, t) for t in texts], decoding.get("max_new_tokens", 32),
                           decoding.get("repetition_penalty", 1.0))
    results = []
    for item, text, output in zip(items, texts, outputs):
        prediction = output.strip()
        results.append({"id": item.id, "prompt": text, "output": output, "answer": item.answer,
                        "prediction": prediction, "rouge1": metrics.rouge_n(prediction, item.answer, 1),
                        "rouge2": metrics.rouge_n(prediction, item.answer, 2),
                        "rougeL": metrics.rouge_l(prediction, item.answer),
                        "bleu": metrics.bleu(prediction, item.answer)})
    summary = {"n_items": len(results)}
    for key in ("rouge1", "rouge2", "rougeL", "bleu"):
        summary[key] = float(np.mean([r[key] for r in results]))
    summary["bertscore_f1"] = _bertscore([r["prediction"] for r in results], [i.answer for i in items], bertscore_model)
    return results, summary


def _bertscore(candidates, references, model_dir: str | None):
    if not model_dir:
        return "not computed (no local BERT model given: eval bertscore_model)"
    try:
        from bert_score import score
    except ImportError:
        return "not computed (bert-score is not installed: pip install 'diabetica-jax[bertscore]')"
    _, _, f1 = score(candidates, references, model_type=model_dir, num_layers=9, lang="zh")
    return float(f1.mean())


def run_dialog(mut: ModelUnderTest, items: list[Item], prompts: Prompts, judge=None, concurrency: int = 4):
    texts = [prompts.dialog.format(question=item.question) for item in items]
    decoding = prompts.decoding.get("dialog", {})
    outputs = mut.generate([mut.prompt_ids(prompts, t) for t in texts], decoding.get("max_new_tokens", 512),
                           decoding.get("repetition_penalty", 1.0))
    if judge is None:
        verdicts = [{"score": None, "judge_reply": None, "judge_status": "not judged"} for _ in items]
    else:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            verdicts = list(pool.map(lambda a: judge_answer(judge, prompts, *a),
                                     [(i.question, i.answer, o) for i, o in zip(items, outputs)]))
    results = [{"id": item.id, "prompt": text, "output": output, "answer": item.answer, **verdict}
               for item, text, output, verdict in zip(items, texts, outputs, verdicts)]
    scores = [r["score"] for r in results if r["score"] is not None]
    summary = {"n_items": len(results), "mean_score": float(np.mean(scores)) if scores else None,
               "n_scored": len(scores), "n_unparsed": sum(r["judge_status"] == "unparsed" for r in results),
               "n_failed": sum(r["judge_status"].startswith("failed") for r in results),
               "judge": getattr(judge, "name", None)}
    return results, summary
