"""Curation inputs: record ids that do not depend on how an input's path is spelled, and Parquet and CSV files
cut into units (row groups, byte ranges of whole records) with the same result as read whole."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest

from diabetica_jax.curate import pipeline, scan
from diabetica_jax.curate.collect import collect
from diabetica_jax.curate.config import load_curate_config
from diabetica_jax.data.records import Record
from diabetica_jax.data.shards import shard_records

TOPICS = ["insulin lowers blood glucose", "metformin reduces hepatic glucose output", "HbA1c reflects glucose",
          "foot ulcers need daily checks", "hypoglycaemia needs fast sugar", "retinopathy screening is yearly",
          "糖尿病患者应定期监测血糖", "胰岛素可以降低血糖"]


def _row(k: int) -> dict:
    topic = TOPICS[k % len(TOPICS)]
    return {"question": f"In diabetes care, why is it said that {topic}? (case {k}, ward {k * 7919 % 101})",
            "answer": f"Because {topic}; the diabetes clinic told patient {k} so, with glucose logs {k * 31 % 97}."}


def _curate(inputs: list[str], out: Path) -> tuple[list[Record], list[dict]]:
    cfg = load_curate_config(None, ["engine.workers=1", "output.hf_dataset=false"], inputs)
    pipeline.curate(cfg, out, progress=False)
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]
    return list(shard_records(out)), rejects


def _outcome(records: list[Record], rejects: list[dict]) -> tuple[list[str], list[tuple]]:
    """(kept ids in order, sorted (stage, reason, row, id) of the rejects)."""
    return [r.id for r in records], sorted((r["stage"], r["reason"], str(r["provenance"].get("row")),
                                            r.get("record", {}).get("id", "")) for r in rejects)


# ---- record ids ---------------------------------------------------------------------------------------------------

def test_record_ids_do_not_depend_on_how_the_path_is_spelled(tmp_path, monkeypatch):
    """The same file typed three ways, curated: the same kept ids; read through a symbolic link to its folder and
    from a copy of the folder elsewhere: the same ids again. Provenance keeps the path as the user gave it."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "x.jsonl").write_text("".join(json.dumps(_row(k)) + "\n" for k in range(12)))
    os.symlink("data", tmp_path / "alias")
    shutil.copytree(data, tmp_path / "archive" / "2024")
    (tmp_path / "elsewhere").mkdir()
    curated = {  # the path as typed -> the directory it is typed in
        str(data / "x.jsonl"): tmp_path / "elsewhere",
        "x.jsonl": data,
        "./data/../data/x.jsonl": tmp_path,
    }
    kept = []
    for i, (typed, cwd) in enumerate(curated.items()):
        monkeypatch.chdir(cwd)
        records, _ = _curate([typed], tmp_path / f"out{i}")
        assert {r.provenance["file"] for r in records} == {str(Path(typed))}
        kept.append([r.id for r in records])
    assert len(kept[0]) == 12 and kept[1] == kept[0] and kept[2] == kept[0]
    monkeypatch.chdir(tmp_path)
    for typed in ("alias/x.jsonl", str(tmp_path / "archive" / "2024" / "x.jsonl")):
        assert [r.id for r in collect(load_curate_config(None, [], [typed]).inputs[0])] == kept[0]


# ---- Parquet and CSV cut into units ---------------------------------------------------------------------------------

def _mixed_rows(n: int) -> list[dict]:
    """Good rows, with rows that are rejected here and there: a missing answer, an exact copy, off-topic, NUL."""
    rows = [_row(k) for k in range(n)]
    for k in range(5, n, 37):
        rows[k] = {"question": rows[k]["question"], "answer": None}
    for k in range(11, n, 41):
        rows[k] = dict(rows[k - 3])
    for k in range(17, n, 53):
        rows[k] = {"question": f"What is the capital of country {k}?", "answer": "A city, long ago, by a river."}
    rows[n - 2] = {"question": rows[n - 2]["question"], "answer": "insulin\x00binary"}
    return rows


@pytest.fixture(scope="module")
def parquet_file(tmp_path_factory) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path_factory.mktemp("parquet") / "qa.parquet"
    pq.write_table(pa.Table.from_pylist(_mixed_rows(400)), path, row_group_size=30)
    assert pq.ParquetFile(path).num_row_groups == 14
    return path


