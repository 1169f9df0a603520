"""Attention backends on the current accelerator: agreement with the xla reference and speed.

    python bench/attention_backends.py [--batch 8 --seq 2048 --heads 12 --kv-heads 2 --head-dim 128]
    python bench/attention_backends.py --dry-run   # every row once at tiny shapes, no timing (a CPU check)

First prints whether the installed jax's private cuDNN attention takes packed layouts (q_offsets/kv_offsets).
Then, in bf16 with Qwen2-1.5B attention shapes by default, one row per kind of batch row:

    causal       rows holding one document (no segments)
    segments     two documents of random lengths, as a dense same-segment mask (segment ids only)
    packed M=2   the same two documents as lengths and offsets (model/segments.py), 2 segment slots
    packed M=16  sixteen documents of random lengths, 16 segment slots

each filling the whole sequence, for every backend this platform supports (xla everywhere, cudnn on NVIDIA
GPUs, splash on TPU; xla, the reference, reads the segment ids in every row). Prints max abs difference to xla
and milliseconds per forward and per forward+backward call. Not a test: it only reports.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

TINY = dict(batch=2, seq=64, heads=4, kv_heads=2, head_dim=16)


def timed(fn, *args, iters: int = 20) -> float:
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    for _ in range(iters):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / iters * 1e3


def random_documents(rng: np.random.Generator, batch: int, seq: int, documents: int) -> np.ndarray:
    """[batch, seq] segment ids: `documents` documents of random lengths filling each row."""
    rows = []
    for _ in range(batch):
        cuts = np.sort(rng.choice(np.arange(1, seq), documents - 1, replace=False))
        lengths = np.diff(np.concatenate([[0], cuts, [seq]]))
        rows.append(np.repeat(np.arange(1, documents + 1), lengths))
    return np.stack(rows).astype(np.int32)


def rows(batch: int, seq: int, seed: int = 0):
    """(name, segment_ids or None, SegmentLayout or None) for each kind of row."""
    from diabetica_jax.model.segments import segment_layout

    rng = np.random.default_rng(seed)
    two, sixteen = (jnp.asarray(random_documents(rng, batch, seq, n)) for n in (2, 16))
    return [("causal", None, None), ("segments", two, None),
            ("packed M=2", two, segment_layout(two, 2)), ("packed M=16", sixteen, segment_layout(sixteen, 16))]


def backends_here() -> tuple[list[str], str | None]:
    """The backends this platform runs (xla first, the reference) and, when cudnn is not among them, why."""
    platform = jax.default_backend()
    accelerated = {"gpu": "cudnn", "cuda": "cudnn", "tpu": "splash"}.get(platform)
    why_no_cudnn = None if accelerated == "cudnn" else f"no NVIDIA GPU (platform {platform})"
    return ["xla"] + ([accelerated] if accelerated else []), why_no_cudnn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--iters", type=int, default=20, help="timed calls per measurement")
    parser.add_argument("--dry-run", action="store_true", help="every row once at tiny shapes, no timing")
    args = parser.parse_args()
    if args.dry_run:
        vars(args).update(TINY)

    from diabetica_jax.model.attention import attend, cudnn_packed_unavailable, cudnn_takes_offsets, xla_attention
    from diabetica_jax.model.segments import layout_mask

    print(f"cuDNN private API takes offsets (packed layouts): {cudnn_takes_offsets()}")
    unavailable = cudnn_packed_unavailable()
    if unavailable:
        print(f"  packed rows on cudnn fall back to the dense segment mask: {unavailable}")
    platform = jax.default_backend()
    backends, why_no_cudnn = backends_here()
    b, t, h, k, d = args.batch, args.seq, args.heads, args.kv_heads, args.head_dim
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (b, t, h, d), jnp.bfloat16)
    kk = jax.random.normal(keys[1], (b, t, k, d), jnp.bfloat16)
    v = jax.random.normal(keys[2], (b, t, k, d), jnp.bfloat16)
    print(f"device {jax.devices()[0].device_kind} ({platform}); b={b} t={t} heads={h} kv={k} d={d} bf16")
    flops = 4 * b * t * t * h * d / 2  # causal: half the score and value matmuls
    for row, segments, packed in rows(b, t):
        reference = None
        for backend in backends:
            # xla is the reference: it reads segment ids in every row; the others get what the model passes them
            lay = None if backend == "xla" else packed
            fwd = jax.jit(lambda q, k, v, s, p, be=backend: attend(q, k, v, segment_ids=s, packed=p, backend=be))
            bwd = jax.jit(jax.grad(lambda q, k, v, s, p, be=backend: attend(q, k, v, segment_ids=s, packed=p, backend=be)
                                   .astype(jnp.float32).sum(), argnums=(0, 1, 2)))
            try:
                out = fwd(q, kk, v, segments, lay)
                jax.block_until_ready(bwd(q, kk, v, segments, lay))
            except Exception as e:  # report, keep going with the other backends
                print(f"  {row:12s} {backend:6s} failed: {type(e).__name__}: {str(e)[:200]}")
                continue
            reference = out if reference is None else reference
            err = float(jnp.abs(out.astype(jnp.float32) - reference.astype(jnp.float32)).max())
            if args.dry_run:
                print(f"  {row:12s} {backend:6s} ran once (dry run), max|d| vs xla {err:.3e}")
                continue
            ms = timed(fwd, q, kk, v, segments, lay, iters=args.iters)
            ms_bwd = timed(bwd, q, kk, v, segments, lay, iters=args.iters)
            print(f"  {row:12s} {backend:6s} max|d| vs xla {err:.3e}  fwd {ms:7.3f} ms "
                  f"({flops / ms / 1e9:6.1f} TFLOP/s)  fwd+bwd {ms_bwd:7.3f} ms")
        if packed is not None and reference is not None:  # what cuDNN's packed mode computes, checked here too
            from_layout = jax.jit(lambda q, k, v, p: xla_attention(q, k, v, mask=layout_mask(p, t)))(q, kk, v, packed)
            err = float(jnp.abs(from_layout.astype(jnp.float32) - reference.astype(jnp.float32)).max())
            print(f"  {row:12s} layout max|d| vs xla {err:.3e} (xla under the mask rebuilt from lengths and offsets)")
        if why_no_cudnn:
            print(f"  {row:12s} cudnn  skipped: {why_no_cudnn}")


if __name__ == "__main__":
    main()
