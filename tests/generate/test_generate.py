"""The KV-cache engine (the continuous batcher's blocking generate and stream): token-for-token equal to
transformers' generate, one call of many prompts equal to each prompt alone, few compilations, sharded too."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from diabetica_jax import hf
from diabetica_jax.cli import main
from diabetica_jax.generate import SamplingParams, SizedBatcher, left_pad
from diabetica_jax.generate.sampling import RowSampling, adjusted_logits, choose_rows


def _prompts(seed=3, lengths=(3, 9, 6, 20)):
    rng = np.random.RandomState(seed)
    return [rng.randint(0, 500, n).tolist() for n in lengths]


def _reference(model, prompt, n, penalty):
    out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, repetition_penalty=penalty,
                         eos_token_id=511, pad_token_id=510)[0, len(prompt):].tolist()
    return out[: out.index(511)] if 511 in out else out


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["qwen2_tied", "qwen3", "llama3"])
@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_greedy_equals_transformers_generate(hf_checkpoints, variant, penalty):
    """One blocking call of four prompts, each prompt as a request of its own, and transformers, one prompt at
    a time: the same tokens."""
    path = hf_checkpoints[variant]
    model, _ = hf.load(path, progress=False)
    prompts, params = _prompts(), SamplingParams(repetition_penalty=penalty)
    with SizedBatcher(model, stop_ids=[511], pad_id=510) as engine:
        together = engine.generate(prompts, 12, params)
        alone = [engine.generate([p], 12, params)[0] for p in prompts]
    reference = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert together == alone == [_reference(reference, p, 12, penalty) for p in prompts]


def test_left_padding_layout():
    padded = left_pad([[7, 8, 9], [5]], pad_id=0, bucketed=True)
    assert padded.tokens.shape == padded.valid.shape == padded.positions.shape == (2, 16)
    assert padded.tokens.dtype == padded.positions.dtype == np.int32 and padded.valid.dtype == bool
    np.testing.assert_array_equal(padded.tokens[:, -3:], [[7, 8, 9], [0, 0, 5]])
    assert not padded.tokens[:, :-3].any() and not padded.valid[:, :-3].any()
    np.testing.assert_array_equal(padded.valid[:, -3:], [[True, True, True], [False, False, True]])
    # real tokens count from 0 at their first token; padding sits at position 0
    np.testing.assert_array_equal(padded.positions[:, -3:], [[0, 1, 2], [0, 0, 0]])

    rounded = left_pad([[1, 2], [3], [4, 5, 6]], pad_id=9, bucketed=True)  # 3 prompts -> batch 4
    assert rounded.tokens.shape == (4, 16)
    filler = rounded.valid[3]
    assert filler[-1] and filler.sum() == 1  # one real token, so no row is fully masked
    np.testing.assert_array_equal(rounded.tokens[3], np.full(16, 9))

    exact = left_pad([[1, 2], [3]], pad_id=0)
    assert exact.tokens.shape == (2, 2)
    np.testing.assert_array_equal(exact.positions, [[0, 1], [0, 0]])
    with pytest.raises(ValueError, match="at least one token"):
        left_pad([[1], []], pad_id=0)


@pytest.mark.slow
def test_compilations_stay_bounded_over_mixed_lengths(hf_checkpoints):
    model, _ = hf.load(hf_checkpoints["qwen2_untied"], progress=False)
    engine = SizedBatcher(model, stop_ids=[511], pad_id=510)
    rng = np.random.RandomState(0)

    def mixed_calls():
        for _ in range(12):
            batch = int(rng.randint(1, 5))
            engine.generate([rng.randint(0, 500, int(rng.randint(1, 30))).tolist() for _ in range(batch)], 6)

    mixed_calls()  # a batcher per slot count (1, 2, 4), replaced once its prompts outgrow the 16 bucket
    built = dict(engine.batchers)
    mixed_calls()
    assert engine.batchers == built and set(built) == {1, 2, 4}  # every call fits one of them now
    # a batcher compiles its decode step, its slot release and a prefill per prompt bucket (16, 32); each slot
    # count built at most twice
    assert all(b.compilations <= 4 for b in built.values()) and engine.compilations <= 3 * (3 + 4)
    engine.close()


def test_stop_tokens_and_streaming(hf_checkpoints):
    model, _ = hf.load(hf_checkpoints["qwen2_tied"], progress=False)
    with SizedBatcher(model, stop_ids=[511], pad_id=0) as engine:
        free = engine.generate([[1, 2, 3]], 8)[0]
        assert len(free) == 8
        assert list(engine.stream([1, 2, 3], 8)) == free
    stop_at = free[3]
    with SizedBatcher(model, stop_ids=[stop_at], pad_id=0) as engine:
        assert engine.generate([[1, 2, 3]], 8)[0] == free[: free.index(stop_at)]
        assert list(engine.stream([1, 2, 3], 8)) == free[: free.index(stop_at)]


@pytest.mark.slow
def test_sharded_generation_equals_single_device(hf_checkpoints):
    from diabetica_jax.parallel import make_mesh

    path = hf_checkpoints["qwen3"]
    single, _ = hf.load(path, progress=False)
    mesh = make_mesh({"fsdp": 2, "tensor": 2})
    sharded, _ = hf.load(path, mesh=mesh, progress=False)
    prompts = _prompts(lengths=(5, 11))
    with SizedBatcher(single, stop_ids=[511], pad_id=510) as engine:
        expected = engine.generate(prompts, 8)
    with SizedBatcher(sharded, stop_ids=[511], pad_id=510, mesh=mesh) as engine:
        assert engine.generate(prompts, 8) == expected


def test_sampling_rules():
    import jax
    import jax.numpy as jnp

    logits = jnp.array([[2.0, -1.0, 0.5, 3.0]])
    seen = jnp.array([[True, True, False, False]])
    counts = jnp.zeros((1, 4), jnp.int32)
    penalised = adjusted_logits(logits, seen, counts, RowSampling(*(x[None] for x in RowSampling.of(
        SamplingParams(repetition_penalty=2.0)))))
    np.testing.assert_allclose(penalised, [[1.0, -2.0, 0.5, 3.0]])

    def draws(params, keys):  # one compiled program draws for every key (eagerly, 200 draws took minutes)
        rows = RowSampling(*(x[None] for x in RowSampling.of(params)))
        drawn = jax.jit(lambda ks: jax.lax.map(lambda k: choose_rows(logits, ~seen, counts, rows, k[None])[0], ks))
        return {int(t) for t in drawn(keys)}

    keys = jax.random.split(jax.random.PRNGKey(0), 200)
    assert draws(SamplingParams(temperature=1.0, top_k=1), keys[:20]) == {3}
    # p(3) = 0.65 < 0.7, so the next most likely token joins; the rest never appear
    assert draws(SamplingParams(temperature=1.0, top_p=0.7), keys) == {0, 3}


def test_generate_command_on_the_embedded_default(capsys):
    assert main(["generate", "--prompt", "什么是糖尿病？", "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "preset tiny (random weights, seed 0)" in out and "9.8M parameters" in out
    assert ">>> 什么是糖尿病？" in out


def test_chat_command_streams_and_keeps_history(monkeypatch, capsys):
    replies = iter(["什么是糖尿病？", "/reset", "Thanks", "/quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(replies))
    seen_prompts = []
    from diabetica_jax.generate import chat as chat_module

    original = chat_module.chat_prompt

    def recording(tokenizer, messages):
        seen_prompts.append([m["role"] for m in messages])
        return original(tokenizer, messages)

    monkeypatch.setattr(chat_module, "chat_prompt", recording)
    assert main(["chat", "--max-new-tokens", "3", "--system", "Be brief."]) == 0
    out = capsys.readouterr().out
    assert out.count("assistant> ") == 2
    assert seen_prompts == [["system", "user"], ["system", "user"]]  # /reset dropped the first exchange
