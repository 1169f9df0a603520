"""Per-row sampling (generate/sampling.py's choose_rows) and its cost and state in the batcher: the filtered set
equals transformers' warpers, draws follow it, a row's result ignores its neighbours, idle slots are neutral,
nothing sorts the vocabulary, and logit_bias."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diabetica_jax import hf
from diabetica_jax.generate import SamplingParams
from diabetica_jax.generate import sampling as sampling_module
from diabetica_jax.generate.batcher import MAX_LOGIT_BIAS, Batcher, BatcherError
from diabetica_jax.generate.chat import stop_and_pad
from diabetica_jax.generate.sampling import CANDIDATES, RowSampling, allowed_tokens, choose_rows, tiers_needed
from diabetica_jax.model import create_model

VOCAB = 1000  # larger than CANDIDATES, so both the candidate route and the whole-vocabulary one are taken


def _rows_each(settings):
    """RowSampling from one (temperature, top_k, top_p) per row, no penalties."""
    temperature, top_k, top_p = zip(*settings)
    n = len(settings)
    return RowSampling(jnp.asarray(temperature, jnp.float32), jnp.asarray(top_k, jnp.int32),
                       jnp.asarray(top_p, jnp.float32), jnp.ones(n), jnp.zeros(n), jnp.zeros(n))


def _rows(temperature, top_k, top_p, n):
    return _rows_each([(temperature, top_k, top_p)] * n)


def _logits(kind, rows, vocab=VOCAB, seed=0):
    """'peaked': a few tokens hold most of the mass, as a trained model's; 'flat': near-uniform, as random weights."""
    rng = np.random.default_rng(seed)
    if kind == "flat":
        return jnp.asarray(rng.normal(0, 0.3, (rows, vocab)), jnp.float32)
    logits = rng.normal(0, 1.0, (rows, vocab))
    for r in range(rows):
        logits[r, rng.choice(vocab, 10, replace=False)] += np.linspace(9, 4, 10)
    return jnp.asarray(logits, jnp.float32)


def _warped(logits, temperature, top_k, top_p):
    """transformers' TopK then TopP warpers on logits / temperature (torch, float32)."""
    torch = pytest.importorskip("torch")
    from transformers import TopKLogitsWarper, TopPLogitsWarper

    scores = torch.from_numpy(np.array(logits)) / temperature
    if top_k > 0:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)
    return scores.numpy()


def _exact_in_candidates(logits, rows):
    values, _ = jax.lax.top_k(logits, CANDIDATES)
    return np.asarray(sampling_module._filter_candidates(values, logits, rows)[1])


SETTINGS = [(1.0, 50, 1.0), (0.7, 0, 0.9), (1.3, 20, 0.8), (1.0, 300, 1.0), (0.8, 300, 0.95), (1.0, 0, 0.5),
            (1.0, 1, 1.0)]


@pytest.mark.parametrize("kind", ["peaked", "flat"])
@pytest.mark.parametrize("temperature,top_k,top_p", SETTINGS)
def test_filtered_tokens_equal_transformers_warpers(kind, temperature, top_k, top_p):
    logits = _logits(kind, 6)
    rows = _rows(temperature, top_k, top_p, 6)
    ours = np.asarray(allowed_tokens(logits, rows))
    np.testing.assert_array_equal(ours, np.isfinite(_warped(logits, temperature, top_k, top_p)))


@pytest.mark.parametrize("top_k", [5, 50, CANDIDATES - 1, CANDIDATES, CANDIDATES + 40])
def test_top_k_keeps_the_kth_logits_ties_like_transformers(top_k):
    """Logits rounded to a coarse grid (as bf16 logits are) tie often, at the k-th and at the last candidate."""
    logits = jnp.round(_logits("flat", 4, seed=5) * 10) / 10
    rows = _rows(1.0, top_k, 1.0, 4)
    np.testing.assert_array_equal(allowed_tokens(logits, rows), np.isfinite(_warped(logits, 1.0, top_k, 1.0)))


def test_greedy_rows_take_the_first_largest_logit():
    logits = jnp.round(_logits("flat", 6, seed=4) * 4) / 4  # ties for the largest
    logits = logits.at[5].set(-jnp.inf).at[5, 17].set(3.0).at[4].set(-jnp.inf)
    keys = jax.random.split(jax.random.PRNGKey(0), 6)
    zeros = jnp.zeros(logits.shape, bool), jnp.zeros(logits.shape, jnp.int32)
    chosen = choose_rows(logits, *zeros, RowSampling.neutral(6), keys)
    np.testing.assert_array_equal(chosen, jnp.argmax(logits, axis=-1))


