"""The token store (tokenized once per shards and tokenizer, memory-mapped), the packing plan, and resuming the
data iterator on another number of processes."""

import dataclasses
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from store_checks import assert_same_token_store
from train_helpers import Numbered

from diabetica_jax.curate.write import write_shards
from diabetica_jax.data.chat import EmptyLossMask, UnsupportedTemplate, encode_record
from diabetica_jax.data.config import DataSection
from diabetica_jax.data.loader import (
    FrozenIteratorState,
    PackPlan,
    TokenStore,
    count_batches,
    packed_batches,
    read_records,
    training_batches,
)
from diabetica_jax.data.records import Record
from diabetica_jax.data.token_store import (
    TokenCorpus,
    build_token_store,
    open_token_store,
    tokenizer_fingerprint,
)
from diabetica_jax.hf.tokenizer import embedded_tokenizer

CHAT_TEMPLATES = Path(__file__).parents[1] / "templates"


@pytest.fixture(scope="module")
def tokenizer():
    return embedded_tokenizer()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The embedded demo corpus, curated."""
    from diabetica_jax.curate.config import load_curate_config
    from diabetica_jax.curate.pipeline import curate

    out = tmp_path_factory.mktemp("demo") / "curated"
    curate(load_curate_config(None), out, progress=False)
    return out


def _reference(records, tokenizer, seq_len, overlong="truncate", kinds=(), loss_on="assistant"):
    """What the loader did before the token store, record by record: (stats as a dict, [(tokens, mask)])."""
    stats = dict(examples=0, truncated=0, dropped_overlong=0, dropped_empty_mask=0, skipped_kind=0, tokens=0,
                 loss_tokens=0, by_kind={})
    items = []
    for record in records:
        if kinds and record.kind not in kinds:
            stats["skipped_kind"] += 1
            continue
        try:
            ids, mask = encode_record(tokenizer, record, loss_on)
        except EmptyLossMask:
            stats["dropped_empty_mask"] += 1
            continue
        if len(ids) > seq_len:
            if overlong == "drop":
                stats["dropped_overlong"] += 1
                continue
            ids, mask = ids[:seq_len], mask[:seq_len]
            if not mask.any():
                stats["dropped_overlong"] += 1
                continue
            stats["truncated"] += 1
        items.append((ids, mask))
        stats["by_kind"][record.kind] = stats["by_kind"].get(record.kind, 0) + 1
    stats.update(examples=len(items), tokens=sum(len(i) for i, _ in items), loss_tokens=sum(int(m.sum()) for _, m in items))
    stats["by_kind"] = dict(sorted(stats["by_kind"].items()))
    return stats, items


def _same(view, stats, items):
    assert vars(view.stats) == stats
    assert len(view) == len(items) and list(view.lengths) == [len(i) for i, _ in items]
    for k, (ids, mask) in enumerate(items):
        np.testing.assert_array_equal(view[k]["tokens"], ids)
        np.testing.assert_array_equal(view[k]["loss_mask"], mask)
        assert view[k]["tokens"].dtype == view[k]["loss_mask"].dtype == np.int32


SELECTIONS = [dict(seq_len=512), dict(seq_len=64), dict(seq_len=64, overlong="drop", kinds=("qa", "passage")),
              dict(seq_len=48, loss_on="all"), dict(seq_len=80, kinds=("mcq", "dialogue"), loss_on="all")]


def test_the_store_holds_what_encode_record_gives_on_the_demo_set(demo, tokenizer, monkeypatch):
    records = read_records(demo)
    corpus = open_token_store(demo, tokenizer, progress=False)
    assert (demo / "tokens" / corpus.meta["key"] / "meta.json").is_file()
    assert corpus.meta["records"] == len(records) == len(corpus) and corpus.usable.all()
    for k, record in enumerate(records):  # tokens, assistant masks and lengths of every record
        ids, mask = encode_record(tokenizer, record)
        lo, hi = corpus.offsets[k], corpus.offsets[k + 1]
        np.testing.assert_array_equal(corpus.tokens[lo:hi], ids)
        np.testing.assert_array_equal(corpus.loss_mask[lo:hi], mask)
    assert corpus.meta["tokens"] == int(corpus.lengths.sum()) and corpus.meta["max_token"] == int(corpus.tokens.max())
    assert {r.kind for r in records} >= {"passage", "qa", "mcq", "dialogue"}
    for selection in SELECTIONS:  # kinds, truncate / drop, loss_on all: stats and examples as before
        stats, items = _reference(records, tokenizer, **selection)
        choices = {k: v for k, v in selection.items() if k != "seq_len"}
        _same(corpus.select(selection["seq_len"], **choices), stats, items)
        _same(TokenStore(records, tokenizer, selection["seq_len"], **choices), stats, items)  # in memory: the same
    assert any(_reference(records, tokenizer, **s)[0]["truncated"] for s in SELECTIONS)
    assert any(_reference(records, tokenizer, **s)[0]["dropped_overlong"] for s in SELECTIONS)
    view = corpus.select(64)
    assert view.max_token == max(int(view[k]["tokens"].max()) for k in range(len(view)))

    # opened again: mapped, not rebuilt
    import diabetica_jax.data.token_store as token_store

    monkeypatch.setattr(token_store, "_build", lambda *a: pytest.fail("rebuilt a valid store"))
    again = open_token_store(demo, embedded_tokenizer())
    assert again.meta["key"] == corpus.meta["key"] and isinstance(again.tokens, np.memmap)


def _chat(i, messages, kind="dialogue"):
    return Record(id=f"r{i}", source="s", kind=kind, language="en", provenance={}, messages=messages)


def test_underivable_masks_and_templates_that_are_not_chatml(tmp_path):
    qwen3 = embedded_tokenizer()
    qwen3.chat_template = (CHAT_TEMPLATES / "qwen3.jinja").read_text(encoding="utf-8")
    records = [
        _chat(0, [{"role": "user", "content": "What is HbA1c?"}, {"role": "assistant", "content": "Average glucose."}]),
        # Qwen3 moves the reasoning out of the content: the mask cannot be placed (LossMaskError)
        _chat(1, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<think>greet</think>\n\nHello!"}]),
        _chat(2, [{"role": "user", "content": "No answer here."}], kind="qa"),  # no assistant turn: empty mask
        Record(id="p", source="s", kind="passage", language="en", provenance={}, text="Metformin lowers glucose."),
    ]
    write_shards(tmp_path, records, 2)
    corpus = open_token_store(tmp_path, qwen3, progress=False)
    assert corpus.usable.tolist() == [True, False, False, True]
    for loss_on in ("assistant", "all"):
        stats, items = _reference(records, qwen3, 256, loss_on=loss_on)
        _same(corpus.select(256, loss_on=loss_on), stats, items)
    assert corpus.select(256).stats.dropped_empty_mask == 2
    everything = corpus.select(256, loss_on="all")  # the unusable records train on all their tokens
    assert everything.stats.examples == 4 and everything[1]["loss_mask"].all()

    llama = embedded_tokenizer()  # a template without ChatML turns: assistant masks are refused up front
    llama.chat_template = ("{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
                           "{{ m['content'] }}<|eot_id|>{% endfor %}")
    corpus = open_token_store(tmp_path, llama, progress=False)
    with pytest.raises(UnsupportedTemplate, match="ChatML"):
        corpus.select(256)
    assert corpus.select(256, kinds=["passage"]).stats.examples == 1  # no chat record selected: nothing to refuse
    stats, items = _reference(records, llama, 256, loss_on="all")
    _same(corpus.select(256, loss_on="all"), stats, items)
    assert len(list((tmp_path / "tokens").glob("[0-9a-f]*"))) == 2  # one store per tokenizer


def test_stale_stores_are_rebuilt_and_half_written_ones_never_read(tmp_path, tokenizer):
    def passages(*texts):
        return [Record(id=str(i), source="s", kind="passage", language="en", provenance={}, text=t)
                for i, t in enumerate(texts)]

    write_shards(tmp_path, passages("Insulin lowers glucose.", "Metformin first."), 1)
    first = open_token_store(tmp_path, tokenizer, progress=False)
    old_key = first.meta["key"]
    # curation rewrites the shards: another key, the old store goes
    write_shards(tmp_path, passages("Check feet daily.", "HbA1c every three months.", "Walk after meals."), 1)
    second = open_token_store(tmp_path, tokenizer, progress=False)
    assert second.meta["key"] != old_key and not (tmp_path / "tokens" / old_key).exists()
    assert len(second) == 3
    np.testing.assert_array_equal(second.select(64)[2]["tokens"], encode_record(tokenizer, read_records(tmp_path)[2])[0])
    # another tokenizer (a changed chat template) is another store; the fingerprint sees the template
    other = embedded_tokenizer()
    other.chat_template = other.chat_template.replace("helpful assistant", "diabetes educator")
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tokenizer)
    assert open_token_store(tmp_path, other, progress=False).meta["key"] != second.meta["key"]
    # a killed writer leaves a temporary directory: never read, cleaned up by the next build
    key = second.meta["key"]
    shutil.rmtree(tmp_path / "tokens" / key)
    (tmp_path / "tokens" / f".tmp-{key}-123-abcd").mkdir()
    (tmp_path / "tokens" / f".tmp-{key}-123-abcd" / "tokens").write_bytes(b"\0" * 3)
    with pytest.raises(FileNotFoundError, match="no token store"):
        open_token_store(tmp_path, tokenizer, build=False)
    rebuilt = open_token_store(tmp_path, tokenizer, progress=False)
    assert rebuilt.meta["key"] == key and not list((tmp_path / "tokens").glob(".tmp-*"))


def test_worker_processes_build_the_same_store(demo, tokenizer, tmp_path):
    copy = tmp_path / "curated"
    shutil.copytree(demo / "shards", copy / "shards", copy_function=shutil.copy2)  # same mtimes: same key
    single = open_token_store(demo, tokenizer, progress=False)
    parallel = build_token_store(copy, tokenizer, workers=2, chunk=40, progress=False)
    assert parallel.meta["built_seconds"] > 0
    assert_same_token_store(copy, parallel, demo, single)


def _numbered(lengths, seq_len=64):
    records = [Record(id=str(k), source="s", kind="passage", language="en", provenance={}, text=f"{k}:{n}")
               for k, n in enumerate(lengths)]
    return TokenStore(records, Numbered(), seq_len)


LENGTHS = [int(n) for n in np.random.RandomState(5).randint(3, 65, 61)]


@pytest.mark.parametrize("packing", ["first_fit", "best_fit"])
def test_the_packing_plan_takes_every_example_once_per_epoch(packing, tmp_path, monkeypatch):
    store = _numbered(LENGTHS)
    data = DataSection(packing=packing, seq_len=64, global_batch=4, grad_accum=2, epochs=3, packing_bins=4, seed=2)
    plan = PackPlan(store.lengths, data, tmp_path)
    row_tokens = np.add.reduceat(store.lengths[plan.row_examples], plan.row_offsets[:-1])
    assert row_tokens.max() <= 64 and plan.tokens == 3 * store.lengths.sum()
    assert len(plan.epoch_rows) == 4 and plan.epoch_rows[-1] == plan.rows
    for epoch in range(3):  # rows never mix epochs; each epoch holds every example once
        rows = slice(plan.row_offsets[plan.epoch_rows[epoch]], plan.row_offsets[plan.epoch_rows[epoch + 1]])
        assert sorted(plan.row_examples[rows].tolist()) == list(range(len(LENGTHS)))
    assert plan.summary()["fill"] > 0.85 and plan.filler_rows == -plan.rows % 4

    # the batches: 2 micro-batches of 2 rows; a process with rows 0-1 and one with row 2-3 read halves of them
    whole = list(packed_batches(store, data, range(2), plan))
    assert len(whole) == len(plan) == count_batches(store, data) == len(list(training_batches(store, data, range(2))))
    halves = [list(packed_batches(store, data, range(i, i + 1), plan)) for i in range(2)]
    seen, fillers = [], 0
    for batch, one, two in zip(whole, *halves):
        for x, y, z in zip(batch, one, two):
            np.testing.assert_array_equal(x, np.concatenate([y, z], axis=1))
        for a in range(2):
            for r in range(2):
                seg, tok, pos = batch.segment_ids[a, r], batch.tokens[a, r], batch.positions[a, r]
                fillers += not seg.any()
                for s in range(1, seg.max() + 1):
                    span = np.flatnonzero(seg == s)
                    assert span[0] == 0 or seg[span[0] - 1] == s - 1  # documents one after another
                    k = int(tok[span[0]]) - 1
                    np.testing.assert_array_equal(tok[span], store[k]["tokens"])
                    assert (pos[span] == np.arange(len(span))).all()
                    seen.append(k)
                assert not batch.loss_mask[a, r][seg == 0].any()
    assert sorted(seen) == sorted(list(range(len(LENGTHS))) * 3) and fillers == plan.filler_rows

    # cached beside the store: a restart loads it instead of packing again
    assert len(list(tmp_path.glob("pack-*.npz"))) == 1
    monkeypatch.setattr("diabetica_jax.data.loader._pack", lambda *a: pytest.fail("packed again"))
    again = PackPlan(store.lengths, data, tmp_path)
    for a, b in zip((again.row_offsets, again.row_examples, again.epoch_rows),
                    (plan.row_offsets, plan.row_examples, plan.epoch_rows)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(pytest.fail.Exception, match="packed again"):  # another seed is another plan
        PackPlan(store.lengths, dataclasses.replace(data, seed=3), tmp_path)


def test_the_store_feeds_the_same_batches_as_tokenizing_in_memory(demo, tokenizer):
    view = open_token_store(demo, tokenizer, progress=False).select(256, kinds=["qa", "passage", "mcq"])
    memory = TokenStore(read_records(demo), tokenizer, 256, kinds=["qa", "passage", "mcq"])
    for data in (DataSection(seq_len=256, global_batch=4, grad_accum=2, epochs=2),
                 DataSection(packing="none", seq_len=256, min_bucket=64, global_batch=4, epochs=2)):
        ours, theirs = list(training_batches(view, data, range(1, 2))), list(training_batches(memory, data, range(1, 2)))
        assert len(ours) == len(theirs) > 5
        for a, b in zip(ours, theirs):
            for x, y in zip(a, b):
                np.testing.assert_array_equal(x, y)


def test_grain_workers_read_the_memory_mapped_store(demo, tokenizer):
    view = open_token_store(demo, tokenizer, progress=False).select(256)
    data = DataSection(seq_len=256, global_batch=4)
    inline = list(packed_batches(view, data, range(4)))
    workers = list(packed_batches(view, DataSection(seq_len=256, global_batch=4, workers=1), range(4)))
    assert len(workers) == len(inline)
    for a, b in zip(workers, inline):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


def _save(checkpoints, step, iterator):
    import jax.numpy as jnp

    from diabetica_jax.train.state import TrainState

    state = TrainState(step=jnp.int32(step), params={"w": jnp.zeros(3)}, opt_state={"m": jnp.zeros(3)},
                       rng=jnp.zeros(2, jnp.uint32))
    checkpoints.save(step, state, {"model": None}, iterator)
    checkpoints.wait()


def test_the_iterator_restores_onto_another_number_of_processes(tmp_path, monkeypatch):
    from diabetica_jax.train.checkpoint import CheckpointError, Checkpoints

    store = _numbered(LENGTHS)
    data = DataSection(seq_len=64, global_batch=4, epochs=2, seed=1)
    reference = list(packed_batches(store, data, range(4)))  # one process: all 4 rows
    halves = [iter(packed_batches(store, data, range(2 * i, 2 * i + 2))) for i in range(2)]
    for _ in range(3):
        for half in halves:
            next(half)

    # 2 -> 1: two processes saved their (equal) states, one file each; one process resumes with all rows
    checkpoints = Checkpoints(tmp_path / "two", async_save=False)
    _save(checkpoints, 3, halves[0])
    checkpoints.close()
    saved = tmp_path / "two" / "3" / "data"
    (saved / "process_0-of-1.json").rename(saved / "process_0-of-2.json")
    (saved / "process_1-of-2.json").write_text(FrozenIteratorState(halves[1].get_state()).get_state().decode())
    one = iter(packed_batches(store, data, range(4)))
    checkpoints.restore_data(3, one)
    rest = list(one)
    assert len(rest) == len(reference) - 3
    for a, b in zip(rest, reference[3:]):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)

    # 1 -> 2: one process saved; the second of two processes resumes with rows 2-3 of the next batches
    single = iter(packed_batches(store, data, range(4)))
    for _ in range(4):
        next(single)
    checkpoints = Checkpoints(tmp_path / "one", async_save=False)
    _save(checkpoints, 4, single)
    checkpoints.close()  # what follows reads the files, as a process of another count would
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    second = iter(packed_batches(store, data, range(2, 4)))
    checkpoints.restore_data(4, second)
    rest = list(second)
    assert len(rest) == len(reference) - 4
    for a, b in zip(rest, reference[4:]):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y[:, 2:4])

    # states that differ between processes cannot be moved
    saved = tmp_path / "one" / "4" / "data"
    (saved / "process_0-of-1.json").unlink()
    for i, index in enumerate((1, 2)):
        (saved / f"process_{i}-of-3.json").write_text(json.dumps({"next_index": index}))
    with pytest.raises(CheckpointError, match="differ"):
        checkpoints.restore_data(4, iter(packed_batches(store, data, range(2, 4))))


@pytest.mark.slow
def test_training_on_the_store_equals_training_on_records_tokenized_in_memory(hf_checkpoints, tmp_path, monkeypatch):
    from train_helpers import tiny_config

    from diabetica_jax.train import feed
    from diabetica_jax.train.loop import train

    monkeypatch.setattr(feed, "load_tokenizer", lambda path: Numbered())  # ids that fit the tiny vocabulary
    write_shards(tmp_path / "curated", [Record(id=str(k), source="s", kind="passage", language="en", provenance={},
                                               text=f"{k}:{n}") for k, n in enumerate(LENGTHS)], 3)
    cfg = tiny_config(hf_checkpoints["qwen2_untied"], "data.source=curated", f"data.path={tmp_path / 'curated'}",
                      "data.seq_len=64", "data.global_batch=4", "mesh.fsdp=2", "loop.steps=-1", "loop.loss_chunk=32")
    stored = train(cfg, tmp_path / "stored", progress=False)
    stats = json.loads((tmp_path / "stored" / "data_stats.json").read_text())
    assert stats["examples"] == 61 and stats["packing"]["batches"] == stored.final_step > 5
    assert list((tmp_path / "curated" / "tokens").glob("*/plans/pack-*.npz"))  # the plan, cached by count_steps

    monkeypatch.setattr(feed, "_token_store", lambda cfg: TokenStore(read_records(cfg.data.path), Numbered(), 64))
    memory = train(cfg, tmp_path / "memory", progress=False)
    assert [h["loss"] for h in memory.history] == [h["loss"] for h in stored.history]
    assert np.isfinite([h["loss"] for h in stored.history]).all()


def test_a_corpus_travels_to_worker_processes_by_path(demo, tokenizer):
    import pickle

    corpus = open_token_store(demo, tokenizer, progress=False)
    blob = pickle.dumps(corpus)
    assert len(blob) < corpus.tokens.nbytes / 4  # not a copy of the tokens
    back = pickle.loads(blob)
    assert isinstance(back, TokenCorpus) and isinstance(back.tokens, np.memmap)
    np.testing.assert_array_equal(back.tokens[:50], corpus.tokens[:50])


def _byte_tokenizer_checkpoint(hf_path, target):
    """The tiny checkpoint with a byte-level ChatML tokenizer of 259 ids saved beside it, so curated chat records
    fit its vocabulary of 512 and subprocesses load the tokenizer from the checkpoint, as with a real model."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from diabetica_jax.hf.tokenizer import CHATML_TEMPLATE

    shutil.copytree(hf_path, target)
    backend = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))},
                                   merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                            chat_template=CHATML_TEMPLATE).save_pretrained(target)
    return target


