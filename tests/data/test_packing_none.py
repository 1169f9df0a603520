"""data.packing: none (one example per row, padded within length buckets), data.kinds and data.loss_on."""

import json
import shutil

import jax
import numpy as np
import pytest
from train_helpers import Numbered, assert_resumes_with_the_next_batches

from diabetica_jax.configuration import ConfigFileError, load_config
from diabetica_jax.data.chat import encode_record
from diabetica_jax.data.config import DataSection
from diabetica_jax.data.loader import (
    BucketPlan,
    TokenStore,
    bucketed_batches,
    count_batches,
    training_batches,
)
from diabetica_jax.data.records import Record
from diabetica_jax.hf.tokenizer import embedded_tokenizer
from diabetica_jax.train.config import TrainConfig


def _store(lengths, seq_len=64, partial_masks=False):
    records = [Record(id=str(k), source="s", kind="passage", language="en", provenance={}, text=f"{k}:{n}")
               for k, n in enumerate(lengths)]
    store = TokenStore(records, Numbered(), seq_len)
    if partial_masks:  # like assistant answers: loss on some tokens only
        store.loss_mask[:] = np.random.RandomState(0).rand(store.loss_mask.size) > 0.4
    return store


def _none(**kw):
    return DataSection(**{"packing": "none", "seq_len": 64, "min_bucket": 8, "global_batch": 4, **kw})


LENGTHS = [int(n) for n in np.random.RandomState(1).randint(3, 65, 37)]


def test_one_example_per_row_in_length_buckets():
    store = _store(LENGTHS)
    data = _none(grad_accum=2, epochs=2, seed=3)
    assert data.buckets() == [8, 16, 32, 64]
    batches = list(bucketed_batches(store, data, rows=range(2)))
    plan = BucketPlan(store.lengths, data)
    assert len(batches) == len(plan) == count_batches(store, data, range(2)) > 2 * 37 // 4
    seen, fillers = [], 0
    for batch in batches:
        length = batch.tokens.shape[2]
        assert batch.tokens.shape == (2, 2, length) and length in data.buckets()
        for a in range(2):
            for r in range(2):
                seg, tok = batch.segment_ids[a, r], batch.tokens[a, r]
                n = int((seg == 1).sum())
                assert (seg == np.r_[np.ones(n), np.zeros(length - n)]).all()  # one segment, then padding
                assert (batch.loss_mask[a, r][n:] == 0).all() and (batch.positions[a, r][:n] == np.arange(n)).all()
                if n == 0:
                    fillers += 1
                    assert not tok.any() and not batch.loss_mask[a, r].any()
                    continue
                k = int(tok[0]) - 1  # the example, whole and in order
                np.testing.assert_array_equal(tok[:n], store[k]["tokens"])
                assert length == min(b for b in data.buckets() if b >= n)  # the shortest bucket that holds it
                seen.append(k)
    assert sorted(seen) == sorted(list(range(37)) * 2)  # every example once per epoch, none dropped
    assert fillers == plan.filler_rows == plan.summary()["filler_rows"] and plan.partial_batches <= 4
    assert len({b.tokens.shape[2] for b in batches}) == 4
    # two processes holding rows 0 and 1 read halves of the same global batches
    halves = [list(bucketed_batches(store, data, rows=range(i, i + 1))) for i in range(2)]
    for whole, one, two in zip(batches, *halves):
        for x, y, z in zip(whole, one, two):
            np.testing.assert_array_equal(x, np.concatenate([y, z], axis=1))
    # the trainer's entry point dispatches on data.packing; another seed, another order
    assert len(list(training_batches(store, data, range(2)))) == len(batches)
    other = list(bucketed_batches(store, _none(grad_accum=2, epochs=2, seed=4), rows=range(2)))
    assert any(a.tokens.shape != b.tokens.shape or (a.tokens != b.tokens).any() for a, b in zip(batches, other))


def test_bucketed_iterator_resumes_exactly():
    store = _store(LENGTHS)
    data = _none(epochs=3, seed=7)
    assert_resumes_with_the_next_batches(lambda: bucketed_batches(store, data, rows=range(4)))


def _record(kind, i, **body):
    return Record(id=f"{kind}{i}", source="s", kind=kind, language="en", provenance={}, **body)


def _chat(kind, i, question, answer):
    return _record(kind, i, messages=[{"role": "user", "content": question}, {"role": "assistant", "content": answer}])


