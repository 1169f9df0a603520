"""The project's engine as an lm-evaluation-harness model: `lm_eval --model diabetica-jax` (run through
`diabetica-jax lm-eval ...`, or from Python once this module is imported, which registers the name).

lm-eval asks three things of a model. `loglikelihood`: a continuation's summed log-probability after a context,
and whether greedy decoding would produce it; `loglikelihood_rolling`: a whole text's, in windows of the model's
context; `generate_until`: a reply, cut at the task's stop strings. The first two run left-padded batches through
one jitted forward pass whose vocabulary projection goes over chunks of positions (generate/scoring.py), so no
[batch, seq, vocab] float32 block is ever built; the third runs the continuously batched KV-cache engine. The
requests are tokenized the way lm-eval's own `hf` model tokenizes them (its TemplateLM: a context's trailing
spaces move to the continuation, the pair is encoded whole and split), so the two give the same numbers on the
same checkpoint.

Model arguments (`--model_args k=v,...`): `pretrained` (a Hugging Face checkpoint or training run directory; none:
the `preset`'s random weights), `adapter` (a PEFT LoRA adapter directory on it), `step` (a run's checkpoint),
`dtype` (compute dtype, float32 by default), `data` / `fsdp` / `tensor` (mesh axis sizes; none: one device),
`max_length` (default: the model's context), `max_gen_toks` (default 256), `add_bos_token`, `seed`.

`run_tasks` runs lm-eval tasks on an evaluation's own model: the `lm_eval` task of `diabetica-jax eval`, and of
a pipeline's general evaluation between stages.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import jax
import lm_eval
import numpy as np
from flax import nnx
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, has_bos_prefix, normalize_gen_kwargs, postprocess_generated_text
from lm_eval.tasks import TaskManager
from tqdm import tqdm

from diabetica_jax import hf
from diabetica_jax.evaluation.data import EvalDataError
from diabetica_jax.generate.chat import engine_for, stop_and_pad
from diabetica_jax.generate.padding import bucket, left_pad
from diabetica_jax.generate.sampling import SamplingParams
from diabetica_jax.generate.scoring import next_token_logprobs
from diabetica_jax.model.runtime import RuntimeConfig
from diabetica_jax.parallel import make_mesh

MODEL_NAME = "diabetica-jax"
# lm-eval task YAMLs of the Diabetica benchmarks, reading the user's files (--metadata names them)
TASKS_DIR = Path(__file__).parent / "lm_eval_tasks"
DEFAULT_MAX_GEN_TOKS = 256  # as lm-eval's hf model


def _mesh_from(data: int | None, fsdp: int | None, tensor: int | None):
    sizes = {axis: int(n) for axis, n in (("data", data), ("fsdp", fsdp), ("tensor", tensor)) if n is not None}
    return make_mesh({"data": 1, "fsdp": 1, "tensor": 1} | sizes) if sizes else None


@register_model(MODEL_NAME)
class DiabeticaLM(TemplateLM):
    """An lm-eval model over a JAX model: `model` and `tokenizer` given (an evaluation's own, with its `engine`
    when it has one), or loaded from the model arguments."""

    def __init__(self, pretrained: str | None = None, preset: str = "tiny", adapter: str | None = None,
                 step: int | None = None, dtype: str = "float32", data: int | None = None, fsdp: int | None = None,
                 tensor: int | None = None, batch_size: int | str = 8, max_length: int | None = None,
                 max_gen_toks: int = DEFAULT_MAX_GEN_TOKS, add_bos_token: bool | None = None, seed: int = 0,
                 model=None, tokenizer=None, engine=None, mesh=None, progress: bool = True, **_lm_eval_options):
        # _lm_eval_options: what lm-eval passes every model (device, max_batch_size, ...), meaningless here
        super().__init__()
        if model is None:
            mesh = _mesh_from(data, fsdp, tensor)
            found = hf.find(pretrained or None, preset=preset, step=None if step is None else int(step),
                            adapter=adapter)
            opened = found.load(mesh=mesh, seed=int(seed), runtime=RuntimeConfig(dtype=dtype), progress=progress)
            model, tokenizer = opened.model, opened.tokenizer
        self.model, self.tokenizer, self.mesh, self.progress = model, tokenizer, mesh, progress
        self.add_bos_token = add_bos_token
        self._batch_size = 8 if str(batch_size).startswith("auto") else int(batch_size)
        self._max_length = int(max_length) if max_length else model.config.max_position_embeddings
        self._max_gen_toks = int(max_gen_toks)
        _, self._pad = stop_and_pad(self.tokenizer)  # the engine stops where the tokenizer says itself
        self.graphdef, self.state = nnx.split(model)
        self._engine = engine  # else built on the first generate_until (log-likelihood tasks never need its cache)

    # ---- what TemplateLM needs -----------------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs) -> list[int]:
        # as lm-eval's hf model: the tokenizer's own special tokens (BOS for Llama, none for Qwen) unless told,
        # and none for a string that already starts with the BOS text
        if add_special_tokens is None:
            if has_bos_prefix(string, self.tokenizer.decode(self.prefix_token_id)):
                add_special_tokens = False
            elif self.add_bos_token is not None:
                add_special_tokens = self.add_bos_token
        ids = (self.tokenizer.encode(string) if add_special_tokens is None
               else self.tokenizer.encode(string, add_special_tokens=add_special_tokens))
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt,
                                                  continue_final_message=not add_generation_prompt)

    # ---- log-likelihoods -----------------------------------------------------------------------------

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **_) -> list[tuple[float, bool]]:
        """Per (key, context ids, continuation ids): the continuation's summed log-probability and whether every
        one of its tokens is the likeliest there. The context is cut from the left to fit max_length, as lm-eval's
        hf model cuts it."""
        rows = []
        for _, context, continuation in requests:
            whole = (list(context) + list(continuation))[-(self.max_length + 1):]
            # a continuation longer than the window is scored on the part of it that fits
            rows.append((whole[:-1], whole[1:], min(len(continuation), len(whole) - 1)))
        # longest first, so a batch's rows are of similar width (fewer padded positions computed)
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        results: list[tuple[float, bool]] = [(0.0, False)] * len(rows)
        for start in tqdm(range(0, len(order), self.batch_size), desc="log-likelihoods", unit="batch",
                          disable=disable_tqdm or not self.progress):
            chunk = order[start : start + self.batch_size]
            for i, scored in zip(chunk, self._score([rows[i] for i in chunk])):
                results[i] = scored
                if requests[i][0] != (None,):  # a rolling window is cached as its whole text, below
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], scored)
        return results

    def _score(self, rows: list[tuple[list[int], list[int], int]]) -> list[tuple[float, bool]]:
        inputs = left_pad([r[0] for r in rows], self._pad, bucketed=True)
        targets = np.zeros_like(inputs.tokens)
        width = targets.shape[1]
        for row, (_, target, _) in enumerate(rows):
            targets[row, width - len(target):] = target
        with self._on_mesh():
            chosen, greedy = _target_logprobs(self.graphdef)(self.state, inputs.tokens, inputs.positions,
                                                             inputs.valid, targets)
        chosen, greedy = np.asarray(chosen), np.asarray(greedy)
        out = []
        for row, (_, _, n) in enumerate(rows):  # the continuation: the last n predictions of the row
            out.append((float(chosen[row, width - n:].sum()), bool(greedy[row, width - n:].all())))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """A whole text's log-likelihood: windows of max_length tokens, each token predicted once, every
        window with as much context as fits (lm-eval's rolling windows, as its hf model makes them)."""
        totals = []
        for (text,) in tqdm([r.args for r in requests], desc="rolling log-likelihoods",
                            disable=disable_tqdm or not self.progress):
            windows = [((None,), context, continuation) for context, continuation in map(
                lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1))]
            total = sum(logprob for logprob, _ in self._loglikelihood_tokens(windows, disable_tqdm=True))
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            totals.append(total)
        return totals

    # ---- generation ----------------------------------------------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Each context's reply from the KV-cache engine, greedy unless the task samples, cut before the first
        of its `until` strings (the EOS text among them). Requests with the same settings decode together."""
        eos = self.tokenizer.decode([self.eot_token_id], skip_special_tokens=False)
        replies: list[str | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        stops = []
        for i, (_, gen_kwargs) in enumerate(r.args for r in requests):
            kwargs = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
            stops.append(handle_stop_sequences(kwargs.pop("until", None), eos=eos))
            groups.setdefault((int(kwargs["max_gen_toks"]), _sampling(kwargs)), []).append(i)
        engine = self._generation_engine()
        for (max_new, sampling), indices in tqdm(groups.items(), desc="generating", unit="group",
                                                 disable=disable_tqdm or not self.progress):
            if max_new >= self.max_length:
                raise ValueError(f"max_gen_toks {max_new} leaves no room for a prompt in max_length "
                                 f"{self.max_length}")
            prompts = [self.tok_encode(requests[i].args[0], left_truncate_len=self.max_length - max_new) or
                       [self.prefix_token_id] for i in indices]
            for start in range(0, len(prompts), self.batch_size):
                batch = indices[start : start + self.batch_size]
                outputs = engine.generate(prompts[start : start + self.batch_size], max_new, sampling)
                for i, ids in zip(batch, outputs):
                    replies[i] = postprocess_generated_text(self.tok_decode(ids), stops[i], None)
                    self.cache_hook.add_partial("generate_until", requests[i].args, replies[i])
        return replies

    def _generation_engine(self):
        if self._engine is None:
            self._engine = engine_for(self.model, self.tokenizer, self.mesh, slots=bucket(self.batch_size, 1))
        return self._engine

    def _on_mesh(self):
        return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()


def _sampling(kwargs: dict) -> SamplingParams:
    """Greedy (lm-eval's default, and what do_sample false or temperature 0 means), else the task's sampling."""
    if not kwargs.get("do_sample") or float(kwargs.get("temperature") or 0.0) <= 0:
        return SamplingParams()
    return SamplingParams(temperature=float(kwargs["temperature"]), top_p=float(kwargs.get("top_p") or 1.0),
                          top_k=int(kwargs.get("top_k") or 0), seed=int(kwargs.get("seed") or 0))


@functools.cache
def _target_logprobs(graphdef):
    """For left-padded inputs [b, t] and the token that follows each position [b, t]: its log-probability, and
    whether it is the likeliest token there."""

    @jax.jit
    def run(state, tokens, positions, valid, targets):
        model = nnx.merge(graphdef, state)
        chosen, (top_ids, _) = next_token_logprobs(model, tokens, positions, valid, alternatives=1, targets=targets)
        return chosen, top_ids[..., 0] == targets

    return run


# ---- lm-eval tasks inside `diabetica-jax eval` ---------------------------------------------------------------

def task_manager(folders: list[Path], metadata: dict | None = None) -> TaskManager:
    """lm-eval's task index over its own tasks, the Diabetica tasks and `folders` (task YAMLs on local data);
    a folder or file that is not there is an EvalDataError naming it."""
    for folder in folders:
        if not folder.exists():
            raise EvalDataError(f"{folder}: lm-eval task folder not found")
    return TaskManager(include_path=[str(TASKS_DIR), *map(str, folders)], metadata=metadata or None)


def check_tasks(names: list[str], manager: TaskManager) -> None:
    """Every task or group name is one lm-eval knows, before any model is loaded."""
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        raise EvalDataError(f"lm_eval_tasks: unknown to lm-eval: {', '.join(unknown)} (lm-eval ls tasks lists "
                            "them; a task of your own needs its YAML folder in `files`)")


def run_tasks(model, tokenizer, names: list[str], manager: TaskManager, *, engine=None, batch_size: int = 8,
              limit: int | None = None, num_fewshot: int | None = None, progress: bool = True
              ) -> tuple[list[dict], dict]:
    """lm-eval tasks on `model`: (one row per scored document: task, doc_id, target, the reply or chosen
    option's score, its metrics; the summary: n_items and every task's metrics as lm-eval aggregates them,
    {task: {metric: value}}, its stderr beside as METRIC_stderr)."""
    lm = DiabeticaLM(model=model, tokenizer=tokenizer, engine=engine, batch_size=batch_size, progress=progress)
    result = lm_eval.simple_evaluate(model=lm, tasks=list(names), task_manager=manager, limit=limit,
                                     num_fewshot=num_fewshot, log_samples=True, verbosity="WARNING")
    metrics = {}
    for task, values in result["results"].items():
        metrics[task] = {_metric_name(k): v for k, v in values.items()
                         if k != "alias" and isinstance(v, (int, float)) and not isinstance(v, bool)}
    rows = []
    for task, samples in result.get("samples", {}).items():
        for sample in sorted(samples, key=lambda x: x["doc_id"]):
            row = {"task": task, "doc_id": sample["doc_id"], "target": sample.get("target"),
                   "response": sample.get("filtered_resps")}
            bare = {m.split("[")[0] for m in metrics.get(task, {}) if not m.endswith("_stderr")}
            row.update({m: sample[m] for m in sorted(bare) if m in sample})  # a sample keys its metrics bare
            rows.append(row)
    return rows, {"n_items": len(rows), "lm_eval_version": lm_eval.__version__, "results": metrics,
                  "versions": {k: v for k, v in result.get("versions", {}).items()},
                  "n_shot": dict(result.get("n-shot", {}))}


def _metric_name(key: str) -> str:
    """lm-eval's `acc,none` / `acc_stderr,none` as acc / acc_stderr; a filter other than none is named after the
    metric, before _stderr (`exact_match_stderr,strict-match`: exact_match[strict-match]_stderr)."""
    metric, _, filtered = key.partition(",")
    if filtered in ("", "none"):
        return metric
    stderr = metric.endswith("_stderr")
    return f"{metric.removesuffix('_stderr')}[{filtered}]" + ("_stderr" if stderr else "")
