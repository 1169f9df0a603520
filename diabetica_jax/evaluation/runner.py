"""`diabetica-jax eval`: run a suite against a model and write report.json, summary.md and a comparison plot.

Modes. `own`: the project's prompts, deterministic greedy decoding, the robust judge-score parser and the MCQ
log-likelihood metric beside the generated answer; it runs once (`seeds` > 1 is ignored: greedy decoding
gives the same replies for every seed; the report's `seeds` is [42]). `faithful`: what the paper's scripts
did (the protocol shipped as evaluation/protocols/diabetica.json, or the `protocol` file): its prompts;
the checkpoint's generation_config.json decoding (`generate()` without
sampling arguments: sampling for Qwen2-Instruct; greedy only when the file says do_sample false or is
absent) with the protocol's explicit per-task settings on top (dialogue: max_new_tokens 2048,
repetition_penalty 1.1); seeds 42, 43, ... (`seeds` runs); the original score rule; the protocol's judge
model (for an openai judge backend), temperature and max_tokens. A model under test that is an endpoint
(`model: openai:NAME`) decodes with the endpoint's own defaults in faithful mode (the protocol defines no
temperature for API models; each seed gets its own request cache so seeds are separate samples) and
greedily (temperature 0) in own mode. `modes: [own, faithful]` runs both, writing OUT/own/ and
OUT/faithful/ (each with the files below) and OUT/summary.md and OUT/comparison.png over both; the model
is loaded once.

report.json (stable keys; a comparison report reads them):
  model, mode, published (the protocol's published_results, when a protocol file is read: faithful mode's,
      the package's protocols/diabetica.json unless `protocol` names another, or `protocol` in own mode)
  protocol: {path, source, repository, commit} of the protocol file read (faithful mode's, else own mode's
      `protocol`); None when none was read (own mode alone without `protocol`)
  tasks.mcq: n_items, accuracy, accuracy_ci95, loglik_accuracy (a fraction, or the string "not available
      (...)" for a model without letter log-probabilities), loglik_accuracy_ci95, unanswered,
      unanswered_rate, answered_rate (answer-format compliance), answer_rule (how letters were read), per_file
  tasks.cloze: n_items, rouge1, rouge2, rougeL, bleu (the mode's BLEU, named by bleu_kind), bleu_char,
      bleu_word, bleu_kind, bleu_word_tokenizer, rouge_whitespace, bertscore_f1 (a number or "not computed
      (...)"), per_file
  tasks.dialog: n_items, mean_score (the mode's rule), n_scored, n_unparsed, n_failed, judge, score_rule,
      mean_score_own / n_scored_own / n_unparsed_own and mean_score_original / n_scored_original /
      n_unparsed_original (both rules over the same judge replies), by_class and by_type ({label: {n_items,
      mean_score, n_scored}}: the workbook's `class` and `type` columns), per_file
  Added: n_failed (mcq, cloze: items whose generation failed, left out of the metrics)
  Added: decoding (top level): {mode, source (where the decoding came from: "own mode: greedy", the
      generation_config.json path, "... not found: greedy", or "endpoint defaults"), generation_config (the
      model's default decoding as read, None for an endpoint), tasks: {task: {strategy: greedy | sampling |
      endpoint defaults, temperature, top_p, top_k, repetition_penalty, max_new_tokens}}}
  Added: seeds (top level and per task): the seeds run, e.g. [42, 43]
  Added per task: decoding (that task's entry above); per_seed: [{seed, <headline metrics>}]; seed_stats:
      {metric: {mean, std (sample std, ddof 1; None for one seed), min, max, n}} over seeds, for the headline
      metrics (mcq: accuracy, loglik_accuracy; cloze: rouge1, rouge2, rougeL, bleu, bleu_char, bleu_word,
      bertscore_f1; dialog: mean_score, mean_score_own, mean_score_original). The metrics outside per_seed
      and seed_stats are seed 42's run (the published seed), whatever `seeds` says.
  tasks.perplexity: n_items, n_tokens (predicted tokens), mean_nll, perplexity (exp of the token-weighted mean
      negative log-likelihood; "not available (...)" for an endpoint), n_failed, per_file
  tasks.consult / tasks.educate / tasks.summarize (clinical.py): n_items, n_failed, n_rejected (rows of the
      files that could not be used: OUT/rejects_TASK.jsonl), judge, n_judged, n_unparsed, n_judge_failed,
      rubric, scale, dimensions, ci_method, groups, ratings ({group: {dimension: {mean, ci95, n_scored,
      n_unparsed}}}), overall ({group: mean of its dimension means}), overall_mean, plot (the PNG, when
      drawn); consult and summarize: n_with_reference, difference ({dimension: {mean, ci95, n_pairs}}: model
      - reference); educate: right_key, wrong_key, no_key, wrong_key_rate, wrong_key_rate_ci95, key_rule;
      summarize: rouge ({rouge1|rouge2|rougeL: {mean, ci95, n}}), rouge1, rouge2, rougeL, rouge_tokens.
      Their per_seed / seed_stats hold clinical.headline's numbers.
report_TASK.json: the task's summary plus `items` (seed 42's) and, with several seeds, `items_by_seed`
  ({seed: items}) for the others; a clinical task's also `rejects` ([{file, row, field, reason}]).

A mode's report.json is written last, and an earlier run's is removed before the first report of this run is
written: a directory with report.json holds a finished evaluation, one without it an unfinished one (a killed
run's reports beside an earlier run's are never taken for a result). Each report is written under a temporary
name and renamed, so none is ever read half written. An interrupted run started again evaluates everything again;
an endpoint's replies (and the judge's) come back from the request cache under OUT/cache.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

from diabetica_jax.evaluation import clinical
from diabetica_jax.evaluation import tasks as task_lib
from diabetica_jax.evaluation.clinical_data import load_clinical_items
from diabetica_jax.evaluation.clinical_report import clinical_plot
from diabetica_jax.evaluation.config import CLINICAL_TASKS, HARNESS_TASKS, TEXT_TASKS, EvalConfig
from diabetica_jax.evaluation.data import EvalDataError, load_items
from diabetica_jax.evaluation.perplexity import perplexity_summary, run_perplexity
from diabetica_jax.evaluation.pooling import pool, seed_stats
from diabetica_jax.evaluation.prompts import OWN, Prompts, default_protocol_path, from_protocol
from diabetica_jax.evaluation.rubric import RubricError, default_rubric_path, load_rubric
from diabetica_jax.evaluation.summary import compare_plot, summary_markdown
from diabetica_jax.llm import make_backend

log = logging.getLogger(__name__)

HEADLINE = {"mcq": ("accuracy", "loglik_accuracy"),
            "cloze": ("rouge1", "rouge2", "rougeL", "bleu", "bleu_char", "bleu_word", "bertscore_f1"),
            "dialog": ("mean_score", "mean_score_own", "mean_score_original"),
            "perplexity": ("perplexity", "mean_nll")}


def resolve(path: str, data_dir: str | None) -> Path:
    if path.startswith("embedded:"):
        from diabetica_jax.demo import BENCHMARK_DIR

        return BENCHMARK_DIR / path.split(":", 1)[1]
    p = Path(path)
    return p if p.is_absolute() or data_dir is None else Path(data_dir) / p


def mode_prompts(cfg: EvalConfig, mode: str) -> Prompts:
    if mode == "faithful":
        prompts = from_protocol(cfg.protocol or default_protocol_path())
    else:
        prompts = dataclasses.replace(OWN, judge_max_tokens=cfg.judge_max_tokens,
                                      judge_temperature=cfg.judge_temperature)
    # the clinical tasks have no protocol of their own: their decoding settings are the project's in both modes
    return dataclasses.replace(prompts, decoding={**clinical.DECODING, **prompts.decoding})


def section_prompts(prompts: Prompts, max_new_tokens: int | None, task: str) -> Prompts:
    """The prompts one task section runs with: its own max_new_tokens, when it sets one, over the mode's."""
    if max_new_tokens is None:
        return prompts
    settings = {**prompts.decoding.get(task, {}), "max_new_tokens": max_new_tokens}
    return dataclasses.replace(prompts, decoding={**prompts.decoding, task: settings})


