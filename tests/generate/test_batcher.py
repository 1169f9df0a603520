"""Continuous batching (generate/batcher.py), per-row sampling and incremental detokenisation (serve/text.py)."""

import concurrent.futures
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diabetica_jax import hf
from diabetica_jax.generate import SamplingParams
from diabetica_jax.generate.batcher import Batcher, BatcherError, Finished
from diabetica_jax.generate.chat import engine_for, stop_and_pad
from diabetica_jax.generate.sampling import RowSampling, choose_rows
from diabetica_jax.model import create_model
from diabetica_jax.serve.text import TextStream


@pytest.fixture(scope="module")
def tiny():
    tokenizer = hf.load_tokenizer(None)
    model = create_model(hf.preset_config("tiny"), seed=0)
    engine = engine_for(model, tokenizer)  # a batcher of its own, sized by each call
    batcher = Batcher(model, *stop_and_pad(tokenizer), slots=3, max_prompt_tokens=64, max_new_tokens=40,
                      max_waiting=8)
    yield model, tokenizer, engine, batcher
    batcher.close()
    engine.close()


def _prompts(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 5000, int(k)).tolist() for k in rng.integers(2, 60, n)]


@pytest.mark.slow
def test_more_requests_than_slots_give_what_each_gives_alone(tiny):
    model, _, engine, batcher = tiny
    prompts = _prompts(7)
    expected = engine.generate(prompts, 12)
    tickets = [batcher.submit(p, 12) for p in prompts]
    results = [t.result(timeout=120) for t in tickets]
    assert [tokens for tokens, _ in results] == expected
    assert {f.reason for _, f in results} <= {"length", "stop"}
    assert batcher.peak_active == 3  # the slots were shared, not one request at a time


def test_requests_join_a_running_batch_without_recompiling(tiny):
    _, _, engine, batcher = tiny
    batcher.generate(_prompts(1, seed=5)[:1], 3)  # the step program and the long prompt's bucket exist now
    # the late pair's prefill: 10 tokens (the 16 bucket), one or two at once (as they happen to arrive)
    batcher.generate([p[:10] for p in _prompts(2, seed=5)], 3)
    batcher.generate([_prompts(1, seed=5)[0][:10]], 3)
    long = batcher.submit(_prompts(1, seed=1)[0], 40)
    next(long.events(timeout=60))  # decoding has started
    compiled = batcher.compilations
    late = [batcher.submit(p[:10], 5) for p in _prompts(2, seed=2)]  # compiled above
    assert [t.result(timeout=60)[0] for t in late] == engine.generate([p[:10] for p in _prompts(2, seed=2)], 5)
    tokens, finished = long.result(timeout=60)
    assert len(tokens) == 40 or finished.reason == "stop"
    assert batcher.compilations == compiled


def test_a_seeded_request_samples_the_same_tokens_whatever_runs_beside_it(tiny):
    _, _, _, batcher = tiny
    prompt = _prompts(1, seed=3)[0]
    params = SamplingParams(temperature=0.9, top_k=40, top_p=0.95, seed=11)
    alone = batcher.generate([prompt], 16, params)[0]
    crowd = [batcher.submit(p, 16, SamplingParams(temperature=1.2, seed=i)) for i, p in enumerate(_prompts(4))]
    again = batcher.submit(prompt, 16, params)
    assert again.result(timeout=60)[0] == alone
    assert batcher.generate([prompt], 16, SamplingParams(temperature=0.9, top_k=40, top_p=0.95, seed=12))[0] != alone
    for t in crowd:
        t.result(timeout=60)


@pytest.mark.slow
def test_a_seeded_generate_call_samples_the_same_tokens_whatever_the_slot_count(tiny):
    """Evaluation's sampled decoding: each prompt of a call has its own seed, so 3 slots (prompts wait and join
    as others finish) and 8 (all at once) give the same tokens; the first prompt samples as a request with the
    call's seed does, and a prompt given twice gets two samples."""
    _, _, engine, batcher = tiny
    prompts = _prompts(5, seed=6)
    params = SamplingParams(temperature=0.9, top_p=0.9, seed=7)
    in_three = batcher.generate(prompts, 8, params)
    assert engine.generate(prompts, 8, params) == in_three  # a batcher of 8 slots
    assert batcher.submit(prompts[0], 8, params).result(timeout=60)[0] == in_three[0]
    twice = batcher.generate([prompts[1], prompts[1]], 8, params)
    assert twice[1] != twice[0]


