"""Where a curated directory keeps its records: ArrayRecord shards, one JSON record each, in order.

Curation writes them (data/curate/write.py); training, the token store and evaluation tools read them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from diabetica_jax.data.records import Record

SHARD_PATTERN = "curated-{index:05d}-of-{count:05d}.array_record"


def shard_paths(directory: str | Path) -> list[Path]:
    paths = sorted((Path(directory) / "shards").glob("curated-*.array_record"))
    if not paths:
        raise FileNotFoundError(f"{directory}: no curated shards (shards/curated-*.array_record); run curate first")
    return paths


def shard_records(directory: str | Path) -> Iterator[Record]:
    """The records of a curated directory's shards, in order, one at a time."""
    import grain

    source = grain.sources.ArrayRecordDataSource([str(p) for p in shard_paths(directory)])
    for i in range(len(source)):
        yield Record.from_json(json.loads(source[i]))
