"""Where a curated directory keeps its records: ArrayRecord shards, one JSON record each, in order.

Curation writes them (curate/write.py); training, the token store and evaluation tools read them. Every
reader goes through `parse_record`, so a directory whose records are not of this version's schema (written by
another version of diabetica-jax, or edited by hand) is refused naming the shard and the record, and
`check_curated` holds the shards against the data card before training reads them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

from diabetica_jax.configuration import InputError
from diabetica_jax.data.records import ROLES, Record
from diabetica_jax.errors import MissingInput

log = logging.getLogger(__name__)

SHARD_PATTERN = "curated-{index:05d}-of-{count:05d}.array_record"
DATA_CARD = "data_card.json"
# What a curated directory holds and how (record schema, shard naming, card fields); the card records it, and a
# directory of another format is refused before training reads it. Raise it when that layout changes.
CURATED_FORMAT = 1


def shard_paths(directory: str | Path) -> list[Path]:
    if not Path(directory).is_dir():
        raise MissingInput(f"{directory}: curated directory not found; run `diabetica-jax curate --out "
                                f"{directory}` first")
    paths = sorted((Path(directory) / "shards").glob("curated-*.array_record"))
    if not paths:
        raise MissingInput(f"{directory}: no curated shards (shards/curated-*.array_record); run curate first")
    return paths


def check_curated(directory: str | Path) -> list[Path]:
    """The shards of a curated directory, checked against its data card: the card (written last by curation)
    must read as JSON, carry this version's CURATED_FORMAT and list exactly the shards present. A card-less directory (shards written by
    `write_shards` alone, or a curation that did not finish) is read as it is, with a warning."""
    directory = Path(directory)
    paths = shard_paths(directory)
    card_path = directory / DATA_CARD
    if not card_path.is_file():
        log.warning("%s: no %s (not written by a finished `diabetica-jax curate`); reading its %d shards as they "
                    "are", directory, DATA_CARD, len(paths))
        return paths
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{card_path}: not valid JSON ({e}); curate the directory again") from e
    written = card.get("format") if isinstance(card, dict) else None
    if written != CURATED_FORMAT:
        by = "an older version of diabetica-jax (no format number)" if written is None else f"format {written!r}"
        raise InputError(f"{card_path}: format: written by {by}, and this version reads curated format "
                         f"{CURATED_FORMAT}; curate the directory again with this version")
    listed = card.get("shards") if isinstance(card, dict) else None
    if not isinstance(listed, list) or not all(isinstance(p, str) for p in listed):
        raise InputError(f"{card_path}: shards: expected the list of shard files curation wrote; is this a data "
                         "card of diabetica-jax curate? Curate the directory again")
    present = {str(p.relative_to(directory)) for p in paths}
    missing, extra = sorted(set(listed) - present), sorted(present - set(listed))
    if missing or extra:
        what = (f"lists {missing[0]}, which is missing" if missing else f"does not list {extra[0]}, which is there")
        more = len(missing) + len(extra) - 1
        raise InputError(f"{card_path}: shards: the card {what}" + (f" (and {more} more differences)" if more else "")
                         + "; the shards changed since curation (a curation that did not finish, or files removed "
                         "or copied in): curate the directory again")
    return paths


def parse_record(raw: bytes | str, paths: list[Path], index: int) -> Record:
    """The Record of entry `index` (counted over `paths`, the shards in order). InputError naming the shard and
    the record within it when the entry is not a record of this version's schema."""
    try:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        record = Record.from_json(data)
        _check_fields(record)
        return record
    except (ValueError, TypeError) as e:
        shard, local = _locate(paths, index)
        raise InputError(f"{shard}: record {local}: not a curated record of this version ({e}); the directory was "
                         "written by another version of diabetica-jax, or edited: curate it again") from None


def _check_fields(record: Record) -> None:
    for name in ("id", "source", "kind", "language"):
        if not isinstance(getattr(record, name), str):
            raise TypeError(f"{name}: expected a string, got {getattr(record, name)!r}")
    if record.text is not None and not isinstance(record.text, str):
        raise TypeError("text: expected a string")
    if record.messages is not None:
        if not isinstance(record.messages, list):
            raise TypeError("messages: expected a list of {role, content} turns")
        for i, m in enumerate(record.messages):
            if not (isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)):
                raise ValueError(f"messages[{i}]: expected {{role: one of {list(ROLES)}, content: text}}, got {m!r}"[:300])


def _locate(paths: list[Path], index: int) -> tuple[Path, int]:
    """(shard, index within it) of entry `index` counted over the shards in order."""
    import grain

    for path in paths:
        n = len(grain.sources.ArrayRecordDataSource([str(path)]))
        if index < n:
            return path, index
        index -= n
    return paths[-1], index


def shard_records(directory: str | Path) -> Iterator[Record]:
    """The records of a curated directory's shards, in order, one at a time."""
    import grain

    paths = shard_paths(directory)
    source = grain.sources.ArrayRecordDataSource([str(p) for p in paths])
    for i in range(len(source)):
        yield parse_record(source[i], paths, i)