def test_cancel_frees_the_slot_and_bad_requests_are_refused(tiny):
    _, _, _, batcher = tiny
    ticket = batcher.submit(_prompts(1, seed=4)[0], 40)
    events = ticket.events(timeout=60)
    next(events)
    ticket.cancel()
    rest = list(events)
    assert rest[-1] == Finished("cancelled") and len(ticket.tokens) < 40
    assert batcher.load["active"] == 0
    with pytest.raises(BatcherError, match="at most 64"):
        batcher.submit(list(range(65)), 4)
    with pytest.raises(BatcherError, match="between 1 and 40"):
        batcher.submit([1, 2], 41)
    with pytest.raises(BatcherError, match="no tokens"):
        batcher.submit([], 4)


def test_a_full_queue_refuses_instead_of_growing(tiny):
    model, tokenizer, _, _ = tiny
    batcher = Batcher(model, *stop_and_pad(tokenizer), slots=1, max_prompt_tokens=16, max_new_tokens=8,
                      max_waiting=2)
    gate = threading.Event()
    held = batcher.submit([1, 2, 3], 8, deliver=lambda event: gate.wait(30))  # blocks the scheduler
    deadline = time.monotonic() + 60
    while batcher.admitted < 1 and time.monotonic() < deadline:  # held is in its slot, not waiting
        time.sleep(0.01)
    queued = [batcher.submit([4, 5], 2), batcher.submit([6, 7], 2)]
    with pytest.raises(BatcherError, match="wait for a slot"):
        batcher.submit([8, 9], 2)
    gate.set()
    assert all(t.result(timeout=60)[1].reason in ("length", "stop") for t in queued)
    assert held.finished is not None
    batcher.close()
    with pytest.raises(BatcherError, match="shut down"):
        batcher.submit([1], 1)


def test_greedy_rows_take_the_argmax_of_the_penalised_logits():
    logits = jax.random.normal(jax.random.PRNGKey(0), (3, 50)) * 3
    seen = jnp.zeros((3, 50), bool).at[:, :25].set(True)
    counts = jnp.zeros((3, 50), jnp.int32)
    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    for penalty in (1.0, 1.3):
        rows = RowSampling(*(jnp.broadcast_to(x, (3,)) for x in RowSampling.of(
            SamplingParams(repetition_penalty=penalty))))
        plain = np.asarray(logits)  # transformers' rule: seen tokens' positive logits divided, negative multiplied
        penalised = np.where(np.asarray(seen), np.where(plain > 0, plain / penalty, plain * penalty), plain)
        np.testing.assert_array_equal(choose_rows(logits, seen, counts, rows, keys), penalised.argmax(axis=-1))
    # top_k 1 samples the argmax; a strong frequency penalty steers away from a token already generated
    top1 = RowSampling(jnp.full(3, 1.0), jnp.full(3, 1, jnp.int32), jnp.ones(3), jnp.ones(3), jnp.zeros(3), jnp.zeros(3))
    best = jnp.argmax(logits, axis=-1)
    np.testing.assert_array_equal(choose_rows(logits, seen, counts, top1, keys), best)
    repeated = counts.at[jnp.arange(3), best].set(5)
    penalised = RowSampling.neutral(3)._replace(frequency_penalty=jnp.full(3, 2.0))
    assert not np.any(np.asarray(choose_rows(logits, seen, repeated, penalised, keys)) == np.asarray(best))


def test_text_stream_holds_back_partial_characters_and_stop_strings():
    tokenizer = hf.load_tokenizer(None)
    text = "Insulin 胰岛素 lowers glucose. END of reply"
    ids = tokenizer.encode(text, add_special_tokens=False)
    stream = TextStream(tokenizer)
    pieces = [stream.push(t) for t in ids] + [stream.finish()]
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)

    stream = TextStream(tokenizer, stop=[" END"])
    released = []
    for t in ids:
        released.append(stream.push(t))
        if stream.stopped:
            break
    released.append(stream.finish())
    assert "".join(released) == "Insulin 胰岛素 lowers glucose." and stream.stopped
    assert stream.text == "Insulin 胰岛素 lowers glucose."


@pytest.mark.slow
def test_local_backend_batches_concurrent_callers():
    """The in-process `local` backend (teacher, refiner, judge) decodes its callers' threads together."""
    from diabetica_jax.llm.local import LocalModel

    local = LocalModel("tiny", slots=4)
    conversations = [[{"role": "user", "content": f"Explain insulin resistance, part {i}."}] for i in range(6)]
    alone = [local.chat(c, max_tokens=6, temperature=0.0) for c in conversations]
    steps = local.batcher.steps
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        together = list(pool.map(lambda c: local.chat(c, max_tokens=6, temperature=0.0), conversations))
    assert together == alone
    assert local.batcher.peak_active == 4
    assert local.batcher.steps - steps < 6 * 5  # fewer decode steps than one request at a time would take
    local.close()
