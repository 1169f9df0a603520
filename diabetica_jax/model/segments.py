"""Packed rows as per-document lengths and offsets, the layout fused attention kernels take instead of a mask.

A packed row's `segment_ids` ([batch, seq] ints, data/batch.py) number its documents 1, 2, ... one after another
and mark the padding at the row end with 0. `segment_layout` turns them into, per row and for M segment slots,

    seqlens  [batch, M]      each document's length; -1 in the slots past the row's last document
    offsets  [batch, M + 1]  each document's first position; -1 in the slots past the last document

the packed (THD) layout of JAX's cuDNN attention (jax._src.cudnn.fused_attention_stablehlo.dot_product_attention,
q_seqlen / q_offsets). The last offset is -1 too, not the row's end: that function shifts every offset >= 0 to the
front of a flat list and appends the total length itself, so an end offset here would read as one more document.
Padding belongs to no document: its outputs are not defined by such a kernel (model/attention.py zeroes them).

`layout_mask` is the reference for what the kernel computes from a layout under PADDING_CAUSAL: query i sees key j
iff both lie in the same document and j <= i.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class SegmentLayout(NamedTuple):
    seqlens: jax.Array  # [batch, M] int32
    offsets: jax.Array  # [batch, M + 1] int32

    @property
    def max_segments(self) -> int:
        return self.seqlens.shape[1]


def segment_layout(segment_ids: jax.Array, max_segments: int) -> SegmentLayout:
    """The layout of segment_ids' documents 1..max_segments (jittable; max_segments is static).

    Documents past max_segments get no slot: the kernel attends for none of their tokens (they see nothing and
    nobody sees them, so no document ever sees another), which is why the packer caps a row's examples at
    data.max_segments_per_row and callers pass that cap here.
    """
    if max_segments < 1:
        raise ValueError(f"max_segments must be positive, got {max_segments}")
    ids = jnp.arange(1, max_segments + 1, dtype=segment_ids.dtype)
    member = segment_ids[:, None, :] == ids[None, :, None]  # [batch, M, seq]
    lengths = member.sum(axis=-1, dtype=jnp.int32)
    starts = jnp.argmax(member, axis=-1).astype(jnp.int32)
    present = lengths > 0
    seqlens = jnp.where(present, lengths, -1)
    offsets = jnp.where(present, starts, -1)
    no_end = jnp.full((segment_ids.shape[0], 1), -1, jnp.int32)
    return SegmentLayout(seqlens, jnp.concatenate([offsets, no_end], axis=1))


def segment_slots(layout: SegmentLayout, seq_len: int) -> jax.Array:
    """[batch, seq] int32: the slot (1..M) whose span holds each position, 0 where none does (padding)."""
    t = jnp.arange(seq_len, dtype=jnp.int32)[None, None, :]
    start = layout.offsets[:, :-1, None]
    inside = (layout.seqlens[:, :, None] > 0) & (start >= 0) & (t >= start) & (t < start + layout.seqlens[:, :, None])
    slot = jnp.arange(1, layout.max_segments + 1, dtype=jnp.int32)[None, :, None]
    return jnp.max(jnp.where(inside, slot, 0), axis=1)


def layout_mask(layout: SegmentLayout, seq_len: int) -> jax.Array:
    """Boolean [batch, 1, seq, seq]: True where query i sees key j under PADDING_CAUSAL on this layout
    (same document, j <= i); padding rows and columns are all False."""
    slots = segment_slots(layout, seq_len)
    same = (slots[:, :, None] == slots[:, None, :]) & (slots[:, :, None] > 0)
    return (same & jnp.tril(jnp.ones((seq_len, seq_len), bool))[None])[:, None]
