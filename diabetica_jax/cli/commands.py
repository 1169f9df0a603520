"""One function per `diabetica-jax` command: load the config, call the stage, print what it did."""

from __future__ import annotations

import json
from pathlib import Path

import jax
from jax.sharding import Mesh

from diabetica_jax import hf
from diabetica_jax.cli.choices import CONFIG_KINDS  # noqa: F401 (the parser's --kind choices)
from diabetica_jax.cli.generate_config import ChatConfig, DecodeConfig, GenerateConfig
from diabetica_jax.cli.shorthands import shorthand_overrides
from diabetica_jax.configuration import ConfigFileError, InputError, load_config, shown
from diabetica_jax.curate.config import load_curate_config
from diabetica_jax.curate.pipeline import curate as run_curation
from diabetica_jax.evaluation.compare import load_reports, write_comparison
from diabetica_jax.evaluation.config import EvalConfig
from diabetica_jax.evaluation.runner import evaluate
from diabetica_jax.evaluation.summary import compare_plot, summary_markdown
from diabetica_jax.generate import SamplingParams
from diabetica_jax.generate.chat import chat_prompt, engine_for, repl
from diabetica_jax.parallel import make_mesh
from diabetica_jax.parallel.distributed import initialize
from diabetica_jax.parallel.mesh import devices_needed, emulate_cpu_devices
from diabetica_jax.pipeline.config import load_run_config, stage_train_config
from diabetica_jax.pipeline.run import run as run_pipeline
from diabetica_jax.serve import ServeConfig, ServedModel
from diabetica_jax.serve import app as serve_app
from diabetica_jax.serve import server as serve_server
from diabetica_jax.serve.limits import BodyLimits
from diabetica_jax.train.config import TrainConfig, check_against_devices
from diabetica_jax.train.loop import train as run_training
from diabetica_jax.train.run_dir import export_run
from diabetica_jax.train.setup import read_train_config

DEFAULT_PROMPT = "What is the HbA1c target for most non-pregnant adults with type 2 diabetes?"
# A config's kind (cli.choices.CONFIG_KINDS) is the folder it lives in: configs/recipes/ or configs/train/.
_KIND_OF_FOLDER = {"recipes": "recipe", "train": "train"}


def _source(cfg: DecodeConfig) -> hf.ModelSource:
    """model.path (a checkpoint or training run directory) or model.preset (random weights), read and checked up
    to its weights: its tokenizer comes first, so that prompts are checked before the model loads."""
    return hf.find(cfg.model.path, preset=cfg.model.preset)


def _load(source: hf.ModelSource, cfg: DecodeConfig) -> tuple[hf.OpenedModel, Mesh | None]:
    """The model of `source`, and the mesh it is placed on (`mesh`; default: one device)."""
    mesh = make_mesh(cfg.mesh) if cfg.mesh else None
    opened = source.load(mesh=mesh, seed=cfg.seed, allow_pickle=cfg.allow_pickle, runtime=cfg.model.runtime)
    return opened, mesh


def _sampling(cfg: DecodeConfig) -> SamplingParams:
    return SamplingParams(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                          repetition_penalty=cfg.repetition_penalty, seed=cfg.seed)


def generate(args) -> int:
    cfg = load_config(GenerateConfig, *_config_and_overrides(args))
    source = _source(cfg)
    tokenizer = source.tokenizer
    prompts = cfg.prompts or [DEFAULT_PROMPT]
    if cfg.raw:
        ids = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    else:
        ids = [chat_prompt(tokenizer, [{"role": "user", "content": p}]) for p in prompts]
    for prompt, prompt_ids in zip(prompts, ids):
        if not prompt_ids:  # the engine needs a token to start from; say which prompt and tokenizer gave none
            tokenizer_name = f"the tokenizer of {cfg.model.path}" if cfg.model.path else "the embedded Qwen2 tokenizer"
            why = ("it is empty" if not prompt else
                   "its vocabulary matches none of the text: check the checkpoint's tokenizer files")
            raise InputError(f"--prompt {shown(prompt)}: {tokenizer_name} turns it into no token ids ({why}); "
                             "there is nothing to generate from")
    opened, mesh = _load(source, cfg)
    with engine_for(opened.model, tokenizer, mesh) as engine:
        outputs = engine.generate(ids, cfg.max_new_tokens, _sampling(cfg))
    origin = cfg.model.path or f"preset {cfg.model.preset} (random weights, seed {cfg.seed})"
    print(f"# model: {origin}; {opened.config.num_params() / 1e6:.1f}M parameters; {cfg.max_new_tokens} new "
          "tokens max")
    for prompt, out in zip(prompts, outputs):
        print(f"\n>>> {prompt}\n{tokenizer.decode(out, skip_special_tokens=True)}")
    return 0


