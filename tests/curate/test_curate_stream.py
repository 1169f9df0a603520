"""Streamed curation: the same kept and rejected records, whatever the units, processes or engine.

The reference is the curation as it was before it streamed: the list-based stages of filters.py
chained in order, with near dedup written out here the way it was (one dict of LSH bands, records
compared as they arrive), so the streamed resolution is checked against an independent version.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from diabetica_jax.curate import filters, pipeline
from diabetica_jax.curate.collect import collect
from diabetica_jax.curate.config import load_curate_config
from diabetica_jax.curate.scan import plan_units
from diabetica_jax.data.records import Record
from diabetica_jax.data.shards import shard_records
from diabetica_jax.data.tables import read_rows
from diabetica_jax.data.text import units
from diabetica_jax.demo import CORPUS_DIR, DEMO_FILES
from diabetica_jax.demo.synthetic_qa import write_corpus


def _reference_near_dedup(records: list[Record], cfg) -> tuple[list[Record], list[tuple[str, str]]]:
    """Near dedup as the list-based pipeline did it: each record against the kept ones sharing a band."""
    a, b = filters.minhash_coefficients(cfg.num_perm)
    rows = cfg.num_perm // cfg.bands
    buckets, signatures, kept, rejects = defaultdict(list), [], [], []
    for record in records:
        signature = filters.minhash_many([units(record.content())], cfg.shingle, a, b)[0]
        candidates = {i for band in range(cfg.bands)
                      for i in buckets.get((band, signature[band * rows:(band + 1) * rows].tobytes()), ())}
        best, best_sim = None, 0.0
        for i in sorted(candidates):
            similarity = float(np.mean(signatures[i][1] == signature))
            if similarity > best_sim:
                best, best_sim = i, similarity
        if best is not None and best_sim >= cfg.near_threshold:
            rejects.append((record.id, f"near duplicate of {signatures[best][0]} (Jaccard ~{best_sim:.2f})"))
            continue
        for band in range(cfg.bands):
            buckets[(band, signature[band * rows:(band + 1) * rows].tobytes())].append(len(signatures))
        signatures.append((record.id, signature))
        kept.append(record)
    return kept, rejects


def _reference(cfg) -> tuple[list[str], set[tuple]]:
    """(kept ids in order, {(stage, reason, id or row)}) of the list-based stages."""
    records, rejects = [], set()
    for entry in cfg.inputs:
        for item in collect(entry):
            if isinstance(item, Record):
                records.append(item)
            else:
                rejects.add(("collect", item.reason, item.provenance["file"], item.provenance.get("row")))
    items = pipeline._benchmark_items(cfg)
    for stage, fn, args in (("relevance", filters.relevance, (cfg.relevance,)),
                            ("quality", filters.quality, (cfg.quality,)),
                            ("exact_dedup", filters.exact_dedup, ())):
        records, dropped = fn(records, *args)
        rejects |= {(stage, r.reason, r.record["id"], None) for r in dropped}
    records, near = _reference_near_dedup(records, cfg.dedup)
    rejects |= {("near_dedup", reason, rid, None) for rid, reason in near}
    records, dropped = filters.decontaminate(records, items, cfg.decontamination)
    rejects |= {("decontaminate", r.reason, r.record["id"], None) for r in dropped}
    return [r.id for r in records], rejects


def _outcome(out: Path) -> tuple[list[str], set[tuple], dict]:
    rejects = set()
    for line in (out / "rejects.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if "record" in r:
            rejects.add((r["stage"], r["reason"], r["record"]["id"], None))
        else:
            rejects.add((r["stage"], r["reason"], r["provenance"]["file"], r["provenance"].get("row")))
    card = json.loads((out / "data_card.json").read_text())
    for volatile in ("config", "seconds"):
        card.pop(volatile)
    return [r.id for r in shard_records(out)], rejects, card


def _config(inputs: list[Path], *overrides: str):
    return load_curate_config(None, list(overrides), [str(p) for p in inputs])


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    """3,000 synthetic QA records with planted exact and near copies, off-topic, short and broken lines."""
    path = tmp_path_factory.mktemp("corpus") / "qa.jsonl"
    counts = write_corpus(path, 3000, seed=3)
    assert counts["near_copy"] > 30 and counts["exact_copy"] > 10 and counts["malformed"] > 0
    return path


def test_demo_corpus_matches_the_list_based_stages(tmp_path):
    inputs = [CORPUS_DIR / name for name in DEMO_FILES]
    cfg = _config(inputs)
    pipeline.curate(cfg, tmp_path / "out", progress=False)
    ids, rejects, card = _outcome(tmp_path / "out")
    reference_ids, reference_rejects = _reference(cfg)
    assert ids == reference_ids
    assert rejects == reference_rejects
    stages = {s["name"]: s for s in card["stages"]}
    assert {name: s["rejected"] for name, s in stages.items()} == {
        "collect": 4, "relevance": 8, "quality": 4, "exact_dedup": 6, "near_dedup": 7, "decontaminate": 6}
    assert card["kept"] == len(ids) == 159 and card["kept"] + card["rejected"] == card["collected"] == 194
    assert not (tmp_path / "out" / "work").exists()  # the spill is removed once written out


@pytest.mark.slow
def test_units_and_processes_do_not_change_the_result(planted, tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    pipeline.curate(_config([planted], "engine.workers=1"), whole, progress=False)
    # 1 MB units (the file is ~1.5 MB: two or more slices) scanned by a pool of two processes
    monkeypatch.setattr(pipeline, "POOL_MIN_BYTES", 0)
    cfg = _config([planted], "engine.workers=2", "engine.unit_mb=1")
    assert len(plan_units(list(cfg.inputs), 1 << 20)) >= 2
    sliced = tmp_path / "sliced"
    pipeline.curate(cfg, sliced, progress=False)
    assert _outcome(sliced) == _outcome(whole)
    ids, rejects, card = _outcome(whole)
    reference_ids, reference_rejects = _reference(cfg)
    assert ids == reference_ids and rejects == reference_rejects
    # what was planted was found
    dropped = card["rejected_by_stage"]
    assert dropped["near_dedup"] >= 30 and dropped["exact_dedup"] >= 10 and dropped["collect"] > 0
    assert dropped["relevance"] > 0 and dropped["quality"] > 0


@pytest.mark.slow
def test_datatrove_engine_gives_the_same_records(planted, tmp_path):
    pytest.importorskip("datatrove", reason="the datatrove engine needs: pip install 'diabetica-jax[engine]'")
    local = tmp_path / "local"
    pipeline.curate(_config([planted], "engine.workers=1"), local, progress=False)
    engine = tmp_path / "engine"
    pipeline.curate(_config([planted], "engine.name=datatrove", "engine.workers=2", "engine.unit_mb=1"), engine,
                    progress=False)
    assert _outcome(engine) == _outcome(local)


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_line_ranges_cover_the_file_with_the_right_row_numbers(tmp_path, newline):
    lines = [json.dumps({"question": f"insulin question {i} " + "x" * (i % 50), "answer": "glucose"}).encode()
             for i in range(400)]
    lines[7] = b""  # a blank line still counts as a row
    lines[9] = b'{"broken": '
    path = tmp_path / "rows.jsonl"
    path.write_bytes(newline.join(lines) + newline)
    whole = list(read_rows(path, "jsonl"))
    cfg = _config([path])
    units_ = plan_units(list(cfg.inputs), 2048)
    assert len(units_) > 5 and units_[0].start == 0 and units_[-1].end == path.stat().st_size
    assert all(u.end == v.start for u, v in zip(units_, units_[1:]))
    from diabetica_jax.curate.scan import _unit_items

    sliced = [(item.provenance["row"], item.id if isinstance(item, Record) else item.reason)
              for u in units_ for item in _unit_items(u)]
    reference = [(item.provenance["row"], item.id if isinstance(item, Record) else item.reason)
                 for item in collect(cfg.inputs[0])]
    assert sliced == reference and len(reference) == len(whole) == 399


def test_a_gbk_file_cut_into_units_reads_as_gbk(tmp_path):
    rows = [json.dumps({"question": f"糖尿病患者的血糖目标是什么？第{i}题", "answer": "空腹血糖4.4-7.0 mmol/L"},
                       ensure_ascii=False) for i in range(300)]
    path = tmp_path / "gbk.jsonl"
    path.write_bytes("\n".join(rows).encode("gbk") + b"\n")
    cfg = _config([path])
    units_ = plan_units(list(cfg.inputs), 4096)
    assert len(units_) > 2 and {u.encoding for u in units_} == {"gbk"}
    from diabetica_jax.curate.scan import _unit_items

    texts = [item.messages[0]["content"] for u in units_ for item in _unit_items(u)]
    assert texts == [json.loads(r)["question"] for r in rows]


def test_band_grouping_survives_a_hash_collision():
    """Two different band keys made to share the 64-bit mix that sorts them still land in different groups."""
    from diabetica_jax.curate.filters import _MIX, _group_rows

    with np.errstate(over="ignore"):  # uint64 products wrap, as in the mix
        a, b, a2 = np.uint64(5), np.uint64(7), np.uint64(9)
        b2 = (a * _MIX) ^ b ^ (a2 * _MIX)
        assert ((a * _MIX) ^ b) * _MIX == ((a2 * _MIX) ^ b2) * _MIX  # the two keys do collide
    rows = np.array([[a, b], [a2, b2], [a, b], [a2, b2], [a, b]], dtype=np.uint64)
    split = np.stack([rows[:, 0] >> np.uint64(32), rows[:, 0] & np.uint64(0xFFFFFFFF),
                      rows[:, 1] >> np.uint64(32), rows[:, 1] & np.uint64(0xFFFFFFFF)], axis=1).astype(np.uint32)
    group, sizes = _group_rows(split)
    assert group[0] == group[2] == group[4] != group[1] == group[3]
    assert sorted(sizes.tolist()) == [2, 3]
