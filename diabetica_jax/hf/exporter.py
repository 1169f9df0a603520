"""Write a model back to a Hugging Face checkpoint directory that `transformers` loads as is.

Tensors are gathered from the (possibly sharded, possibly multi-host) parameters one at a time,
re-laid out through the same weight table the loader uses, and streamed into safetensors shards.
Only process 0 writes files; every process takes part in the gathers.

A directory is an export once its config.json is there: every loader (transformers, `hf.load`) reads that file
first. So an export removes an earlier config.json before it writes anything, writes config.json last (to a
temporary name, then renamed), and a process killed part way (kill -9, a lost node) leaves a directory that no
loader takes for a checkpoint; exporting again into it finishes the job.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from diabetica_jax.hf.config_json import config_to_dict
from diabetica_jax.hf.safetensors_io import PlannedTensor, parse_size, plan_shards, write_safetensors
from diabetica_jax.hf.tokenizer import QWEN_MODEL_TYPES, load_tokenizer
from diabetica_jax.hf.weight_map import hf_names
from diabetica_jax.model.config import QwenConfig
from diabetica_jax.model.lora import merge_lora
from diabetica_jax.model.qwen import Qwen

EXPORT_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16),
                 "float16": np.dtype(np.float16)}
CONFIG = "config.json"
PARTIAL = ".partial"  # config.json is written under config.json.partial, then renamed
log = logging.getLogger(__name__)


def _to_host(x: jax.Array) -> np.ndarray:
    if x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


_take_layer = jax.jit(lambda stacked, i: stacked[i])


def _at(tree: dict, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


def save(
    model: Qwen,
    config: QwenConfig,
    path: str | Path,
    max_shard_size: int | str = "5GB",
    dtype: str | None = None,
    tokenizer=None,
    progress: bool = True,
    generation_config: str | Path | None = None,
) -> Path:
    """Write safetensors (sharded with an index when larger than `max_shard_size`), generation_config.json
    (a copy of the file `generation_config` names, e.g. the source checkpoint's, else one derived from
    `config`), the tokenizer files (`tokenizer`, else the embedded Qwen2 default for Qwen models; other
    families get no tokenizer files unless one is given), and config.json last (see the module docstring).

    An earlier export in `path` is replaced: its config.json goes first, then its weight files and index;
    other files there are kept. `dtype` None writes the weights in the dtype the source checkpoint stored
    them in (`config.source_dtype`; float32 for random presets), so load -> save is exact by default;
    a smaller dtype is an explicit choice."""
    if dtype is None:
        dtype = config.source_dtype
        if dtype not in EXPORT_DTYPES:  # e.g. "auto" or float64 in a hand-written config.json
            log.warning("source dtype %r cannot be exported; writing float32", dtype)
            dtype = "float32"
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"export dtype {dtype!r} is not one of {sorted(EXPORT_DTYPES)}")
    np_dtype = EXPORT_DTYPES[dtype]
    path = Path(path)
    writer = jax.process_index() == 0
    if writer:
        path.mkdir(parents=True, exist_ok=True)
        _unfinish(path)

    if model.lora.rank:  # HF checkpoints hold plain weights: fold the adapters in
        model = merge_lora(model)
    state = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    bar = tqdm(total=sum(1 for _ in hf_names(config)), desc="exporting", unit="tensor", disable=not progress or not writer)

    def producer(entry, layer):
        def produce() -> np.ndarray:
            param = _at(state, entry.param_path)
            value = _take_layer(param, layer) if layer is not None else param
            bar.update(1)
            return entry.layout.to_hf(_to_host(value)).astype(np_dtype)

        return produce

    planned = []
    for name, entry, layer in hf_names(config):
        param = _at(state, entry.param_path)
        shape = param.shape[1:] if layer is not None else param.shape
        planned.append(PlannedTensor(name, entry.layout.hf_shape(tuple(shape)), np_dtype, producer(entry, layer)))

    shards = plan_shards(planned, parse_size(max_shard_size))
    if len(shards) == 1:
        names = ["model.safetensors"]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for filename, shard in zip(names, shards):
        if writer:
            write_safetensors(path / filename, shard, metadata={"format": "pt"})
        else:  # still join the collective gathers, in the same order
            for t in shard:
                t.produce()
    bar.close()

    if writer:
        if len(shards) > 1:
            index = {
                "metadata": {"total_size": sum(t.nbytes for t in planned)},
                "weight_map": {t.name: f for f, shard in zip(names, shards) for t in shard},
            }
            (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        if generation_config is not None:
            (path / "generation_config.json").write_bytes(Path(generation_config).read_bytes())
        else:
            (path / "generation_config.json").write_text(json.dumps(_generation_config(config), indent=2) + "\n")
        if tokenizer is None and config.family not in QWEN_MODEL_TYPES:
            # the embedded default is Qwen2's: it does not fit another family's vocabulary
            log.warning("no tokenizer given for a %s model: %s gets no tokenizer files; copy the source "
                        "checkpoint's tokenizer there", config.family, path)
        else:
            (tokenizer or load_tokenizer(None)).save_pretrained(str(path))
        partial = path / (CONFIG + PARTIAL)
        partial.write_text(json.dumps(config_to_dict(config, torch_dtype=dtype), indent=2) + "\n")
        os.replace(partial, path / CONFIG)  # the export is complete from here on
    return path


def _unfinish(path: Path) -> None:
    """Make `path` no checkpoint until this export is done: its config.json first, then the weights and index of
    an earlier (or killed) export, whose shard count may differ from this one's."""
    (path / CONFIG).unlink(missing_ok=True)
    (path / (CONFIG + PARTIAL)).unlink(missing_ok=True)
    for old in [path / "model.safetensors", path / "model.safetensors.index.json",
                *path.glob("model-*-of-*.safetensors")]:
        old.unlink(missing_ok=True)


def _generation_config(config: QwenConfig) -> dict:
    out = {"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id}
    if config.family in QWEN_MODEL_TYPES:  # Qwen's <|endoftext|>; other families name no pad token
        out["pad_token_id"] = 151643
    out["do_sample"] = False
    return out
