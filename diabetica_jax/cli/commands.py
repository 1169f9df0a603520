"""One function per `diabetica-jax` command: load the config, call the stage, print what it did."""

from __future__ import annotations

import json
from pathlib import Path

import jax

from diabetica_jax import hf
from diabetica_jax.cli.choices import CONFIG_KINDS  # noqa: F401 (the parser's --kind choices)
from diabetica_jax.configuration import ConfigFileError, InputError, load_config, shown
from diabetica_jax.curate.config import load_curate_config
from diabetica_jax.curate.pipeline import curate as run_curation
from diabetica_jax.evaluation.compare import load_reports, write_comparison
from diabetica_jax.evaluation.config import EvalConfig
from diabetica_jax.evaluation.runner import compare_plot, evaluate, summary_markdown
from diabetica_jax.generate import SamplingParams
from diabetica_jax.generate.chat import chat_prompt, engine_for, repl
from diabetica_jax.model import QwenConfig, create_model
from diabetica_jax.parallel import make_mesh
from diabetica_jax.parallel.distributed import initialize
from diabetica_jax.parallel.mesh import devices_needed, emulate_cpu_devices
from diabetica_jax.pipeline.config import load_run_config
from diabetica_jax.pipeline.run import run as run_pipeline
from diabetica_jax.serve import ServedModel, ServeLimits
from diabetica_jax.serve import app as serve_app
from diabetica_jax.serve import server as serve_server
from diabetica_jax.serve.limits import MIB, BodyLimits
from diabetica_jax.train.config import TrainConfig, check_against_devices
from diabetica_jax.train.loop import train as run_training
from diabetica_jax.train.run_dir import export_run
from diabetica_jax.train.run_dir import load_run_config as load_train_run_config

DEFAULT_PROMPT = "What is the HbA1c target for most non-pregnant adults with type 2 diabetes?"
# A config's kind (cli.choices.CONFIG_KINDS) is the folder it lives in: configs/recipes/ or configs/train/.
_KIND_OF_FOLDER = {"recipes": "recipe", "train": "train"}


def _parse_mesh(text: str | None) -> dict[str, int] | None:
    if not text:
        return None
    sizes = {}
    for part in text.split(","):
        axis, _, size = part.partition("=")
        try:
            sizes[axis.strip()] = int(size)
        except ValueError:
            raise ConfigFileError(f"--mesh: expected AXIS=SIZE[,AXIS=SIZE], got {text!r}") from None
    return sizes


def _tokenizer(args):
    """The tokenizer of --model, or the embedded one. Read before the weights, so that prompts are checked before
    the model loads; the checkpoint's config.json first, so that its errors come as loading the model reports them."""
    if args.model:
        hf.read_config(args.model)
    return hf.load_tokenizer(args.model)


def _model(args):
    """A checkpoint directory (--model) or a preset with random weights (--preset, default tiny), and the mesh."""
    mesh = make_mesh(_parse_mesh(args.mesh)) if args.mesh else None
    runtime = {"dtype": args.dtype, "attention": args.attention}
    if args.model:
        model, cfg = hf.load(args.model, mesh=mesh, allow_pickle=args.allow_pickle, **runtime)
        return model, cfg, mesh
    cfg = QwenConfig.preset(args.preset, **runtime)
    return create_model(cfg, mesh=mesh, seed=args.seed), cfg, mesh


def _sampling(args) -> SamplingParams:
    return SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                          repetition_penalty=args.repetition_penalty, seed=args.seed)


