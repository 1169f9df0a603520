"""Preference pair files: read, check and tokenize them; what cannot be used is rejected with its reason.

A record has `prompt`, `chosen` and `rejected`. The prompt is text (one user turn) or chat messages
(system/user/assistant turns ending with a user turn); each reply is text, or messages whose last is
the assistant's reply. `.jsonl` holds one JSON object per line, `.csv` has those three columns (text
only). An optional `id` names the record; otherwise it is FILE:LINE.

Tokenized through the chat template, a pair is (prompt ids: the conversation up to and including the
assistant header, chosen reply ids, rejected reply ids), the replies ending with `<|im_end|>`:
exactly the tokens SFT would put its loss on.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diabetica_jax.data.chat import EmptyLossMask, encode_messages

FIELDS = ("prompt", "chosen", "rejected")


@dataclass(frozen=True)
class PairRecord:
    id: str
    prompt: list[dict[str, str]]
    chosen: str
    rejected: str


@dataclass(frozen=True)
class Rejected:
    id: str
    field: str | None
    reason: str

    def to_json(self) -> dict:
        return {"id": self.id, "field": self.field, "reason": self.reason}


class _Bad(ValueError):
    def __init__(self, field, reason):
        super().__init__(reason)
        self.field = field


def _messages(value, field: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        if not value.strip():
            raise _Bad(field, "empty text")
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise _Bad(field, f"expected text or a non-empty list of messages, got {type(value).__name__}")
    for i, m in enumerate(value):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise _Bad(f"{field}[{i}]", "a message needs string `role` and `content`")
        if m["role"] not in ("system", "user", "assistant"):
            raise _Bad(f"{field}[{i}].role", f"{m['role']!r} is not system, user or assistant")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _reply(value, field: str) -> tuple[list[dict[str, str]], str]:
    """(messages before the reply, the reply's text) of a chosen/rejected value."""
    if isinstance(value, str):
        if not value.strip():
            raise _Bad(field, "empty reply")
        return [], value
    messages = _messages(value, field)
    if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
        raise _Bad(field, "the last message must be the assistant's (non-empty) reply")
    return messages[:-1], messages[-1]["content"]


def parse_pair(raw, record_id: str) -> PairRecord:
    """A PairRecord, or _Bad naming the field."""
    if not isinstance(raw, dict):
        raise _Bad(None, f"expected an object with {', '.join(FIELDS)}, got {type(raw).__name__}")
    missing = [f for f in FIELDS if f not in raw or raw[f] is None]
    if missing:
        raise _Bad(missing[0], "missing")
    prompt = _messages(raw["prompt"], "prompt")
    chosen_before, chosen = _reply(raw["chosen"], "chosen")
    rejected_before, rejected = _reply(raw["rejected"], "rejected")
    # conversational pairs may repeat the prompt inside the replies (TRL's format); it must be the same
    for field, before in (("chosen", chosen_before), ("rejected", rejected_before)):
        if before and before != prompt and before != prompt[: len(before)]:
            raise _Bad(field, "its messages before the reply differ from the prompt")
    if prompt[-1]["role"] != "user":
        raise _Bad("prompt", "the prompt must end with a user turn")
    if chosen == rejected:
        raise _Bad("rejected", "the same reply as chosen: nothing to prefer")
    return PairRecord(str(raw.get("id") or record_id), prompt, chosen, rejected)


def read_pairs(path: str | Path) -> tuple[list[PairRecord], list[Rejected]]:
    """The usable records of a pairs file, in order, and the rejected ones with their reasons. A missing file
    or another format is a FileNotFoundError / ValueError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: preference pairs file not found")
    if path.suffix not in (".jsonl", ".csv"):
        raise ValueError(f"{path}: pairs files are .jsonl or .csv")
    pairs, rejected = [], []
    with open(path, encoding="utf-8", newline="") as f:
        if path.suffix == ".csv":
            reader = csv.DictReader(f)
            absent = [c for c in FIELDS if c not in (reader.fieldnames or [])]
            if absent:
                raise ValueError(f"{path}: no {absent[0]!r} column (the columns are {', '.join(FIELDS)})")
            rows = ((f"{path.name}:{n + 2}", row) for n, row in enumerate(reader))
        else:
            rows = ((f"{path.name}:{n + 1}", line) for n, line in enumerate(f) if line.strip())
        for record_id, row in rows:
            try:
                if isinstance(row, str):
                    try:
                        row = json.loads(row)
                    except json.JSONDecodeError as e:
                        raise _Bad(None, f"not JSON ({e.msg} at column {e.colno})") from None
                pairs.append(parse_pair(row, record_id))
            except _Bad as e:
                rejected.append(Rejected(record_id if not isinstance(row, dict) or not row.get("id")
                                         else str(row["id"]), e.field, str(e)))
    return pairs, rejected


def encode_pair(tokenizer, pair: PairRecord) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prompt ids, chosen reply ids, rejected reply ids) through the chat template."""
    sides = []
    for reply in (pair.chosen, pair.rejected):
        ids, mask = encode_messages(tokenizer, pair.prompt + [{"role": "assistant", "content": reply}], pair.id)
        where = np.flatnonzero(mask)
        start, end = int(where[0]), int(where[-1]) + 1
        sides.append((ids[:start], ids[start:end]))
    (prompt, chosen), (other_prompt, rejected) = sides
    if not np.array_equal(prompt, other_prompt):
        raise EmptyLossMask(f"record {pair.id}: the prompt tokenizes differently before the two replies")
    return prompt, chosen, rejected
