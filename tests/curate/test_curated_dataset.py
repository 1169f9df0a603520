"""The curated set is also a `datasets` dataset that matches the ArrayRecord shards record for record."""

import json
import sys

import pytest

from diabetica_jax.configuration import load_config
from diabetica_jax.curate.config import CurateConfig
from diabetica_jax.curate.pipeline import curate
from diabetica_jax.curate.write import record_from_row, write_hf_dataset
from diabetica_jax.data.shards import shard_paths


def _shard_records(out):
    from array_record.python.array_record_module import ArrayRecordReader

    records = []
    for path in shard_paths(out):
        reader = ArrayRecordReader(str(path))
        records += [json.loads(raw) for raw in reader.read_all()]
        reader.close()
    return records


def test_demo_curation_loads_with_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "out"
    card = curate(load_config(CurateConfig, None, ["demo=true"]), out, progress=False)
    assert card["hf_dataset"] == "hf_dataset"

    dataset = datasets.load_from_disk(str(out / "hf_dataset"))
    shards = _shard_records(out)
    assert len(dataset) == card["kept"] == len(shards)
    mcq = next(i for i, r in enumerate(shards) if r["kind"] == "mcq")
    assert dataset[mcq]["messages"] == shards[mcq]["messages"]
    assert json.loads(dataset[mcq]["options"]) == shards[mcq]["options"]
    # every row round-trips to the record the shards hold
    assert [record_from_row(row).to_json() for row in dataset] == shards


def test_without_datasets_the_card_says_so(tmp_path, monkeypatch):
    (tmp_path / "hf_dataset").mkdir()  # left by an earlier run
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    assert write_hf_dataset(tmp_path, 1) == "not written: pip install datasets"
    assert not (tmp_path / "hf_dataset").exists()
