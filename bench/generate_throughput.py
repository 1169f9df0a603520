"""Generation throughput of the KV-cache engine: new tokens per second at several batch sizes.

    python bench/generate_throughput.py                              # Qwen2-1.5B shape, batch 1 and 32
    python bench/generate_throughput.py --preset tiny --new 32 --prompt 64   # CPU smoke run

Random weights, random prompts of --prompt tokens, exactly --new new tokens per row (no stop token
can end a row early), greedy, compute dtype --dtype. Reported: new tokens/s = batch x new / wall
time of one generate call after a warm-up call (prefill included), and the per-token decode latency.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="qwen2-1.5b")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=256)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also append results as JSON lines to this file")
    args = parser.parse_args()

    from diabetica_jax import hf
    from diabetica_jax.generate import Engine, SamplingParams
    from diabetica_jax.model import create_model
    from diabetica_jax.model.runtime import RuntimeConfig

    cfg = hf.preset_config(args.preset)
    model = create_model(cfg, RuntimeConfig(dtype=args.dtype))
    engine = Engine(model, stop_ids=[-1], pad_id=0)  # no real token stops a row
    rng = np.random.default_rng(0)
    print(f"device {jax.devices()[0].device_kind}; {args.preset} {args.dtype}; prompt {args.prompt}, new {args.new}")
    for batch in args.batches:
        prompts = [rng.integers(0, cfg.vocab_size, args.prompt).tolist() for _ in range(batch)]
        engine.generate(prompts, args.new, SamplingParams())  # compile and warm up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = engine.generate(prompts, args.new, SamplingParams())
            times.append(time.perf_counter() - start)
        assert all(len(o) == args.new for o in out)
        best = min(times)
        print(f"  batch {batch:3d}: {batch * args.new / best:10,.1f} new tokens/s  "
              f"({best / args.new * 1e3:.2f} ms per decode step, best of {args.repeats})")
        if args.json:
            import flax

            record = {"preset": args.preset, "device": jax.devices()[0].device_kind, "dtype": args.dtype,
                      "batch": batch, "prompt": args.prompt, "new": args.new, "seconds": best,
                      "new_tokens_per_s": batch * args.new / best, "jax": jax.__version__, "flax": flax.__version__,
                      "command": " ".join(sys.argv)}
            with open(args.json, "a") as f:
                f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