def test_both_routes_are_exercised_and_agree():
    """The candidates are used where they hold the whole filtered set, and the whole-vocabulary route gives
    the same set there too; a wide nucleus (flat logits) or a top_k above CANDIDATES takes that route."""
    peaked, flat = _logits("peaked", 4), _logits("flat", 4)
    assert _exact_in_candidates(peaked, _rows(1.0, 0, 0.9, 4)).all()
    assert _exact_in_candidates(flat, _rows(1.0, 50, 1.0, 4)).all()
    assert not _exact_in_candidates(flat, _rows(1.0, 0, 0.9, 4)).any()
    assert not _exact_in_candidates(flat, _rows(1.0, CANDIDATES + 10, 1.0, 4)).any()
    rows = _rows(0.9, 40, 0.9, 4)
    whole = sampling_module._nucleus_by_bisection(sampling_module._top_k_whole_vocab(peaked / 0.9, rows), rows)
    whole = whole > -jnp.inf
    np.testing.assert_array_equal(allowed_tokens(peaked, rows), whole)


@pytest.mark.parametrize("kind,temperature,top_k,top_p,vocab", [  # 300: not a multiple of the draw's block
    ("flat", 1.0, 0, 1.0, 300),  # the whole vocabulary, drawn in two stages
    ("peaked", 0.8, 20, 1.0, 300),  # candidates
    ("peaked", 1.0, 0, 0.9, 300),  # candidates (nucleus)
    ("flat", 1.0, 0, 0.7, 300),  # whole vocabulary: the nucleus is wider than the candidates (rejection)
    ("flat", 1.0, CANDIDATES + 72, 1.0, 300),  # whole vocabulary: top_k above the candidates
    ("flat", 1.0, 0, 0.1, 4000),  # ~200 tokens hold 10%: most draws miss, a fifth of rows end in the bisection
])
def test_sampled_frequencies_follow_the_filtered_distribution(kind, temperature, top_k, top_p, vocab):
    draws = 6000
    logits = jnp.broadcast_to(_logits(kind, 1, vocab, seed=1), (draws, vocab))
    rows = _rows(temperature, top_k, top_p, draws)
    keys = jax.random.split(jax.random.PRNGKey(7), draws)
    tokens = np.asarray(jax.jit(choose_rows)(logits, jnp.zeros(logits.shape, bool), jnp.zeros(logits.shape, jnp.int32),
                                             rows, keys))
    warped = _warped(logits[:1], temperature, top_k, top_p)[0].astype(np.float64)
    expected = np.exp(warped - warped.max())
    expected = expected / expected.sum() * draws
    observed = np.bincount(tokens, minlength=vocab)
    assert observed[expected == 0].sum() == 0  # nothing outside the filtered set
    likely = expected >= 5  # chi-square over the bins with enough expected draws, the rest pooled
    observed_bins = np.append(observed[likely], observed[~likely].sum())
    expected_bins = np.append(expected[likely], expected[~likely].sum())
    keep = expected_bins > 0
    chi2 = float(np.sum((observed_bins[keep] - expected_bins[keep]) ** 2 / expected_bins[keep]))
    dof = int(keep.sum()) - 1
    assert chi2 < dof + 6 * np.sqrt(2 * dof), (chi2, dof)


# greedy, candidates, whole vocabulary, and on flat rows: top-p by rejection, top-k by bisection, and a small
# nucleus wider than the candidates (~175 tokens of 4000 hold 8%), which with seed 7 misses all its draws and
# ends in the bisection
TIER_EXAMPLES = [(0.0, 0, 1.0), (0.9, 40, 0.9), (1.0, 0, 1.0), (1.0, 0, 0.8), (1.0, CANDIDATES + 5, 1.0),
                 (1.0, 0, 0.08)]


@pytest.mark.parametrize("seed", [3, 7])
def test_a_row_is_chosen_the_same_whatever_tier_its_neighbours_take(seed):
    n = len(TIER_EXAMPLES)
    logits = jnp.concatenate([_logits("peaked", 2, vocab=4000), _logits("flat", n - 2, vocab=4000, seed=2)])
    mine = _rows_each(TIER_EXAMPLES)
    keys = jax.random.split(jax.random.PRNGKey(seed), n)
    step = jax.jit(choose_rows)
    zeros = jnp.zeros(logits.shape, bool), jnp.zeros(logits.shape, jnp.int32)
    alone = np.asarray(step(logits, *zeros, mine, keys))
    for neighbours in TIER_EXAMPLES:
        for row in range(n):  # every other row switched to the neighbours' settings
            others = _rows(*neighbours, n)
            mixed = RowSampling(*(jnp.where(jnp.arange(n) == row, a, b) for a, b in zip(mine, others)))
            assert int(step(logits, *zeros, mixed, keys)[row]) == alone[row], (row, neighbours)


def test_tiers_a_batch_needs():
    assert tiers_needed(RowSampling.neutral(4), VOCAB) == {"greedy"}  # idle and greedy slots: an argmax alone
    assert tiers_needed(_rows(1.0, 0, 1.0, 4), VOCAB) == {"whole vocabulary"}  # no sort, no top_k
    assert tiers_needed(_rows(1.0, VOCAB, 1.0, 4), VOCAB) == {"whole vocabulary"}  # top_k >= vocab filters nothing
    assert tiers_needed(_rows(1.0, 50, 1.0, 4), VOCAB) == {"filtered"}
    mixed = RowSampling(*(jnp.concatenate(pair) for pair in zip(RowSampling.neutral(2), _rows(1.0, 0, 0.9, 2))))
    assert tiers_needed(mixed, VOCAB) == {"greedy", "filtered"}


