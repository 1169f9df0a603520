"""Next-token cross-entropy over loss-masked tokens, projected to the vocabulary chunk by chunk.

The full [batch, seq, vocab] logits are never built: the sequence is cut into chunks, each chunk's
logits exist only inside a rematerialised scan step (recomputed in the backward pass), so peak
memory holds one [batch, chunk, vocab] float32 block.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diabetica_jax.model.chunks import chunk_size
from diabetica_jax.parallel.rules import constrain


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


def chunked_cross_entropy(hidden, output_kernel, targets, weights, chunk: int):
    """Sum over positions of weight * -log p(target); returns (loss_sum, weight_sum), both float32.

    hidden [b, t, e] in the compute dtype, output_kernel [e, vocab], targets/weights [b, t].
    """
    b, t, e = hidden.shape
    c = chunk_size(t, chunk)
    n = t // c

    def to_chunks(x):
        return jnp.swapaxes(x.reshape((b, n, c) + x.shape[2:]), 0, 1)

    kernel = output_kernel.astype(hidden.dtype)

    @jax.checkpoint
    def chunk_loss(h, y, w):
        logits = jnp.einsum("bce,ev->bcv", h, kernel, preferred_element_type=jnp.float32)
        logits = constrain(logits, ("batch", None, "act_vocab"))
        log_z = jax.nn.logsumexp(logits, axis=-1)
        target_logit = jnp.take_along_axis(logits, y[..., None], axis=-1)[..., 0]
        return jnp.sum((log_z - target_logit) * w)

    def step(total, chunk_inputs):
        return total + chunk_loss(*chunk_inputs), None

    loss_sum, _ = jax.lax.scan(step, jnp.float32(0.0), (to_chunks(hidden), to_chunks(targets), to_chunks(weights)))
    return loss_sum, jnp.sum(weights)