@pytest.mark.slow
def test_a_run_saved_by_two_processes_resumes_on_one_and_the_other_way(hf_checkpoints, tmp_path):
    from train_helpers import finish_processes, losses, run_cli, start_processes, train_command, write_config

    from diabetica_jax.configuration import load_config
    from diabetica_jax.train.config import TrainConfig
    from diabetica_jax.train.loop import train

    checkpoint = _byte_tokenizer_checkpoint(hf_checkpoints["qwen2_untied"], tmp_path / "model")
    rng = np.random.RandomState(0)
    records = [_chat(i, [{"role": "user", "content": f"Question {i}: what lowers glucose?"},
                         {"role": "assistant", "content": "Insulin. " * int(rng.randint(1, 6))}], kind="qa")
               for i in range(40)]
    write_shards(tmp_path / "curated", records, 2)
    config = write_config(checkpoint, tmp_path / "train.yaml", mesh={"fsdp": 4, "tensor": 2},
                          data={"source": "curated", "path": str(tmp_path / "curated"), "seq_len": 128,
                                "global_batch": 8, "epochs": 2},
                          loop={"steps": 4, "checkpoint_every": 2, "loss_chunk": 32})
    reference = train(load_config(TrainConfig, str(config), []), tmp_path / "reference", progress=False)
    expected = {h["step"]: h["loss"] for h in reference.history}
    assert len(expected) == 4

    def check(procs):
        for p, (_, err) in zip(procs, finish_processes(procs)):
            assert p.returncode == 0, err[-3000:]

    # two processes stop at step 2 (one state file each); one process goes on from there
    check(start_processes(config, tmp_path / "two", "--stop-after", "2"))
    saved = sorted(p.name for p in (tmp_path / "two" / "checkpoints" / "2" / "data").glob("process_*"))
    assert saved == ["process_0-of-2.json", "process_1-of-2.json"]
    one = run_cli(train_command(config, tmp_path / "two"), devices=8)
    assert one.returncode == 0, one.stderr[-3000:]
    # one process stopped at step 2, two go on
    grown = tmp_path / "grown"
    shutil.copytree(tmp_path / "reference", grown)
    shutil.rmtree(grown / "checkpoints" / "4")
    (grown / "metrics.jsonl").write_text("")
    check(start_processes(config, grown))
    for run in (tmp_path / "two", grown):
        got = losses(run)
        assert sorted(got)[-2:] == [3, 4]
        np.testing.assert_allclose([got[3], got[4]], [expected[3], expected[4]], rtol=1e-5)
