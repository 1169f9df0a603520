"""Losses after SFT: the DPO family on packed preference pairs, and GRPO's clipped policy loss.

These are pure functions of log-probabilities; the stage that feeds them (pairs, rollouts, the
reference model) is built on top. Sequence log-probs come from `token_logps` chunk by chunk, so
the full [batch, seq, vocab] logits are never built, and from `segment_sums`, which adds them up
per packed document.

Packed pairs: in a row, pair p's chosen reply is segment 2p+1 and its rejected reply 2p+2
(segment 0 is padding). Each segment holds the prompt and one reply; only reply tokens are loss
tokens, so a segment's sum is log p(reply | prompt).

The formulas follow the papers (DPO 2305.18290, IPO 2310.12036, ORPO 2403.07691, SimPO
2405.14734, GRPO 2402.03300, Dr. GRPO 2503.20783, DAPO 2503.14476) with the reductions TRL uses,
so the parity tests can compare against it term by term.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from diabetica_jax.model.chunks import chunk_size
from diabetica_jax.train.loss import _from_chunks, _logits, _scan_chunks, _token_losses, next_token_targets

PAIR_LOSSES = ("sigmoid", "ipo", "hinge", "orpo", "simpo")
REFERENCE_FREE = ("orpo", "simpo")
# reductions whose sequence score is the mean token log-prob rather than the sum
AVERAGED = ("ipo", "orpo", "simpo")
GRPO_LOSSES = ("grpo", "dr_grpo", "dapo")


def token_logps(hidden, output_kernel, targets, chunk: int):
    """log p(target) at every position, float32 [b, t], one [b, chunk, vocab] block at a time."""
    kernel = output_kernel.astype(hidden.dtype)

    @jax.checkpoint
    def chunk_logps(h, y):
        return -_token_losses(_logits(h, kernel), y)[0]

    def step(carry, chunk_inputs):
        h, y, _ = chunk_inputs
        return carry, chunk_logps(h, y)

    c = chunk_size(hidden.shape[1], chunk)
    _, logps = _scan_chunks(step, None, c, hidden, targets, jnp.zeros(targets.shape, jnp.float32))
    return _from_chunks(logps)


def row_token_logps(model, tokens, positions, segment_ids, chunk: int, dropout_rng=None):
    """log p(next token) at every position of packed rows [b, t]: position t scores token t+1."""
    hidden = model.hidden_states(tokens, positions, segment_ids, dropout_rng=dropout_rng)
    return token_logps(hidden, model.output_kernel(), jnp.roll(tokens, -1, axis=1), chunk)


def completion_logps(model, prompt_ids, completion_ids, completion_mask, chunk: int, dropout_rng=None):
    """log p(completion token | prompt, earlier completion tokens), [n, completion length].

    Prompts share one length (the rollout batcher's prompt slot, no padding inside); completions
    are right-padded, their padding outside the document so it changes nothing before it.
    """
    tokens = jnp.concatenate([prompt_ids, completion_ids], axis=1)
    p = prompt_ids.shape[1]
    inside = jnp.concatenate([jnp.ones_like(prompt_ids), completion_mask.astype(prompt_ids.dtype)], axis=1)
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
    logp = row_token_logps(model, tokens, positions, inside.astype(jnp.int32), chunk, dropout_rng)
    return logp[:, p - 1 : tokens.shape[1] - 1]


def reply_weights(loss_mask, segment_ids):
    """1.0 at the positions that predict a reply token of their own document."""
    return next_token_targets(loss_mask, loss_mask, segment_ids)[1]


def document_weights(segment_ids):
    """1.0 at every position that predicts a token of its own document, prompt included."""
    return next_token_targets(segment_ids, (segment_ids > 0).astype(jnp.int32), segment_ids)[1]


def chosen_sequence_tokens(segment_ids, pairs_per_row: int):
    """How many positions `chosen_sequence_nll` averages over."""
    ones = jnp.ones(segment_ids.shape, jnp.float32)
    _, counts = segment_sums(ones, document_weights(segment_ids), segment_ids, 1 + 2 * pairs_per_row)
    return jnp.sum(pair_split(counts, pairs_per_row)[0])


def chosen_sequence_nll(token_logp, segment_ids, pairs_per_row: int, total_tokens=None):
    """The chosen documents' token-mean NLL over prompt and reply: TRL's ORPO SFT term (the paper's is
    the reply alone, which pair_loss uses when it is not given this). `total_tokens`: the count of the
    whole batch when this is one micro-batch of it."""
    sums, counts = segment_sums(token_logp, document_weights(segment_ids), segment_ids, 1 + 2 * pairs_per_row)
    chosen, _ = pair_split(sums, pairs_per_row)
    chosen_n, _ = pair_split(counts, pairs_per_row)
    total = jnp.sum(chosen_n) if total_tokens is None else total_tokens
    return -jnp.sum(chosen) / jnp.maximum(total, 1.0)


def segment_sums(values, weights, segment_ids, num_segments: int):
    """Per row and segment: (sum of weight * value, sum of weight), each [b, num_segments].

    Segment s collects the positions whose segment id is s; the weights already say which
    positions count (reply tokens predicted within their own document).
    """
    one_hot = jax.nn.one_hot(segment_ids, num_segments, dtype=jnp.float32)
    weighted = (values * weights)[..., None] * one_hot
    return jnp.sum(weighted, axis=1), jnp.sum(weights[..., None] * one_hot, axis=1)


def pair_split(per_segment, pairs_per_row: int):
    """[b, 1 + 2P] per-segment scores -> (chosen, rejected), each [b * P]: segment 2p+1 and 2p+2."""
    body = per_segment[:, 1 : 1 + 2 * pairs_per_row]
    body = body.reshape(body.shape[0], pairs_per_row, 2)
    return body[..., 0].reshape(-1), body[..., 1].reshape(-1)


class PairScores(NamedTuple):
    """Per pair (flat over rows): summed reply log-probs and reply token counts."""

    chosen: jax.Array
    rejected: jax.Array
    chosen_tokens: jax.Array
    rejected_tokens: jax.Array
    present: jax.Array  # 1.0 where the row holds this pair (both replies have tokens), else 0.0

    def scores(self, averaged: bool):
        if not averaged:
            return self.chosen, self.rejected
        return (
            self.chosen / jnp.maximum(self.chosen_tokens, 1.0),
            self.rejected / jnp.maximum(self.rejected_tokens, 1.0),
        )


def pair_scores(token_logp, weights, segment_ids, pairs_per_row: int) -> PairScores:
    sums, counts = segment_sums(token_logp, weights, segment_ids, 1 + 2 * pairs_per_row)
    chosen, rejected = pair_split(sums, pairs_per_row)
    chosen_n, rejected_n = pair_split(counts, pairs_per_row)
    present = ((chosen_n > 0) & (rejected_n > 0)).astype(jnp.float32)
    return PairScores(chosen, rejected, chosen_n, rejected_n, present)


def _log1mexp(x):
    """log(1 - exp(x)) for x < 0, stable on both sides of -log 2."""
    return jnp.where(x > -0.6931472, jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


def _masked_mean(x, mask):
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def pair_loss(
    kind: str,
    policy: PairScores,
    reference: PairScores | None,
    *,
    beta: float,
    simpo_gamma: float = 0.5,
    label_smoothing: float = 0.0,
    orpo_nll=None,
    total_pairs=None,
    total_reply_tokens=None,
):
    """(loss, metrics) over the pairs present. `reference` is None for ORPO and SimPO.

    sigmoid/hinge/ipo compare the policy's log-ratio margin with the reference's; ipo on mean
    token log-probs. ORPO adds the chosen replies' NLL (token mean; `orpo_nll` replaces it, e.g.
    with `chosen_sequence_nll`) to an odds-ratio term; SimPO is a margin on mean token log-probs
    with a target gap gamma.

    With `total_pairs` (and for ORPO `total_reply_tokens`), counts of the whole batch this micro-batch
    belongs to, the loss is this micro-batch's share: the shares of a batch's micro-batches add up
    to the loss of the batch taken at once. The metrics stay this micro-batch's means.
    """
    if kind not in PAIR_LOSSES:
        raise ValueError(f"train.preference.loss: {kind!r} is not one of {', '.join(PAIR_LOSSES)}")
    if kind not in REFERENCE_FREE and reference is None:
        raise ValueError(f"the {kind} loss needs reference log-probs")
    present = policy.present
    chosen, rejected = policy.scores(kind in AVERAGED)
    if kind in REFERENCE_FREE:
        chosen_reward, rejected_reward = beta * chosen, beta * rejected
    else:
        ref_chosen, ref_rejected = reference.scores(kind in AVERAGED)
        chosen_reward, rejected_reward = beta * (chosen - ref_chosen), beta * (rejected - ref_rejected)
        delta = (chosen - ref_chosen) - (rejected - ref_rejected)

    if kind == "sigmoid":
        losses = -jax.nn.log_sigmoid(beta * delta) * (1 - label_smoothing) - jax.nn.log_sigmoid(
            -beta * delta
        ) * label_smoothing
    elif kind == "hinge":
        losses = jax.nn.relu(1 - beta * delta)
    elif kind == "ipo":
        losses = (delta - 1 / (2 * beta)) ** 2
    elif kind == "simpo":
        logits = (chosen - rejected) - simpo_gamma / beta
        losses = -jax.nn.log_sigmoid(beta * logits) * (1 - label_smoothing) - jax.nn.log_sigmoid(
            -beta * logits
        ) * label_smoothing
    else:  # orpo
        log_odds = (chosen - rejected) - (_log1mexp(chosen) - _log1mexp(rejected))
        nll = orpo_nll
        if nll is None:
            tokens = jnp.sum(policy.chosen_tokens * present) if total_reply_tokens is None else total_reply_tokens
            nll = -jnp.sum(policy.chosen * present) / jnp.maximum(tokens, 1.0)
        losses = -beta * jax.nn.log_sigmoid(log_odds)

    pairs = jnp.sum(present) if total_pairs is None else total_pairs
    loss = jnp.sum(losses * present) / jnp.maximum(pairs, 1.0)
    if kind == "orpo":
        loss = loss + nll
    metrics = {
        "loss": loss,
        "rewards/chosen": _masked_mean(chosen_reward, present),
        "rewards/rejected": _masked_mean(rejected_reward, present),
        "rewards/accuracy": _masked_mean((chosen_reward > rejected_reward).astype(jnp.float32), present),
        "rewards/margin": _masked_mean(chosen_reward - rejected_reward, present),
        "logps/chosen": _masked_mean(policy.chosen, present),
        "logps/rejected": _masked_mean(policy.rejected, present),
        "pairs": jnp.sum(present),
    }
    return loss, metrics


def group_advantages(rewards, group_size: int, scale: bool = True):
    """GRPO advantages: each completion's reward minus its group's mean, over the group's std if scale.

    rewards [n * group_size], the completions of one prompt adjacent. The std is the unbiased one
    (as torch's default), with a small epsilon so a group of equal rewards gives zero advantages.
    """
    groups = rewards.reshape(-1, group_size)
    centred = groups - groups.mean(axis=1, keepdims=True)
    if scale:
        centred = centred / (jnp.std(groups, axis=1, ddof=1, keepdims=True) + 1e-4)
    return centred.reshape(-1)


def grpo_loss(
    kind: str,
    logps,
    old_logps,
    advantages,
    mask,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
    beta: float = 0.0,
    ref_logps=None,
    max_completion_length: int | None = None,
    num_items: float | None = None,
):
    """(loss, metrics) of GRPO's clipped token-level objective, [n, t] completion log-probs.

    grpo averages each completion over its own tokens, then over completions; dr_grpo divides
    the token sum by n * max_completion_length (no length bias); dapo divides it by the number
    of completion tokens in the whole batch (`num_items`, when the batch is split across
    accumulation steps or devices). epsilon_high > epsilon_low is DAPO's clip-higher.
    """
    if kind not in GRPO_LOSSES:
        raise ValueError(f"train.grpo.loss: {kind!r} is not one of {', '.join(GRPO_LOSSES)}")
    epsilon_high = epsilon_low if epsilon_high is None else epsilon_high
    mask = mask.astype(jnp.float32)
    ratio = jnp.exp(logps - old_logps)
    clipped = jnp.clip(ratio, 1 - epsilon_low, 1 + epsilon_high)
    adv = advantages[:, None]
    per_token = -jnp.minimum(ratio * adv, clipped * adv)
    kl = None
    if beta != 0.0:
        if ref_logps is None:
            raise ValueError("train.grpo.beta > 0 needs reference log-probs")
        log_ratio = ref_logps - logps
        kl = jnp.exp(log_ratio) - log_ratio - 1
        per_token = per_token + beta * kl

    if kind == "grpo":
        per_sequence = jnp.sum(per_token * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)
        loss = jnp.mean(per_sequence)
    elif kind == "dr_grpo":
        length = max_completion_length or logps.shape[1]
        loss = jnp.sum(per_token * mask) / (logps.shape[0] * length)
    else:
        items = jnp.sum(mask) if num_items is None else num_items
        loss = jnp.sum(per_token * mask) / jnp.maximum(items, 1.0)

    clipped_low = (ratio < 1 - epsilon_low) & (adv < 0)
    clipped_high = (ratio > 1 + epsilon_high) & (adv > 0)
    metrics = {
        "loss": loss,
        "clip_ratio/low": _masked_mean(clipped_low.astype(jnp.float32), mask),
        "clip_ratio/high": _masked_mean(clipped_high.astype(jnp.float32), mask),
    }
    if kl is not None:
        metrics["kl"] = _masked_mean(kl, mask)
    return loss, metrics
