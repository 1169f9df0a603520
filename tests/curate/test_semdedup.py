"""Semantic dedup: the within-cluster search on known vectors, the jitted embedder, and the stage in the pipeline.

The pipeline tests embed with the tiny preset, whose weights are random: it scores lightly edited copies
(words swapped for synonyms, clauses exchanged) at 0.94-0.99 and distinct records below 0.5, but knows no
real paraphrase. The planted copies here are therefore edits that MinHash misses, not rewordings.
"""

import json
import math

import numpy as np
import pytest

from diabetica_jax.curate import semdedup
from diabetica_jax.curate.config import DedupSection, SemanticDedupSection, load_curate_config
from diabetica_jax.curate.filters import near_dedup
from diabetica_jax.curate.pipeline import curate
from diabetica_jax.data.records import Record

# ---- the search, on synthetic embeddings ---------------------------------------------------------------


def _arc(angles, dim=8):
    """Unit vectors in one plane at these angles (cosine between two = cos of the angle between them)."""
    x = np.zeros((len(angles), dim), np.float32)
    x[:, 0], x[:, 1] = np.cos(angles), np.sin(angles)
    return x


def test_greedy_keeps_the_first_and_judges_only_against_kept_records():
    step = math.acos(0.97)  # a, b, c on an arc: a.b = b.c = 0.97, a.c = cos(2 step) = 0.88
    x = _arc([0.0, step, 2 * step])
    by, sim = semdedup.greedy_within(x, 0.95)
    # b goes as a duplicate of a; c is close only to b, which is gone, so c stays
    assert by.tolist() == [-1, 0, -1] and sim[1] == pytest.approx(0.97, abs=1e-5) and np.isnan(sim[[0, 2]]).all()
    assert semdedup.greedy_within(x, 0.98)[0].tolist() == [-1, -1, -1]  # threshold above every pair
    by, sim = semdedup.greedy_within(x, 0.85)  # now a.c counts too, and the kept a claims both
    assert by.tolist() == [-1, 0, 0] and sim[2] == pytest.approx(math.cos(2 * step), abs=1e-5)
    # "at or above": an exact copy is dropped even at threshold 1
    assert semdedup.greedy_within(_arc([0.3, 0.3]), 1.0)[0].tolist() == [-1, 0]


def test_greedy_blocks_give_the_same_answer_as_one_block(monkeypatch):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)  # 4 dims: many pairs above 0.9
    whole = semdedup.greedy_within(x, 0.9)
    monkeypatch.setattr(semdedup, "PAIRWISE_BLOCK", 300 * 7)  # blocks of 7 rows
    blocked = semdedup.greedy_within(x, 0.9)
    assert np.array_equal(whole[0], blocked[0]) and np.allclose(whole[1], blocked[1], equal_nan=True)
    assert (whole[0] >= 0).sum() > 50 and (whole[0] < np.arange(300)).all()  # a record is only kept-for by earlier


