"""The preference and GRPO losses equal TRL's on the same tiny random Qwen2, the same pairs and completions.

The JAX side goes the way the stages do: pairs packed two per row (data/pairs.py), sequence log-probs
chunked from the hidden states, losses from train/preference.py. The TRL side is its own loss code
(tests/train/trl_reference.py), model forward and backward included, in float32. Also on an
8-device mesh (data 2 x fsdp 4), where the rows and the parameters are sharded.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hf_models import make_hf_checkpoint
from jax.sharding import NamedSharding, PartitionSpec

from diabetica_jax import hf
from diabetica_jax.data.pairs import pack_pairs
from diabetica_jax.parallel import make_mesh
from diabetica_jax.train import preference as pref

pytest.importorskip("trl", reason="TRL is the reference here: pip install -e '.[test]'")
import trl_reference  # noqa: E402

PAIRS_PER_ROW, SEQ, CHUNK = 2, 64, 16
VARIANT = "qwen2_untied"
BETA = 0.1


def random_pairs(n=16, seed=0):
    rng = np.random.RandomState(seed)
    return [tuple(rng.randint(1, 512, rng.randint(lo, hi)).tolist() for lo, hi in ((3, 7), (2, 8), (2, 8)))
            for _ in range(n)]


PAIRS = random_pairs()
_TRL = {}


def trl(key, compute):
    """TRL's figures do not depend on the JAX mesh: each is computed once for both mesh cases."""
    if key not in _TRL:
        _TRL[key] = compute()
    return _TRL[key]


@pytest.fixture(scope="module")
def reference_path(tmp_path_factory):
    return make_hf_checkpoint(VARIANT, tmp_path_factory.mktemp("reference"), seed=1)


ONE, MESH = "one device", "mesh 2x4"


@pytest.fixture(scope="module")
def mesh(request):
    sizes = {"fsdp": 1} if request.param == ONE else {"data": 2, "fsdp": 4}
    mesh = make_mesh(sizes)
    with jax.set_mesh(mesh):
        yield mesh


def on_mesh(mesh, *arrays):
    rows = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    return [jax.device_put(jnp.asarray(a), rows) for a in arrays]


def split(path, mesh):
    model, _ = hf.load(path, mesh=mesh, progress=False)
    return nnx.split(model, nnx.Param, ...)


def jax_pairs(kind, policy_path, mesh, reference_path=None, gamma=0.5):
    """(loss, chosen logps, rejected logps, grad norm) of the pair loss on PAIRS."""
    rows = pack_pairs(PAIRS, PAIRS_PER_ROW, SEQ)
    tokens, loss_mask, segments, positions = on_mesh(mesh, *rows)
    weights = pref.reply_weights(loss_mask, segments)

    def scores(model):
        logp = pref.row_token_logps(model, tokens, positions, segments, CHUNK)
        return pref.pair_scores(logp, weights, segments, PAIRS_PER_ROW), logp

    reference = None
    if reference_path is not None:
        reference = jax.jit(lambda: scores(nnx.merge(*split(reference_path, mesh)))[0])()
    graphdef, params, rest = split(policy_path, mesh)

    def objective(params):
        policy, logp = scores(nnx.merge(graphdef, params, rest))
        nll = pref.chosen_sequence_nll(logp, segments, PAIRS_PER_ROW) if kind == "orpo" else None
        loss, _ = pref.pair_loss(kind, policy, reference, beta=BETA, simpo_gamma=gamma, orpo_nll=nll)
        return loss, policy

    (loss, policy), grads = jax.jit(jax.value_and_grad(objective, has_aux=True))(params)
    assert float(policy.present.sum()) == len(PAIRS)
    return float(loss), np.asarray(policy.chosen), np.asarray(policy.rejected), float(optax.tree.norm(grads))


# Every loss on one device; on the mesh the ones that cover its paths (reference and policy log-probs
# sharded, the sequence NLL, the clipped token loss with KL), to keep the suite's time.
@pytest.mark.parametrize("mesh,kind", [(ONE, "sigmoid"), (ONE, "ipo"), (ONE, "hinge"), (MESH, "sigmoid")],
                         indirect=["mesh"])
