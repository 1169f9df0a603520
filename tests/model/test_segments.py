"""Packed rows as lengths and offsets (model/segments.py) and the cuDNN attention paths that take them."""

import logging
import math
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.cudnn import fused_attention_stablehlo as fused

from diabetica_jax.model import attention
from diabetica_jax.model.attention import attend, attention_mask, cudnn_takes_offsets, xla_attention
from diabetica_jax.model.segments import SegmentLayout, layout_mask, segment_layout, segment_slots

SEQ, M = 24, 5


def _row(lengths: list[int], seq: int = SEQ) -> np.ndarray:
    """Segment ids of documents of these lengths one after another (1, 2, ...), padding (0) to seq."""
    ids = np.concatenate([np.full(n, s, np.int32) for s, n in enumerate(lengths, 1)] + [np.zeros(0, np.int32)])
    return np.pad(ids, (0, seq - len(ids)))


def _random_lengths(rng: np.random.RandomState, documents: int, tokens: int) -> list[int]:
    cuts = np.sort(rng.choice(np.arange(1, tokens), documents - 1, replace=False))
    return np.diff(np.concatenate([[0], cuts, [tokens]])).tolist()


def _qkv(batch: int, seq: int = SEQ, heads: int = 4, kv_heads: int = 2, dim: int = 8, seed: int = 0):
    keys = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(keys[0], (batch, seq, heads, dim)),
            jax.random.normal(keys[1], (batch, seq, kv_heads, dim)),
            jax.random.normal(keys[2], (batch, seq, kv_heads, dim)))


def test_layout_of_hand_made_rows():
    rows = np.stack([_row([2, 3], 7), _row([1, 1, 1, 4], 7), _row([], 7)])
    assert rows[0].tolist() == [1, 1, 2, 2, 2, 0, 0]
    layout = segment_layout(jnp.asarray(rows), max_segments=4)
    assert layout.seqlens.tolist() == [[2, 3, -1, -1], [1, 1, 1, 4], [-1, -1, -1, -1]]
    # every slot past the last document is -1, the (M+1)-th one included: no end offset
    assert layout.offsets.tolist() == [[0, 2, -1, -1, -1], [0, 1, 2, 3, -1], [-1, -1, -1, -1, -1]]
    assert layout.seqlens.dtype == layout.offsets.dtype == jnp.int32


