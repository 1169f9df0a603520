"""Curated records tokenized once, on disk: written per (curated shards, tokenizer), memory-mapped at every start.

Training start-up used to read every record and run it through the chat template (about 0.5 ms a record) on
every host at every start. The token store does that once, beside the shards:

    CURATED/tokens/<key>/
      tokens       int32, every record's token ids, concatenated in shard order (raw, memory-mapped)
      loss_mask    uint8, the loss_on: assistant mask (encode_record's; passages all ones; zeros where the
                   mask cannot be derived)
      offsets.npy  int64 [records + 1], where each record starts in `tokens`
      kind.npy     uint8, the record's kind as an index into data.records.KINDS
      status.npy   uint8, OK, EMPTY_MASK (EmptyLossMask / LossMaskError: no assistant mask) or UNSUPPORTED
                   (the chat template is not ChatML); such records still hold their tokens for loss_on: all
      first_loss.npy  int64, position of the first assistant-mask token (the record's length when none):
                   whether truncating to seq_len leaves any loss
      loss_count.npy  int64, assistant-mask tokens
      max_id.npy   int32, the largest token id (-1 for an empty record): the vocabulary check
      meta.json    format, key, records, tokens, max_token, the tokenizer and shard fingerprints

`key` hashes the tokenizer (its serialized fast-tokenizer backend, chat template, EOS / UNK ids and class; a
tokenizer without a backend, such as a test stand-in, by its class alone) and the shards (file names, sizes and
mtime_ns: rewriting the shards, as curation does, gives another key; a copy that does not keep mtimes is
re-tokenized, never misread). A store is written in a temporary directory and renamed into place, so a killed
writer or two hosts building at once never leave a half store; a lock file keeps processes of one host from
building the same store twice. Stores of earlier shards are deleted when a new one is built.

`TokenView` applies a data section's choices (data.kinds, seq_len, overlong, loss_on) at open time with numpy over
the per-record columns, never a pass over the tokens, and reads examples by slicing the memory maps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import pickle
import shutil
import time
import uuid
from pathlib import Path

import numpy as np

from diabetica_jax.configuration import cache_dir
from diabetica_jax.data.chat import (
    IM_START,
    EmptyLossMask,
    UnsupportedTemplate,
    assistant_mask,
    encode_messages,
    encode_text,
)
from diabetica_jax.data.config import LOSS_ON, OVERLONG
from diabetica_jax.data.records import KINDS, Record
from diabetica_jax.data.shards import parse_record, shard_paths
from diabetica_jax.errors import MissingInput

log = logging.getLogger(__name__)

FORMAT = 1
OK, EMPTY_MASK, UNSUPPORTED = 0, 1, 2
COLUMNS = {"kind": np.uint8, "status": np.uint8, "first_loss": np.int64, "loss_count": np.int64, "max_id": np.int32}
STORE_DIR = "tokens"
PARALLEL_FROM = 20_000  # records: below this a worker pool costs more to start than it saves


@dataclasses.dataclass
class TokenStats:
    examples: int = 0
    truncated: int = 0
    dropped_overlong: int = 0
    dropped_empty_mask: int = 0
    skipped_kind: int = 0  # records of a kind that data.kinds leaves out
    tokens: int = 0
    loss_tokens: int = 0
    by_kind: dict[str, int] = dataclasses.field(default_factory=dict)  # examples kept, per record kind


# -- encoding -------------------------------------------------------------------------------------------------


def encode_for_store(tokenizer, record: Record) -> tuple[np.ndarray, np.ndarray, int, str | None]:
    """(ids, assistant mask, status, message): encode_record's ids and loss_on: assistant mask, and for a record
    whose mask cannot be derived its whole rendered conversation (what loss_on: all trains on) with an empty mask."""
    if record.text is not None:
        ids = encode_text(tokenizer, record.text)
        return ids, np.ones(len(ids), np.uint8), OK, None
    try:
        ids, mask = encode_messages(tokenizer, record.messages, record.id, "assistant")
        return ids, mask.astype(np.uint8), OK, None
    except UnsupportedTemplate as e:
        status, message = UNSUPPORTED, str(e)
    except EmptyLossMask as e:
        status, message = EMPTY_MASK, str(e)
    try:
        ids, _ = encode_messages(tokenizer, record.messages, record.id, "all")
    except EmptyLossMask:  # nothing rendered at all
        ids = np.zeros(0, np.int32)
    return ids, np.zeros(len(ids), np.uint8), status, message


def encode_many(tokenizer, records: list[Record]) -> list[tuple[np.ndarray, np.ndarray, int, str | None]]:
    """`encode_for_store` of each record, with the chat records' rendered conversations tokenized in one batched
    call of a fast tokenizer's backend (what `tokenizer(text)` runs one text at a time, without its per-call
    overhead: about half the time of a record)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    rendered = {}
    if backend is not None:
        for k, record in enumerate(records):
            if record.text is None:
                text = tokenizer.apply_chat_template(record.messages, tokenize=False)
                if IM_START in text:  # else encode_for_store says why not (UnsupportedTemplate)
                    rendered[k] = text
    encodings = dict(zip(rendered, backend.encode_batch(list(rendered.values()), add_special_tokens=False)
                         if rendered else []))
    out = []
    for k, record in enumerate(records):
        if k not in encodings:
            out.append(encode_for_store(tokenizer, record))
            continue
        encoding = encodings[k]
        ids = np.asarray(encoding.ids, dtype=np.int32)
        offsets = np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2)
        try:
            out.append((ids, assistant_mask(rendered[k], record.messages, offsets, record.id).astype(np.uint8), OK, None))
        except EmptyLossMask as e:
            out.append((ids, np.zeros(len(ids), np.uint8), EMPTY_MASK, str(e)))
    return out


