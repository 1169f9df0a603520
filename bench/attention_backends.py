"""Attention backends on the current accelerator: agreement with the xla reference and speed.

    python bench/attention_backends.py [--batch 4 --seq 2048 --heads 12 --kv-heads 2 --head-dim 128]

Runs forward (and forward+backward) for every backend this platform supports (xla everywhere,
cudnn on NVIDIA GPUs, splash on TPU), with and without packed-sequence segment ids, in bf16.
Prints max abs difference to xla and milliseconds per call. Not a test: it only reports.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp


def timed(fn, *args, iters: int = 20) -> float:
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    for _ in range(iters):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / iters * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=128)
    args = parser.parse_args()

    from diabetica_jax.model.attention import attend

    platform = jax.default_backend()
    backends = ["xla"] + {"gpu": ["cudnn"], "cuda": ["cudnn"], "tpu": ["splash"]}.get(platform, [])
    keys = jax.random.split(jax.random.key(0), 4)
    b, t, h, k, d = args.batch, args.seq, args.heads, args.kv_heads, args.head_dim
    q = jax.random.normal(keys[0], (b, t, h, d), jnp.bfloat16)
    kk = jax.random.normal(keys[1], (b, t, k, d), jnp.bfloat16)
    v = jax.random.normal(keys[2], (b, t, k, d), jnp.bfloat16)
    cut = jax.random.randint(keys[3], (b, 1), t // 4, 3 * t // 4)
    segments = jnp.where(jnp.arange(t)[None] < cut, 1, 2).astype(jnp.int32)
    print(f"device {jax.devices()[0].device_kind} ({platform}); b={b} t={t} heads={h} kv={k} d={d} bf16")
    flops = 4 * b * t * t * h * d / 2  # causal: half the score and value matmuls
    for seg_name, seg in (("causal", None), ("causal+segments", segments)):
        reference = None
        for backend in backends:
            fwd = jax.jit(lambda q, k, v, s, be=backend: attend(q, k, v, segment_ids=s, backend=be))
            bwd = jax.jit(jax.grad(lambda q, k, v, s, be=backend: attend(q, k, v, segment_ids=s, backend=be)
                                   .astype(jnp.float32).sum(), argnums=(0, 1, 2)))
            try:
                out = fwd(q, kk, v, seg)
            except Exception as e:  # report, keep going with the other backends
                print(f"  {seg_name:16s} {backend:6s} failed: {type(e).__name__}: {str(e)[:200]}")
                continue
            reference = out if reference is None else reference
            err = float(jnp.abs(out.astype(jnp.float32) - reference.astype(jnp.float32)).max())
            ms = timed(fwd, q, kk, v, seg)
            ms_bwd = timed(bwd, q, kk, v, seg)
            print(f"  {seg_name:16s} {backend:6s} max|d| vs xla {err:.3e}  fwd {ms:7.3f} ms "
                  f"({flops / ms / 1e9:6.1f} TFLOP/s)  fwd+bwd {ms_bwd:7.3f} ms")


if __name__ == "__main__":
    main()
