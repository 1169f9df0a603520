"""Generation throughput: new tokens per second of the continuous batcher's blocking generate, beside the batch
Engine it replaced, at several batch sizes, in one process.

    python bench/generate_throughput.py                              # Qwen2-1.5B shape, batch 1 and 32
    python bench/generate_throughput.py --preset tiny --new 32 --prompt 64 --batches 1 8 --dtype float32 --repeats 5
    PYTHONPATH=OLD_TREE python bench/generate_throughput.py --paths batcher --label before   # an older package

Random weights, random prompts of --prompt tokens, exactly --new new tokens per row (no stop token can end a
row early), greedy, compute dtype --dtype, weights stored in --param-dtype (float32: master weights, as a
trained checkpoint comes; the batcher casts them to the compute dtype once, an older one did on every token).
--unroll runs the decode step's layers unrolled (runtime.unroll_decode). The script only uses what the package
has had since the continuous batcher, so it also measures an older checkout put first on PYTHONPATH; --label
names the run in the JSON lines (bench/gpu_session.sh tabulates them).

Paths (--paths): `batcher`, the continuous batcher's blocking
generate as evaluation and the CLI call it (SizedBatcher: a batcher of `batch` slots); `engine`, the batch Engine (one jitted prefill +
while_loop decode per call) as it was at git revision --engine-rev, the last one with it, loaded from git
beside today's package. Each repeat times every path at every batch size in turn (interleaved, so a busy
machine slows all alike), after a warm-up call each. Reported per path and batch: new tokens/s = batch x new
/ wall time of one generate call (prefill included), best and median over --repeats, and the batcher's ratio
to the engine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def old_engine_class(rev: str):
    """generate/engine.py's Engine at git revision `rev`, with that revision's sampling module (its `choose`
    is gone from today's), both loaded as private modules: the baseline stays measurable after its deletion."""
    def source(path: str) -> str:
        shown = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, text=True)
        if shown.returncode:
            raise SystemExit(f"the engine path reads {path} at git revision {rev} and could not: "
                             f"{shown.stderr.strip()}; run it in a git checkout, or pass --paths batcher")
        return shown.stdout

    def load(name: str, text: str) -> types.ModuleType:
        module = types.ModuleType(name)
        sys.modules[name] = module  # dataclasses look their module up while the class is made
        exec(compile(text, f"{rev}:{name}", "exec"), module.__dict__)
        return module

    sampling = load("_baseline_sampling", source("diabetica_jax/generate/sampling.py"))
    engine = source("diabetica_jax/generate/engine.py").replace(
        "from diabetica_jax.generate.sampling import", "from _baseline_sampling import")
    return load("_baseline_engine", engine).Engine, sampling.SamplingParams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="qwen2-1.5b")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=256)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--param-dtype", default="float32", help="dtype the model's weights are stored in")
    parser.add_argument("--unroll", action="store_true", help="decode with the layers unrolled")
    parser.add_argument("--label", default="", help="what this run measures (a column of the session table)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--paths", nargs="+", choices=["batcher", "engine"], default=["batcher", "engine"])
    parser.add_argument("--engine-rev", default="6c64227", help="git revision the engine path is loaded from")
    parser.add_argument("--json", help="also append results as JSON lines to this file")
    args = parser.parse_args()

    from diabetica_jax import hf
    from diabetica_jax.generate import SizedBatcher
    from diabetica_jax.model import create_model
    from diabetica_jax.model.runtime import RuntimeConfig

    cfg = hf.preset_config(args.preset)
    import diabetica_jax

    print(f"package {Path(diabetica_jax.__file__).parent}")
    runtime = {"dtype": args.dtype, "param_dtype": args.param_dtype}
    if args.unroll:
        runtime["unroll_decode"] = True  # not in older packages: passed only when asked for
    model = create_model(cfg, RuntimeConfig(**runtime))
    rng = np.random.default_rng(0)
    prompts = {b: [rng.integers(0, cfg.vocab_size, args.prompt).tolist() for _ in range(b)] for b in args.batches}
    runs = {}  # (path, batch) -> a call generating the batch's prompts
    if "batcher" in args.paths:
        batcher = SizedBatcher(model, stop_ids=[-1], pad_id=0, slots=max(args.batches))  # no real token stops a row
        for b in args.batches:
            runs["batcher", b] = lambda b=b: batcher.generate(prompts[b], args.new)
    if "engine" in args.paths:
        Engine, OldSamplingParams = old_engine_class(args.engine_rev)
        engine = Engine(model, stop_ids=[-1], pad_id=0)
        for b in args.batches:
            runs["engine", b] = lambda b=b: engine.generate(prompts[b], args.new, OldSamplingParams())

    print(f"device {jax.devices()[0].device_kind}; {args.preset} {args.dtype}; prompt {args.prompt}, new {args.new}")
    outputs = {key: run() for key, run in runs.items()}  # compile and warm up
    for b in args.batches:  # greedy: both paths give the same tokens
        assert all(len(o) == args.new for key, out in outputs.items() if key[1] == b for o in out)
        assert len({json.dumps(out) for key, out in outputs.items() if key[1] == b}) == 1, f"paths differ at {b}"
    times = {key: [] for key in runs}
    for _ in range(args.repeats):
        for key, run in runs.items():
            start = time.perf_counter()
            run()
            times[key].append(time.perf_counter() - start)

    for (path, b), seconds in times.items():
        best, median = min(seconds), statistics.median(seconds)
        line = (f"  {path:7s} batch {b:3d}: {b * args.new / best:10,.1f} new tokens/s best, "
                f"{b * args.new / median:10,.1f} median ({best / args.new * 1e3:.2f} ms per token, {args.repeats} "
                "repeats)")
        if path == "batcher" and ("engine", b) in times:
            line += f"; {statistics.median(times['engine', b]) / median:.2f}x the engine (medians)"
        print(line)
        if args.json:
            import flax

            record = {"label": args.label, "preset": args.preset, "device": jax.devices()[0].device_kind,
                      "dtype": args.dtype, "param_dtype": args.param_dtype, "unroll": args.unroll,
                      "xla_flags": os.environ.get("XLA_FLAGS", ""),
                      "path": path, "batch": b, "prompt": args.prompt, "new": args.new, "seconds": best,
                      "median_seconds": median, "new_tokens_per_s": b * args.new / best, "jax": jax.__version__,
                      "flax": flax.__version__, "command": " ".join(sys.argv)}
            with open(args.json, "a") as f:
                f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