class _Encoder:
    """Accumulates encoded records: their tokens, masks and per-record columns."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.tokens, self.masks, self.lengths = [], [], []
        self.columns = {name: [] for name in COLUMNS}
        self.unsupported: str | None = None

    def add_many(self, records: list[Record]) -> None:
        for record, (ids, mask, status, message) in zip(records, encode_many(self.tokenizer, records)):
            if status == UNSUPPORTED and self.unsupported is None:
                self.unsupported = message
            hits = np.flatnonzero(mask)
            self.tokens.append(ids.astype(np.int32, copy=False))
            self.masks.append(mask)
            self.lengths.append(len(ids))
            for name, value in (("kind", KINDS.index(record.kind)), ("status", status),
                                ("first_loss", int(hits[0]) if hits.size else len(ids)),
                                ("loss_count", int(hits.size)), ("max_id", int(ids.max()) if ids.size else -1)):
                self.columns[name].append(value)

    def finish(self) -> dict:
        return {"tokens": np.concatenate(self.tokens) if self.tokens else np.zeros(0, np.int32),
                "loss_mask": np.concatenate(self.masks) if self.masks else np.zeros(0, np.uint8),
                "lengths": np.asarray(self.lengths, np.int64),
                "columns": {name: np.asarray(values, COLUMNS[name]) for name, values in self.columns.items()},
                "unsupported": self.unsupported}


def _encode_range(tokenizer, source, paths: list[Path], start: int, stop: int, batch: int = 256) -> dict:
    encoder = _Encoder(tokenizer)
    for base in range(start, stop, batch):
        raws = source.__getitems__(list(range(base, min(stop, base + batch))))
        encoder.add_many([parse_record(raw, paths, base + k) for k, raw in enumerate(raws)])
    return encoder.finish()


_WORKER: dict = {}


def _init_worker(tokenizer_bytes: bytes, paths: list[str]) -> None:
    import grain

    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER["tokenizer"] = pickle.loads(tokenizer_bytes)
    _WORKER["source"] = grain.sources.ArrayRecordDataSource(paths)
    _WORKER["paths"] = [Path(p) for p in paths]


def _encode_in_worker(task: tuple[int, int]) -> dict:
    return _encode_range(_WORKER["tokenizer"], _WORKER["source"], _WORKER["paths"], *task)


# -- fingerprints -----------------------------------------------------------------------------------------------


def tokenizer_fingerprint(tokenizer) -> str:
    """What the tokens depend on: the fast tokenizer's serialized backend (vocabulary, merges, normalizer,
    pre-tokenizer, added tokens), the chat template, the EOS / UNK ids that end passages, and the class.
    A tokenizer with neither a backend nor a vocabulary (a test stand-in) is known by its class alone."""
    h = hashlib.sha256()
    kind = type(tokenizer)
    for part in (kind.__module__, kind.__qualname__, getattr(tokenizer, "chat_template", None),
                 getattr(tokenizer, "eos_token_id", None), getattr(tokenizer, "unk_token_id", None)):
        h.update(repr(part).encode() + b"\x00")
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    elif hasattr(tokenizer, "get_vocab"):
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    return h.hexdigest()


def shard_fingerprint(paths: list[Path]) -> list[list]:
    """Each shard's name, size and mtime_ns: rewritten shards (curation always rewrites all) never match."""
    out = []
    for path in paths:
        st = path.stat()
        out.append([path.name, st.st_size, st.st_mtime_ns])
    return out