def chat(args) -> int:
    cfg = load_config(ChatConfig, *_config_and_overrides(args))
    opened, mesh = _load(_source(cfg), cfg)
    with engine_for(opened.model, opened.tokenizer, mesh) as engine:
        repl(engine, opened.tokenizer, _sampling(cfg), cfg.max_new_tokens, cfg.system)
    return 0


def train(args) -> int:
    cfg = load_config(TrainConfig, args.config, args.overrides)  # config errors before any device work
    initialize(args.coordinator, args.num_processes, args.process_id)
    check_against_devices(cfg, jax.device_count(), jax.process_count(), source=args.config or "defaults")
    result = run_training(cfg, args.run_dir, progress=not args.no_progress, stop_after=args.stop_after)
    if jax.process_index() == 0:
        last = result.history[-1] if result.history else {}
        status = "preempted (SIGTERM), checkpoint saved" if result.preempted else "done"
        print(f"{status}: step {result.final_step}/{cfg.loop.steps}, loss {last.get('loss', float('nan')):.4f}, "
              f"run dir {result.run_dir}")
    return 0


def _config_kind(path: str, given: str | None) -> str:
    if not Path(path).is_file():
        raise ConfigFileError(f"{path}: config file not found")
    if given:
        return given
    kind = _KIND_OF_FOLDER.get(Path(path).resolve().parent.name)
    if kind is None:
        raise ConfigFileError(f"{path}: cannot tell a recipe from a training config outside configs/recipes/ or "
                              f"configs/train/; pass --kind recipe or --kind train")
    return kind


def plan(args) -> int:
    kind = _config_kind(args.config, args.kind)
    if kind == "recipe":  # every training stage: their methods (sft, dpo, grpo) compile different steps
        run_cfg = load_run_config(args.config, args.overrides)
        stages = [(s.name, stage_train_config(run_cfg, i, "<previous stage>" if i else None, args.config))
                  for i, s in enumerate(run_cfg.stages)] or [("train", run_cfg.train)]
    else:
        stages = [("train", load_config(TrainConfig, args.config, args.overrides))]
    counts = {args.devices or devices_needed(cfg.mesh.sizes()) for _, cfg in stages}
    if None in counts or len(counts) > 1:
        raise ConfigFileError(f"{args.config}: give --devices N, or mesh sizes without -1 (the same in every stage)")
    emulate_cpu_devices(counts.pop())  # before the first JAX computation starts the CPU backend
    from diabetica_jax.train.plan import format_plan
    from diabetica_jax.train.plan import plan as plan_memory

    for i, (name, cfg) in enumerate(stages):
        if len(stages) > 1:
            print(("\n" if i else "") + f"stage {name} (method {cfg.method}):")
        print(format_plan(plan_memory(cfg)))
    return 0


def export(args) -> int:
    exported = export_run(args.run_dir, args.out, args.step, args.dtype, args.max_shard_size, adapter=args.adapter)
    if args.adapter:
        what = " (LoRA adapters only, PEFT layout)"
    else:
        what = " (LoRA adapters merged)" if read_train_config(args.run_dir).lora.rank else ""
    print(f"exported step {exported.step} of {args.run_dir} to {exported.path}{what}")
    return 0


def _config_and_overrides(args) -> tuple[str | None, list[str]]:
    """The config file and the overrides: those written out, then those of the shorthand options (--port 8001:
    port=8001). `curate key=value --out DIR` (no config file): the first override lands in the config slot."""
    config, overrides = args.config, list(args.overrides)
    if config and "=" in config and not Path(config).is_file():
        config, overrides = None, [config] + overrides
    return config, overrides + shorthand_overrides(args)


