"""`diabetica-jax`: one command per stage. This module only parses arguments; `commands` does the work."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

# Only light imports here: `commands` (JAX, Transformers, Orbax: seconds to load) is imported once the
# arguments parsed, so that `--help` and usage errors answer at once. The settings of generate, chat and serve
# load no JAX either: their options show the settings' defaults.
from diabetica_jax.cli import choices
from diabetica_jax.cli.generate_config import ChatConfig, GenerateConfig
from diabetica_jax.cli.shorthands import mesh_sizes, shorthand, shorthands
from diabetica_jax.errors import RunFailure, UserError
from diabetica_jax.serve.config import ServeConfig

DEBUG_ENV = "DIABETICA_JAX_DEBUG"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default after its help, except an absent one (None, a flag's False) and one the help
    already words itself ("default: ...")."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS \
                or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _decode_flags(p: argparse.ArgumentParser, cls: type) -> None:
    """generate's and chat's options: the keys of their DecodeConfig."""
    _config_args(p, "settings file (YAML; default: all defaults)", "temperature=0.7 model.runtime.dtype=bfloat16",
                 optional=True)
    shorthand(p, "--model", cls, "model.path")
    shorthands(p, cls, "model.preset", "seed", "max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty",
                "model.runtime.dtype", "model.runtime.attention")
    shorthand(p, "--mesh", cls, "mesh", type=mesh_sizes, help="mesh sizes, e.g. fsdp=4,tensor=2 (default: one "
                                                                "device)")
    shorthands(p, cls, "allow_pickle")


def _config_args(p: argparse.ArgumentParser, what: str, example: str, optional: bool = False) -> None:
    p.add_argument("config", nargs="?" if optional else None, help=what)
    p.add_argument("overrides", nargs="*", help=f"dotted overrides, before or after the options, e.g. {example}")


def _run_dir_flags(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--run-dir", required=True, help=what)
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs and batch jobs)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diabetica-jax", formatter_class=_HelpFormatter,
                                     description="Curate data, fine-tune, evaluate, export and serve "
                                                 "diabetes-specialised Qwen models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument("--debug", action="store_true",
                        help=f"print the traceback under an input error too (or set {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="one of these (`diabetica-jax COMMAND --help` for its options)")

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=summary, description=summary, formatter_class=_HelpFormatter)

    p = command("generate", "generate text from a checkpoint or the embedded default model")
    _decode_flags(p, GenerateConfig)
    shorthand(p, "--prompt", GenerateConfig, "prompts", help="prompt text (repeatable); a diabetes question by default")
    shorthands(p, GenerateConfig, "raw")

    p = command("chat", "interactive multi-turn chat with streamed tokens (/help in the chat lists its commands)")
    _decode_flags(p, ChatConfig)
    shorthands(p, ChatConfig, "system")

    p = command("train", "fine-tune (full or LoRA) from a training config (configs/train/)")
    _config_args(p, "training config, e.g. configs/train/tiny.yaml", "loop.steps=100 mesh.tensor=2")
    _run_dir_flags(p, "metrics, TensorBoard and checkpoints go here; rerun to resume")
    p.add_argument("--stop-after", type=int, help="run at most this many steps now (the schedule still spans loop.steps)")
    group = p.add_argument_group("multi-host (automatic on TPU pods and SLURM)")
    group.add_argument("--coordinator", help="HOST:PORT of process 0's coordinator")
    group.add_argument("--num-processes", type=int, help="how many processes (hosts) take part")
    group.add_argument("--process-id", type=int, help="this process's index, 0 to --num-processes - 1")

    p = command("plan", "compile the train step for a mesh on emulated devices and print per-device memory")
    _config_args(p, "a training config (configs/train/) or a recipe (configs/recipes/: its train section)",
                 "train.mesh.fsdp=16")
    p.add_argument("--kind", choices=choices.CONFIG_KINDS, help="what the config is (default: from its folder)")
    p.add_argument("--devices", type=int, help="emulated devices (default: the mesh's size when fully given)")

    p = command("curate", "collect, filter, augment and refine training data; write shards and a data card")
    _config_args(p, "curation config (default: the embedded demo corpus)", "augment.backend=openai", optional=True)
    p.add_argument("--input", action="append", help="input file (repeatable): curate these with the default stages")
    p.add_argument("--out", required=True, help="output directory: shards, rejects.jsonl, data_card.md")

    p = command("eval", "run the Diabetica benchmarks (MCQ, fill-in-the-blank, judged dialogue)")
    _config_args(p, "suite config, e.g. eval/demo.yaml or eval/diabetica.yaml (default: the embedded mini "
                    "benchmarks)", "data_dir=/data/diabetica", optional=True)
    p.add_argument("--model", help="Hugging Face checkpoint directory, or openai:NAME for an OpenAI-compatible "
                                   "endpoint (default: the tiny random preset)")
    p.add_argument("--mode", choices=choices.EVAL_MODES, help="own: the project's prompts, greedy decoding and rules; "
                                                      "faithful: the paper's (default: the config's mode, own)")
    p.add_argument("--endpoint", help="base URL of the endpoint for --model openai:NAME (default: endpoint.base_url)")
    p.add_argument("--api-key-env", help="environment variable holding the endpoint's API key")
    p.add_argument("--seeds", type=int, help="faithful mode: sampled runs with seeds 42, 43, ... (mean and spread)")
    p.add_argument("--task", choices=choices.TASKS, help="one task on one --data file, no suite")
    p.add_argument("--data", help="benchmark file for --task")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--compare", nargs="*", help="earlier report directories to compare against in the plot")

    p = command("compare", "one table and plot from several evaluation reports, beside the published rows")
    p.add_argument("reports", nargs="+", help="report.json files or evaluation output directories")
    p.add_argument("--out", required=True, help="where comparison.md, comparison.json and comparison.png go")
    p.add_argument("--protocol", help="protocol.json (or its folder) whose published results join the table (default: the reports' own, else the paper's shipped protocol)")

    p = command("run", "the whole pipeline: curate, train, eval, export (finished stages are skipped)")
    _config_args(p, "recipe, e.g. configs/recipes/demo.yaml", "train.loop.steps=20")
    _run_dir_flags(p, "one folder per stage goes here (data, train-STAGE, eval, hf); rerun to resume")

    p = command("serve", "an OpenAI-compatible API (continuous batching) and the clinic web page")
    _config_args(p, "server settings file (YAML; default: all defaults)", "port=8001 limits.slots=16", optional=True)
    shorthand(p, "--model", ServeConfig, "model.path")
    shorthands(p, ServeConfig, "model.preset", "name", "host", "port", "api_key_env", "model.runtime.dtype")
    group = p.add_argument_group("limits")
    shorthands(group, ServeConfig, "limits.slots", "limits.max_prompt_tokens")
    shorthand(group, "--max-tokens", ServeConfig, "limits.max_new_tokens")  # the API's name for it
    shorthands(group, ServeConfig, "limits.max_waiting", "max_body_mb", "body_timeout")
    shorthand(p, "--no-warmup", ServeConfig, "warmup", help="compile on the first requests instead of at start")

    command("lm-eval", "lm-evaluation-harness with this engine as --model diabetica-jax and the Diabetica tasks "
                       "(diabetica_mcq, diabetica_cloze); every argument goes to lm-eval, e.g. --model diabetica-jax "
                       "--model_args pretrained=DIR --tasks mmlu")

    p = command("export", "write a training run's checkpoint as a Hugging Face checkpoint")
    p.add_argument("--run-dir", required=True, help="the training run directory (of `train`, or run's train-STAGE)")
    p.add_argument("--out", required=True, help="Hugging Face checkpoint directory to write")
    p.add_argument("--step", type=int, help="checkpoint step (default: latest)")
    p.add_argument("--dtype", choices=choices.COMPUTE_DTYPES, help="weights dtype (default: the source checkpoint's)")
    p.add_argument("--max-shard-size", default="5GB", help="largest safetensors file, e.g. 2GB or 500MB")
    p.add_argument("--adapter", action="store_true", help="a LoRA run's adapters only, unmerged, in PEFT's layout "
                   "(adapter_config.json + adapter_model.safetensors: PeftModel, vLLM --enable-lora)")
    return parser


def _input_error(error: BaseException) -> str | None:
    """The one line for an error that means "this input cannot be used", else None (a bug: traceback)."""
    if isinstance(error, UserError):  # every package's "this input cannot be used" (diabetica_jax/errors.py)
        return str(error)
    if isinstance(error, OSError) and error.filename:  # the system's: unreadable, a folder for a file, disk full
        return f"{error.filename}: {error.strerror or error}"
    if isinstance(error, FileNotFoundError):  # a library's "not found", with its own message
        return str(error)
    return None


def _quiet_library_internals() -> None:
    """Orbax reports a failed background write through absl at ERROR with its whole traceback, its other
    writes' tasks through asyncio ("Task exception was never retrieved"), and its abandoned reads raise again
    when collected ("Exception ignored in ..."); the command reports the failure itself in one line, so these
    stay quiet unless -v or --debug asks for them."""
    for name in ("absl", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    from diabetica_jax.train.checkpoint import quiet_orbax_leftovers  # loaded with `commands` already

    sys.unraisablehook = quiet_orbax_leftovers


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["lm-eval"]:  # lm-eval's own options, untouched (argparse would take its --model for ours)
        from diabetica_jax.cli import harness

        return harness.main(argv[1:])
    parser = build_parser()
    # Overrides (key=value) may come before or after the options; argparse alone wants them first.
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    from diabetica_jax.cli import commands  # the slow import, only once there is work to do
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per teacher/judge request under -v
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    if not (debug or args.verbose):
        _quiet_library_internals()
    try:
        return getattr(commands, args.command)(args)
    except Exception as e:
        message = _input_error(e)
        if message is None and isinstance(e, RunFailure):
            print(f"diabetica-jax {args.command}: error: {e}", file=sys.stderr)  # not the input: exit 1
            return 1
        if message is None:
            raise
        # bad input: one line naming the file and field; the traceback only when asked for
        if debug:
            traceback.print_exc()
        print(f"diabetica-jax {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
