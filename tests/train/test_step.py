"""The train step: no accumulation loop around one micro-batch, one gradient norm, and what attention is given
of the rows' documents (nothing for one example per row, the segment ids and their layout for packed rows)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.extend.core import Literal
from train_helpers import tiny_config

from diabetica_jax.data.batch import Batch
from diabetica_jax.data.synthetic import SyntheticSource
from diabetica_jax.model.qwen import Qwen
from diabetica_jax.model.segments import SegmentLayout
from diabetica_jax.parallel import make_mesh
from diabetica_jax.train.global_batch import to_global
from diabetica_jax.train.setup import prepare
from diabetica_jax.train.state import init_state
from diabetica_jax.train.step import batch_sharding, make_train_step

SEQ, ROWS = 32, 4


class Training:
    """A tiny model's setup on a one-device mesh, and train steps built on it (entered as a context: the mesh)."""

    def __init__(self, hf_path, *overrides):
        self.cfg = tiny_config(hf_path, "mesh.fsdp=1", "model.runtime.attention=xla", f"data.seq_len={SEQ}",
                               f"data.global_batch={ROWS}", *overrides)
        self.mesh = make_mesh(self.cfg.mesh.sizes())
        self._steps = {}

    def __enter__(self):
        self._mesh_context = jax.set_mesh(self.mesh)
        self._mesh_context.__enter__()
        self.setup = prepare(self.cfg, self.mesh)
        self.sharding = batch_sharding(self.mesh)
        return self

    def __exit__(self, *exc):
        self._mesh_context.__exit__(*exc)

    def new_step(self, **settings):
        return make_train_step(self.setup.graphdef, self.setup.optimizer, self.setup.schedule,
                               loss_chunk=self.cfg.loop.loss_chunk, dropout=False, shardings=self.setup.shardings,
                               frozen_shardings=self.setup.frozen_sharding, batch_sharding=self.sharding, **settings)

    def step(self, **settings):
        """The train step of these settings, one per settings, so that tests share its compiled programs."""
        key = tuple(sorted(settings.items()))
        if key not in self._steps:
            self._steps[key] = self.new_step(**settings)
        return self._steps[key]

    def state(self):
        """A fresh state of the same initial weights (each step donates the one it is given)."""
        return init_state(jax.tree.map(jnp.copy, self.setup.params), self.setup.optimizer, 0, self.setup.shardings)

    def batch(self, rows: Batch, grad_accum: int = 1) -> Batch:
        """Host rows [1, ROWS, seq] as a global batch of `grad_accum` micro-batches."""
        shape = (grad_accum, ROWS // grad_accum, rows.tokens.shape[-1])
        return to_global(Batch(*(np.asarray(x).reshape(shape) for x in rows)), self.sharding, shape)


def packed_rows() -> Batch:
    return SyntheticSource(SEQ, ROWS, 1, vocab=64).batch(0)


def one_example_rows(lengths=(5, 19, 32, 11)) -> Batch:
    """data.packing none's rows: one example each (segment 1, positions from 0), then padding (all 0)."""
    rng = np.random.RandomState(1)
    fields = [np.zeros((1, ROWS, SEQ), np.int32) for _ in range(4)]
    tokens, loss_mask, segment_ids, positions = fields
    for r, n in enumerate(lengths):
        tokens[0, r, :n] = rng.randint(1, 512, n)
        loss_mask[0, r, n // 3:n] = 1
        segment_ids[0, r, :n] = 1
        positions[0, r, :n] = np.arange(n)
    return Batch(*fields)


def _equations(jaxpr, into_loops: bool = True):
    """Every equation of a jaxpr and of the jaxprs inside it (with `into_loops` False, not inside scans and loops)."""
    for eqn in jaxpr.eqns:
        yield eqn
        if not into_loops and eqn.primitive.name in ("scan", "while"):
            continue
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _equations(inner, into_loops)


def _micro_batch_scans(jaxpr, batch: Batch):
    """Scans that run over the micro-batches: those taking the int32 [grad_accum, micro_batch, seq] batch."""
    shape = batch.tokens.shape

    def over_batch(eqn):
        xs = eqn.invars[eqn.params["num_consts"] + eqn.params["num_carry"]:]
        return any(getattr(x.aval, "shape", None) == shape and x.aval.dtype == jnp.int32 for x in xs)

    return [eqn for eqn in _equations(jaxpr) if eqn.primitive.name == "scan" and over_batch(eqn)]


@pytest.fixture(scope="module")
def untied(hf_checkpoints):
    with Training(hf_checkpoints["qwen2_untied"]) as training:
        yield training


def test_one_micro_batch_takes_its_gradient_without_an_accumulation_scan(untied):
    step = untied.step()
    for grad_accum, scans in ((1, 0), (2, 1)):
        batch = untied.batch(packed_rows(), grad_accum)
        jaxpr = step.trace(untied.state(), untied.setup.frozen, batch).jaxpr.jaxpr
        assert len(_micro_batch_scans(jaxpr, batch)) == scans, grad_accum


@pytest.mark.slow
def test_one_micro_batch_gives_the_accumulation_loop_s_loss_and_update(untied):
    """The direct gradient of one micro-batch of 4 rows and the accumulated gradient of two micro-batches of 2
    (the loop) agree."""
    step = untied.step()
    results = [step(untied.state(), untied.setup.frozen, untied.batch(packed_rows(), accum)) for accum in (1, 2)]
    (direct, direct_metrics), (looped, looped_metrics) = results
    for key in ("loss", "grad_norm", "loss_tokens"):
        np.testing.assert_allclose(direct_metrics[key], looped_metrics[key], rtol=1e-5, err_msg=key)
    for a, b in zip(jax.tree.leaves(direct.params), jax.tree.leaves(looped.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_the_gradient_norm_is_computed_once_for_clipping_and_its_metric(untied):
    """A global norm is the square root of a traced scalar outside the model's loops (attention's scale is the
    square root of a constant); the step takes exactly one."""
    batch = untied.batch(packed_rows())
    jaxpr = untied.step().trace(untied.state(), untied.setup.frozen, batch).jaxpr.jaxpr
    roots = [eqn for eqn in _equations(jaxpr, into_loops=False) if eqn.primitive.name == "sqrt"
             and eqn.outvars[0].aval.shape == () and not isinstance(eqn.invars[0], Literal)]
    assert len(roots) == 1


@pytest.mark.parametrize("settings, sees_segments, layout_slots", [
    ({"one_document_rows": True, "max_segments": 8}, False, None),
    ({}, True, None),
    ({"max_segments": 8}, True, 8),
], ids=["one-document-rows", "segment-ids", "packed-layout"])
def test_attention_is_given_what_the_rows_hold(untied, monkeypatch, settings, sees_segments, layout_slots):
    calls = []
    original = Qwen.hidden_states

    def recording(self, tokens, positions=None, segment_ids=None, dropout_rng=None, packed=None):
        calls.append((segment_ids, packed))
        return original(self, tokens, positions, segment_ids, dropout_rng=dropout_rng, packed=packed)

    monkeypatch.setattr(Qwen, "hidden_states", recording)
    untied.new_step(**settings).trace(untied.state(), untied.setup.frozen, untied.batch(packed_rows()))
    (segment_ids, packed), = calls
    assert (segment_ids is not None) == sees_segments
    if layout_slots is None:
        assert packed is None
    else:
        assert isinstance(packed, SegmentLayout)
        assert packed.seqlens.shape == (ROWS, layout_slots) and packed.offsets.shape == (ROWS, layout_slots + 1)


def test_one_example_rows_train_the_same_without_segment_ids(untied):
    """Packing none: causal-only attention (no segment ids) gives the loss, gradient and update that segment
    masking gives, since every row's padding comes after its one example."""
    batch = untied.batch(one_example_rows())
    causal, causal_metrics = untied.step(one_document_rows=True)(untied.state(), untied.setup.frozen, batch)
    masked, masked_metrics = untied.step()(untied.state(), untied.setup.frozen, batch)
    for key in ("loss", "grad_norm", "loss_tokens"):
        np.testing.assert_allclose(causal_metrics[key], masked_metrics[key], rtol=1e-6, err_msg=key)
    for a, b in zip(jax.tree.leaves(causal.params), jax.tree.leaves(masked.params)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_packed_rows_with_their_layout_train_as_with_segment_ids(untied, monkeypatch):
    """Attention made to read the layout alone (as the cuDNN packed kernel does; the xla backend would otherwise
    mask by the segment ids beside it) gives the loss the segment ids give: the layout holds the rows' documents."""
    from diabetica_jax.model import qwen

    attend = qwen.attend

    def layout_only(q, k, v, *, segment_ids=None, packed=None, backend="auto"):
        return attend(q, k, v, segment_ids=None if packed is not None else segment_ids, packed=packed,
                      backend=backend)

    monkeypatch.setattr(qwen, "attend", layout_only)
    batch = untied.batch(packed_rows())
    _, with_layout = untied.new_step(max_segments=4)(untied.state(), untied.setup.frozen, batch)
    _, without = untied.step()(untied.state(), untied.setup.frozen, batch)
    np.testing.assert_allclose(with_layout["loss"], without["loss"], rtol=1e-6)


def test_a_bfloat16_first_moment_trains(hf_checkpoints):
    with Training(hf_checkpoints["qwen2_tied"], "optim.mu_dtype=bfloat16", "optim.warmup_steps=0") as training:
        state = training.state()
        assert {x.dtype for x in jax.tree.leaves(optax.tree.get(state.opt_state, "mu"))} == {jnp.dtype(jnp.bfloat16)}
        assert {x.dtype for x in jax.tree.leaves(optax.tree.get(state.opt_state, "nu"))} == {jnp.dtype(jnp.float32)}
        step, batch = training.step(), training.batch(packed_rows())
        losses = []
        for _ in range(5):
            state, metrics = step(state, training.setup.frozen, batch)
            losses.append(float(metrics["loss"]))
        assert np.isfinite(losses).all() and losses[-1] < 0.9 * losses[0]
        assert {x.dtype for x in jax.tree.leaves(optax.tree.get(state.opt_state, "mu"))} == {jnp.dtype(jnp.bfloat16)}