def curate(args) -> int:
    config, overrides = _config_and_overrides(args)
    card = run_curation(load_curate_config(config, overrides, args.input), args.out)
    print(f"curated {card['collected']} collected (+{card['generated']} generated): kept {card['kept']}, "
          f"rejected {card['rejected']} -> {args.out}/shards, rejects.jsonl, data_card.md")
    for stage in card["stages"]:
        reasons = ", ".join(f"{k} {v}" for k, v in list(stage["reasons"].items())[:3])
        print(f"  {stage['name']:14s} {stage['entered']:6d} in {stage['kept']:6d} kept {stage['rejected']:5d} rejected"
              + (f"  ({reasons})" if reasons else ""))
    return 0


def eval_config_and_overrides(args) -> tuple[str | None, list[str]]:
    """The eval config file and the overrides its options make (--model: model.path=..., ...), for load_config."""
    config, overrides = _config_and_overrides(args)
    for key, value in (("model.path", args.model), ("mode", args.mode), ("endpoint.base_url", args.endpoint),
                       ("endpoint.api_key_env", args.api_key_env), ("seeds", args.seeds)):
        if value is not None:
            overrides.append(f"{key}={value}")
    if args.task or args.data:
        if not (args.task and args.data):
            raise ConfigFileError("eval: --task and --data go together")
        overrides.append(f"tasks=[{{task: {args.task}, files: [{json.dumps(str(Path(args.data).absolute()))}]}}]")
    return config, overrides


def eval(args) -> int:  # noqa: A001 (the command's name)
    cfg = load_config(EvalConfig, *eval_config_and_overrides(args))
    earlier = load_reports(args.compare) if args.compare else []  # read (and refused) before any work
    result = evaluate(cfg, args.out)
    runs = result.get("runs", [result]) + earlier
    if len(runs) > 1:
        (Path(args.out) / "summary.md").write_text(summary_markdown(runs), encoding="utf-8")
        compare_plot(runs, Path(args.out) / "comparison.png")
    print(summary_markdown(runs))
    print(f"reports in {args.out}: report.json, report_<task>.json, summary.md, comparison.png")
    return 0


def compare(args) -> int:
    result = write_comparison(args.reports, args.out, args.protocol)
    print(result["markdown"])
    print(f"comparison in {args.out}: comparison.md, comparison.json" + (", comparison.png" if result["plot"] else ""))
    return 0


def run(args) -> int:
    result = run_pipeline(load_run_config(args.config, args.overrides), args.run_dir, progress=not args.no_progress)
    for stage, status in result["stages"].items():
        seconds = result["seconds"].get(stage)
        print(f"  {stage:16s} {status}" + (f" ({seconds:.0f} s)" if seconds is not None else ""))
    print(f"summary: {Path(result['run_dir']) / 'summary.md'}")
    return 0


def serve(args) -> int:
    cfg = load_config(ServeConfig, *_config_and_overrides(args))  # the limits are checked here
    try:
        body_limits = BodyLimits(max_body_bytes=cfg.max_body_bytes, body_timeout=cfg.body_timeout)
    except ValueError as e:
        raise ConfigFileError(f"serve: {e}") from None
    limits = cfg.limits
    served = ServedModel.load(cfg.model.path or "", preset=cfg.model.preset, runtime=cfg.model.runtime,
                              name=cfg.name, limits=limits, warmup=cfg.warmup)
    try:
        app = serve_app.create_app(served, api_key_env=cfg.api_key_env, max_body_bytes=body_limits.max_body_bytes,
                                   body_timeout=body_limits.body_timeout)
    except ValueError as e:
        raise ConfigFileError(f"--api-key-env: {e}") from None
    print(f"# serving {served.name!r} on http://{cfg.host}:{cfg.port} (web page at /, API at /v1); "
          f"{limits.slots} slots, prompts up to {limits.max_prompt_tokens} tokens, replies up to "
          f"{limits.max_new_tokens}", flush=True)
    try:
        serve_server.run(app, cfg.host, cfg.port)
    finally:
        served.close()
    return 0
