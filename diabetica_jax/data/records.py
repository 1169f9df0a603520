"""The one record schema every source is converted to, and the rejects that explain every drop."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

KINDS = ("mcq", "qa", "dialogue", "passage", "cloze")
ROLES = ("system", "user", "assistant")


@dataclasses.dataclass
class Record:
    """One training example.

    `messages` (chat turns) for mcq / qa / dialogue / cloze; `text` for passages. MCQs also keep
    their parsed `options` and keyed `answer` letter, so later stages can check that a rewrite or
    an explanation still picks the same option.
    """

    id: str
    source: str
    kind: str
    language: str
    provenance: dict[str, Any]  # {"file": ..., "row": ...}
    messages: list[dict[str, str]] | None = None
    text: str | None = None
    options: dict[str, str] | None = None
    answer: str | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind {self.kind!r} is not one of {KINDS}")
        if (self.messages is None) == (self.text is None):
            raise ValueError("a record has either messages or text")

    def content(self) -> str:
        """All of its text, for filters and dedup."""
        if self.text is not None:
            return self.text
        return "\n".join(m["content"] for m in self.messages)

    def prompt_text(self) -> str:
        """The user-side text (question / stem): what benchmark decontamination compares."""
        if self.text is not None:
            return self.text
        return "\n".join(m["content"] for m in self.messages if m["role"] == "user")

    def to_json(self) -> dict[str, Any]:
        """The fields that are set, sharing their values with the record (serialise it; do not mutate it)."""
        return {f: v for f in _RECORD_FIELDS if (v := getattr(self, f)) is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Record":
        return cls(**data)


_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(Record))


def record_id(source: str, file: str, row: Any, content: str) -> str:
    """`source-<16 hex>`: a hash of where the record came from (`file` as `id_path` gives it, its row) and what it
    says. surrogatepass: a path from a file system that is not UTF-8 still hashes."""
    key = f"{source}\x00{file}\x00{row}\x00{content}"
    return f"{source}-{hashlib.sha1(key.encode('utf-8', 'surrogatepass')).hexdigest()[:16]}"


def id_path(path: str | Path) -> str:
    """An input's path as record ids hash it: resolved (symbolic links, `..`, the working directory), then taken
    relative to the input's root (the input itself when it is a directory, the file's folder when it is a file),
    so that ids do not change with how the path is spelled or where the data folder lies."""
    resolved = Path(path).resolve()
    root = resolved if resolved.is_dir() else resolved.parent
    return resolved.relative_to(root).as_posix()


@dataclasses.dataclass
class Reject:
    """A record (or raw input that never became one) dropped by a stage, and why."""

    stage: str
    reason: str
    provenance: dict[str, Any]
    record: dict[str, Any] | None = None  # the Record as JSON, when there was one
    raw: str | None = None  # the raw input, when it could not be parsed

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def reason_class(reason: str) -> str:
    """A reject reason without its particulars, for counting: 'near duplicate of x (Jaccard ~0.9)' -> 'near duplicate'."""
    for cut in (":", " of ", " (", " <", " >"):
        if cut in reason:
            reason = reason.split(cut)[0]
    return reason.strip()


def count_by(labels: "Counter[tuple[str, str, str]]", position: int) -> dict[str, int]:
    """Counts of (source, kind, language) labels added up by one of them (0, 1 or 2), most common first."""
    counts: Counter[str] = Counter()
    for label, n in labels.items():
        counts[label[position]] += n
    return dict(counts.most_common())


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True)