def _planted(n=4000, copies=300, dim=32, seed=0):
    """n random unit vectors plus `copies` noisy copies (cosine ~0.99 to their original), all shuffled."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, dim))
    originals = rng.choice(n, copies, replace=False)
    noisy = base[originals] + 0.1 * rng.normal(size=(copies, dim))
    x = np.concatenate([base, noisy])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    order = rng.permutation(len(x))
    position = np.empty_like(order)
    position[order] = np.arange(len(x))
    pairs = [tuple(sorted((position[o], position[n + k]))) for k, o in enumerate(originals)]
    return x[order].astype(np.float32), pairs


def test_planted_near_duplicates_are_found_deterministically():
    x, pairs = _planted()
    kept_by, sim, stats = semdedup.dedup_embeddings(x, 0.95, seed=0)
    # the later of each pair goes, naming the earlier; nothing else goes; every record is accounted for once
    assert {int(i): int(kept_by[i]) for i in np.flatnonzero(kept_by >= 0)} == {late: early for early, late in pairs}
    assert (sim[kept_by >= 0] >= 0.95).all() and (kept_by < 0).sum() + (kept_by >= 0).sum() == len(x)
    assert stats["clusters"] >= round(math.sqrt(len(x))) and stats["pairs_compared"] < len(x) ** 2 / 20
    again = semdedup.dedup_embeddings(x, 0.95, seed=0)
    assert np.array_equal(again[0], kept_by) and again[2] == stats
    # another seed draws other cluster boundaries: a pair split between two clusters is missed (the price of
    # not comparing all pairs), never a wrong record dropped
    other = semdedup.dedup_embeddings(x, 0.95, seed=7)[0]
    found = {int(i): int(other[i]) for i in np.flatnonzero(other >= 0)}
    assert found.items() <= {late: early for early, late in pairs}.items() and len(found) >= 0.97 * len(pairs)


def test_partition_covers_every_record_once_and_splits_oversized_clusters():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    groups = semdedup.partition(x, clusters=1, max_cluster=100)  # one cluster of 1000: split again
    assert sorted(np.concatenate(groups).tolist()) == list(range(1000))
    assert max(len(g) for g in groups) <= 100 and all((np.diff(g) > 0).all() for g in groups)
    same = np.repeat(x[:1], 300, axis=0)  # identical points cannot be separated: one group, no endless splitting
    assert [len(g) for g in semdedup.partition(same, clusters=1, max_cluster=10)] == [300]
    assert semdedup.partition(x[:0]) == [] and [g.tolist() for g in semdedup.partition(x[:1])] == [[0]]


def test_bucket_lengths_are_powers_of_two():
    assert [semdedup.bucket_length(n, 128) for n in (1, 16, 17, 33, 64, 65, 128)] == [16, 16, 32, 64, 64, 128, 128]
    assert semdedup.bucket_length(90, 100) == 128 and semdedup.bucket_length(3, 8) == 16


# ---- the embedder and the stage, with the tiny model --------------------------------------------------

DISTINCT = [
    ("What is the first-line medicine for type 2 diabetes?",
     "Metformin is usually started first, together with diet changes and regular exercise, because it lowers glucose "
     "without weight gain and rarely causes hypoglycaemia on its own."),
    ("How often should HbA1c be measured?",
     "Check HbA1c every three months while treatment is being changed or targets are not met, and about twice a year "
     "once glucose control is stable."),
    ("What are the warning signs of hypoglycaemia?",
     "Shaking, sweating, hunger, a fast heartbeat and sudden confusion are typical; treat with fifteen grams of fast "
     "sugar and recheck the meter after fifteen minutes."),
    ("Can people with diabetes eat fruit?",
     "Yes. Whole fruit in sensible portions fits a healthy eating plan; juice raises blood glucose faster, so whole "
     "fruit is the better choice."),
    ("Why is foot care important in diabetes?",
     "Neuropathy hides small injuries and poor circulation slows healing, so daily inspection of the feet and proper "
     "footwear prevent ulcers and amputations."),
    ("How is gestational diabetes diagnosed?",
     "Most women have a 75 gram oral glucose tolerance test between 24 and 28 weeks of pregnancy, with fasting, one "
     "hour and two hour values compared against thresholds."),
    ("What should a patient do with insulin on a sick day?",
     "Keep taking basal insulin even when not eating, test glucose and ketones every few hours, drink fluids, and "
     "call the care team if ketones rise or vomiting continues."),
    ("How do SGLT2 inhibitors work?",
     "They block glucose reabsorption in the kidney so that extra glucose leaves in the urine; they also protect the "
     "heart and kidneys in many patients."),
    ("糖尿病患者如何监测血糖？",
     "建议在三餐前和睡前测量指尖血糖，并把结果记录下来，复诊时交给医生，以便调整胰岛素或口服药的剂量。"),
    ("妊娠糖尿病对孩子有什么影响？",
     "血糖控制不佳会使胎儿过大、新生儿低血糖的风险升高，孩子将来发生肥胖和2型糖尿病的可能也更大。"),
]
# (index of the original, its edited answer): synonyms swapped, clauses exchanged; MinHash Jaccard 0.13-0.5
EDITED = [
    (0, "Metformin is typically started first, together with diet changes and daily exercise, because it reduces "
        "glucose without weight gain and rarely causes hypoglycaemia on its own."),
    (1, "Check HbA1c about twice a year once glucose control is stable, and every three months while treatment is "
        "being changed or targets are not met."),
    (4, "Neuropathy hides minor injuries and poor blood flow slows healing, so daily checking of the feet and proper "
        "shoes prevent ulcers and amputations."),
    (8, "建议在睡前和三餐前测量指尖血糖，并把结果记录下来，复诊时交给医生，以便调整口服药或胰岛素的剂量。"),
]
THRESHOLD = 0.9  # the tiny model scores these edits 0.946-0.985 and the distinct records at most 0.46


def _records():
    rows = list(DISTINCT) + [(DISTINCT[i][0], answer) for i, answer in EDITED]
    return [Record(id=f"r{k:02d}", source="test", kind="qa", language="zh" if "糖" in q else "en",
                   provenance={"file": "test", "row": k},
                   messages=[{"role": "user", "content": q}, {"role": "assistant", "content": a}])
            for k, (q, a) in enumerate(rows)]


@pytest.fixture(scope="module")
def embedder():
    return semdedup.Embedder("tiny", max_tokens=64, batch_size=4)


def test_embeddings_mask_padding_and_compile_once_per_bucket(embedder):
    texts = [r.content() for r in _records()]  # 14 texts of 32 to 47 tokens: buckets 32 and 64, batches of 4
    before = semdedup.TRACES["embed"]
    x = embedder.embed(texts)
    first = semdedup.TRACES["embed"] - before
    lengths = {semdedup.bucket_length(len(ids), 64) for ids in embedder._tokenize(texts)}
    assert first <= len(lengths) and embedder.batches >= 4
    embedder.embed([t[::-1] for t in texts])  # other texts (60 to 96 tokens, cut to 64): no new compilation
    embedder.embed(texts[:5])
    assert semdedup.TRACES["embed"] - before == first
    # a padded row of a batch equals the same text embedded alone without padding
    k = min(range(len(texts)), key=lambda i: len(embedder._tokenize([texts[i]])[0]))  # the most padded one
    ids = np.asarray([embedder._tokenize([texts[k]])[0]], np.int32)
    alone = semdedup._embed_fn(embedder.graphdef)(embedder.state, ids, np.ones_like(ids))
    assert ids.shape[1] < 64 and np.allclose(x[k], np.asarray(alone)[0], atol=1e-5)
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


def test_a_checkpoint_directory_embeds_like_the_model_it_holds(tmp_path, embedder):
    from flax import nnx

    from diabetica_jax import hf

    model = nnx.merge(embedder.graphdef, embedder.state)
    hf.save(model, model.config, tmp_path / "ckpt", progress=False)  # with the tokenizer files
    texts = [r.content() for r in _records()[:6]]
    loaded = semdedup.Embedder(str(tmp_path / "ckpt"), max_tokens=64, batch_size=4)
    assert loaded.name == str(tmp_path / "ckpt") and loaded.dim == model.config.hidden_size
    assert np.allclose(loaded.embed(texts), embedder.embed(texts), atol=1e-5)


def test_edited_copies_that_minhash_keeps_are_dropped_naming_the_original(embedder):
    records = _records()
    after_minhash, minhash_rejects = near_dedup(records, DedupSection())
    assert not minhash_rejects and len(after_minhash) == len(records)  # MinHash misses every planted edit

    cfg = SemanticDedupSection(enabled=True, threshold=THRESHOLD, max_tokens=64, batch_size=4)
    stats: dict = {}
    kept, rejects = semdedup.semantic_dedup(after_minhash, cfg, stats, embedder=embedder)
    assert [r.id for r in kept] == [f"r{k:02d}" for k in range(len(DISTINCT))]  # every distinct record stays
    assert len(kept) + len(rejects) == len(records)
    for k, (reject, (original, _)) in enumerate(zip(rejects, EDITED)):
        assert reject.stage == "semantic_dedup" and reject.record["id"] == f"r{len(DISTINCT) + k:02d}"
        kept_id, cosine = reject.reason.removeprefix("semantic duplicate of ").split(" (cosine ")
        assert kept_id == f"r{original:02d}" and THRESHOLD <= float(cosine.rstrip(")")) <= 1.0
    assert stats["dropped"] == len(EDITED) and stats["records"] == len(records) and stats["tokens"] > 0
    # one record has nothing to be a duplicate of: no model is even loaded
    assert semdedup.semantic_dedup(records[:1], SemanticDedupSection(model="no-such-preset")) == (records[:1], [])


def test_stage_runs_between_near_dedup_and_decontamination_and_is_on_the_card(tmp_path, embedder, monkeypatch):
    rows = [{"question": r.messages[0]["content"], "answer": r.messages[1]["content"]} for r in _records()]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows),
                                       encoding="utf-8")
    monkeypatch.setattr(semdedup, "Embedder", lambda *args, **kwargs: embedder)  # the module's model, loaded once
    cfg = load_curate_config(None, ["semantic_dedup.enabled=true", f"semantic_dedup.threshold={THRESHOLD}",
                                    "output.shards=1"], inputs=[str(tmp_path / "qa.jsonl")])
    card = curate(cfg, tmp_path / "out", progress=False)
    names = [s["name"] for s in card["stages"]]
    assert names[names.index("near_dedup") + 1] == "semantic_dedup" and names[-1] == "decontaminate"
    stage = card["stages"][names.index("semantic_dedup")]
    assert (stage["entered"], stage["kept"], stage["rejected"]) == (14, 10, 4)
    assert stage["reasons"] == {"semantic duplicate": 4}
    assert card["rejected_by_stage"] == {"semantic_dedup": 4} and card["kept"] + card["rejected"] == card["collected"]
    assert card["semantic_dedup"]["enabled"] and card["semantic_dedup"]["dropped"] == 4
    markdown = (tmp_path / "out" / "data_card.md").read_text(encoding="utf-8")
    assert "| semantic_dedup | 14 | 10 | 4 | semantic duplicate (4) |" in markdown
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    kept_ids = {json.loads(line)["id"] for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()}
    named = [r["reason"].removeprefix("semantic duplicate of ").split(" (cosine ")[0] for r in rejects]
    assert len(rejects) == 4 and set(named) <= kept_ids


def test_config_checks_values_and_resolves_only_directories(tmp_path):
    from diabetica_jax.configuration import ConfigFileError

    assert not load_curate_config(None).semantic_dedup.enabled  # off by default
    with pytest.raises(ConfigFileError, match="semantic_dedup.threshold: must be in"):
        load_curate_config(None, ["semantic_dedup.threshold=1.5"])
    with pytest.raises(ConfigFileError, match="semantic_dedup.batch_size: must be positive"):
        load_curate_config(None, ["semantic_dedup.batch_size=0"])
    (tmp_path / "a.yaml").write_text("demo: true\nsemantic_dedup: {model: tiny}\n")
    (tmp_path / "b.yaml").write_text("demo: true\nsemantic_dedup: {model: ckpt/embedder}\n")
    assert load_curate_config(str(tmp_path / "a.yaml")).semantic_dedup.model == "tiny"  # a preset name
    assert load_curate_config(str(tmp_path / "b.yaml")).semantic_dedup.model == str(tmp_path / "ckpt" / "embedder")