def test_dpo_losses_equal_trl(hf_checkpoints, reference_path, mesh, kind):
    ours = jax_pairs(kind, hf_checkpoints[VARIANT], mesh, reference_path)
    theirs = trl(("dpo", kind), lambda: trl_reference.dpo(hf_checkpoints[VARIANT], reference_path, PAIRS, kind, BETA))
    np.testing.assert_allclose(ours[1], theirs["chosen"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(ours[2], theirs["rejected"], atol=1e-5, rtol=0)
    assert abs(ours[0] - theirs["loss"]) <= 1e-5
    assert ours[3] == pytest.approx(theirs["grad_norm"], rel=1e-5)
    # the loss is not at a trivial point: the two models' log-ratios differ pair by pair
    assert theirs["grad_norm"] > 1e-3


@pytest.mark.parametrize("mesh", [ONE, MESH], indirect=True)
def test_orpo_equals_trl(hf_checkpoints, mesh):
    ours = jax_pairs("orpo", hf_checkpoints[VARIANT], mesh)
    theirs = trl("orpo", lambda: trl_reference.orpo(hf_checkpoints[VARIANT], PAIRS, BETA))
    assert abs(ours[0] - theirs["loss"]) <= 1e-5
    assert ours[3] == pytest.approx(theirs["grad_norm"], rel=1e-5)


@pytest.mark.parametrize("mesh", [ONE], indirect=True)
def test_simpo_equals_trl_cpo_simpo(hf_checkpoints, mesh):
    ours = jax_pairs("simpo", hf_checkpoints[VARIANT], mesh, gamma=0.5)
    theirs = trl("simpo", lambda: trl_reference.simpo(hf_checkpoints[VARIANT], PAIRS, BETA, gamma=0.5))
    assert abs(ours[0] - theirs["loss"]) <= 1e-5
    assert ours[3] == pytest.approx(theirs["grad_norm"], rel=1e-5)


GROUP, PROMPTS, PROMPT_LEN, COMPLETION_LEN = 4, 2, 6, 10


def rollouts(seed=0):
    """Fixed completions of varying length, one group of GROUP per prompt, and their rewards."""
    rng = np.random.RandomState(seed)
    prompts = np.repeat(rng.randint(1, 512, (PROMPTS, PROMPT_LEN)), GROUP, axis=0)
    completions = rng.randint(1, 512, (PROMPTS * GROUP, COMPLETION_LEN))
    lengths = rng.randint(3, COMPLETION_LEN + 1, PROMPTS * GROUP)
    mask = (np.arange(COMPLETION_LEN)[None] < lengths[:, None]).astype(np.int32)
    rewards = rng.randint(0, 2, PROMPTS * GROUP).astype(np.float32)
    return prompts, completions * mask, mask, rewards


@pytest.mark.parametrize("mesh,kind,beta", [(ONE, "grpo", 0.0), (ONE, "dr_grpo", 0.0), (ONE, "dapo", 0.0),
                                            (ONE, "grpo", 0.04), (MESH, "dapo", 0.0), (MESH, "grpo", 0.04)],
                         indirect=["mesh"])
def test_grpo_losses_equal_trl(hf_checkpoints, mesh, kind, beta):
    prompts, completions, mask, rewards = rollouts()
    advantages = np.asarray(pref.group_advantages(jnp.asarray(rewards), GROUP))
    graphdef, params, rest = split(hf_checkpoints[VARIANT], mesh)
    p, c, m = on_mesh(mesh, prompts, completions, mask)

    def logps(params):
        return pref.completion_logps(nnx.merge(graphdef, params, rest), p, c, m, CHUNK)

    current = np.asarray(jax.jit(logps)(params))

    def off_current():
        """Old (and reference) log-probs off the current ones by up to 0.4 nats: ratios beyond both clip
        bounds, KL not zero. Made once, so both mesh cases give TRL the very same inputs."""
        rng = np.random.RandomState(1)
        old = current + rng.uniform(-0.4, 0.4, current.shape).astype(np.float32)
        return old, current + rng.uniform(-0.4, 0.4, current.shape).astype(np.float32) if beta else None

    old, ref = trl(("grpo inputs", kind, beta), off_current)
    eps_low, eps_high = 0.2, 0.28 if kind == "dapo" else 0.2

    def objective(params):
        loss, metrics = pref.grpo_loss(kind, logps(params), jnp.asarray(old), jnp.asarray(advantages), m,
                                       epsilon_low=eps_low, epsilon_high=eps_high, beta=beta,
                                       ref_logps=None if ref is None else jnp.asarray(ref),
                                       max_completion_length=COMPLETION_LEN)
        return loss, metrics

    (loss, metrics), grads = jax.jit(jax.value_and_grad(objective, has_aux=True))(params)
    theirs = trl(("grpo", kind, beta), lambda: trl_reference.grpo(
        hf_checkpoints[VARIANT], prompts, completions, mask, old, advantages, kind=kind, epsilon_low=eps_low,
        epsilon_high=eps_high, beta=beta, ref_logps=ref, max_completion_length=COMPLETION_LEN))
    assert abs(float(loss) - theirs["loss"]) <= 1e-6
    assert float(optax.tree.norm(grads)) == pytest.approx(theirs["grad_norm"], rel=1e-5)
    assert float(metrics["clip_ratio/low"]) > 0 and float(metrics["clip_ratio/high"]) > 0