def test_kinds_select_records_and_loss_on_all_covers_every_token():
    tokenizer = embedded_tokenizer()
    passage = _record("passage", 0, text="Metformin lowers hepatic glucose output.")
    qa = _chat("qa", 0, "What does insulin do?", "It lowers blood glucose.")
    mcq = _chat("mcq", 0, "Which is a biguanide? A. metformin B. insulin", "A")
    dialogue = _chat("dialogue", 0, "I feel dizzy after my dose.", "Check your glucose now.")
    records = [passage, qa, mcq, dialogue]

    store = TokenStore(records, tokenizer, 256, kinds=["passage", "qa"])
    assert (store.stats.examples, store.stats.skipped_kind) == (2, 2)
    assert store.stats.by_kind == {"passage": 1, "qa": 1}
    assert TokenStore(records, tokenizer, 256).stats.by_kind == {"dialogue": 1, "mcq": 1, "passage": 1, "qa": 1}

    # assistant: a chat record trains on its answer only; all: on the whole rendered conversation
    ids, mask = encode_record(tokenizer, qa)
    all_ids, all_mask = encode_record(tokenizer, qa, loss_on="all")
    np.testing.assert_array_equal(ids, all_ids)
    assert 0 < mask.sum() < len(ids) and all_mask.all()
    rendered = tokenizer.decode(ids[mask.astype(bool)])
    assert rendered.startswith("It lowers blood glucose.") and "insulin" not in rendered
    # a passage is pretraining text (its tokens, then <|endoftext|>) with loss on every token either way
    for loss_on in ("assistant", "all"):
        p_ids, p_mask = encode_record(tokenizer, passage, loss_on=loss_on)
        assert p_mask.all() and p_ids[-1] == 151643
        assert tokenizer.decode(p_ids[:-1]) == passage.text
    everything = TokenStore(records, tokenizer, 256, loss_on="all")
    assert everything.stats.loss_tokens == everything.stats.tokens > store.stats.tokens

    data = load_config(TrainConfig, None, ["data.kinds=[qa, passage]", "data.loss_on=all"]).data
    assert (data.kinds, data.loss_on, data.packing) == (["qa", "passage"], "all", "first_fit")
    assert load_config(TrainConfig, None, ["data.pack=none"]).data.packing == "none"  # the deprecated name
    for overrides, message in [(["data.kinds=[qa, refined]"], "['refined'] are not record kinds"),
                               (["data.loss_on=answers"], "data.loss_on: 'answers' is not one of"),
                               (["data.packing=none", "data.pack=best_fit"], "contradicts packing='none'"),
                               (["data.min_bucket=0"], "data.min_bucket: must be positive")]:
        with pytest.raises(ConfigFileError, match=message.replace("[", r"\[").replace("]", r"\]")):
            load_config(TrainConfig, None, overrides)


def test_none_loss_is_the_token_mean_over_the_batch_examples(hf_checkpoints):
    """The step's loss on a packing-none batch (2 micro-batches, padding, filler rows) equals the cross-entropy
    of each example alone, from the model's full float32 logits, summed over loss tokens and divided by their
    count over the whole batch."""
    import jax.numpy as jnp
    from train_helpers import tiny_config

    from diabetica_jax import hf
    from diabetica_jax.model import forward
    from diabetica_jax.parallel import make_mesh
    from diabetica_jax.train.global_batch import BatchLayout, local_rows
    from diabetica_jax.train.setup import prepare
    from diabetica_jax.train.state import init_state
    from diabetica_jax.train.step import batch_sharding, make_train_step

    path = hf_checkpoints["qwen2_untied"]
    cfg = tiny_config(path, "data.packing=none", "data.seq_len=32", "data.min_bucket=16", "data.global_batch=4",
                      "data.grad_accum=2", "mesh.fsdp=1", "loop.loss_chunk=8")
    store = _store([5, 9, 14, 30, 7, 21, 12, 26, 3], seq_len=32, partial_masks=True)
    plan = BucketPlan(store.lengths, cfg.data)
    batches = list(bucketed_batches(store, cfg.data, range(2), plan))
    # a full batch of the 16-token bucket and its remainder, filled up with filler rows (one program for both)
    chosen = [0, 1]
    assert [plan[k][0] for k in chosen] == [16, 16] and (plan[0][1] >= 0).all() and (plan[1][1] < 0).sum() == 2

    # every example on its own row, right-padded: under causal attention its positions see only itself
    model, _ = hf.load(path, progress=False)
    alone = np.zeros((len(store), 32), np.int32)
    for k in range(len(store)):
        alone[k, :store.lengths[k]] = store[k]["tokens"]
    logits = np.asarray(forward(model, jnp.asarray(alone)), np.float64)
    top = logits.max(-1, keepdims=True)
    log_probs = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))

    def by_hand(examples):
        total, count = 0.0, 0
        for k in examples[examples >= 0]:
            tokens, mask = store[int(k)]["tokens"], store[int(k)]["loss_mask"]
            for t in range(1, len(tokens)):  # position t - 1 predicts token t
                if mask[t]:
                    total -= log_probs[k, t - 1, tokens[t]]
                    count += 1
        return total / count, count

    expected = [by_hand(plan[k][1]) for k in chosen]
    mesh = make_mesh(cfg.mesh.sizes())
    with jax.set_mesh(mesh):
        setup = prepare(cfg, mesh)
        sharding = batch_sharding(mesh)
        rows = local_rows(sharding, (2, 2, 32))
        step = make_train_step(setup.graphdef, setup.optimizer, setup.schedule, loss_chunk=8, dropout=False,
                               shardings=setup.shardings, frozen_shardings=setup.frozen_sharding,
                               batch_sharding=sharding)
        layout = BatchLayout(sharding, 2, 2, rows)
        params = jax.tree.map(jnp.copy, setup.params)
        for k, (loss, count) in zip(chosen, expected):
            state = init_state(jax.tree.map(jnp.copy, params), setup.optimizer, 0, setup.shardings)
            _, metrics = step(state, setup.frozen, layout(batches[k]))
            assert float(metrics["loss_tokens"]) == count
            assert float(metrics["loss"]) == pytest.approx(loss, rel=2e-5)


