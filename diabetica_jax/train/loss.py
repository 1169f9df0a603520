"""Next-token cross-entropy over loss-masked tokens, projected to the vocabulary chunk by chunk.

The full [batch, seq, vocab] logits are never built: the sequence is cut into chunks and only one
[batch, chunk, vocab] float32 block exists at a time.

`fused_cross_entropy` (what the train step uses) works out each chunk's gradients while its logits
are there: one pass over the chunks yields the loss and the gradients with respect to the hidden
states and the output kernel, and the backward pass only scales them by the incoming cotangent. Each
chunk's logits are computed once, and the backward matmuls run inside the forward scan.

`chunked_cross_entropy` is the same loss left to autodiff, rematerialising each chunk (its logits
are computed twice: forward and backward); it is the reference the fused loss is tested against.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from diabetica_jax.model.chunks import chunk_size
from diabetica_jax.parallel.rules import constrain

# the output kernel's logical axes (model/axes.py: lm_head's, and the tied embedding table's transposed)
KERNEL_AXES = ("embed", "vocab")


def next_token_targets(tokens, loss_mask, segment_ids):
    """Targets and weights aligned with the positions that predict them.

    Position t predicts token t+1; it counts when token t+1 is a loss token (assistant content)
    of the same document. The last position predicts nothing.
    """
    targets = jnp.roll(tokens, -1, axis=1)
    same_doc = segment_ids == jnp.roll(segment_ids, -1, axis=1)
    weights = jnp.roll(loss_mask, -1, axis=1).astype(jnp.float32) * same_doc
    weights = weights.at[:, -1].set(0.0)
    return targets, weights


def _to_chunks(x, c: int):
    """[b, t, ...] -> [t // c, b, c, ...]: the scan runs over the leading axis."""
    b, t = x.shape[:2]
    return jnp.swapaxes(x.reshape((b, t // c, c) + x.shape[2:]), 0, 1)


def _scan_chunks(step, init, c: int, hidden, targets, weights):
    """lax.scan of step(carry, (h, y, w)) over the sequence chunks of hidden, targets and weights."""
    return jax.lax.scan(step, init, tuple(_to_chunks(x, c) for x in (hidden, targets, weights)))


def _from_chunks(x):
    """[n, b, c, ...] -> [b, n * c, ...]"""
    x = jnp.swapaxes(x, 0, 1)
    return x.reshape((x.shape[0], x.shape[1] * x.shape[2]) + x.shape[3:])


def _logits(h, kernel):
    logits = jnp.einsum("bce,ev->bcv", h, kernel, preferred_element_type=jnp.float32)
    return constrain(logits, ("batch", None, "act_vocab"))


def _token_losses(logits, y):
    """-log p(y) per position, and log Z (the softmax's normaliser) for the gradient."""
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, y[..., None], axis=-1)[..., 0]
    return log_z - target_logit, log_z


def chunked_cross_entropy(hidden, output_kernel, targets, weights, chunk: int):
    """Sum over positions of weight * -log p(target); returns (loss_sum, weight_sum), both float32.

    hidden [b, t, e] in the compute dtype, output_kernel [e, vocab], targets/weights [b, t].
    """
    kernel = output_kernel.astype(hidden.dtype)

    @jax.checkpoint
    def chunk_loss(h, y, w):
        return jnp.sum(_token_losses(_logits(h, kernel), y)[0] * w)

    def step(total, chunk_inputs):
        return total + chunk_loss(*chunk_inputs), None

    c = chunk_size(hidden.shape[1], chunk)
    loss_sum, _ = _scan_chunks(step, jnp.float32(0.0), c, hidden, targets, weights)
    return loss_sum, jnp.sum(weights)


def fused_cross_entropy(hidden, output_kernel, targets, weights, chunk: int):
    """`chunked_cross_entropy`'s (loss_sum, weight_sum), with its gradients computed in the forward pass.

    The gradient with respect to `hidden` comes in hidden's dtype, the one with respect to
    `output_kernel` is accumulated over the chunks in float32 and comes in the kernel's dtype.
    `targets` take no gradient; `weights` get their per-token losses.
    """
    c = chunk_size(hidden.shape[1], chunk)
    return _fused_loss_sum(c, hidden, output_kernel, targets, weights), jnp.sum(weights)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused_loss_sum(c, hidden, output_kernel, targets, weights):
    # not differentiated (evaluation): the loss alone, no gradient work
    kernel = output_kernel.astype(hidden.dtype)

    def step(total, chunk_inputs):
        h, y, w = chunk_inputs
        return total + jnp.sum(_token_losses(_logits(h, kernel), y)[0] * w), None

    return _scan_chunks(step, jnp.float32(0.0), c, hidden, targets, weights)[0]


def _chunk_gradients(h, y, w, kernel):
    """One chunk's per-token losses and the gradients of sum(w * loss) w.r.t. h and the kernel (float32)."""
    logits = _logits(h, kernel)
    losses, log_z = _token_losses(logits, y)
    # d/d logits of w * (log Z - logit_y) = w * (softmax - one_hot(y))
    probs = jnp.exp(logits - log_z[..., None])
    d_logits = (probs - jax.nn.one_hot(y, logits.shape[-1], dtype=jnp.float32)) * w[..., None]
    # the gradient matmuls run like the forward one: in the compute dtype (bfloat16 on accelerators), float32 sums
    d_logits = d_logits.astype(h.dtype)
    d_h = jnp.einsum("bcv,ev->bce", d_logits, kernel, preferred_element_type=jnp.float32).astype(h.dtype)
    d_kernel = jnp.einsum("bce,bcv->ev", h, d_logits, preferred_element_type=jnp.float32)
    return losses, d_h, d_kernel


def _fused_forward(c, hidden, output_kernel, targets, weights):
    kernel = output_kernel.astype(hidden.dtype)

    def step(d_kernel, chunk_inputs):
        losses, d_h, d_k = _chunk_gradients(*chunk_inputs, kernel)
        # kept in the kernel's layout, so each chunk's contribution is reduced onto its shards
        return constrain(d_kernel + d_k, KERNEL_AXES), (losses, d_h)

    zeros = constrain(jnp.zeros(output_kernel.shape, jnp.float32), KERNEL_AXES)
    d_kernel, (losses, d_hidden) = _scan_chunks(step, zeros, c, hidden, targets, weights)
    # the kernel gradient's matmul keeps its own [embed, vocab] result: with one chunk (no loop left) XLA would
    # fold a tied embedding's transpose into it, a transposed bfloat16 matmul XLA:CPU's runtime cannot run
    d_kernel = jax.lax.optimization_barrier(d_kernel)
    losses = _from_chunks(losses)
    residuals = (_from_chunks(d_hidden), d_kernel.astype(output_kernel.dtype), losses)
    return jnp.sum(losses * weights), residuals


def _fused_backward(c, residuals, g):
    d_hidden, d_kernel, losses = residuals
    scale = lambda x: (x * g).astype(x.dtype)  # noqa: E731
    return scale(d_hidden), scale(d_kernel), None, losses * g


_fused_loss_sum.defvjp(_fused_forward, _fused_backward)
