"""Empty loss masks, packing, and resumable Grain iteration (template loss masks: test_chat_templates.py; the
token store and the packing plan: test_token_store.py)."""

import numpy as np
import pytest
from train_helpers import assert_resumes_with_the_next_batches

from diabetica_jax.configuration import load_config
from diabetica_jax.data.chat import EmptyLossMask, encode_messages, encode_record
from diabetica_jax.data.loader import PackPlan, TokenStore, packed_batches, read_records, training_batches
from diabetica_jax.data.records import Record
from diabetica_jax.hf.tokenizer import embedded_tokenizer
from diabetica_jax.train.config import DataSection, TrainConfig


@pytest.fixture(scope="module")
def tokenizer():
    return embedded_tokenizer()


def test_empty_mask_is_an_error_and_passages_train_on_everything(tokenizer):
    with pytest.raises(EmptyLossMask, match="record r1"):
        encode_messages(tokenizer, [{"role": "user", "content": "hello"}], "r1")
    passage = Record(id="p", source="s", kind="passage", language="en", provenance={}, text="Insulin lowers glucose.")
    ids, mask = encode_record(tokenizer, passage)
    assert mask.all() and ids[-1] == 151643


def _store(lengths, seq_len=16, overlong="truncate"):
    class Direct:  # a tokenizer stand-in: record text is the token count
        unk_token_id = eos_token_id = None

        def convert_tokens_to_ids(self, token):
            return 0

        def encode(self, text, add_special_tokens=False):
            n = int(text)
            return list(range(100 * n, 100 * n + n - 1))

    records = [Record(id=str(i), source="s", kind="passage", language="en", provenance={}, text=str(n))
               for i, n in enumerate(lengths)]
    return TokenStore(records, Direct(), seq_len, overlong)


def test_packing_segments_positions_and_overlong_counts():
    store = _store([5, 9, 3, 20, 7, 4, 6])
    assert store.stats.truncated == 1 and store.stats.examples == 7
    assert _store([5, 20, 30], overlong="drop").stats.dropped_overlong == 2
    batches = list(packed_batches(store, DataSection(seq_len=16, packing_bins=2, global_batch=2), rows=range(2)))
    seen = []
    for batch in batches:
        assert batch.tokens.shape == (1, 2, 16)
        for row in range(2):
            seg, pos, tok = batch.segment_ids[0, row], batch.positions[0, row], batch.tokens[0, row]
            for s in set(seg.tolist()) - {0}:
                span = np.flatnonzero(seg == s)
                assert (pos[span] == np.arange(len(span))).all()  # positions restart per document
                assert (np.diff(tok[span][:-1]) == 1).all()  # a document's tokens stay together, in order
                seen.append(len(span))
            assert (batch.loss_mask[0, row][seg == 0] == 0).all()  # padding has no loss
    assert sorted(seen) == sorted(store.lengths.tolist())  # every document once, the over-long one truncated
    assert sorted(seen)[:3] == [3, 4, 5] and sum(seen) == store.stats.tokens


def test_packed_loss_equals_unpacked_losses(hf_checkpoints, tokenizer):
    """Attention never crosses documents: a packed row's loss is the sum of its documents' losses alone."""
    import jax.numpy as jnp

    from diabetica_jax import hf
    from diabetica_jax.train.loss import chunked_cross_entropy, next_token_targets

    model, _ = hf.load(hf_checkpoints["qwen2_untied"], progress=False)
    rng = np.random.RandomState(0)
    docs = [(rng.randint(0, 512, n).astype(np.int32), (rng.rand(n) > 0.3).astype(np.int32)) for n in (9, 14, 6)]

    def loss(tokens, mask, segments, positions):
        hidden = model.hidden_states(jnp.asarray(tokens)[None], jnp.asarray(positions)[None], jnp.asarray(segments)[None])
        targets, weights = next_token_targets(jnp.asarray(tokens)[None], jnp.asarray(mask)[None], jnp.asarray(segments)[None])
        return float(chunked_cross_entropy(hidden, model.output_kernel(), targets, weights, 8)[0])

    alone = sum(loss(t, m, np.ones_like(t), np.arange(len(t))) for t, m in docs)
    tokens = np.concatenate([t for t, _ in docs] + [np.zeros(3, np.int32)])
    masks = np.concatenate([m for _, m in docs] + [np.zeros(3, np.int32)])
    segments = np.concatenate([np.full(len(t), i + 1) for i, (t, _) in enumerate(docs)] + [np.zeros(3, np.int64)])
    positions = np.concatenate([np.arange(len(t)) for t, _ in docs] + [np.zeros(3, np.int64)])
    assert loss(tokens, masks, segments, positions) == pytest.approx(alone, rel=1e-5)