def _primitives(jaxpr, inside_cond=False):
    """(primitive name, whether it sits inside a lax.cond branch) for every equation, nested ones included."""
    for eqn in jaxpr.eqns:
        yield eqn.primitive.name, inside_cond
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else [param]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _primitives(inner, inside_cond or eqn.primitive.name == "cond")


# ---- in the batcher ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def batcher():
    tokenizer = hf.load_tokenizer(None)
    model = create_model(hf.preset_config("tiny"), seed=0)
    batcher = Batcher(model, *stop_and_pad(tokenizer), slots=3, max_prompt_tokens=16, max_new_tokens=8, max_waiting=8)
    yield batcher
    batcher.close()


@pytest.mark.slow
def test_the_decode_step_sorts_nothing_and_filters_only_in_conditional_branches(batcher):
    batcher.generate([[1, 2, 3]], 2)  # the state exists and the step is compiled
    # every slot active, 8 tokens left each, one step per call, no log-probabilities
    args = (batcher.params, batcher._slots, jnp.ones(batcher.num_slots, bool), jnp.full(batcher.num_slots, 8),
            jnp.int32(1), jnp.bool_(False))
    step = batcher._step(True)  # the program of batches that sample
    found = list(_primitives(jax.make_jaxpr(step)(*args).jaxpr))
    names = {name for name, _ in found}
    assert "sort" not in names and "top_k" in names
    assert all(inside for name, inside in found if name in ("top_k", "argmax"))
    if jax.default_backend() == "cpu":  # XLA CPU keeps top_k a TopK call: the compiled step has no sort either
        compiled = step.lower(*args).compile()
        assert " sort(" not in compiled.as_text()


def _idle_state(batcher, settled, timeout=30.0):
    """The slots' sampling settings and bias once `settled(state)` or the timeout: the scheduler releases
    freed slots just before it sleeps, a moment after the last result; a read that races a device call meets
    a donated buffer and is retried."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            state = jax.device_get((batcher._slots.sampling, batcher._slots.bias))
        except RuntimeError:
            state = None
        if state is not None and (settled(state) or time.monotonic() > deadline):
            return state
        time.sleep(0.05)


def test_idle_slots_return_to_neutral_after_a_sampled_burst(batcher):
    burst = [batcher.submit([5 + i, 6, 7], 6, SamplingParams(temperature=0.9, top_k=40, top_p=0.9, seed=i),
                            frequency_penalty=0.5, logit_bias={10 + i: 2.0}) for i in range(5)]
    for ticket in burst:
        ticket.result(timeout=120)
    neutral = jax.device_get(RowSampling.neutral(batcher.num_slots))
    sampling, bias = _idle_state(batcher, lambda state: all(map(np.array_equal, state[0], neutral)))
    for field, value, expected in zip(RowSampling._fields, sampling, neutral):
        np.testing.assert_array_equal(value, expected, err_msg=field)
    assert not np.any(bias.values) and bias.values.shape == (batcher.num_slots, MAX_LOGIT_BIAS)


def test_logit_bias_forces_and_bans_tokens(batcher):
    prompt = [11, 12, 13, 14]
    greedy = batcher.generate([prompt], 4)[0]
    forced = batcher.submit(prompt, 4, logit_bias={4242: 100.0}, logprobs=True)
    tokens, _ = forced.result(timeout=60)
    assert tokens == [4242] * 4
    assert forced.logprobs[0][0] < np.log(0.5)  # the reported log-probability is the model's own, unbiased
    sampled = batcher.submit(prompt, 4, SamplingParams(temperature=1.0, top_p=0.9, seed=1), logit_bias={777: 100.0})
    assert sampled.result(timeout=60)[0] == [777] * 4
    banned = batcher.submit(prompt, 1, logit_bias={greedy[0]: -100.0}).result(timeout=60)[0]
    assert banned and banned[0] != greedy[0]


def test_bad_logit_bias_is_refused(batcher):
    vocab = batcher.config.vocab_size
    with pytest.raises(BatcherError, match="not a token id"):
        batcher.submit([1, 2], 2, logit_bias={vocab: 1.0})
    with pytest.raises(BatcherError, match="not a token id"):
        batcher.submit([1, 2], 2, logit_bias={-1: 1.0})
    with pytest.raises(BatcherError, match=f"at most {MAX_LOGIT_BIAS}"):
        batcher.submit([1, 2], 2, logit_bias={t: 1.0 for t in range(MAX_LOGIT_BIAS + 1)})
    with pytest.raises(BatcherError, match="finite"):
        batcher.submit([1, 2], 2, logit_bias={3: float("nan")})