def load_suite(cfg: EvalConfig, tolerant: bool) -> tuple[dict, dict, dict, dict]:
    """(items, rejects, rubrics, harness) of the suite, read before any model is loaded so that data problems stop
    the run first: items {(task, file): items[:limit]}; rejects {task: [ClinicalReject]} (clinical tasks keep the
    usable rows of a file and record the others; the paper's tasks stop at a bad row); rubrics {task: Rubric};
    harness {task: lm-eval's task index} for an lm_eval section (its task names checked)."""
    items, rejects, rubrics, harness = {}, {}, {}, {}
    for t in cfg.tasks:
        if t.task in HARNESS_TASKS:
            from diabetica_jax.evaluation import harness as lm_harness  # lm-eval loads only when a suite asks

            metadata = {"data_dir": cfg.data_dir, **t.lm_eval_metadata} if cfg.data_dir else dict(t.lm_eval_metadata)
            harness[t.task] = lm_harness.task_manager([resolve(f, cfg.data_dir) for f in t.files], metadata)
            lm_harness.check_tasks(t.lm_eval_tasks, harness[t.task])
            continue
        if t.task in CLINICAL_TASKS:
            try:
                rubrics[t.task] = load_rubric(t.rubric or default_rubric_path(t.task))
            except RubricError as e:
                raise EvalDataError(f"{t.task}: {e}") from None
            rejects[t.task] = []
        for f in t.files:
            path = resolve(f, cfg.data_dir)
            if t.task in CLINICAL_TASKS:
                usable, bad = load_clinical_items(path, t.task)
                rejects[t.task] += bad
            else:
                usable = load_items(path, t.task, faithful=tolerant)
            items[(t.task, f)] = usable[: t.limit]
    return items, rejects, rubrics, harness