@pytest.fixture(scope="module")
def csv_file(tmp_path_factory) -> Path:
    """Records with quoted newlines (\\n and \\r\\n), commas and doubled quotes in fields, CRLF line ends,
    blank lines between records, a BOM, and rows rejected as in _mixed_rows."""
    path = tmp_path_factory.mktemp("csv") / "qa.csv"
    rows = _mixed_rows(400)
    for k in range(0, 400, 9):
        if rows[k]["answer"]:
            rows[k]["answer"] = f'Line one, "quoted"\nline two\r\nline three of {k}: ' + rows[k]["answer"]
    with open(path, "w", newline="", encoding="utf-8-sig") as f:
        writer = csv.writer(f, lineterminator="\r\n")
        writer.writerow(["question", "answer"])
        for k, row in enumerate(rows):
            writer.writerow([row["question"], row["answer"] or ""])
            if k % 50 == 3:
                f.write("\r\n")  # a blank line: no row
    return path


def _items(units: list[scan.Unit]) -> list[tuple]:
    return [(item.provenance.get("row"), item.id if isinstance(item, Record) else item.reason)
            for unit in units for item in scan._unit_items(unit)]


@pytest.mark.parametrize("unit_bytes", [700, 4096, 20000])
@pytest.mark.parametrize("kind", ["parquet", "csv"])
def test_units_read_the_rows_of_the_whole_file(kind, unit_bytes, parquet_file, csv_file):
    path = parquet_file if kind == "parquet" else csv_file
    entry = load_curate_config(None, [], [str(path)]).inputs[0]
    units = scan.plan_units([entry], unit_bytes)
    assert len(units) >= 2 and all(u.part is not None and u.part.format == kind for u in units)
    assert units[-1].end <= path.stat().st_size and all(u.end <= v.start for u, v in zip(units, units[1:]))
    whole = [(item.provenance.get("row"), item.id if isinstance(item, Record) else item.reason)
             for item in collect(entry)]
    assert _items(units) == whole and len(whole) == 400
    assert sum(isinstance(reason, str) and reason.startswith("binary data") for _, reason in whole) == 1


def test_unit_repr_says_which_rows(parquet_file, csv_file):
    entries = load_curate_config(None, [], [str(parquet_file), str(csv_file)]).inputs
    units = scan.plan_units(list(entries), 4096)
    parquet_units = [u for u in units if u.input is entries[0]]
    assert repr(parquet_units[1]).startswith(f"Unit(1: {parquet_file} row groups ")
    assert f"(row {parquet_units[1].first_row})" in repr(parquet_units[1]) and parquet_units[1].first_row > 0
    csv_unit = next(u for u in units if u.input is entries[1] and u.first_row > 0)
    assert f" bytes {csv_unit.start}-{csv_unit.end} (row {csv_unit.first_row})" in repr(csv_unit)


def test_a_cut_parquet_and_csv_curate_as_read_whole(parquet_file, csv_file, tmp_path, monkeypatch):
    inputs = [str(parquet_file), str(csv_file)]
    whole = _outcome(*_curate(inputs, tmp_path / "whole"))
    monkeypatch.setattr(pipeline, "plan_units", lambda entries, _: scan.plan_units(entries, 2048))
    assert len(pipeline.plan_units(list(load_curate_config(None, [], inputs).inputs), 0)) > 10
    cut = _outcome(*_curate(inputs, tmp_path / "cut"))
    assert cut == whole
    kept, rejects = whole
    stages = {stage for stage, *_ in rejects}
    assert len(kept) > 300 and {"collect", "exact_dedup", "relevance"} <= stages


def test_a_gbk_csv_cut_into_units_reads_as_gbk(tmp_path):
    rows = [(f"糖尿病患者的血糖目标是什么？第{i}题", "空腹血糖4.4-7.0 mmol/L，\n餐后<10.0") for i in range(200)]
    path = tmp_path / "gbk.csv"
    with open(path, "w", newline="", encoding="gbk") as f:
        csv.writer(f).writerows([("question", "answer"), *rows])
    entry = load_curate_config(None, [], [str(path)]).inputs[0]
    units = scan.plan_units([entry], 2048)
    assert len(units) > 2 and {u.encoding for u in units} == {"gbk"}
    assert [(item.messages[0]["content"], item.messages[1]["content"]) for u in units
            for item in scan._unit_items(u)] == rows


def test_a_csv_of_one_record_or_a_damaged_parquet_is_one_unit(tmp_path):
    """Nothing to cut at: a single long record; a Parquet file whose footer does not read (the reader then
    rejects the file once, naming it)."""
    one = tmp_path / "one.csv"
    one.write_text('question,answer\n"' + "insulin " * 2000 + '","glucose"\n')
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1" + b"\x00" * 5000)
    entries = list(load_curate_config(None, [], [str(one), str(broken)]).inputs)
    units = scan.plan_units(entries, 1024)
    assert [u.part for u in units] == [None, None]
    (reject,) = scan._unit_items(units[1])
    assert reject.provenance == {"file": str(broken)} and reject.reason.startswith("cannot read it as parquet")
