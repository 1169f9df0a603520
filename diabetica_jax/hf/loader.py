"""Load a Hugging Face Qwen checkpoint directory straight into (sharded) model parameters.

Everything that can be wrong with the directory is checked from config.json and the safetensors
headers before a single tensor is read: missing or unexpected weights, shapes that disagree with
the config, truncated files, pickle checkpoints. Then each tensor is read, re-laid out per the
weight table, and placed directly into its final sharding; per-layer tensors are written one layer
at a time into a preallocated, donated stacked buffer, so host memory holds one tensor at a time.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from diabetica_jax.hf.config_json import config_from_file
from diabetica_jax.hf.errors import HFCheckpointError
from diabetica_jax.hf.safetensors_io import SafetensorsFile
from diabetica_jax.hf.weight_map import TIED_DUPLICATE, WeightEntry, hf_names
from diabetica_jax.model.config import ConfigError, QwenConfig
from diabetica_jax.model.factory import abstract_model
from diabetica_jax.model.qwen import Qwen
from diabetica_jax.model.runtime import RuntimeConfig
from diabetica_jax.parallel.rules import variable_spec

log = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
PICKLE_PATTERNS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt")


class _SafetensorsSource:
    """Where each HF tensor lives: tensor name -> open safetensors file."""

    def __init__(self, files: dict[str, SafetensorsFile]):
        self.files = files

    def names(self) -> set[str]:
        return set(self.files)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.files[name].tensors[name].shape

    def where(self, name: str) -> Path:
        return self.files[name].path

    def read(self, name: str) -> np.ndarray:
        return self.files[name].read(name)

    def close(self) -> None:
        for f in set(self.files.values()):
            f.close()


class _PickleSource:
    """Tensors from explicitly allowed PyTorch pickle files (torch.load with weights_only=True)."""

    def __init__(self, files: list[Path]):
        import torch  # only on this explicit opt-in path

        self.tensors: dict[str, np.ndarray] = {}
        self.origin: dict[str, Path] = {}
        for f in files:
            for name, t in torch.load(f, map_location="cpu", weights_only=True, mmap=True).items():
                self.tensors[name] = (t.float() if t.dtype == torch.bfloat16 else t).numpy()
                self.origin[name] = f

    def names(self) -> set[str]:
        return set(self.tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.tensors[name].shape)

    def where(self, name: str) -> Path:
        return self.origin[name]

    def read(self, name: str) -> np.ndarray:
        return self.tensors[name]

    def close(self) -> None:
        self.tensors.clear()


def read_config(path: str | Path) -> QwenConfig:
    path = Path(path)
    if not path.is_dir():
        raise HFCheckpointError(f"{path}: checkpoint directory not found")
    try:
        return config_from_file(path / "config.json")
    except ConfigError as e:
        raise HFCheckpointError(str(e)) from e


def _open_weights(path: Path, allow_pickle: bool) -> _SafetensorsSource | _PickleSource:
    index_path, single_path = path / INDEX_FILE, path / SINGLE_FILE
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise HFCheckpointError(f"{index_path}: not a valid safetensors index ({e!r})") from e
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
            raise HFCheckpointError(f"{index_path}: weight_map: expected an object of tensor name -> file name")
        opened: dict[str, SafetensorsFile] = {}
        files: dict[str, SafetensorsFile] = {}
        for name, filename in weight_map.items():
            if filename not in opened:
                if not (path / filename).is_file():
                    raise HFCheckpointError(f"{index_path}: tensor {name!r} is in {filename}, which is missing")
                opened[filename] = SafetensorsFile(path / filename)
            if name not in opened[filename].tensors:
                raise HFCheckpointError(f"{path / filename}: tensor {name!r} listed in {INDEX_FILE} is not in the file")
            files[name] = opened[filename]
        return _SafetensorsSource(files)
    if single_path.is_file():
        f = SafetensorsFile(single_path)
        return _SafetensorsSource({name: f for name in f.keys()})
    pickles = [p for pattern in PICKLE_PATTERNS for p in sorted(path.glob(pattern))]
    if pickles:
        if not allow_pickle:
            raise HFCheckpointError(
                f"{pickles[0]}: pickle checkpoints can run arbitrary code and are refused; convert it to "
                f"safetensors, or pass allow_pickle=True (--allow-pickle) if you trust its origin"
            )
        return _PickleSource(pickles)
    raise HFCheckpointError(f"{path}: no {SINGLE_FILE} or {INDEX_FILE} found")


def _expected_shape(variable: nnx.Variable, entry: WeightEntry) -> tuple[int, ...]:
    shape = tuple(variable.shape[1:] if entry.per_layer else variable.shape)
    return entry.layout.hf_shape(shape)


def _validate(path: Path, cfg: QwenConfig, source, params) -> None:
    expected = {name: (entry, layer) for name, entry, layer in hf_names(cfg)}
    present = source.names()
    missing = sorted(set(expected) - present)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise HFCheckpointError(f"{path}: missing weight {missing[0]!r}{more} required by config.json")
    unexpected = sorted(present - set(expected) - ({TIED_DUPLICATE} if cfg.tie_word_embeddings else set()))
    if unexpected:
        where = source.where(unexpected[0])
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise HFCheckpointError(f"{where}: unexpected weight {unexpected[0]!r}{more} that config.json does not describe")
    for name, (entry, _) in expected.items():
        want = _expected_shape(_variable_at(params, entry.param_path), entry)
        got = tuple(source.shape(name))
        if got != want:
            raise HFCheckpointError(f"{source.where(name)}: tensor {name!r} has shape {list(got)} but config.json implies {list(want)}")


def _variable_at(state, path):
    node = state
    for key in path:
        node = node[key]
    return node


def load(
    path: str | Path,
    mesh: Mesh | None = None,
    runtime: RuntimeConfig = RuntimeConfig(),
    allow_pickle: bool = False,
    progress: bool = True,
) -> tuple[Qwen, QwenConfig]:
    """Model and config from an HF checkpoint directory (config.json + safetensors).

    The model computes as `runtime` says; its parameters are stored in `runtime.param_dtype` (float32 by
    default, whatever the checkpoint's dtype). With `mesh`, every parameter lands in the sharding the rules
    give it; without, on the default device.
    """
    path = Path(path)
    cfg = read_config(path)
    source = _open_weights(path, allow_pickle)
    graphdef, abstract_state = nnx.split(abstract_model(cfg, runtime))
    try:
        _validate(path, cfg, source, abstract_state)
        values = _materialise(cfg, source, abstract_state, mesh, progress)
    finally:
        source.close()
    nnx.replace_by_pure_dict(abstract_state, values)
    return nnx.merge(graphdef, abstract_state), cfg


def _sharding(variable: nnx.Variable, mesh: Mesh | None) -> jax.sharding.Sharding:
    if mesh is None:
        return jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return NamedSharding(mesh, variable_spec(variable, mesh))


def _place(host: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
    """Each device receives only its own slice of the host tensor (works across hosts too)."""
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _materialise(cfg: QwenConfig, source, state, mesh: Mesh | None, progress: bool) -> dict:
    pure: dict = {}
    layer_names: dict[tuple[str, ...], list[tuple[str, int]]] = {}
    entries: dict[tuple[str, ...], WeightEntry] = {}
    for name, entry, layer in hf_names(cfg):
        entries[entry.param_path] = entry
        layer_names.setdefault(entry.param_path, []).append((name, layer))

    total = sum(len(v) for v in layer_names.values())
    bar = tqdm(total=total, desc="loading weights", unit="tensor", disable=not progress)
    for param_path, names in layer_names.items():
        entry, variable = entries[param_path], _variable_at(state, param_path)
        dtype = variable.get_value().dtype
        sharding = _sharding(variable, mesh)
        if not entry.per_layer:
            ((name, _),) = names
            host = entry.layout.to_param(source.read(name), tuple(variable.shape)).astype(dtype)
            value = _place(host, sharding)
        else:
            value = _stack_layers(entry, variable, names, source, sharding, mesh, dtype, bar)
        _set(pure, param_path, value)
        if not entry.per_layer:
            bar.update(1)
    bar.close()
    return pure


def _stack_layers(entry, variable, names, source, sharding, mesh, dtype, bar) -> jax.Array:
    """Allocate the stacked [layers, ...] parameter in place, then write it one layer at a time."""
    shape = tuple(variable.shape)
    if isinstance(sharding, NamedSharding):
        layer_sharding = NamedSharding(sharding.mesh, PartitionSpec(*sharding.spec[1:]))
    else:
        layer_sharding = sharding
    stacked = jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)()
    write = _layer_writer(sharding)
    for name, layer in names:
        host = entry.layout.to_param(source.read(name), shape[1:]).astype(dtype)
        stacked = write(stacked, _place(host, layer_sharding), layer)
        bar.update(1)
    return stacked


_WRITERS: dict = {}


def _layer_writer(sharding):
    if sharding not in _WRITERS:
        _WRITERS[sharding] = jax.jit(
            lambda buf, x, i: jax.lax.dynamic_update_index_in_dim(buf, x, i, 0),
            donate_argnums=0,
            out_shardings=sharding,
        )
    return _WRITERS[sharding]


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value