def evaluate(cfg: EvalConfig, out: str | Path, model=None, tokenizer=None, progress: bool = True) -> dict:
    """Run every task of the suite in each mode (`cfg.run_modes`); write the reports under `out` (one mode)
    or `out/<mode>/` (several) and return the report.json contents of the first mode, with `runs`: the
    report of every mode in order, when there are several (the module docstring lists the keys)."""
    from diabetica_jax import hf

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    modes = cfg.run_modes
    prompts = {mode: mode_prompts(cfg, mode) for mode in modes}
    # the published numbers, and the record of the file they came from, for every mode's report: the faithful
    # mode's protocol, else the protocol file given to own mode; own mode alone without one carries none
    paper = prompts.get("faithful") or (from_protocol(cfg.protocol) if cfg.protocol else None)
    published, protocol = (paper.published, paper.protocol) if paper else ({}, None)
    # faithful mode keys an MCQ item it cannot parse by the answer cell's first letter, as the paper's script
    # did; own mode (also when it runs beside faithful) needs every item parsed
    tolerant = "own" not in modes
    items, rejects, rubrics, harness = load_suite(cfg, tolerant)
    # data problems are reported above, before any model is loaded
    if cfg.remote:
        from diabetica_jax.evaluation.remote import RemoteModel

        def remote(cache: Path):
            return RemoteModel(cfg.model.path, cfg.endpoint.base_url, cfg.endpoint.api_key_env, cache,
                               concurrency=cfg.endpoint.concurrency, timeout=cfg.endpoint.timeout,
                               retries=cfg.endpoint.retries)

        name = cfg.name or cfg.model.path
        models = lambda mode_out, mode, seed: remote(  # noqa: E731
            mode_out / "cache" / "model" / (f"seed-{seed}" if mode == "faithful" else "greedy"))
    else:
        if model is None:
            opened = hf.open(cfg.model.path, preset=cfg.model.preset, generation_config=cfg.generation_config,
                             runtime=cfg.model.runtime, progress=progress)
            model, tokenizer, decoding = opened.model, opened.tokenizer, opened.generation_config
        else:  # the caller's model (the pipeline's, before and after training) decodes as the config says
            decoding = hf.read_generation_config(cfg.generation_config or cfg.model.path)
        name = cfg.name or (Path(cfg.model.path).name if cfg.model.path else f"{cfg.model.preset} (random)")
        mut = task_lib.ModelUnderTest(model, tokenizer, name, batch_size=cfg.batch_size, progress=progress,
                                      decoding=decoding)
        models = lambda mode_out, mode, seed: mut  # noqa: E731

    runs = []
    for mode in modes:
        mode_out = out / mode if len(modes) > 1 else out
        mode_out.mkdir(parents=True, exist_ok=True)
        runs.append(_evaluate_mode(cfg, mode, prompts[mode], items, name, models, mode_out, published, rejects,
                                   rubrics, protocol, harness))
    if len(modes) == 1:
        return runs[0]
    _write_text(out / "summary.md", summary_markdown(runs))
    compare_plot(runs, out / "comparison.png")
    return {**runs[0], "runs": runs}


