"""Attention backends behind one interface.

    attend(q, k, v, segment_ids=None, positions=None, backend=...)  ->  [batch, seq, heads, head_dim]

q is [batch, seq, heads, head_dim]; k and v are [batch, seq, kv_heads, head_dim] (grouped-query
attention when kv_heads < heads). Masking is causal within a sequence, and with `segment_ids`
([batch, seq] ints) a token attends only to tokens of its own segment: packed documents never see
each other, and padding (its own segment, conventionally 0) never mixes with real tokens.

Backends
  xla     reference, any platform; builds the mask explicitly.
  cudnn   cuDNN fused flash attention on NVIDIA GPUs (jax.nn.dot_product_attention).
  splash  Pallas splash attention on TPU (also runs in interpret mode on CPU for tests).
  auto    cudnn on GPU, splash on TPU, xla elsewhere.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from diabetica_jax.model.runtime import ATTENTION_BACKENDS
from diabetica_jax.parallel.rules import active_rules

# The concrete backends; "auto" picks one of them per platform.
BACKENDS = tuple(name for name in ATTENTION_BACKENDS if name != "auto")


def resolve_backend(name: str) -> str:
    if name != "auto":
        if name not in BACKENDS:
            raise ValueError(f"attention backend {name!r} is not one of {ATTENTION_BACKENDS}")
        return name
    platform = jax.default_backend()
    return {"gpu": "cudnn", "cuda": "cudnn", "tpu": "splash"}.get(platform, "xla")


def attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    segment_ids: jax.Array | None = None,
    backend: str = "auto",
) -> jax.Array:
    backend = resolve_backend(backend)
    if backend == "xla":
        return xla_attention(q, k, v, segment_ids=segment_ids)
    if backend == "cudnn":
        return cudnn_attention(q, k, v, segment_ids=segment_ids)
    return splash_attention(q, k, v, segment_ids=segment_ids)


def attention_mask(seq_len: int, segment_ids: jax.Array | None = None) -> jax.Array:
    """Boolean [batch or 1, 1, seq, seq]: True where query i may attend to key j (j <= i, same segment)."""
    mask = jnp.tril(jnp.ones((seq_len, seq_len), dtype=bool))[None, None]
    if segment_ids is not None:
        mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]
    return mask


def xla_attention(q, k, v, *, segment_ids=None, mask=None):
    """Plain einsum attention with float32 softmax; the reference every backend is tested against.

    Without `mask`, causal within the sequence (and same-segment); with `mask` ([b or 1, 1, t, s]
    booleans), exactly that, as the KV-cache decoder uses it.
    """
    b, t, h, d = q.shape
    kv_heads = k.shape[2]
    groups = h // kv_heads
    q = q.reshape(b, t, kv_heads, groups, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32) / jnp.sqrt(d).astype(
        jnp.float32
    )
    if mask is None:
        mask = attention_mask(t, segment_ids)  # [b|1, 1, t, t]
    scores = jnp.where(mask[:, :, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(b, t, h, d)


def cudnn_attention(q, k, v, *, segment_ids=None):
    """cuDNN flash attention. Without segments it uses the fused causal mask alone (fastest path);
    with segments the same-segment mask is passed in as well."""
    mask = None
    if segment_ids is not None:
        mask = (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True, implementation="cudnn")


def splash_attention(q, k, v, *, segment_ids=None):
    """Pallas splash attention (TPU). Under a mesh it runs per shard via shard_map: batch over the
    batch mesh axes, kv heads over the tensor axis."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return _splash_local(q, k, v, segment_ids)
    rules = active_rules()
    qkv_spec = P(*rules.spec(("batch", None, "act_kv_heads", None), k.shape, mesh))
    seg_spec = P(qkv_spec[0], None)
    q_spec = qkv_spec  # q heads are grouped under kv heads, so they split the same way
    if segment_ids is None:
        return jax.shard_map(
            lambda q, k, v: _splash_local(q, k, v, None), mesh=mesh, in_specs=(q_spec, qkv_spec, qkv_spec), out_specs=q_spec,
            check_vma=False,
        )(q, k, v)
    return jax.shard_map(
        _splash_local, mesh=mesh, in_specs=(q_spec, qkv_spec, qkv_spec, seg_spec), out_specs=q_spec, check_vma=False
    )(q, k, v, segment_ids)


def _splash_local(q, k, v, segment_ids):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    b, t, h, d = q.shape
    kv_heads = k.shape[2]
    groups = h // kv_heads
    block = min(512, t)
    sizes = sk.BlockSizes(
        block_q=block, block_kv=block, block_kv_compute=block,
        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block,
    )
    mask = sm.MultiHeadMask([sm.CausalMask((t, t)) for _ in range(groups)])
    kernel = sk.make_splash_mqa_single_device(
        mask, block_sizes=sizes, interpret=jax.default_backend() != "tpu"
    )
    # [b, t, k*g, d] -> [b, k, g, t, d]; one MQA call per (example, kv head): g query heads share one kv head.
    qg = q.reshape(b, t, kv_heads, groups, d).transpose(0, 2, 3, 1, 4) / jnp.sqrt(d).astype(q.dtype)
    kt = k.transpose(0, 2, 1, 3)
    vt = v.transpose(0, 2, 1, 3)
    if segment_ids is None:
        per_head = jax.vmap(kernel, in_axes=(0, 0, 0))
        out = jax.vmap(per_head, in_axes=(0, 0, 0))(qg, kt, vt)
    else:
        def one(qh, kh, vh, seg):
            return kernel(qh, kh, vh, segment_ids=sk.SegmentIds(q=seg, kv=seg))

        per_head = jax.vmap(one, in_axes=(0, 0, 0, None))
        out = jax.vmap(per_head, in_axes=(0, 0, 0, 0))(qg, kt, vt, segment_ids)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)