def test_the_private_api_reads_the_layout_as_the_rows_documents():
    """JAX flattens a [B, M] layout into cuDNN's ragged one (all rows' documents in a row, then the end):
    each flattened document must cover exactly that document's tokens."""
    fix = getattr(fused, "_fix_seqlen_offsets", None)
    if fix is None:
        pytest.skip("this jax flattens packed layouts differently (no _fix_seqlen_offsets)")
    rng = np.random.RandomState(1)
    doc_lengths = [_random_lengths(rng, n, SEQ - pad) for n, pad in ((3, 2), (M, 0), (1, 5))]
    rows = np.stack([_row(lengths) for lengths in doc_lengths])
    layout = segment_layout(jnp.asarray(rows), M)
    q = jnp.zeros((len(rows), SEQ, 2, 8), jnp.bfloat16)
    seqlens, _, offsets, _ = fix(layout.seqlens, layout.seqlens, layout.offsets, layout.offsets, q, q)
    seqlens, offsets = np.ravel(seqlens), np.ravel(offsets)  # kept in [B, M] / [B, M + 1] shape, read flat
    stride = q.shape[2] * q.shape[3]
    spans = [(b * SEQ + start, n) for b, lengths in enumerate(doc_lengths)
             for start, n in zip(np.cumsum([0] + lengths[:-1]), lengths)]
    got = [(int(offsets[i]) // stride, int(seqlens[i])) for i in range(len(spans))]
    assert got == spans
    assert int(offsets[len(spans)]) == len(rows) * SEQ * stride  # the end, appended by JAX itself


@pytest.mark.parametrize("documents", [1, 2, 3, M])
@pytest.mark.parametrize("padding", [0, 4])
def test_attention_under_the_layout_equals_attention_per_document(documents, padding):
    rng = np.random.RandomState(10 * documents + padding)
    doc_lengths = [_random_lengths(rng, documents, SEQ - padding) for _ in range(2)]
    rows = jnp.asarray(np.stack([_row(lengths) for lengths in doc_lengths]))
    q, k, v = _qkv(len(doc_lengths))
    layout = segment_layout(rows, M)
    packed = xla_attention(q, k, v, mask=layout_mask(layout, SEQ))
    # each document alone: moved to the start of a row of its own (causal: what follows it is never seen)
    spans = [(b, start, n) for b, lengths in enumerate(doc_lengths)
             for start, n in zip(np.cumsum([0] + lengths[:-1]).tolist(), lengths)]
    alone = lambda x: jnp.stack([jnp.roll(x[b], -start, axis=0) for b, start, _ in spans])
    separately = xla_attention(alone(q), alone(k), alone(v))
    for row, (b, start, n) in enumerate(spans):
        np.testing.assert_allclose(packed[b, start:start + n], separately[row, :n], rtol=1e-5, atol=1e-5)
    real = rows > 0
    expected = attention_mask(SEQ, rows) & real[:, None, :, None] & real[:, None, None, :]
    np.testing.assert_array_equal(layout_mask(layout, SEQ), expected)


def test_documents_past_the_slots_see_nothing_and_nobody_sees_them():
    rows = jnp.asarray(_row([3, 4, 2, 5, 3, 4, 2]))[None]
    mask = layout_mask(segment_layout(rows, 4), SEQ)[0, 0]
    in_slots = (rows[0] > 0) & (rows[0] <= 4)
    same = attention_mask(SEQ, rows)[0, 0]
    np.testing.assert_array_equal(mask, same & in_slots[:, None] & in_slots[None, :])
    assert not mask[~in_slots].any() and not mask[:, ~in_slots].any()


def test_layout_compiles_with_a_static_slot_count():
    rows = jnp.asarray(np.stack([_row([5, 6, 7]), _row([SEQ])]))
    compiled = jax.jit(segment_layout, static_argnames="max_segments")
    for slots in (3, 8):
        layout = compiled(rows, max_segments=slots)
        assert layout.seqlens.shape == (2, slots) and layout.offsets.shape == (2, slots + 1)
        eager = segment_layout(rows, slots)
        np.testing.assert_array_equal(layout.seqlens, eager.seqlens)
        np.testing.assert_array_equal(layout.offsets, eager.offsets)
    with pytest.raises(ValueError, match="positive"):
        segment_layout(rows, 0)


# --- the cuDNN dispatch, with the kernels replaced by recorders (no GPU here) ---


@pytest.fixture
def packed_rows():
    rows = jnp.asarray(np.stack([_row([7, 9, 5]), _row([10, 6])]))
    return rows, segment_layout(rows, M)


def _no_call(name):
    def refuse(*args, **kwargs):
        raise AssertionError(f"{name} should not be called")
    return refuse


def _fake_packed_kernel(calls: list):
    """Records its arguments and computes what the packed kernel does, leaving NaN (undefined memory) at the
    positions outside every document, in the output and in the gradients of q, k and v."""
    def kernel(query, key, value, bias=None, mask=None, q_seqlen=None, kv_seqlen=None, q_offsets=None,
               kv_offsets=None, *, scale, mask_type, qkv_layout="BTNH"):
        calls.append(dict(query=query, key=key, bias=bias, mask=mask, q_seqlen=q_seqlen, kv_seqlen=kv_seqlen,
                          q_offsets=q_offsets, kv_offsets=kv_offsets, scale=scale, mask_type=mask_type,
                          qkv_layout=qkv_layout))
        layout = SegmentLayout(q_seqlen, q_offsets)
        outside = (segment_slots(layout, query.shape[1]) == 0)[:, :, None, None]
        garbage = lambda x: jnp.where(outside, jnp.nan, x)

        @jax.custom_vjp
        def run(q, k, v):
            return garbage(xla_attention(q, k, v, mask=layout_mask(layout, q.shape[1])))

        def fwd(q, k, v):
            out, vjp = jax.vjp(lambda q, k, v: xla_attention(q, k, v, mask=layout_mask(layout, q.shape[1])), q, k, v)
            return garbage(out), vjp

        run.defvjp(fwd, lambda vjp, g: tuple(garbage(d) for d in vjp(g)))
        return run(query, key, value)
    return kernel


def test_packed_rows_take_the_packed_kernel(packed_rows, monkeypatch):
    rows, layout = packed_rows
    calls = []
    monkeypatch.setattr(fused, "dot_product_attention", _fake_packed_kernel(calls))
    monkeypatch.setattr(jax.nn, "dot_product_attention", _no_call("the mask path"))
    q, k, v = _qkv(2)
    loss = lambda q, k, v: attend(q, k, v, segment_ids=rows, packed=layout, backend="cudnn").sum()
    out = attend(q, k, v, segment_ids=rows, packed=layout, backend="cudnn")
    call = calls[0]
    assert call["q_seqlen"] is layout.seqlens and call["kv_seqlen"] is layout.seqlens
    assert call["q_offsets"] is layout.offsets and call["kv_offsets"] is layout.offsets
    assert call["mask_type"] == fused.MaskType.PADDING_CAUSAL and call["qkv_layout"] == "BTNH"
    assert call["scale"] == pytest.approx(1 / math.sqrt(q.shape[-1]))
    assert call["bias"] is None and call["mask"] is None
    assert call["key"].shape == k.shape  # grouped-query kv heads go in as they are, not repeated

    # the same as the reference on the documents; zero, not whatever the kernel left, on the padding
    real = (rows > 0)[:, :, None, None]
    reference = xla_attention(q, k, v, segment_ids=rows)
    np.testing.assert_allclose(jnp.where(real, out, 0), jnp.where(real, reference, 0), rtol=1e-5, atol=1e-5)
    assert not out[~real[..., 0, 0]].any()
    grads = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
    reference_loss = lambda q, k, v: jnp.where(real, xla_attention(q, k, v, segment_ids=rows), 0).sum()
    for got, want in zip(grads, jax.grad(reference_loss, argnums=(0, 1, 2))(q, k, v)):
        assert jnp.isfinite(got).all()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _recorder(calls: list):
    def record(q, k, v, *, mask=None, is_causal=False, implementation=None, **rest):
        calls.append(dict(mask=mask, is_causal=is_causal, implementation=implementation, rest=rest))
        return jnp.zeros_like(q)
    return record


def test_rows_without_segments_take_the_causal_kernel_and_segment_ids_the_mask(packed_rows, monkeypatch):
    rows, _ = packed_rows
    calls = []
    monkeypatch.setattr(jax.nn, "dot_product_attention", _recorder(calls))
    monkeypatch.setattr(fused, "dot_product_attention", _no_call("the packed kernel"))
    q, k, v = _qkv(2)
    attend(q, k, v, backend="cudnn")
    attend(q, k, v, segment_ids=rows, backend="cudnn")
    causal, masked = calls
    assert causal["mask"] is None and causal["is_causal"] and causal["implementation"] == "cudnn"
    assert not causal["rest"]
    assert masked["is_causal"] and masked["implementation"] == "cudnn"
    np.testing.assert_array_equal(masked["mask"], rows[:, None, :, None] == rows[:, None, None, :])


def test_a_jax_without_packed_layouts_falls_back_to_the_mask_and_says_so_once(packed_rows, monkeypatch, caplog):
    rows, layout = packed_rows

    def without_offsets(query, key, value, bias=None, mask=None, q_seqlen=None, kv_seqlen=None, *,
                        scale=1.0, mask_type=None, qkv_layout="BTNH"):
        raise AssertionError("the packed kernel should not be called")

    calls = []
    monkeypatch.setattr(fused, "dot_product_attention", without_offsets)
    monkeypatch.setattr(jax.nn, "dot_product_attention", _recorder(calls))
    monkeypatch.setattr(attention, "_fallbacks_logged", set())
    assert not cudnn_takes_offsets()
    q, k, v = _qkv(2)
    with caplog.at_level(logging.WARNING, logger=attention.__name__):
        attend(q, k, v, segment_ids=rows, packed=layout, backend="cudnn")
        attend(q, k, v, packed=layout, backend="cudnn")  # the layout alone: its documents as segments
    same_segment = rows[:, None, :, None] == rows[:, None, None, :]
    for call in calls:
        assert call["is_causal"]
        np.testing.assert_array_equal(call["mask"], same_segment)
    fallbacks = [r for r in caplog.records if "dense segment mask" in r.getMessage()]
    assert len(fallbacks) == 1 and "q_offsets" in fallbacks[0].getMessage()


def test_gpus_before_hopper_fall_back(monkeypatch):
    for capability, usable in (("8.0", False), ("9.0", True), ("10.0", True)):
        monkeypatch.setattr(jax, "devices", lambda capability=capability: [SimpleNamespace(compute_capability=capability)])
        reason = attention.cudnn_packed_unavailable()
        assert (reason is None) == usable, (capability, reason)
        if not usable:
            assert capability in reason
