"""The fused cross-entropy: the same loss and gradients as full logits and as the rematerialised chunked loss,
with each chunk's logits computed once and the full [batch, seq, vocab] logits never built."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hlo_ops import compiled_hlo

from diabetica_jax.train.loss import chunked_cross_entropy, fused_cross_entropy

# distinct sizes, so that a dot's shape says which matmul it is: b * CHUNK != EMBED
BATCH, SEQ, EMBED, VOCAB, CHUNK = 2, 16, 12, 40, 4


def _inputs(dtype=jnp.float32, seed=0):
    rng = np.random.RandomState(seed)
    hidden = jnp.asarray(rng.randn(BATCH, SEQ, EMBED), dtype)
    kernel = jnp.asarray(rng.randn(EMBED, VOCAB) / np.sqrt(EMBED), jnp.float32)
    targets = jnp.asarray(rng.randint(0, VOCAB, (BATCH, SEQ)), jnp.int32)
    weights = jnp.asarray(rng.rand(BATCH, SEQ) > 0.4, jnp.float32)  # zeros among them
    weights = weights.at[:, -1].set(0.0).at[0, 3].set(2.0)  # a weight other than 0 and 1
    return hidden, kernel, targets, weights


def full_logits_loss(hidden, kernel, targets, weights):
    log_probs = jax.nn.log_softmax(jnp.einsum("bte,ev->btv", hidden, kernel.astype(hidden.dtype),
                                              preferred_element_type=jnp.float32), axis=-1)
    token_losses = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(token_losses * weights), jnp.sum(weights)


def _loss(loss_fn, chunk=CHUNK):
    return lambda hidden, kernel, targets, weights: loss_fn(hidden, kernel, targets, weights, chunk)


def _value_and_grads(loss_fn, hidden, kernel, targets, weights):
    """(loss_sum, weight_sum) and the gradients of loss_sum w.r.t. hidden, kernel and weights."""
    def loss(hidden, kernel, weights):
        return loss_fn(hidden, kernel, targets, weights)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(hidden, kernel, weights)


@pytest.mark.parametrize("reference", [full_logits_loss, _loss(chunked_cross_entropy)], ids=["full", "chunked"])
@pytest.mark.parametrize("chunk", [CHUNK, SEQ])  # several chunks, and one
def test_fused_loss_and_gradients_equal_the_references_in_float32(reference, chunk):
    inputs = _inputs()
    (loss, count), grads = _value_and_grads(_loss(fused_cross_entropy, chunk), *inputs)
    (want_loss, want_count), want_grads = _value_and_grads(reference, *inputs)
    assert float(count) == float(want_count) == float(inputs[3].sum())
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    for got, want, name in zip(grads, want_grads, ("hidden", "kernel", "weights")):
        assert got.dtype == want.dtype, name
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)
    # positions of weight 0 pass no gradient to the hidden states
    np.testing.assert_array_equal(grads[0][inputs[3] == 0], 0.0)


def test_fused_loss_without_gradients_is_the_same_sum():
    inputs = _inputs()
    loss, count = jax.jit(_loss(fused_cross_entropy))(*inputs)
    want_loss, want_count = full_logits_loss(*inputs)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    assert float(count) == float(want_count)


def test_fused_gradients_scale_with_the_incoming_cotangent():
    hidden, kernel, targets, weights = _inputs()

    def scaled(scale):
        return jax.grad(lambda h, k: scale * fused_cross_entropy(h, k, targets, weights, CHUNK)[0],
                        argnums=(0, 1))(hidden, kernel)

    for one, three in zip(scaled(1.0), scaled(3.0)):
        np.testing.assert_allclose(three, 3.0 * one, rtol=1e-6)


@pytest.mark.parametrize("kernel_dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("chunk", [CHUNK, SEQ])
def test_fused_bfloat16_is_close_to_float32_and_keeps_the_dtypes(kernel_dtype, chunk):
    hidden, kernel, targets, weights = _inputs()
    exact_loss, exact_grads = _value_and_grads(full_logits_loss, hidden, kernel, targets, weights)
    (loss, _), grads = _value_and_grads(_loss(fused_cross_entropy, chunk), hidden.astype(jnp.bfloat16),
                                        kernel.astype(kernel_dtype), targets, weights)
    assert grads[0].dtype == jnp.bfloat16 and grads[1].dtype == kernel_dtype
    np.testing.assert_allclose(loss, exact_loss[0], rtol=2e-2)
    for got, want in zip(grads[:2], exact_grads[:2]):
        got, want = np.asarray(got, np.float32), np.asarray(want)
        assert np.abs(got - want).max() <= 3e-2 * np.abs(want).max()


@pytest.mark.parametrize("chunk", [CHUNK, SEQ])
def test_fused_bfloat16_gradient_of_a_tied_embedding(chunk):
    """A tied model's kernel is its embedding table transposed: the kernel gradient comes back transposed (with
    one chunk, no loop between its matmul and that transpose)."""
    hidden, kernel, targets, weights = _inputs()
    table = kernel.T

    def grads(hidden, table, loss_fn):
        return jax.jit(jax.grad(lambda h, t: loss_fn(h, t.T, targets, weights)[0], argnums=1))(hidden, table)

    got = np.asarray(grads(hidden.astype(jnp.bfloat16), table, _loss(fused_cross_entropy, chunk)))
    want = np.asarray(grads(hidden, table, full_logits_loss))
    assert got.shape == table.shape and np.abs(got - want).max() <= 3e-2 * np.abs(want).max()


def _logits_dots(program):
    """The dots that produce a [batch, chunk, vocab] logits block (the CPU compiler prints [batch * chunk, vocab])."""
    return [op for op in program.ops("dot") if op.dims[-1] == VOCAB and op.size == BATCH * CHUNK * VOCAB]


@pytest.mark.parametrize("loss_fn, logits_passes", [(chunked_cross_entropy, 2), (fused_cross_entropy, 1)],
                         ids=["chunked", "fused"])
def test_each_chunk_s_logits_are_computed_once(loss_fn, logits_passes):
    hidden, kernel, targets, weights = _inputs()
    grad_fn = jax.value_and_grad(lambda h, k: loss_fn(h, k, targets, weights, CHUNK)[0], argnums=(0, 1))
    program = compiled_hlo(grad_fn, hidden, kernel)
    dots = _logits_dots(program)
    # one per scan body: the chunked loss's forward scan and its rematerialising backward scan; the fused loss's
    # single scan
    assert len(dots) == logits_passes, [op.text for op in dots]
    assert not [op.text for op in program.ops() if op.size >= BATCH * SEQ * VOCAB]  # no full logits


def test_fused_loss_skips_the_kernel_gradient_when_only_hidden_is_differentiated():
    """LoRA: the output kernel is frozen, so the [embed, vocab] gradient matmul is left out of the program."""
    hidden, kernel, targets, weights = _inputs()
    program = compiled_hlo(jax.grad(lambda h: fused_cross_entropy(h, kernel, targets, weights, CHUNK)[0]), hidden)
    assert [op.dims for op in program.ops("dot") if op.size == EMBED * VOCAB] == []
    assert len(_logits_dots(program)) == 1
