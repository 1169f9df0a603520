"""Training throughput: tokens/s and MFU of the real train step on random weights and synthetic batches.

    python bench/train_throughput.py                       # Qwen2-0.5B and Qwen2-1.5B shapes, seq 2048
    python bench/train_throughput.py --presets qwen2-1.5b --batch 8 --remat save_matmuls --peak-tflops 788
    python bench/train_throughput.py --presets tiny --seq 128 --batch 8 --steps 3 --dtype float32 --remat none  # CPU

The step is the one `diabetica-jax train` runs (fused chunked loss, accumulation only past one
micro-batch, AdamW, donated state); data loading and checkpointing are left out. `--rows packed`
(default) feeds rows the way `train` does: two documents per row with segment ids and per-document
positions, loss on part of each, and attention is given the rows' packed layout for up to
--max-segments documents (data.max_segments_per_row); `--rows plain` feeds one document per row and
runs attention causal-only, as `train` does with data.packing none, to see what packing costs. MFU
counts model FLOPs only (see diabetica_jax/train/flops.py): 6 N + 12 L T H D per token for full
fine-tuning, against --peak-tflops per device (default: the vendor's dense bf16 figure for the
device kind).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import flax
import jax
import numpy as np

from diabetica_jax.model.runtime import ATTENTION_BACKENDS, REMAT_POLICIES
from diabetica_jax.train.config import MOMENT_DTYPES


def bench_one(preset: str, args) -> dict:
    from diabetica_jax.configuration import load_config
    from diabetica_jax.data.synthetic import SyntheticSource
    from diabetica_jax.parallel import make_mesh
    from diabetica_jax.train.config import TrainConfig
    from diabetica_jax.train.flops import peak_flops_per_device, train_flops_per_token
    from diabetica_jax.train.global_batch import to_global
    from diabetica_jax.train.setup import prepare, step_settings
    from diabetica_jax.train.state import init_state
    from diabetica_jax.train.step import batch_sharding, make_train_step

    cfg = load_config(TrainConfig, None, [
        f"model.preset={preset}", f"model.runtime.dtype={args.dtype}", f"model.runtime.remat={args.remat}",
        f"model.runtime.attention={args.attention}", f"data.seq_len={args.seq}", f"data.global_batch={args.batch}",
        f"data.grad_accum={args.accum}", f"loop.loss_chunk={args.loss_chunk}", "loop.steps=1000",
        f"lora.rank={args.lora_rank}", f"optim.mu_dtype={args.mu_dtype}",
        *([f"data.max_segments_per_row={args.max_segments}"] if args.max_segments is not None else []),
    ])
    mesh = make_mesh(cfg.mesh.sizes())
    with jax.set_mesh(mesh):
        setup = prepare(cfg, mesh)
        state = init_state(setup.params, setup.optimizer, 0, setup.shardings)
        setup.params = None
        sharding = batch_sharding(mesh)
        # this benchmark's rows, not the config's synthetic source, say whether a row holds one document
        settings = {**step_settings(cfg), "dropout": False, "one_document_rows": args.rows == "plain"}
        step = make_train_step(setup.graphdef, setup.optimizer, setup.schedule, shardings=setup.shardings,
                               frozen_shardings=setup.frozen_sharding, batch_sharding=sharding, **settings)
        source = SyntheticSource(cfg.data.seq_len, cfg.data.global_batch, cfg.data.grad_accum, vocab=64)
        shape = (cfg.data.grad_accum, cfg.micro_batch, cfg.data.seq_len)
        rows = source.batch(0)
        if args.rows == "plain":  # one document per row: segment 1 throughout, positions 0..seq-1
            rows = rows._replace(segment_ids=np.ones_like(rows.segment_ids),
                                 positions=np.broadcast_to(np.arange(args.seq, dtype=np.int32), rows.positions.shape).copy())
        batch = to_global(rows, sharding, shape)
        t0 = time.perf_counter()
        state, metrics = step(state, setup.frozen, batch)
        jax.block_until_ready(metrics)
        compile_s = time.perf_counter() - t0
        for _ in range(args.warmup):
            state, metrics = step(state, setup.frozen, batch)
        jax.block_until_ready(metrics)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            state, metrics = step(state, setup.frozen, batch)
        jax.block_until_ready(metrics)
        seconds = (time.perf_counter() - t0) / args.steps
    tokens = cfg.data.global_batch * cfg.data.seq_len
    flops = tokens * train_flops_per_token(setup.model_cfg, cfg.data.seq_len, lora=bool(cfg.lora.rank))
    peak = peak_flops_per_device(args.peak_tflops)
    stats = jax.devices()[0].memory_stats() or {}
    return {
        "preset": preset, "label": args.label, "device": jax.devices()[0].device_kind, "devices": jax.device_count(),
        "rows": args.rows, "max_segments": settings["max_segments"] if args.rows == "packed" else None,
        "mu_dtype": args.mu_dtype,
        "jax": jax.__version__, "flax": flax.__version__, "command": " ".join(sys.argv),
        "batch": args.batch, "seq": args.seq, "accum": args.accum, "dtype": args.dtype, "remat": args.remat,
        "attention": args.attention, "loss_chunk": args.loss_chunk, "lora_rank": args.lora_rank,
        "step_s": seconds, "tokens_per_s": tokens / seconds,
        "model_tflops_per_s": flops / seconds / 1e12,
        "mfu": flops / seconds / (peak * jax.device_count()) if peak else None,
        "peak_tflops_per_device": peak / 1e12 if peak else None, "compile_s": compile_s,
        "peak_memory_gib": stats.get("peak_bytes_in_use", float("nan")) / 2**30,
        "loss": float(metrics["loss"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["qwen2-0.5b", "qwen2-1.5b"])
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--remat", default="save_matmuls", choices=REMAT_POLICIES)
    parser.add_argument("--attention", default="auto", choices=ATTENTION_BACKENDS)
    parser.add_argument("--loss-chunk", type=int, default=512)
    parser.add_argument("--lora-rank", type=int, default=0)
    parser.add_argument("--rows", choices=["packed", "plain"], default="packed",
                        help="packed: two documents per row with segment ids and their packed layout (as `train` "
                             "feeds); plain: one document per row, causal-only attention (as packing none)")
    parser.add_argument("--max-segments", type=int,
                        help="packed rows: documents per row the packed attention layout holds "
                             "(default: data.max_segments_per_row's)")
    parser.add_argument("--mu-dtype", default="float32", choices=MOMENT_DTYPES, help="dtype of Adam's first moment")
    parser.add_argument("--label", help="a name for this run in the printed line and the JSON")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--peak-tflops", type=float, help="peak bf16 TFLOP/s per device for MFU")
    parser.add_argument("--json", help="also append results as JSON lines to this file")
    args = parser.parse_args()
    for preset in args.presets:
        result = bench_one(preset, args)
        mfu = f"{100 * result['mfu']:.1f}%" if result["mfu"] is not None else "n/a"
        label = f"[{args.label}] " if args.label else ""
        print(f"{label}{preset:12s} {result['device']} x{result['devices']}  {args.rows} batch {args.batch}x{args.seq} "
              f"lora {args.lora_rank} "
              f"{args.dtype} remat={args.remat}: {result['tokens_per_s']:,.0f} tokens/s, "
              f"{result['model_tflops_per_s']:.1f} model TFLOP/s, MFU {mfu}, step {result['step_s'] * 1e3:.1f} ms, "
              f"peak mem {result['peak_memory_gib']:.1f} GiB, compile {result['compile_s']:.0f} s")
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
