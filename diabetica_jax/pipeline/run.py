"""Run the stages in order, each into its own folder of the run directory, skipping what is done.

A stage is skipped when its marker (`STAGE/.stage.json`) records the same content hash: the stage's
config, the hashes of the stages it reads from, and (for curation) the bytes of its input files.
A stage whose hash changed starts over in a clean folder; an interrupted training stage resumes from
its last checkpoint, because `train` always does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import shutil
import time
from pathlib import Path

import jax
import numpy as np

from diabetica_jax.configuration import to_dict
from diabetica_jax.pipeline.config import RunConfig, stage_inputs, stage_train_config
from diabetica_jax.run_lock import hold_lock

log = logging.getLogger(__name__)
STAGES = ("curate", "train", "eval", "export")


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _files_digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in sorted(paths):
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            h.update(str(f.name).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


class Stage:
    def __init__(self, run_dir: Path, name: str, digest: str):
        self.dir, self.name, self.digest = run_dir / name, name, digest
        self.marker = self.dir / ".stage.json"

    def done(self) -> bool:
        if not self.marker.is_file():
            return False
        return json.loads(self.marker.read_text()).get("hash") == self.digest

    def begin(self) -> None:
        """Keep a matching unfinished stage (to resume it); clear one made from other inputs."""
        if self.marker.is_file() and json.loads(self.marker.read_text()).get("hash") != self.digest:
            log.warning("%s: inputs or config changed, starting the stage over", self.dir)
            shutil.rmtree(self.dir)
        started = self.dir / ".started.json"
        if started.is_file() and json.loads(started.read_text()).get("hash") != self.digest:
            log.warning("%s: an unfinished stage from other inputs, starting over", self.dir)
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        started.write_text(json.dumps({"hash": self.digest}))

    def finish(self, summary: dict) -> None:
        self.marker.write_text(json.dumps({"hash": self.digest, "finished": time.time(), **summary}, indent=2) + "\n")


def run(cfg: RunConfig, run_dir: str | Path, progress: bool = True) -> dict:
    """Curate, train, evaluate (base and trained), export; return what each stage did."""
    from diabetica_jax.curate.pipeline import curate, demo_inputs

    cfg = without_unavailable_checks(cfg)
    run_dir = Path(run_dir).absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    # before a stage could clear a folder another run is working in; released when run() returns
    _lock = hold_lock(run_dir, "pipeline run")
    statuses: dict[str, str] = {}
    timings: dict[str, float] = {}

    inputs = [Path(i.path) for i in cfg.curate.inputs] + ([Path(s.path) for s in demo_inputs()] if cfg.curate.demo else [])
    curate_stage = Stage(run_dir, "data", _digest([to_dict(cfg.curate), _files_digest(inputs)]))
    trainings = training_stages(cfg, run_dir, curate_stage)
    final = trainings[-1]
    eval_stage = Stage(run_dir, "eval", _digest([to_dict(cfg.eval), to_dict(cfg.general), cfg.eval_base,
                                                 [t.stage.digest for t in trainings],
                                                 [t.evaluated for t in trainings]]))
    export_stage = Stage(run_dir, "hf", _digest([to_dict(cfg.export), final.stage.digest]))

    def do(stage: Stage, label: str, work):
        if stage.done():
            statuses[label] = "skipped (up to date)"
            log.info("%s: up to date, skipped", label)
            # the time the stage took when it ran, so a rerun's summary keeps it
            timings[label] = json.loads(stage.marker.read_text()).get("seconds")
            return
        start = time.perf_counter()
        stage.begin()
        summary = work(stage.dir) or {}
        timings[label] = time.perf_counter() - start
        stage.finish({**summary, "seconds": timings[label]})
        statuses[label] = "done"

    do(curate_stage, "curate", lambda out: _card_summary(curate(cfg.curate, out, progress=progress)))
    for t in trainings:
        do(t.stage, t.label, lambda out, t=t: _train(t.config, out, progress, t.name))
    do(eval_stage, "eval", lambda out: _evaluate(cfg, trainings, out, progress))
    do(export_stage, "export", lambda out: _export(cfg, out, final.stage.dir))
    result = {"run_dir": str(run_dir), "stages": statuses, "seconds": timings,
              "training": [{"name": t.name, "dir": t.stage.dir.name} for t in trainings]}
    from diabetica_jax.pipeline.summary import write_summary

    write_summary(run_dir, result)
    return result


NO_TORCH = ("export check skipped: transformers needs PyTorch to reload the export, and it is not installed "
            "(pip install -e '.[torch]', or a CPU build of torch)")


def without_unavailable_checks(cfg: RunConfig) -> RunConfig:
    """The run as it can go here: without PyTorch the export's transformers check (export.verify) is skipped
    with a one-line note, not refused, so the main job needs no torch. The export stage's hash changes with
    it, so a rerun once torch is installed exports again and checks."""
    if not cfg.export.verify or importlib.util.find_spec("torch") is not None:
        return cfg
    log.warning(NO_TORCH)
    return dataclasses.replace(cfg, export=dataclasses.replace(cfg.export, verify=False))


@dataclasses.dataclass
class Training:
    """One training stage of the run: its name, its config and its folder."""

    name: str
    config: object  # TrainConfig
    stage: Stage
    evaluated: bool  # evaluated after it (asked for, or the last)

    @property
    def label(self) -> str:
        return "train" if self.name == "train" else f"train {self.name}"


def training_stages(cfg: RunConfig, run_dir: Path, data: Stage) -> list[Training]:
    """The run's training stages, each reading the curated data and (after the first) the previous stage's
    checkpoint, and hashed with what it reads: a changed stage reruns it and every stage after it."""
    def reading_curated(train_cfg):
        return dataclasses.replace(train_cfg, data=dataclasses.replace(train_cfg.data, source="curated",
                                                                       path=str(data.dir)))

    curated_pairs = cfg.curate.pairs.backend != "none"
    if not cfg.stages:  # one stage: the train section as it is, in RUN_DIR/train
        train_cfg = reading_curated(cfg.train)
        inputs = stage_inputs(train_cfg, "train", curated_pairs)
        digest = _digest([to_dict(train_cfg), data.digest] + ([_files_digest(inputs)] if inputs else []))
        return [Training("train", train_cfg, Stage(run_dir, "train", digest), True)]
    out, previous = [], None
    for i, section in enumerate(cfg.stages):
        train_cfg = reading_curated(stage_train_config(cfg, i, None if previous is None else str(previous.dir)))
        # a DPO or GRPO stage also reads its pairs or items: their bytes are part of what the stage is computed from
        inputs = stage_inputs(train_cfg, f"stages[{i}].train", curated_pairs)
        digest = _digest([to_dict(train_cfg), data.digest, previous.digest if previous else None]
                         + ([_files_digest(inputs)] if inputs else []))
        previous = Stage(run_dir, f"train-{section.name}", digest)
        out.append(Training(section.name, train_cfg, previous, section.eval or i == len(cfg.stages) - 1))
    return out


def _card_summary(card: dict) -> dict:
    return {k: card[k] for k in ("collected", "generated", "kept", "rejected")}


def _train(train_cfg, out: Path, progress: bool, name: str) -> dict:
    from diabetica_jax.train.loop import train

    result = train(train_cfg, out, progress=progress, name=name)
    if result.preempted:
        raise SystemExit(f"training was preempted at step {result.final_step}; rerun the same command to resume")
    return {"final_step": result.final_step, "data_exhausted": result.data_exhausted}


def _evaluate(cfg: RunConfig, trainings: list[Training], out: Path, progress: bool) -> dict:
    """The base model (eval_base) and each stage asked for: the eval tasks into OUT/base, OUT/<stage>; the
    general tasks (cfg.general) before training and after every stage into OUT/general/<point>; and
    OUT/learning.json, one row per evaluation point with what was measured there (learning_table)."""
    from diabetica_jax import hf
    from diabetica_jax.evaluation.runner import evaluate
    from diabetica_jax.evaluation.summary import compare_plot, summary_markdown
    from diabetica_jax.parallel import make_mesh
    from diabetica_jax.parallel.rules import use_rules
    from diabetica_jax.train.run_dir import trained_model
    from diabetica_jax.train.setup import build_model

    first = trainings[0].config
    tokenizer = hf.load_tokenizer(first.model.path)
    # faithful mode decodes with the base checkpoint's generation_config.json, before and after training
    eval_cfg = dataclasses.replace(cfg.eval, generation_config=cfg.eval.generation_config or first.model.path)
    general_cfg = dataclasses.replace(eval_cfg, tasks=list(cfg.general), modes=[], mode="own") if cfg.general else None
    runs, points = [], []

    def measure(model, name: str, folder: str, domain: bool):
        point = {"point": folder, "name": name, "domain": None, "general": None}
        if domain:
            result = evaluate(dataclasses.replace(eval_cfg, name=name), out / folder, model=model,
                              tokenizer=tokenizer, progress=progress)
            runs.extend(result.get("runs", [result]))  # one report per mode
            point["domain"] = result.get("runs", [result])[0]
        if general_cfg is not None:
            point["general"] = evaluate(dataclasses.replace(general_cfg, name=name), out / "general" / folder,
                                        model=model, tokenizer=tokenizer, progress=progress)
        points.append(point)

    # each model is laid out, and evaluated, by the sharding rules of the training that made (or starts from) it
    if cfg.eval_base or general_cfg is not None:
        mesh = make_mesh({"fsdp": -1})
        with use_rules(first.mesh.sharding_rules()):
            with jax.set_mesh(mesh):
                base, _, _ = build_model(first, mesh)
            name = Path(first.model.path).name if first.model.path else f"{first.model.preset} (base)"
            measure(base, f"{name} before training", "base", cfg.eval_base)
        del base
    single = len(trainings) == 1
    for t in trainings:
        if not (t.evaluated or general_cfg is not None):
            continue
        with use_rules(t.config.mesh.sharding_rules()):
            model, _, step = trained_model(t.stage.dir)
            label = f"trained (step {step})" if single else f"after {t.name} (step {step})"
            measure(model, label, "trained" if single else t.name, t.evaluated)
        del model
    (out / "summary.md").write_text(summary_markdown(runs[::-1]), encoding="utf-8")
    compare_plot(runs[::-1], out / "comparison.png")
    (out / "learning.json").write_text(json.dumps(learning_table(points), indent=2) + "\n")
    _track_evaluation(trainings[-1].config.tracking, out, points, runs)
    return {"runs": [r["model"] for r in runs], "points": [p["name"] for p in points]}


def _track_evaluation(tracking, out: Path, points: list[dict], runs: list[dict]) -> None:
    """The evaluation as one tracked run of its own (the trainings' tracking settings): the learning table, each
    report's task figures, summary.md and learning.json."""
    from diabetica_jax.train.trackers import Trackers

    trackers = Trackers(tracking, out, {"points": [p["point"] for p in points]}, name=f"{out.parent.name}-eval",
                        resume=False)  # an evaluation run again is a new tracked run
    try:
        trackers.log_table("learning", learning_table(points))
        trackers.log_table("evaluation", [{"model": r["model"], "mode": r["mode"], **headline_figures(r["tasks"])}
                                          for r in runs])
        for name in ("summary.md", "learning.json"):
            trackers.log_file(out / name)
    finally:
        trackers.close()


def learning_table(points: list[dict]) -> list[dict]:
    """Per evaluation point (base, then each stage): the headline figure of every task measured there, keyed
    `domain_<figure>` (the eval tasks) and `general_<figure>` (the general tasks); a figure not measured at a
    point is absent from its row (never carried over or drawn through). MCQ accuracy comes with its 95%
    interval and item count, so small benchmarks can be read as the noise they are."""
    rows = []
    for p in points:
        row = {"point": p["point"], "name": p["name"]}
        for prefix in ("domain", "general"):
            tasks = (p[prefix] or {}).get("tasks") or {}
            row.update({f"{prefix}_{k}": v for k, v in headline_figures(tasks).items()})
        rows.append(row)
    return rows


def headline_figures(tasks: dict) -> dict:
    """The numbers a learning table shows of one report's tasks (only those that are numbers)."""
    picks = {"mcq": {"mcq_accuracy": "accuracy", "mcq_ci95": "accuracy_ci95", "mcq_answered": "answered_rate",
                     "mcq_letter_probability": "letter_probability",
                     "mcq_n_items": "n_items"},
             "perplexity": {"perplexity": "perplexity"}, "cloze": {"cloze_rougeL": "rougeL"},
             "dialog": {"dialog_mean": "mean_score"}}
    figures = {}
    for task, keys in picks.items():
        report = tasks.get(task)
        if not isinstance(report, dict):
            continue
        for name, key in keys.items():
            value = report.get(key)
            if isinstance(value, (list, tuple)):  # an interval
                figures[name] = list(value)
            elif isinstance(value, (int, float)) and value == value:  # NaN: not measured
                figures[name] = value
    harnessed = tasks.get("lm_eval")
    if isinstance(harnessed, dict):  # every lm-eval task's metrics: lm_eval_<task>_<metric>
        for task, metrics in harnessed.get("results", {}).items():
            figures.update({f"lm_eval_{task}_{metric}": value for metric, value in metrics.items()
                            if not metric.endswith("_stderr") and value == value})
    return figures


def _export(cfg: RunConfig, out: Path, train_dir: Path) -> dict:
    from diabetica_jax.train.run_dir import export_run

    exported = export_run(train_dir, out, dtype=cfg.export.dtype, max_shard_size=cfg.export.max_shard_size,
                          progress=False)
    summary = {"step": exported.step, "dtype": cfg.export.dtype or exported.model_config.source_dtype}
    if not cfg.export.verify and importlib.util.find_spec("torch") is None:
        (out / "verify.json").write_text(json.dumps({"skipped": NO_TORCH}) + "\n")
    if cfg.export.verify:
        summary["verify"] = verify_export(out, exported.tokenizer, cfg.export.verify_prompts, cfg.export.verify_tokens)
        (out / "verify.json").write_text(json.dumps(summary["verify"], indent=2, ensure_ascii=False) + "\n")
        if not summary["verify"]["identical"]:
            raise RuntimeError(f"{out}: transformers' greedy tokens differ from the JAX engine's (see verify.json)")
    return summary


def verify_export(path: Path, tokenizer, n_prompts: int, n_tokens: int) -> dict:
    """transformers loads the export and greedily produces the same tokens as the JAX engine on it."""
    import torch
    from transformers import AutoModelForCausalLM

    from diabetica_jax import hf
    from diabetica_jax.demo.facts import BENCH_DIALOG, BENCH_MCQ
    from diabetica_jax.generate.chat import chat_prompt, engine_for

    questions = [q for q, _, _ in BENCH_MCQ] + [q for q, _ in BENCH_DIALOG]
    prompts = [chat_prompt(tokenizer, [{"role": "user", "content": q}]) for q in questions[:n_prompts]]
    model, _ = hf.load(path, progress=False)
    with engine_for(model, tokenizer) as engine:
        ours = engine.generate(prompts, n_tokens)
    reference_model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    stop = set(int(s) for s in engine.stop_ids)
    theirs = []
    with torch.no_grad():
        for prompt in prompts:
            out = reference_model.generate(torch.tensor([prompt]), max_new_tokens=n_tokens, do_sample=False,
                                           eos_token_id=sorted(stop), pad_token_id=engine.pad_id)[0, len(prompt):]
            tokens = out.tolist()
            cut = next((i for i, t in enumerate(tokens) if t in stop), len(tokens))
            theirs.append(tokens[:cut])
    return {"identical": ours == theirs, "prompts": len(prompts), "tokens_per_prompt": n_tokens,
            "jax": ours, "transformers": theirs, "agreement": float(np.mean([a == b for a, b in zip(ours, theirs)]))}
