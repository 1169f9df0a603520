"""`diabetica-jax`: one command per stage. Thin: parse arguments, build what the stage needs, call it."""

from __future__ import annotations

import argparse
import logging
import sys

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
        return model, cfg, hf.load_tokenizer(args.model)
    cfg = QwenConfig.preset(args.preset, dtype=args.dtype)
    return create_model(cfg, mesh=mesh, seed=args.seed), cfg, hf.load_tokenizer(None)


def cmd_generate(args) -> int:
    from diabetica_jax.generate import greedy_generate

    model, cfg, tokenizer = _load_model(args)
    prompts = args.prompt or [DEFAULT_PROMPT]
    if args.raw:
        ids = [tokenizer.encode(p) for p in prompts]
    else:
        ids = [
            tokenizer.encode(
                tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False),
                add_special_tokens=False,
            )
            for p in prompts
        ]
    stop_ids = sorted({tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")} - {None})
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    outputs = greedy_generate(model, ids, args.max_new_tokens, stop_ids=stop_ids, pad_id=pad_id)
    source = args.model or f"preset {args.preset} (random weights, seed {args.seed})"
    print(f"# model: {source}; {cfg.num_params() / 1e6:.1f}M parameters; greedy, {args.max_new_tokens} new tokens max")
    for prompt, out in zip(prompts, outputs):
        print(f"\n>>> {prompt}\n{tokenizer.decode(out, skip_special_tokens=True)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diabetica-jax", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate text from a checkpoint or the embedded default model")
    gen.add_argument("--model", help="Hugging Face checkpoint directory (config.json + safetensors)")
    gen.add_argument("--preset", default="tiny", help="model preset with random weights when --model is not given")
    gen.add_argument("--seed", type=int, default=0, help="random init seed for --preset")
    gen.add_argument("--prompt", action="append", help="prompt text (repeatable); a diabetes question by default")
    gen.add_argument("--raw", action="store_true", help="do not wrap prompts in the ChatML chat template")
    gen.add_argument("--max-new-tokens", type=int, default=32)
    gen.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="compute dtype")
    gen.add_argument("--mesh", help="mesh sizes, e.g. fsdp=4,tensor=2 (default: one device)")
    gen.add_argument("--allow-pickle", action="store_true", help="accept a PyTorch pickle checkpoint (trusted only)")
    gen.set_defaults(func=cmd_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    from diabetica_jax.hf.errors import CheckpointError
    from diabetica_jax.model.config import ConfigError

    try:
        return args.func(args)
    except (CheckpointError, ConfigError) as e:
        print(f"diabetica-jax {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