def store_key(tokenizer_print: str, shards: list[list]) -> str:
    text = json.dumps({"format": FORMAT, "tokenizer": tokenizer_print, "shards": shards}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# -- the corpus: every record, tokenized ------------------------------------------------------------------------


class TokenCorpus:
    """Every record of a curated set tokenized (a token store's memory maps, or records encoded in memory).

    `lengths`: each record's token count as encode_record gives it (loss_on: assistant), also for the records
    whose mask cannot be derived (`usable` False; they hold their rendered conversation, which is what
    encode_record gives with loss_on: all). `columns` holds the per-record arrays of the module docstring
    (`columns["kind"]` indexes data.records.KINDS). Curation can take its token statistics from `lengths`.
    """

    def __init__(self, tokens: np.ndarray, loss_mask: np.ndarray, offsets: np.ndarray, columns: dict,
                 meta: dict, directory: Path | None = None):
        self.tokens, self.loss_mask, self.offsets, self.columns = tokens, loss_mask, offsets, columns
        self.meta, self.directory = meta, directory

    @classmethod
    def from_records(cls, records, tokenizer) -> "TokenCorpus":
        encoder = _Encoder(tokenizer)
        records = list(records)
        for base in range(0, len(records), 256):
            encoder.add_many(records[base:base + 256])
        done = encoder.finish()
        offsets = np.concatenate([[0], np.cumsum(done["lengths"])]).astype(np.int64)
        meta = {"records": len(done["lengths"]), "tokens": int(done["tokens"].size),
                "max_token": int(done["columns"]["max_id"].max(initial=-1)), "unsupported_template": done["unsupported"]}
        return cls(done["tokens"], done["loss_mask"], offsets, done["columns"], meta)

    @classmethod
    def load(cls, directory: Path) -> "TokenCorpus":
        meta = json.loads((directory / "meta.json").read_text())
        columns = {name: np.load(directory / f"{name}.npy") for name in COLUMNS}
        corpus = cls(None, None, np.load(directory / "offsets.npy"), columns, meta, directory)
        corpus._map()
        return corpus

    def _map(self) -> None:
        n = self.meta["tokens"]
        if n:
            self.tokens = np.memmap(self.directory / "tokens", np.int32, "r", shape=(n,))
            self.loss_mask = np.memmap(self.directory / "loss_mask", np.uint8, "r", shape=(n,))
        else:  # an empty file cannot be mapped
            self.tokens, self.loss_mask = np.zeros(0, np.int32), np.zeros(0, np.uint8)

    def __getstate__(self):  # to Grain worker processes: the path, not a copy of the mapped tokens
        state = dict(self.__dict__)
        if self.directory is not None:
            state["tokens"] = state["loss_mask"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self.tokens is None:
            self._map()

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def usable(self) -> np.ndarray:
        """Records with a loss_on: assistant mask (the others train only with loss_on: all)."""
        return self.columns["status"] == OK

    def select(self, seq_len: int, overlong: str = "truncate", kinds=(), loss_on: str = "assistant") -> "TokenView":
        return TokenView(self, seq_len, overlong, kinds, loss_on)


def _check_choices(overlong: str, loss_on: str) -> None:
    if overlong not in OVERLONG:
        raise ValueError(f"overlong must be one of {OVERLONG}, got {overlong!r}")
    if loss_on not in LOSS_ON:
        raise ValueError(f"loss_on must be one of {LOSS_ON}, got {loss_on!r}")


class TokenView:
    """The training examples a data section selects from a corpus: random access costs two slices.

    `kinds`: the record kinds to keep (empty: all; the rest count as skipped_kind); `loss_on`: assistant
    (chat records train on their assistant turns, text records on all their tokens) or all (every token).
    A record whose assistant mask cannot be derived is dropped (dropped_empty_mask) with loss_on: assistant, kept
    with loss_on: all; an over-long one is truncated to seq_len, or dropped with overlong: drop or when truncation
    leaves no loss token (dropped_overlong). Counted in `stats`, from the per-record columns: selecting touches
    only the truncated records' masks.
    """

    def __init__(self, corpus: TokenCorpus, seq_len: int, overlong: str = "truncate", kinds=(),
                 loss_on: str = "assistant"):
        _check_choices(overlong, loss_on)
        self.corpus, self.loss_on = corpus, loss_on
        cols, n = corpus.columns, corpus.lengths
        stats = TokenStats()
        chosen = np.isin(cols["kind"], [KINDS.index(k) for k in kinds]) if kinds else np.ones(len(n), bool)
        stats.skipped_kind = int((~chosen).sum())
        if loss_on == "assistant":
            if (chosen & (cols["status"] == UNSUPPORTED)).any():  # every chat record would be rejected
                raise UnsupportedTemplate(corpus.meta.get("unsupported_template") or "the chat template is not ChatML")
            empty = cols["status"] != OK
            first_loss = cols["first_loss"]
        else:
            empty = n == 0
            first_loss = np.zeros(len(n), np.int64)
        stats.dropped_empty_mask = int((chosen & empty).sum())
        candidate = chosen & ~empty
        over = candidate & (n > seq_len)
        dropped = over if overlong == "drop" else over & (first_loss >= seq_len)  # truncation cut off every loss
        truncated = over & ~dropped
        stats.dropped_overlong, stats.truncated = int(dropped.sum()), int(truncated.sum())
        keep = candidate & ~dropped
        self.index = np.flatnonzero(keep)
        self.lengths = np.minimum(n[self.index], seq_len)
        stats.examples, stats.tokens = len(self.index), int(self.lengths.sum())
        if loss_on == "all":
            stats.loss_tokens = stats.tokens
        else:
            whole = keep & ~truncated
            cut = sum(int(corpus.loss_mask[corpus.offsets[j]:corpus.offsets[j] + seq_len].sum())
                      for j in np.flatnonzero(truncated))
            stats.loss_tokens = int(cols["loss_count"][whole].sum()) + cut
        counts = np.bincount(cols["kind"][self.index], minlength=len(KINDS))
        stats.by_kind = dict(sorted((KINDS[k], int(c)) for k, c in enumerate(counts) if c))
        self.stats = stats
        self.max_token = int(cols["max_id"][self.index].max(initial=-1))

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        j = self.index[i]
        lo = self.corpus.offsets[j]
        hi = lo + self.lengths[i]
        tokens = np.asarray(self.corpus.tokens[lo:hi], np.int32)
        if self.loss_on == "all":
            return {"tokens": tokens, "loss_mask": np.ones(len(tokens), np.int32)}
        return {"tokens": tokens, "loss_mask": np.asarray(self.corpus.loss_mask[lo:hi], np.int32)}

    @property
    def cache_dir(self) -> Path | None:
        """Where plans computed from these lengths may be cached (beside the token store), if anywhere."""
        return None if self.corpus.directory is None else self.corpus.directory / "plans"


# -- building and opening ---------------------------------------------------------------------------------------


def _roots(curated_dir: Path) -> list[Path]:
    """Where stores of a curated directory live: beside its shards, else (a read-only curated directory) in the
    user cache, under a hash of the directory's path."""
    where = hashlib.sha256(str(curated_dir.resolve()).encode()).hexdigest()[:16]
    return [curated_dir / STORE_DIR, cache_dir() / "token_stores" / where]


def _writable_root(curated_dir: Path) -> Path:
    for root in _roots(curated_dir):
        try:
            root.mkdir(parents=True, exist_ok=True)
            probe = root / f".probe-{uuid.uuid4().hex}"
            probe.touch()
            probe.unlink()
            return root
        except OSError:
            continue
    raise OSError(f"{curated_dir}: cannot write a token store there nor in the cache directory")


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on `path` (processes of one host building the same store wait for each other); where the
    filesystem has no locks, none: the atomic rename alone keeps concurrent builds harmless."""
    import fcntl

    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError:
            pass
        yield


def _valid(directory: Path, key: str) -> bool:
    try:
        meta = json.loads((directory / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return meta.get("key") == key and meta.get("format") == FORMAT


def _shard_paths(curated_dir: Path) -> list[Path]:
    return shard_paths(curated_dir)


def build_token_store(curated_dir: str | Path, tokenizer, *, workers: int | None = None, progress: bool | None = None,
                      chunk: int | None = None) -> TokenCorpus:
    """Tokenize every record of a curated directory's shards into a token store (see the module docstring) and
    return it opened. Records stream through (`chunk` at a time); with `workers` > 1 (default: the CPU count for
    PARALLEL_FROM records and more) spawned processes encode chunks in parallel. Returns the existing store when
    another process finished the same one first."""
    curated_dir = Path(curated_dir)
    paths = _shard_paths(curated_dir)
    key = store_key(tokenizer_fingerprint(tokenizer), shard_fingerprint(paths))
    return _build(curated_dir, paths, key, tokenizer, workers, progress, chunk)


def _build(curated_dir, paths, key, tokenizer, workers, progress, chunk) -> TokenCorpus:
    import grain
    from tqdm.auto import tqdm

    def fill(tmp: Path) -> dict:
        source = grain.sources.ArrayRecordDataSource([str(p) for p in paths])
        n = len(source)
        count = workers if workers is not None else (os.cpu_count() or 1) if n >= PARALLEL_FROM else 1
        size = chunk or max(1000, min(20_000, -(-n // (4 * max(count, 1)))))
        tasks = [(start, min(n, start + size)) for start in range(0, n, size)]
        count = max(1, min(count, len(tasks)))
        log.info("token store %s: tokenizing %d records of %s (%d process%s)", key, n, curated_dir, count,
                 "es" if count > 1 else "")
        return _write(tmp, source, tasks, tokenizer, count, paths,
                      tqdm(total=n, desc="tokenizing curated records", unit="record",
                           disable=None if progress is None else not progress))

    return TokenCorpus.load(_store(curated_dir, paths, key, tokenizer_fingerprint(tokenizer), fill))


def _store(curated_dir: Path, paths: list[Path], key: str, tokenizer_print: str, fill) -> Path:
    """The store `key` of these shards: the existing one, or `fill(tmp)` (which writes the files and returns the
    meta counts) renamed into place; under the lock, stale stores removed after."""
    shards = shard_fingerprint(paths)
    root = _writable_root(curated_dir)
    final = root / key
    with _locked(root / f".lock-{key}"):
        if _valid(final, key):
            return final
        for partial in [*root.glob(f".tmp-{key}-*"), final]:  # a killed writer's leftovers (we hold the lock)
            shutil.rmtree(partial, ignore_errors=True)
        started = time.perf_counter()
        tmp = root / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            meta = fill(tmp)
            meta.update(format=FORMAT, key=key, tokenizer=tokenizer_print, shards=shards,
                        built_seconds=round(time.perf_counter() - started, 2))
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
            try:
                tmp.rename(final)
            except OSError:  # another host renamed the same store first
                if not _valid(final, key):
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("token store %s: %d records, %d tokens in %.1f s", key, meta["records"], meta["tokens"],
                 time.perf_counter() - started)
    _remove_stale(root, key, shards)
    return final


# -- built in parts, by curation's tasks ------------------------------------------------------------------------


class StorePart:
    """Records tokenized into a part of a token store, batch by batch, in a directory of their own: curation's
    per-unit tasks write one each, and `assemble_token_store` joins them, in record order, into the store
    `build_token_store` would have written (the same files; encoding does not depend on the batch)."""

    def __init__(self, directory: Path, tokenizer):
        directory.mkdir(parents=True, exist_ok=True)
        self.directory, self.tokenizer = directory, tokenizer
        self.tokens, self.masks = open(directory / "tokens", "wb"), open(directory / "loss_mask", "wb")
        self.lengths, self.columns, self.unsupported = [], {name: [] for name in COLUMNS}, None

    def add(self, records: list[Record]) -> None:
        encoder = _Encoder(self.tokenizer)
        encoder.add_many(records)
        done = encoder.finish()
        done["tokens"].astype(np.int32).tofile(self.tokens)
        done["loss_mask"].astype(np.uint8).tofile(self.masks)
        self.lengths.append(done["lengths"])
        for name in COLUMNS:
            self.columns[name].append(done["columns"][name])
        self.unsupported = self.unsupported or done["unsupported"]

    def close(self) -> np.ndarray:
        """Writes the part's per-record columns; returns its records' token lengths."""
        self.tokens.close()
        self.masks.close()
        lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, np.int64)
        np.save(self.directory / "lengths.npy", lengths)
        for name, dtype in COLUMNS.items():
            np.save(self.directory / f"{name}.npy", np.concatenate(self.columns[name]).astype(dtype)
                    if self.columns[name] else np.zeros(0, dtype))
        (self.directory / "part.json").write_text(json.dumps({"unsupported_template": self.unsupported}))
        return lengths


def assemble_token_store(curated_dir: str | Path, tokenizer_print: str, parts: list[Path]) -> Path:
    """The token store of a curated directory's shards from the `StorePart`s of its records, in order (written by
    tasks; `tokenizer_print` is `tokenizer_fingerprint` of the tokenizer they used). Streams the parts: its memory
    does not grow with the records. Returns the store's directory."""
    curated_dir = Path(curated_dir)
    paths = _shard_paths(curated_dir)
    key = store_key(tokenizer_print, shard_fingerprint(paths))
    return _store(curated_dir, paths, key, tokenizer_print, lambda tmp: _join(tmp, parts))


def _join(tmp: Path, parts: list[Path]) -> dict:
    counts = [len(np.load(part / "lengths.npy", mmap_mode="r")) for part in parts]
    n, tokens, max_token, unsupported = sum(counts), 0, -1, None
    outputs = {name: _npy_writer(tmp / f"{name}.npy", dtype, n) for name, dtype in COLUMNS.items()}
    offsets = _npy_writer(tmp / "offsets.npy", np.int64, n + 1)
    np.zeros(1, np.int64).tofile(offsets)
    with open(tmp / "tokens", "wb") as all_tokens, open(tmp / "loss_mask", "wb") as all_masks:
        for part in parts:
            for name, out in (("tokens", all_tokens), ("loss_mask", all_masks)):
                with open(part / name, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
            lengths = np.load(part / "lengths.npy")
            (tokens + np.cumsum(lengths)).astype(np.int64).tofile(offsets)
            tokens += int(lengths.sum())
            for name, out in outputs.items():
                column = np.load(part / f"{name}.npy")
                column.tofile(out)
                if name == "max_id":
                    max_token = max(max_token, int(column.max(initial=-1)))
            unsupported = unsupported or json.loads((part / "part.json").read_text())["unsupported_template"]
    for out in [*outputs.values(), offsets]:
        out.close()
    return {"records": n, "tokens": tokens, "max_token": max_token, "unsupported_template": unsupported}


def _npy_writer(path: Path, dtype, length: int):
    """An open .npy file of `length` items of `dtype`, its header written: the caller appends the raw items."""
    f = open(path, "wb")
    np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                             "fortran_order": False, "shape": (length,)})
    return f


