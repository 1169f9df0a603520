"""What the decode step compiles to: it reads weights already in the compute dtype and updates the KV cache in place.

A decode step is bound by the bytes it reads, so two defects cost most of a token's time on an accelerator without
changing any output: float32 weights converted to the compute dtype on every token, and a cache rebuilt (copied)
on every token. Neither shows in the tokens, only in the program, so these tests read its HLO (tests/hlo_checks.py).
On CPU the backend computes bfloat16 in float32 and adds conversions of its own after optimisation, so the weight
check reads the program JAX hands to XLA; the cache check reads the optimised program, in float32.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hlo_ops import parse_hlo

from diabetica_jax import hf
from diabetica_jax.generate.batcher import Batcher
from diabetica_jax.model import create_model
from diabetica_jax.model.factory import forward
from diabetica_jax.model.runtime import RuntimeConfig

# three layers, five slots: no two of the cache's dimensions coincide, so a shape names one array
CONFIG = hf.preset_config("tiny").replace(num_layers=3)
SLOTS = 5


def _batcher(runtime: RuntimeConfig, **kwargs) -> tuple[Batcher, object]:
    model = create_model(CONFIG, runtime, seed=0)
    return Batcher(model, [0], 0, slots=SLOTS, max_prompt_tokens=16, max_new_tokens=8, greedy_programs=True,
                   **kwargs), model


def _loop_ops(hlo_text: str, opcodes: set[str], shapes: set[tuple[int, ...]]) -> list:
    """The operations with one of `opcodes` and one of `shapes` that run inside the program's while loops (their
    bodies and everything those call: fusions, nested loops, branches)."""
    module = parse_hlo(hlo_text)
    return [op for body in module.while_bodies() for op in module.ops(root=body)
            if op.opcode in opcodes and op.dims in shapes]


def _weight_shapes(model) -> set[tuple[int, ...]]:
    """One layer's slice of every stacked weight (with and without the unit layer axis), and the unstacked ones."""
    shapes = set()
    for leaf in jax.tree.leaves(nnx.state(model)):
        shapes |= {tuple(leaf.shape), tuple(leaf.shape[1:]), (1,) + tuple(leaf.shape[1:])}
    return {s for s in shapes if len(s) >= 2 or (len(s) == 1 and s[0] > 1)}


def _cache_shapes(batcher: Batcher) -> set[tuple[int, ...]]:
    full = tuple(batcher._slots.cache.k.shape)
    return {full, full[1:], (1,) + full[1:]}  # the whole cache, and one layer of it


@pytest.mark.parametrize("unroll", [False, True])
def test_the_decode_loop_converts_no_weights(unroll):
    """bfloat16 compute over float32 master weights (a trained checkpoint): the engine casts them once, so the
    program's loops hold no conversion of a weight-shaped array (the old engine converted each layer's weights
    on every token)."""
    batcher, model = _batcher(RuntimeConfig(dtype="bfloat16", param_dtype="float32", unroll_decode=unroll))
    try:
        assert {leaf.dtype for leaf in jax.tree.leaves(batcher.params)} == {jnp.dtype(jnp.bfloat16)}
        program = batcher.lowered_decode().as_text(dialect="hlo")
        converts = _loop_ops(program, {"convert"}, _weight_shapes(model))
        assert _loop_ops(program, {"dot"}, {(SLOTS, 1, CONFIG.num_heads, CONFIG.head_dim)}) or \
            _loop_ops(program, {"dot"}, {(SLOTS, 1, CONFIG.hidden_size)}), "the layers' matmuls are not in a loop"
        assert not converts, f"weights converted inside the decode loop: {converts[:5]}"
    finally:
        batcher.close()


@pytest.mark.parametrize("unroll", [False, True])
def test_the_decode_loop_copies_no_cache(unroll):
    """The cache is carried through the layer loop and updated at this step's slots: the optimised loops neither
    copy nor broadcast a cache-shaped array (the old scan over per-layer caches made three full-cache copies and
    a full-cache broadcast per token)."""
    batcher, _ = _batcher(RuntimeConfig(unroll_decode=unroll))
    try:
        program = batcher.lowered_decode().compile().as_text()
        # the check reads something: the loops do write cache-shaped arrays (in place)
        assert _loop_ops(program, {"scatter", "fusion", "dynamic-update-slice"}, _cache_shapes(batcher))
        moved = _loop_ops(program, {"copy", "broadcast"}, _cache_shapes(batcher))
        assert not moved, f"cache-shaped copies in the decode loop: {moved}"
    finally:
        batcher.close()


def test_weights_cast_once_compute_exactly_what_the_model_computes():
    """The cast is exact: every use of a weight casts it to the compute dtype anyway."""
    model = create_model(CONFIG, RuntimeConfig(dtype="bfloat16", param_dtype="float32"), seed=1)
    graphdef, state = nnx.split(model)
    from diabetica_jax.generate.batcher import in_compute_dtype

    cast = nnx.merge(graphdef, in_compute_dtype(state, jnp.bfloat16))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, CONFIG.vocab_size, (2, 12)), jnp.int32)
    np.testing.assert_array_equal(np.asarray(forward(model, tokens)), np.asarray(forward(cast, tokens)))


def test_unrolled_decode_generates_the_scanned_tokens():
    prompts = [list(range(5, 17)), [7, 3, 9]]
    scanned, _ = _batcher(RuntimeConfig())
    unrolled, _ = _batcher(RuntimeConfig(unroll_decode=True))
    try:
        expected = scanned.generate(prompts, 6)
        assert unrolled.generate(prompts, 6) == expected
        assert all(len(tokens) > 0 for tokens in expected)
    finally:
        scanned.close()
        unrolled.close()