def generate(args) -> int:
    tokenizer = _tokenizer(args)
    prompts = args.prompt or [DEFAULT_PROMPT]
    if args.raw:
        ids = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    else:
        ids = [chat_prompt(tokenizer, [{"role": "user", "content": p}]) for p in prompts]
    for prompt, prompt_ids in zip(prompts, ids):
        if not prompt_ids:  # the engine needs a token to start from; say which prompt and tokenizer gave none
            tokenizer_name = f"the tokenizer of {args.model}" if args.model else "the embedded Qwen2 tokenizer"
            why = ("it is empty" if not prompt else
                   "its vocabulary matches none of the text: check the checkpoint's tokenizer files")
            raise InputError(f"--prompt {shown(prompt)}: {tokenizer_name} turns it into no token ids ({why}); "
                             "there is nothing to generate from")
    model, cfg, mesh = _model(args)
    with engine_for(model, tokenizer, mesh) as engine:
        outputs = engine.generate(ids, args.max_new_tokens, _sampling(args))
    source = args.model or f"preset {args.preset} (random weights, seed {args.seed})"
    print(f"# model: {source}; {cfg.num_params() / 1e6:.1f}M parameters; {args.max_new_tokens} new tokens max")
    for prompt, out in zip(prompts, outputs):
        print(f"\n>>> {prompt}\n{tokenizer.decode(out, skip_special_tokens=True)}")
    return 0


def chat(args) -> int:
    tokenizer = _tokenizer(args)
    model, _, mesh = _model(args)
    with engine_for(model, tokenizer, mesh) as engine:
        repl(engine, tokenizer, _sampling(args), args.max_new_tokens, args.system)
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
    if kind == "recipe":
        cfg = load_run_config(args.config, args.overrides).train
    else:
        cfg = load_config(TrainConfig, args.config, args.overrides)
    count = args.devices or devices_needed(cfg.mesh.sizes())
    if count is None:
        raise ConfigFileError(f"{args.config}: give --devices N, or mesh sizes without -1")
    emulate_cpu_devices(count)  # before the first JAX computation starts the CPU backend
    from diabetica_jax.train.plan import format_plan
    from diabetica_jax.train.plan import plan as plan_memory

    print(format_plan(plan_memory(cfg)))
    return 0


def export(args) -> int:
    exported = export_run(args.run_dir, args.out, args.step, args.dtype, args.max_shard_size)
    merged = " (LoRA adapters merged)" if load_train_run_config(args.run_dir).lora.rank else ""
    print(f"exported step {exported.step} of {args.run_dir} to {exported.path}{merged}")
    return 0


def _config_and_overrides(args) -> tuple[str | None, list[str]]:
    """`curate key=value --out DIR` (no config file): the first override lands in the config slot."""
    config, overrides = args.config, list(args.overrides)
    if config and "=" in config and not Path(config).is_file():
        config, overrides = None, [config] + overrides
    return config, overrides


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
    """The eval config file and the overrides its options make (--model: model=..., ...), for load_config."""
    config, overrides = _config_and_overrides(args)
    for key, value in (("model", args.model), ("mode", args.mode), ("endpoint.base_url", args.endpoint),
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
    try:
        limits = ServeLimits(slots=args.slots, max_prompt_tokens=args.max_prompt_tokens,
                             max_new_tokens=args.max_tokens, max_waiting=args.max_waiting)
        body_limits = BodyLimits(max_body_bytes=round(args.max_body_mb * MIB), body_timeout=args.body_timeout)
    except ValueError as e:
        raise ConfigFileError(f"serve: {e}") from None
    served = ServedModel.load(args.model or "", preset=args.preset, dtype=args.dtype, name=args.name, limits=limits,
                              warmup=not args.no_warmup)
    try:
        app = serve_app.create_app(served, api_key_env=args.api_key_env, max_body_bytes=body_limits.max_body_bytes,
                                   body_timeout=body_limits.body_timeout)
    except ValueError as e:
        raise ConfigFileError(f"--api-key-env: {e}") from None
    print(f"# serving {served.name!r} on http://{args.host}:{args.port} (web page at /, API at /v1); "
          f"{limits.slots} slots, prompts up to {limits.max_prompt_tokens} tokens, replies up to "
          f"{limits.max_new_tokens}", flush=True)
    try:
        serve_server.run(app, args.host, args.port)
    finally:
        served.close()
    return 0
