"""Read and write the safetensors format directly: lazy, memory-mapped reads and streaming writes.

Format: 8-byte little-endian header length N, N bytes of JSON
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then the raw
little-endian tensor bytes. Reading maps the file and copies one tensor at a time; writing lays out
the header from shapes alone and streams each tensor as it is produced, so neither direction ever
holds more than one tensor in host memory.
"""

from __future__ import annotations

import json
import math
import mmap
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np

from diabetica_jax.hf.errors import HFCheckpointError

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}

_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


class SafetensorsFile:
    """Header parsed and validated on open; tensors read on demand from a memory map."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise HFCheckpointError(f"{self.path}: file not found")
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            raw_len = f.read(8)
            if len(raw_len) < 8:
                raise HFCheckpointError(f"{self.path}: truncated safetensors file ({size} bytes, no header)")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > min(_MAX_HEADER, size - 8):
                raise HFCheckpointError(
                    f"{self.path}: truncated or corrupt safetensors file (header claims {header_len} bytes, "
                    f"file has {size})"
                )
            try:
                header = json.loads(f.read(header_len))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise HFCheckpointError(f"{self.path}: corrupt safetensors header ({e})") from e
        self.metadata = header.pop("__metadata__", None) or {}
        self.data_start = 8 + header_len
        self.tensors: dict[str, TensorInfo] = {}
        for name, info in header.items():
            try:
                dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
            except (KeyError, TypeError, ValueError) as e:
                raise HFCheckpointError(f"{self.path}: tensor {name!r} has a malformed header entry") from e
            if dtype not in DTYPES:
                raise HFCheckpointError(f"{self.path}: tensor {name!r} has unsupported dtype {dtype}")
            expected = math.prod(shape) * DTYPES[dtype].itemsize
            if end - begin != expected:
                raise HFCheckpointError(
                    f"{self.path}: tensor {name!r} spans {end - begin} bytes but {dtype}{list(shape)} needs {expected}"
                )
            if self.data_start + end > size:
                raise HFCheckpointError(
                    f"{self.path}: truncated safetensors file: tensor {name!r} ends at byte {self.data_start + end} "
                    f"but the file has {size} bytes"
                )
            self.tensors[name] = TensorInfo(name, dtype, shape, begin, end)
        self._mmap: mmap.mmap | None = None

    def keys(self) -> list[str]:
        return list(self.tensors)

    def read(self, name: str) -> np.ndarray:
        """A copy of one tensor in its stored dtype."""
        info = self.tensors[name]
        if self._mmap is None:
            with open(self.path, "rb") as f:
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        view = np.frombuffer(
            self._mmap, dtype=DTYPES[info.dtype].newbyteorder("<"), count=math.prod(info.shape),
            offset=self.data_start + info.begin,
        )
        return view.reshape(info.shape).copy()

    def close(self) -> None:
        if self._mmap is not None:
            self._mmap.close()
            self._mmap = None


@dataclass(frozen=True)
class PlannedTensor:
    """A tensor to write: its name, shape and dtype now; its values later, from `produce()`."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    produce: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def write_safetensors(path: str | Path, tensors: Sequence[PlannedTensor], metadata: dict[str, str] | None = None):
    """Write one safetensors file, producing and streaming one tensor at a time."""
    header: dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for t in tensors:
        header[t.name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # keep tensor data 8-byte aligned
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for t in tensors:
            value = np.ascontiguousarray(t.produce(), dtype=t.dtype.newbyteorder("<"))
            if value.shape != t.shape:
                raise HFCheckpointError(f"{path}: tensor {t.name!r} produced shape {value.shape}, planned {t.shape}")
            f.write(value.tobytes())
    tmp.replace(path)


def plan_shards(tensors: Iterable[PlannedTensor], max_shard_size: int) -> list[list[PlannedTensor]]:
    """Split tensors, in order, into shards of at most `max_shard_size` bytes (a larger tensor gets its own)."""
    shards: list[list[PlannedTensor]] = [[]]
    used = 0
    for t in tensors:
        if shards[-1] and used + t.nbytes > max_shard_size:
            shards.append([])
            used = 0
        shards[-1].append(t)
        used += t.nbytes
    return [s for s in shards if s]


def parse_size(size: int | str) -> int:
    """'5GB', '500MB', '2GiB' or an int (bytes)."""
    if isinstance(size, int):
        return size
    text = size.strip().upper()
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "KB": 10**3, "MB": 10**6, "GB": 10**9, "B": 1}
    for unit, factor in units.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)
