"""`diabetica-jax`: one command per stage. Thin: parse arguments, build what the stage needs, call it."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

DEFAULT_PROMPT = "What is the HbA1c target for most non-pregnant adults with type 2 diabetes?"


def _parse_mesh(text: str | None) -> dict[str, int] | None:
    if not text:
        return None
    sizes = {}
    for part in text.split(","):
        axis, _, size = part.partition("=")
        try:
            sizes[axis.strip()] = int(size)
        except ValueError:
            raise SystemExit(f"--mesh: expected AXIS=SIZE[,AXIS=SIZE], got {text!r}")
    return sizes


def _load_model(args):
    """A checkpoint directory (--model) or a preset with random weights (--preset, default tiny)."""
    from diabetica_jax import hf
    from diabetica_jax.model import QwenConfig, create_model
    from diabetica_jax.parallel import make_mesh

    mesh = make_mesh(_parse_mesh(args.mesh)) if args.mesh else None
    if args.model:
        model, cfg = hf.load(args.model, mesh=mesh, dtype=args.dtype, allow_pickle=args.allow_pickle)
        return model, cfg, hf.load_tokenizer(args.model), mesh
    cfg = QwenConfig.preset(args.preset, dtype=args.dtype)
    return create_model(cfg, mesh=mesh, seed=args.seed), cfg, hf.load_tokenizer(None), mesh


def _sampling(args):
    from diabetica_jax.generate import SamplingParams

    return SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                          repetition_penalty=args.repetition_penalty, seed=args.seed)


def cmd_generate(args) -> int:
    from diabetica_jax.generate.chat import chat_prompt, engine_for

    model, cfg, tokenizer, mesh = _load_model(args)
    prompts = args.prompt or [DEFAULT_PROMPT]
    if args.raw:
        ids = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    else:
        ids = [chat_prompt(tokenizer, [{"role": "user", "content": p}]) for p in prompts]
    outputs = engine_for(model, tokenizer, mesh).generate(ids, args.max_new_tokens, _sampling(args))
    source = args.model or f"preset {args.preset} (random weights, seed {args.seed})"
    print(f"# model: {source}; {cfg.num_params() / 1e6:.1f}M parameters; {args.max_new_tokens} new tokens max")
    for prompt, out in zip(prompts, outputs):
        print(f"\n>>> {prompt}\n{tokenizer.decode(out, skip_special_tokens=True)}")
    return 0


def cmd_chat(args) -> int:
    """Interactive chat in the terminal: streamed tokens, multi-turn history, /reset and /quit."""
    from diabetica_jax.generate.chat import chat_prompt, engine_for

    model, _, tokenizer, mesh = _load_model(args)
    engine = engine_for(model, tokenizer, mesh)
    history = [{"role": "system", "content": args.system}] if args.system else []
    print("diabetica-jax chat: type a message; /reset clears the history, /quit (or Ctrl-D) leaves.")
    while True:
        try:
            text = input("\nyou> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if text in ("/quit", "/exit"):
            return 0
        if text == "/reset":
            history = history[:1] if args.system else []
            continue
        if not text:
            continue
        history.append({"role": "user", "content": text})
        print("assistant> ", end="", flush=True)
        reply: list[int] = []
        shown = ""
        for token in engine.stream(chat_prompt(tokenizer, history), args.max_new_tokens, _sampling(args)):
            reply.append(token)
            decoded = tokenizer.decode(reply, skip_special_tokens=True)
            print(decoded[len(shown):], end="", flush=True)  # decode the whole reply: multi-byte characters
            shown = decoded
        print()
        history.append({"role": "assistant", "content": shown})


def cmd_train(args) -> int:
    from diabetica_jax.parallel.distributed import initialize
    from diabetica_jax.train.config import check_against_devices, load_train_config

    cfg = load_train_config(args.config, args.overrides)  # config errors before any device work
    initialize(args.coordinator, args.num_processes, args.process_id)
    import jax

    check_against_devices(cfg, jax.device_count(), jax.process_count(), source=args.config)
    from diabetica_jax.train.loop import train

    result = train(cfg, args.run_dir, progress=not args.no_progress, stop_after=args.stop_after)
    if jax.process_index() == 0:
        last = result.history[-1] if result.history else {}
        status = "preempted (SIGTERM), checkpoint saved" if result.preempted else "done"
        print(f"{status}: step {result.final_step}/{cfg.loop.steps}, loss {last.get('loss', float('nan')):.4f}, "
              f"run dir {result.run_dir}")
    return 0


def _is_pipeline_config(data: dict) -> bool:
    return isinstance(data.get("train"), dict) and "model" in data["train"] or "curate" in data


def cmd_plan(args) -> int:
    from diabetica_jax.configuration import load_yaml
    from diabetica_jax.train.config import load_train_config
    from diabetica_jax.train.plan import format_plan, plan

    if _is_pipeline_config(load_yaml(args.config)):  # a `run` config: plan its training stage
        from diabetica_jax.pipeline.config import load_run_config

        cfg = load_run_config(args.config, args.overrides).train
    else:
        cfg = load_train_config(args.config, args.overrides)
    print(format_plan(plan(cfg)))
    return 0


def cmd_export(args) -> int:
    from diabetica_jax import hf
    from diabetica_jax.train.loop import trained_model

    model, cfg, step = trained_model(args.run_dir, args.step)
    out = hf.save(model, cfg, args.out, max_shard_size=args.max_shard_size, dtype=args.dtype)
    merged = " (LoRA adapters merged)" if cfg.lora_rank else ""
    print(f"exported step {step} of {args.run_dir} to {out}{merged}")
    return 0


def cmd_curate(args) -> int:
    from diabetica_jax.data.curate.config import load_curate_config
    from diabetica_jax.data.curate.pipeline import curate

    config, overrides = args.config, list(args.overrides)
    if config and "=" in config and not Path(config).is_file():  # `curate key=value --out DIR`: no config file
        config, overrides = None, [config] + overrides
    cfg = load_curate_config(config, overrides, args.input)
    card = curate(cfg, args.out)
    print(f"curated {card['collected']} collected (+{card['generated']} generated): kept {card['kept']}, "
          f"rejected {card['rejected']} -> {args.out}/shards, rejects.jsonl, data_card.md")
    for stage in card["stages"]:
        reasons = ", ".join(f"{k} {v}" for k, v in list(stage["reasons"].items())[:3])
        print(f"  {stage['name']:14s} {stage['entered']:6d} in {stage['kept']:6d} kept {stage['rejected']:5d} rejected"
              + (f"  ({reasons})" if reasons else ""))
    return 0


def cmd_eval(args) -> int:
    import json

    from diabetica_jax.evaluation.config import load_eval_config
    from diabetica_jax.evaluation.runner import compare_plot, evaluate, summary_markdown

    config, overrides = args.config, list(args.overrides)
    if config and "=" in config and not Path(config).is_file():
        config, overrides = None, [config] + overrides
    if args.model:
        overrides.append(f"model={args.model}")
    if args.task or args.data:
        if not (args.task and args.data):
            raise SystemExit("eval: --task and --data go together")
        overrides.append(f"tasks=[{{task: {args.task}, files: [{json.dumps(str(Path(args.data).absolute()))}]}}]")
    cfg = load_eval_config(config, overrides)
    result = evaluate(cfg, args.out)
    runs = [result] + [json.loads((Path(d) / "report.json").read_text()) for d in args.compare or []]
    if len(runs) > 1:
        (Path(args.out) / "summary.md").write_text(summary_markdown(runs), encoding="utf-8")
        compare_plot(runs, Path(args.out) / "comparison.png")
    print(summary_markdown(runs))
    print(f"reports in {args.out}: report.json, report_<task>.json, summary.md, comparison.png")
    return 0


def cmd_run(args) -> int:
    from diabetica_jax.pipeline.config import load_run_config
    from diabetica_jax.pipeline.run import run

    cfg = load_run_config(args.config, args.overrides)
    result = run(cfg, args.run_dir, progress=not args.no_progress)
    for stage, status in result["stages"].items():
        seconds = result["seconds"].get(stage)
        print(f"  {stage:8s} {status}" + (f" ({seconds:.0f} s)" if seconds is not None else ""))
    print(f"summary: {Path(result['run_dir']) / 'summary.md'}")
    return 0


def _add_distributed_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("multi-host (automatic on TPU pods and SLURM)")
    group.add_argument("--coordinator", help="HOST:PORT of process 0's coordinator")
    group.add_argument("--num-processes", type=int)
    group.add_argument("--process-id", type=int)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diabetica-jax", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    def model_flags(p):
        p.add_argument("--model", help="Hugging Face checkpoint directory (config.json + safetensors)")
        p.add_argument("--preset", default="tiny", help="model preset with random weights when --model is not given")
        p.add_argument("--seed", type=int, default=0, help="random init seed for --preset, and the sampling seed")
        p.add_argument("--max-new-tokens", type=int, default=32)
        p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
        p.add_argument("--top-k", type=int, default=0)
        p.add_argument("--top-p", type=float, default=1.0)
        p.add_argument("--repetition-penalty", type=float, default=1.0)
        p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="compute dtype")
        p.add_argument("--mesh", help="mesh sizes, e.g. fsdp=4,tensor=2 (default: one device)")
        p.add_argument("--allow-pickle", action="store_true", help="accept a PyTorch pickle checkpoint (trusted only)")

    gen = sub.add_parser("generate", help="generate text from a checkpoint or the embedded default model")
    model_flags(gen)
    gen.add_argument("--prompt", action="append", help="prompt text (repeatable); a diabetes question by default")
    gen.add_argument("--raw", action="store_true", help="do not wrap prompts in the ChatML chat template")
    gen.set_defaults(func=cmd_generate)

    chat = sub.add_parser("chat", help="interactive multi-turn chat with streamed tokens")
    model_flags(chat)
    chat.add_argument("--system", help="system prompt")
    chat.set_defaults(func=cmd_chat, max_new_tokens=512)

    tr = sub.add_parser("train", help="fine-tune (full or LoRA) from a YAML config")
    tr.add_argument("config", help="YAML config, e.g. configs/train/tiny.yaml")
    tr.add_argument("overrides", nargs="*", help="dotted overrides, e.g. loop.steps=100 mesh.tensor=2")
    tr.add_argument("--run-dir", required=True, help="metrics, TensorBoard and checkpoints go here; rerun to resume")
    tr.add_argument("--stop-after", type=int, help="run at most this many steps now (the schedule still spans loop.steps)")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_distributed_flags(tr)
    tr.set_defaults(func=cmd_train)

    pl = sub.add_parser("plan", help="compile the train step for a mesh and print per-device memory")
    pl.add_argument("config")
    pl.add_argument("overrides", nargs="*")
    pl.add_argument("--devices", type=int, help="emulated devices (default: the mesh's size when fully given)")
    pl.set_defaults(func=cmd_plan)

    cu = sub.add_parser("curate", help="collect, filter, augment and refine training data; write shards and a data card")
    cu.add_argument("config", nargs="?", help="curation YAML (default: the embedded demo corpus)")
    cu.add_argument("overrides", nargs="*", help="dotted overrides, e.g. augment.backend=openai")
    cu.add_argument("--input", action="append", help="input file (repeatable): curate these with the default stages")
    cu.add_argument("--out", required=True, help="output directory")
    cu.set_defaults(func=cmd_curate)

    ev = sub.add_parser("eval", help="run the Diabetica benchmarks (MCQ, fill-in-the-blank, judged dialogue)")
    ev.add_argument("config", nargs="?", help="suite YAML, e.g. eval/demo.yaml or eval/diabetica.yaml")
    ev.add_argument("overrides", nargs="*", help="dotted overrides, e.g. mode=faithful protocol=FILE")
    ev.add_argument("--model", help="Hugging Face checkpoint directory (default: the tiny random preset)")
    ev.add_argument("--task", choices=["mcq", "cloze", "dialog"], help="one task on one --data file, no suite")
    ev.add_argument("--data", help="benchmark file for --task")
    ev.add_argument("--out", required=True, help="report directory")
    ev.add_argument("--compare", nargs="*", help="earlier report directories to compare against in the plot")
    ev.set_defaults(func=cmd_eval)

    rn = sub.add_parser("run", help="the whole pipeline: curate, train, eval, export (finished stages are skipped)")
    rn.add_argument("config", help="pipeline YAML, e.g. configs/recipes/demo.yaml")
    rn.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.loop.steps=20")
    rn.add_argument("--run-dir", required=True)
    rn.add_argument("--no-progress", action="store_true")
    rn.set_defaults(func=cmd_run)

    ex = sub.add_parser("export", help="write a training run's checkpoint as a Hugging Face checkpoint")
    ex.add_argument("--run-dir", required=True)
    ex.add_argument("--out", required=True)
    ex.add_argument("--step", type=int, help="checkpoint step (default: latest)")
    ex.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ex.add_argument("--max-shard-size", default="5GB")
    ex.set_defaults(func=cmd_export)
    return parser


def _emulate_devices_for_plan(args) -> None:
    """`plan` compiles for the target mesh on CPU: make that many host devices before jax starts."""
    import os

    n = args.devices
    if n is None:
        from diabetica_jax.configuration import apply_overrides, load_yaml

        data = apply_overrides(load_yaml(args.config), args.overrides)
        mesh = (data["train"] if _is_pipeline_config(data) else data).get("mesh", {}) or {}
        sizes = [int(mesh.get(axis, 1 if axis != "fsdp" else -1)) for axis in ("data", "fsdp", "tensor")]
        if any(size < 1 for size in sizes):
            raise SystemExit("plan: give --devices N, or mesh sizes without -1 in the config")
        n = sizes[0] * sizes[1] * sizes[2]
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}".strip()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides (key=value) may come before or after the options; argparse alone wants them first.
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    from diabetica_jax.configuration import ConfigFileError

    try:
        if args.command == "plan":
            _emulate_devices_for_plan(args)
        from diabetica_jax.evaluation.data import EvalDataError
        from diabetica_jax.hf.errors import CheckpointError
        from diabetica_jax.model.config import ConfigError
    except ConfigFileError as e:
        print(f"diabetica-jax {args.command}: error: {e}", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except (CheckpointError, ConfigError, ConfigFileError, EvalDataError) as e:
        print(f"diabetica-jax {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
