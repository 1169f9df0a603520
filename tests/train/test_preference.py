"""The preference and GRPO losses: chunked log-probs, packed pair scores, and what each loss rewards."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diabetica_jax.train import preference as pref


def _hidden_kernel(b=2, t=12, e=8, v=33, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    hidden = jax.random.normal(k1, (b, t, e), jnp.float32)
    kernel = jax.random.normal(k2, (e, v), jnp.float32)
    targets = jax.random.randint(k3, (b, t), 0, v)
    return hidden, kernel, targets


def test_chunked_token_logps_equal_full_log_softmax():
    hidden, kernel, targets = _hidden_kernel()
    full = jax.nn.log_softmax(hidden @ kernel, axis=-1)
    want = jnp.take_along_axis(full, targets[..., None], axis=-1)[..., 0]
    for chunk in (1, 4, 5, 12):  # 5 does not divide 12: the chunk falls back to a divisor
        np.testing.assert_allclose(pref.token_logps(hidden, kernel, targets, chunk), want, rtol=1e-5, atol=1e-5)


def _packed_pairs():
    """Two rows; row 0 holds two pairs, row 1 one pair and padding; weights mark reply tokens."""
    segment_ids = jnp.array([[1, 1, 1, 2, 2, 2, 3, 3, 4, 4, 4, 4], [1, 1, 1, 1, 2, 2, 2, 0, 0, 0, 0, 0]])
    weights = jnp.array(
        [[0, 1, 1, 0, 1, 0, 0, 1, 0, 1, 1, 0], [0, 0, 1, 1, 0, 1, 1, 0, 0, 0, 0, 0]], jnp.float32
    )
    return segment_ids, weights


def test_pair_scores_sum_each_reply_and_mark_missing_pairs():
    segment_ids, weights = _packed_pairs()
    logps = -jnp.arange(24, dtype=jnp.float32).reshape(2, 12) / 10
    scores = pref.pair_scores(logps, weights, segment_ids, pairs_per_row=2)
    # row 0: chosen 1 = positions 1,2; rejected 1 = 4; chosen 2 = 7; rejected 2 = 9,10; row 1: 2,3 and 5,6
    np.testing.assert_allclose(scores.chosen, [-0.3, -0.7, -2.9, 0.0], rtol=1e-6)
    np.testing.assert_allclose(scores.rejected, [-0.4, -1.9, -3.5, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(scores.chosen_tokens, [2, 1, 2, 0])
    np.testing.assert_array_equal(scores.present, [1, 1, 1, 0])


def _scores(chosen, rejected, n_chosen=None, n_rejected=None):
    chosen, rejected = jnp.asarray(chosen, jnp.float32), jnp.asarray(rejected, jnp.float32)
    ones = jnp.ones_like(chosen)
    return pref.PairScores(
        chosen,
        rejected,
        ones * 3 if n_chosen is None else jnp.asarray(n_chosen, jnp.float32),
        ones * 3 if n_rejected is None else jnp.asarray(n_rejected, jnp.float32),
        ones,
    )


@pytest.mark.parametrize("kind", ["sigmoid", "ipo", "hinge"])
def test_reference_losses_at_the_reference_and_their_pull(kind):
    ref = _scores([-5.0, -7.0], [-6.0, -4.0])
    loss, metrics = pref.pair_loss(kind, ref, ref, beta=0.1)
    want = {"sigmoid": math.log(2), "ipo": (1 / 0.2) ** 2, "hinge": 1.0}[kind]
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    assert float(metrics["rewards/margin"]) == 0.0

    def loss_of(chosen):
        return pref.pair_loss(kind, ref._replace(chosen=chosen), ref, beta=0.1)[0]

    # raising the chosen reply's log-prob lowers every one of these losses
    assert np.all(np.asarray(jax.grad(loss_of)(ref.chosen)) < 0)


def test_sigmoid_loss_matches_the_closed_form_and_counts_accuracy():
    policy = _scores([-4.0, -8.0], [-6.0, -5.0])
    ref = _scores([-5.0, -7.0], [-6.0, -4.0])
    loss, metrics = pref.pair_loss("sigmoid", policy, ref, beta=0.5)
    deltas = np.array([(-4 + 5) - (-6 + 6), (-8 + 7) - (-5 + 4)])
    want = np.mean(np.log1p(np.exp(-0.5 * deltas)))
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    assert float(metrics["rewards/accuracy"]) == 0.5


def test_simpo_and_ipo_use_mean_token_logps():
    # equal sums but different lengths: the averaged losses see a margin, the summed one does not
    policy = _scores([-6.0], [-6.0], n_chosen=[2.0], n_rejected=[6.0])
    ref = _scores([-6.0], [-6.0], n_chosen=[2.0], n_rejected=[6.0])
    simpo, _ = pref.pair_loss("simpo", policy, None, beta=2.0, simpo_gamma=0.0)
    np.testing.assert_allclose(simpo, math.log1p(math.exp(-2.0 * (-3.0 + 1.0))), rtol=1e-6)
    sigmoid, _ = pref.pair_loss("sigmoid", policy, ref, beta=2.0)
    np.testing.assert_allclose(sigmoid, math.log(2), rtol=1e-6)


def test_orpo_is_finite_near_certainty_and_adds_the_chosen_nll():
    policy = _scores([-1e-7, -30.0], [-20.0, -1e-6], n_chosen=[1.0, 1.0], n_rejected=[1.0, 1.0])
    loss, _ = pref.pair_loss("orpo", policy, None, beta=0.1)
    assert np.isfinite(float(loss))
    grads = jax.grad(lambda c: pref.pair_loss("orpo", policy._replace(chosen=c), None, beta=0.1)[0])(policy.chosen)
    assert np.all(np.isfinite(np.asarray(grads)))
    nll = (1e-7 + 30.0) / 2
    assert float(loss) > nll  # the odds-ratio term is a positive penalty on top of the NLL


def test_pair_loss_names_the_bad_setting():
    s = _scores([-1.0], [-2.0])
    with pytest.raises(ValueError, match="train.preference.loss"):
        pref.pair_loss("kto", s, s, beta=0.1)
    with pytest.raises(ValueError, match="reference"):
        pref.pair_loss("sigmoid", s, None, beta=0.1)


def test_group_advantages_are_zero_for_a_group_of_equal_rewards():
    adv = pref.group_advantages(jnp.array([1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0]), group_size=4)
    np.testing.assert_allclose(adv[:4], 0.0)
    half = 0.5 / math.sqrt(1 / 3)  # centred by the mean 0.5, over the unbiased std
    np.testing.assert_allclose(adv[4:], [-half, half] * 2, rtol=1e-3)


def _rollout():
    logps = jnp.array([[-1.0, -2.0, -0.5, 0.0], [-0.3, -0.7, 0.0, 0.0]])
    mask = jnp.array([[1, 1, 1, 0], [1, 1, 0, 0]], jnp.float32)
    return logps, mask, jnp.array([1.0, -1.0])


def test_grpo_reductions_on_policy():
    logps, mask, adv = _rollout()
    # on policy (ratio 1) every token's loss is -advantage; the reductions differ only in the divisor
    grpo, _ = pref.grpo_loss("grpo", logps, logps, adv, mask)
    dr, _ = pref.grpo_loss("dr_grpo", logps, logps, adv, mask, max_completion_length=4)
    dapo, _ = pref.grpo_loss("dapo", logps, logps, adv, mask)
    np.testing.assert_allclose(grpo, 0.0, atol=1e-7)
    np.testing.assert_allclose(dr, (-3 + 2) / (2 * 4), rtol=1e-6)
    np.testing.assert_allclose(dapo, (-3 + 2) / 5, rtol=1e-6)


def test_grpo_clip_higher_stops_the_gradient_beyond_the_upper_bound():
    logps, mask, adv = _rollout()
    old = logps - 0.25  # ratio e^0.25 = 1.28 everywhere

    def loss_of(eps_high):
        return lambda lp: pref.grpo_loss("dapo", lp, old, adv, mask, epsilon_low=0.2, epsilon_high=eps_high)[0]

    clipped = jax.grad(loss_of(0.2))(logps)
    np.testing.assert_allclose(clipped[0], 0.0)  # positive advantage past 1 + 0.2: no push
    assert np.all(np.asarray(clipped[1][:2]) > 0)  # negative advantage: the min keeps the unclipped term
    assert np.all(np.asarray(jax.grad(loss_of(0.3))(logps)[0][:3]) < 0)  # clip-higher lets it through


def test_grpo_kl_penalty_is_zero_at_the_reference_and_required_when_asked():
    logps, mask, adv = _rollout()
    plain, _ = pref.grpo_loss("grpo", logps, logps, adv, mask)
    with_kl, metrics = pref.grpo_loss("grpo", logps, logps, adv, mask, beta=0.04, ref_logps=logps)
    np.testing.assert_allclose(with_kl, plain, atol=1e-7)
    assert float(metrics["kl"]) == 0.0
    with pytest.raises(ValueError, match="reference"):
        pref.grpo_loss("grpo", logps, logps, adv, mask, beta=0.04)