def _evaluate_mode(cfg: EvalConfig, mode: str, prompts: Prompts, items: dict, name: str, models, out: Path,
                   published: dict, rejects: dict | None = None, rubrics: dict | None = None,
                   protocol: dict | None = None, harness: dict | None = None) -> dict:
    faithful = mode == "faithful"
    seeds = [prompts.seed + k for k in range(cfg.seeds)] if faithful else [prompts.seed]
    if not faithful and cfg.seeds > 1:
        log.info("own mode decodes greedily: it runs once, not for %d seeds", cfg.seeds)
    judge_section = cfg.judge
    if faithful and cfg.judge.backend == "openai" and prompts.judge_model:
        judge_section = dataclasses.replace(cfg.judge, model=prompts.judge_model)
    judge = make_backend(judge_section, out / "cache" / "judge") if judge_section.backend != "none" else None
    first = models(out, mode, seeds[0])
    default = getattr(first, "decoding", None)
    task_decoding = {}
    rejects, rubrics = rejects or {}, rubrics or {}
    section_prompt = {s.task: section_prompts(prompts, s.max_new_tokens, s.task) for s in cfg.tasks}
    for section in cfg.tasks:
        task_prompts = section_prompt[section.task]
        if section.task in TEXT_TASKS:
            task_decoding[section.task] = {"strategy": "scoring (no generation)"}
            continue
        if section.task in HARNESS_TASKS:
            task_decoding[section.task] = {"strategy": "each lm-eval task's own (greedy unless it samples)"}
            continue
        sampling = task_lib.task_sampling(task_prompts, section.task, faithful, default, seeds[0])
        max_new = task_prompts.decoding.get(section.task, {}).get("max_new_tokens",
                                                                  {"mcq": 16, "cloze": 32}.get(section.task, 512))
        task_decoding[section.task] = task_lib.describe_sampling(sampling, max_new)
    source = ("own mode: greedy" if not faithful
              else "endpoint defaults" if default is None else default.get("source"))
    decoding = {"mode": mode, "source": source, "generation_config": default, "tasks": task_decoding}

    letter_scores: dict = {}
    by_seed: dict[int, dict] = {}  # seed -> task -> (results, per_file, pooled)
    for seed in seeds:
        model = models(out, mode, seed)
        by_seed[seed] = {}
        for section in cfg.tasks:
            task_prompts = section_prompt[section.task]
            sampling = task_lib.task_sampling(task_prompts, section.task, faithful, default, seed)
            all_results, per_file = [], {}
            if section.task in HARNESS_TASKS:
                from diabetica_jax.evaluation import harness as lm_harness

                all_results, pooled = lm_harness.run_tasks(
                    model.model, model.tokenizer, section.lm_eval_tasks, harness[section.task], engine=model.engine,
                    batch_size=cfg.batch_size, limit=section.limit, num_fewshot=section.num_fewshot,
                    progress=model.progress)
                by_seed[seed][section.task] = (all_results, per_file, pooled)
                continue
            for f in section.files:
                subset = items[(section.task, f)]
                if section.task == "mcq":
                    results, summary = task_lib.run_mcq(model, subset, task_prompts, sampling, letter_scores)
                elif section.task == "cloze":
                    results, summary = task_lib.run_cloze(model, subset, task_prompts, cfg.bertscore_model,
                                                          sampling, faithful=faithful)
                elif section.task == "perplexity":
                    results, summary = run_perplexity(model, subset)
                elif section.task == "dialog":
                    results, summary = task_lib.run_dialog(model, subset, task_prompts, judge,
                                                           cfg.judge.concurrency, sampling)
                else:
                    results, summary = clinical.run_clinical(section.task, model, subset, task_prompts,
                                                             rubrics[section.task], judge, cfg.judge.concurrency,
                                                             sampling)
                for r in results:
                    r["file"] = Path(f).name
                    r["seed"] = seed
                per_file[Path(f).name] = summary
                all_results += results
            if section.task == "mcq":
                pooled = task_lib.mcq_metrics(all_results, task_prompts.mcq_rule)
            elif section.task == "perplexity":  # token-weighted over all files' passages
                pooled = perplexity_summary(all_results)
            elif section.task in CLINICAL_TASKS:  # recomputed from the items: intervals do not pool by file
                pooled = clinical.task_summary(section.task, all_results, rubrics[section.task],
                                               getattr(judge, "name", None))
            else:
                pooled = pool(per_file, all_results)
            by_seed[seed][section.task] = (all_results, per_file, pooled)

    summaries = {}
    (out / "report.json").unlink(missing_ok=True)  # until the new one is written last: not a finished evaluation
    for section in cfg.tasks:
        results, per_file, pooled = by_seed[seeds[0]][section.task]
        per_seed = [{"seed": seed, **_headline(section.task, by_seed[seed][section.task][2])} for seed in seeds]
        report = {"task": section.task, "model": name, "mode": mode, "files": section.files, **pooled,
                  "per_file": per_file, "decoding": task_decoding[section.task], "seeds": seeds,
                  "per_seed": per_seed, "seed_stats": seed_stats(per_seed, [k for k in per_seed[0] if k != "seed"]),
                  "items": results}
        if section.task in CLINICAL_TASKS:
            report.update(_clinical_extras(section.task, pooled, rejects.get(section.task, []), out,
                                           f"{name} ({mode})"))
        if len(seeds) > 1:
            report["items_by_seed"] = {str(seed): by_seed[seed][section.task][0] for seed in seeds[1:]}
        _write_text(out / f"report_{section.task}.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        summaries[section.task] = {k: v for k, v in report.items() if k not in ("items", "items_by_seed", "rejects")}
    combined = {"model": name, "mode": mode, "tasks": summaries, "published": published or prompts.published,
                "protocol": protocol or prompts.protocol, "decoding": decoding, "seeds": seeds}
    _write_text(out / "summary.md", summary_markdown([combined]))
    compare_plot([combined], out / "comparison.png")
    _write_text(out / "report.json", json.dumps(combined, indent=2, ensure_ascii=False) + "\n")
    return combined


def _write_text(path: Path, text: str) -> None:
    """`text` (UTF-8) into `path` whole: written under a temporary name, then renamed."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def _headline(task: str, summary: dict) -> dict:
    """The numbers of a task's summary that are tracked per seed (per_seed, seed_stats)."""
    if task in CLINICAL_TASKS:
        return clinical.headline(task, summary)
    if task in HARNESS_TASKS:  # every lm-eval task's metrics, as TASK/METRIC
        return {f"{name}/{metric}": value for name, metrics in summary["results"].items()
                for metric, value in metrics.items() if not metric.endswith("_stderr")}
    return {k: summary.get(k) for k in HEADLINE[task]}


def _clinical_extras(task: str, summary: dict, rejects: list, out: Path, title: str) -> dict:
    """A clinical report's additions: its rejected rows (also written to OUT/rejects_TASK.jsonl, one JSON
    object a line, so they can be fixed and rerun) and its plot."""
    rows = [r.to_json() for r in rejects]
    _write_text(out / f"rejects_{task}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    if rows:
        log.warning("%s: %d row(s) rejected, the rest evaluated; reasons in %s", task, len(rows),
                    out / f"rejects_{task}.jsonl")
    extras = {"n_rejected": len(rows), "rejects_file": f"rejects_{task}.jsonl", "rejects": rows}
    plot = f"clinical_{task}.png"
    extras["plot"] = plot if clinical_plot(task, {**summary, **extras}, out / plot, title) else None
    return extras