def _encoded(source, tasks, tokenizer, workers: int, paths):
    """The tasks' encodings, in order: from `workers` spawned processes (a fresh interpreter each: no JAX or
    tokenizer state forked), or in this process. If the pool breaks (a worker that cannot start, say from a
    script read on stdin), the rest is encoded here."""
    done = 0
    if workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        try:
            with ProcessPoolExecutor(workers, multiprocessing.get_context("spawn"), _init_worker,
                                     (pickle.dumps(tokenizer), [str(p) for p in paths])) as pool:
                for result in pool.map(_encode_in_worker, tasks):
                    yield result
                    done += 1
        except BrokenProcessPool as e:
            log.warning("token store: the worker processes failed (%s); encoding in this process", e)
    for task in tasks[done:]:
        yield _encode_range(tokenizer, source, paths, *task)


def _write(tmp: Path, source, tasks, tokenizer, workers: int, paths, bar) -> dict:
    """Encode the tasks' record ranges in order into tmp's files; returns the meta counts."""
    columns = {name: [] for name in COLUMNS}
    lengths, unsupported = [], None
    with open(tmp / "tokens", "wb") as tokens, open(tmp / "loss_mask", "wb") as masks, bar:
        for done in _encoded(source, tasks, tokenizer, workers, paths):
            done["tokens"].astype(np.int32).tofile(tokens)
            done["loss_mask"].astype(np.uint8).tofile(masks)
            lengths.append(done["lengths"])
            for name in COLUMNS:
                columns[name].append(done["columns"][name])
            unsupported = unsupported or done["unsupported"]
            bar.update(len(done["lengths"]))
    lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    np.save(tmp / "offsets.npy", np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    for name, dtype in COLUMNS.items():
        np.save(tmp / f"{name}.npy", np.concatenate(columns[name]).astype(dtype) if columns[name]
                else np.zeros(0, dtype))
    max_ids = np.concatenate(columns["max_id"]) if columns["max_id"] else np.zeros(0, np.int32)
    return {"records": int(len(lengths)), "tokens": int(lengths.sum()), "max_token": int(max_ids.max(initial=-1)),
            "unsupported_template": unsupported}


def _remove_stale(root: Path, key: str, shards: list[list]) -> None:
    """Delete stores of shards that no longer exist (stores of other tokenizers over these shards stay)."""
    for other in root.iterdir():
        if other.name == key or other.name.startswith(".") or not other.is_dir():
            continue
        try:
            meta = json.loads((other / "meta.json").read_text())
        except (OSError, ValueError):
            continue
        if meta.get("shards") != shards:
            log.info("token store %s: removing %s (built for other shards)", key, other)
            shutil.rmtree(other, ignore_errors=True)
            (root / f".lock-{other.name}").unlink(missing_ok=True)


def open_token_store(curated_dir: str | Path, tokenizer, *, build: bool = True, workers: int | None = None,
                     progress: bool | None = None) -> TokenCorpus:
    """The token store of these shards and this tokenizer, memory-mapped; built first (logged, with a progress
    bar) when there is none or only stale ones (other shards or another tokenizer)."""
    curated_dir = Path(curated_dir)
    paths = _shard_paths(curated_dir)
    key = store_key(tokenizer_fingerprint(tokenizer), shard_fingerprint(paths))
    for root in _roots(curated_dir):
        if _valid(root / key, key):
            return TokenCorpus.load(root / key)
    if not build:
        raise MissingInput(f"{curated_dir}: no token store for these shards and this tokenizer (key {key})")
    log.info("no token store for %s with this tokenizer yet (key %s): building it once", curated_dir, key)
    return _build(curated_dir, paths, key, tokenizer, workers, progress, None)