def _curated(directory):
    """A small curated directory: passages of mixed lengths for the Numbered tokenizer, and chat records that
    data.kinds: [passage] leaves out."""
    from diabetica_jax.curate.write import write_shards

    lengths = np.random.RandomState(2).randint(3, 65, 26)
    records = [_record("passage", k, text=f"{k}:{n}") for k, n in enumerate(lengths)]
    records += [_chat(kind, i, "Which lowers glucose? A. insulin B. glucagon", "A") for i, kind in
                enumerate(["mcq", "qa", "mcq"])]
    write_shards(directory, records, 2)
    return directory


@pytest.mark.slow
def test_none_training_compiles_once_per_bucket_counts_its_steps_and_resumes(hf_checkpoints, tmp_path, monkeypatch):
    from train_helpers import tiny_config

    from diabetica_jax.train import feed
    from diabetica_jax.train import step as step_module
    from diabetica_jax.train.loop import train

    traces = []
    original = step_module.next_token_targets

    def counting(tokens, *args):  # runs once per trace of the train step, never per step
        traces.append(tokens.shape)
        return original(tokens, *args)

    monkeypatch.setattr(step_module, "next_token_targets", counting)
    monkeypatch.setattr(feed, "load_tokenizer", lambda path: Numbered())  # ids that fit the tiny vocabulary
    curated = _curated(tmp_path / "curated")
    cfg = tiny_config(hf_checkpoints["qwen2_untied"], "data.source=curated", f"data.path={curated}",
                      "data.packing=none", "data.seq_len=64", "data.min_bucket=32", "data.global_batch=4",
                      "data.kinds=[passage]", "mesh.fsdp=2", "loop.steps=-1", "loop.loss_chunk=32",
                      "optim.lr=3e-3")
    whole = train(cfg, tmp_path / "whole", progress=False)
    stats = json.loads((tmp_path / "whole" / "data_stats.json").read_text())
    assert stats["examples"] == 26 and stats["skipped_kind"] == 3 and stats["by_kind"] == {"passage": 26}
    buckets = stats["buckets"]
    # loop.steps -1: the plan's batches, the remainder of the 32-token bucket filled up with two filler rows
    assert whole.final_step == buckets["batches"] == 7 and not whole.data_exhausted
    assert buckets == {"batches": 7, "batches_per_bucket": {"32": 3, "64": 4}, "partial_batches": 1, "filler_rows": 2}
    # two programs, one per bucket, for seven steps
    assert whole.batch_shapes == [(1, 4, 32), (1, 4, 64)] and len(traces) == 2
    losses = [h["loss"] for h in whole.history]
    assert np.isfinite(losses).all() and [h["step"] for h in whole.history] == list(range(1, 8))

    # resumed from the step-3 checkpoint: the next batches, the same losses (bit for bit on the same mesh)
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "whole", resumed)
    for later in (6, 7):
        shutil.rmtree(resumed / "checkpoints" / str(later))
    (resumed / "metrics.jsonl").write_text("")
    rest = train(cfg, resumed, progress=False)
    assert rest.final_step == 7 and [h["step"] for h in rest.history] == [4, 5, 6, 7]
    assert [h["loss"] for h in rest.history] == losses[3:]
