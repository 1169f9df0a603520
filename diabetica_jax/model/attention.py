"""Attention backends behind one interface.

    attend(q, k, v, segment_ids=None, packed=None, backend=...)  ->  [batch, seq, heads, head_dim]

q is [batch, seq, heads, head_dim]; k and v are [batch, seq, kv_heads, head_dim] (grouped-query
attention when kv_heads < heads). Masking is causal within a sequence, and with `segment_ids`
([batch, seq] ints) a token attends only to tokens of its own segment: packed documents never see
each other, and padding (its own segment, conventionally 0) never mixes with real tokens.
`packed` (model/segments.py SegmentLayout of the same rows: per-document lengths and offsets) lets
cuDNN run packed rows without a mask; the other backends read segment_ids (derived from `packed`
when only it is given). On that cuDNN path padding belongs to no document and its outputs are zero
(elsewhere padding attends to itself); no loss reads them.

Backends
  xla     reference, any platform; builds the mask explicitly.
  cudnn   cuDNN fused flash attention on NVIDIA GPUs. Rows holding one document (no segments): the
          fused causal mask alone, the fastest path (jax.nn.dot_product_attention). With `packed`: the
          packed layout of JAX's private cuDNN entry point (PADDING_CAUSAL over per-document lengths and
          offsets; Hopper or later), else, logged once, the path below. With segment_ids only: a dense
          [b, 1, t, t] same-segment mask on top of the causal one, read as a bias (slower).
  splash  Pallas splash attention on TPU (also runs in interpret mode on CPU for tests).
  auto    cudnn on GPU, splash on TPU, xla elsewhere.
"""

from __future__ import annotations

import inspect
import logging
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from diabetica_jax.model.runtime import ATTENTION_BACKENDS
from diabetica_jax.model.segments import SegmentLayout, segment_slots
from diabetica_jax.parallel.rules import active_rules

log = logging.getLogger(__name__)

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
    packed: SegmentLayout | None = None,
    backend: str = "auto",
) -> jax.Array:
    backend = resolve_backend(backend)
    if backend == "cudnn":
        return cudnn_attention(q, k, v, segment_ids=segment_ids, packed=packed)
    if segment_ids is None and packed is not None:
        segment_ids = segment_slots(packed, q.shape[1])
    if backend == "xla":
        return xla_attention(q, k, v, segment_ids=segment_ids)
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


def cudnn_attention(q, k, v, *, segment_ids=None, packed=None):
    """cuDNN flash attention: the packed layout with `packed` (where this jax and GPU offer it), the dense
    same-segment mask with segment_ids, the fused causal mask alone without either (module docstring)."""
    if packed is not None:
        reason = cudnn_packed_unavailable()
        if reason is None:
            return _cudnn_packed(q, k, v, packed)
        _log_fallback_once(reason)
        if segment_ids is None:
            segment_ids = segment_slots(packed, q.shape[1])
    mask = None
    if segment_ids is not None:
        mask = (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True, implementation="cudnn")


def _cudnn_packed(q, k, v, packed: SegmentLayout):
    fused = _private_cudnn()
    # The kernel leaves positions outside every document (padding) undefined, in its outputs and in the
    # gradients it returns: zeroing q, k, v there keeps whatever it writes from flowing back to the weights.
    covered = (segment_slots(packed, q.shape[1]) > 0)[:, :, None, None]
    q, k, v = (jnp.where(covered, x, jnp.zeros((), x.dtype)) for x in (q, k, v))
    # GQA as is: the entry point takes fewer kv heads than q heads (jax.nn.dot_product_attention passes them so).
    out = fused.dot_product_attention(
        q, k, v,
        q_seqlen=packed.seqlens, kv_seqlen=packed.seqlens, q_offsets=packed.offsets, kv_offsets=packed.offsets,
        scale=1.0 / math.sqrt(q.shape[-1]), mask_type=fused.MaskType.PADDING_CAUSAL, qkv_layout="BTNH",
    )
    return jnp.where(covered, out, jnp.zeros((), out.dtype))


def _private_cudnn():
    """JAX's private cuDNN attention module, or None where this jax has none (it is no public API)."""
    try:
        from jax._src.cudnn import fused_attention_stablehlo
    except ImportError:
        return None
    return fused_attention_stablehlo


def cudnn_takes_offsets() -> bool:
    """Whether the installed jax's private cuDNN attention takes packed layouts (q_offsets / kv_offsets) and
    has the PADDING_CAUSAL mask they run under."""
    fused = _private_cudnn()
    fn = getattr(fused, "dot_product_attention", None)
    if fn is None or not hasattr(getattr(fused, "MaskType", None), "PADDING_CAUSAL"):
        return False
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "q_offsets" in parameters and "kv_offsets" in parameters


def cudnn_packed_unavailable() -> str | None:
    """Why packed rows cannot take cuDNN's packed layout here (None: they can)."""
    if not cudnn_takes_offsets():
        return f"jax {jax.__version__}'s private cuDNN attention takes no q_offsets/kv_offsets"
    capability = _gpu_capability()
    if capability is not None and capability < (9, 0):
        return (f"cuDNN packed layouts need compute capability 9.0 (Hopper) or later, this GPU has "
                f"{'.'.join(map(str, capability))}")
    return None


def _gpu_capability() -> tuple[int, ...] | None:
    """The first device's CUDA compute capability, None off NVIDIA GPUs."""
    capability = getattr(jax.devices()[0], "compute_capability", None)
    if not capability:
        return None
    return tuple(int(part) for part in str(capability).split("."))


_fallbacks_logged: set[str] = set()


def _log_fallback_once(reason: str) -> None:
    if reason not in _fallbacks_logged:
        _fallbacks_logged.add(reason)
        log.warning("cuDNN attention: packed rows use the dense segment mask instead (%s)", reason)


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