def test_iterator_state_resumes_exactly_and_processes_get_disjoint_data():
    store = _store(list(range(3, 40)) * 3)
    data = DataSection(seq_len=32, grad_accum=2, epochs=2, seed=7)
    # rows 0-1 of each micro-batch of 4 rows
    assert_resumes_with_the_next_batches(lambda: packed_batches(store, data, rows=range(2)))
    unique = _store(list(range(3, 30)))  # every document distinct
    shards = [{int(t) for b in packed_batches(unique, DataSection(seq_len=32, global_batch=2), range(i, i + 1))
               for t in b.tokens[b.segment_ids > 0].ravel()} - {0} for i in range(2)]
    everything = {int(t) for k in range(len(unique)) for t in unique[k]["tokens"]} - {0}
    assert shards[0] and shards[1] and not shards[0] & shards[1] and shards[0] | shards[1] == everything


@pytest.mark.slow
def test_training_on_curated_data_resumes_with_the_next_batches(tmp_path):
    from train_helpers import curated_training

    from diabetica_jax.train.loop import train

    settings = curated_training(tmp_path, "data.seq_len=128", "data.global_batch=4", "loop.loss_chunk=16",
                                "loop.steps=5", "loop.checkpoint_every=2", "optim.lr=3e-3")
    cfg = load_config(TrainConfig, None, settings)
    whole = train(cfg, tmp_path / "whole", progress=False)
    first = train(cfg, tmp_path / "split", progress=False, stop_after=2)
    rest = train(cfg, tmp_path / "split", progress=False)
    assert first.final_step == 2 and rest.final_step == 5
    losses = [h["loss"] for h in whole.history]
    assert [h["loss"] for h in first.history + rest.history] == losses and np.isfinite(losses).all()
    assert '"examples": 159' in (tmp_path / "whole" / "data_stats.json").read_text()


def test_tokens_outside_the_model_vocabulary_are_refused(hf_checkpoints, tmp_path):
    from train_helpers import tiny_config

    from diabetica_jax.configuration import ConfigFileError
    from diabetica_jax.curate.config import load_curate_config
    from diabetica_jax.curate.pipeline import curate
    from diabetica_jax.train.loop import train

    curate(load_curate_config(None), tmp_path / "curated", progress=False)
    cfg = tiny_config(hf_checkpoints["qwen2_untied"], "data.source=curated", f"data.path={tmp_path / 'curated'}")
    with pytest.raises(ConfigFileError, match="vocabulary of 512"):
        train(cfg, tmp_path / "run", progress=False)


def test_steps_from_the_data(tmp_path):
    from diabetica_jax.configuration import ConfigFileError
    from diabetica_jax.curate.config import load_curate_config
    from diabetica_jax.curate.pipeline import curate
    from diabetica_jax.train.feed import count_steps

    with pytest.raises(ConfigFileError, match="needs data.source: curated"):
        load_config(TrainConfig, None, ["loop.steps=-1"])
    curate(load_curate_config(None), tmp_path, progress=False)
    cfg = load_config(TrainConfig, None, ["loop.steps=-1", "data.source=curated", f"data.path={tmp_path}",
                                   "data.seq_len=256", "data.global_batch=4", "data.epochs=2"])
    steps = count_steps(cfg, range(4))
    store = TokenStore(read_records(tmp_path), embedded_tokenizer(), 256)
    data = DataSection(seq_len=256, epochs=2, global_batch=4)
    plan = PackPlan(store.lengths, data)
    # every row of the two epochs in a batch, the last batch filled up with filler rows
    assert steps == len(plan) == -(-plan.rows // 4) and steps > 10
    assert sum(1 for _ in training_batches(store, data, range(4))) == steps

