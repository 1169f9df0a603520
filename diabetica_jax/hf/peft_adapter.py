"""LoRA adapters in PEFT's layout, both ways: adapter_config.json + adapter_model.safetensors.

PEFT (and the trainers that write its layout: ms-swift, LLaMA-Factory, TRL) stores, per adapted linear
layer, `base_model.model.<module>.lora_A.weight` [rank, in] and `.lora_B.weight` [out, rank], and applies
y += (lora_alpha / r) x A^T B^T. The model here keeps A as [in..., rank] and B as [rank, out...], stacked over
layers, so A is laid out like the kernel it adapts (same input dims) and B like a plain [in=rank, out] kernel:
the weight table's layouts convert both. Only what this model's adapters compute is read: a PEFT feature that
changes the update (DoRA, rsLoRA, per-module ranks, biases, extra trained modules, a subset of layers) is
refused with the field that asks for it, never ignored.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from diabetica_jax.hf.errors import HFCheckpointError
from diabetica_jax.hf.exporter import _take_layer, _to_host
from diabetica_jax.hf.safetensors_io import PlannedTensor, SafetensorsFile, write_safetensors
from diabetica_jax.hf.weight_map import KERNEL, WEIGHT_TABLE, Layout
from diabetica_jax.model.config import QwenConfig
from diabetica_jax.model.lora import add_lora
from diabetica_jax.model.lora_config import LINEAR_LAYERS, LoRAConfig
from diabetica_jax.model.qwen import Qwen

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."  # PeftModel wraps the causal LM, which wraps the decoder
ALL_LINEAR = "all-linear"


@dataclass(frozen=True)
class AdapterTensor:
    name: str  # PEFT's name of the tensor
    path: tuple[str, ...]  # the LoRA parameter in the model state (stacked over layers)
    layer: int
    layout: Layout


def _kernel_entries() -> dict[str, tuple[str, Layout]]:
    """Linear layer name -> (its module path under a decoder layer, its kernel's layout)."""
    found = {}
    for entry in WEIGHT_TABLE:
        if entry.per_layer and entry.param_path[-1] == "kernel":
            module = ".".join(entry.param_path[1:-1])
            found[entry.param_path[-2]] = (module, entry.layout)
    return found


def adapter_tensors(config: QwenConfig, lora: LoRAConfig) -> Iterator[AdapterTensor]:
    """Every tensor an adapter of `lora` on a `config` model has, in PEFT's names, layer by layer."""
    kernels = _kernel_entries()
    for layer in range(config.num_layers):
        for target in lora.targets:
            module, kernel_layout = kernels[target]
            stem = f"{PREFIX}model.layers.{layer}.{module}"
            path = ("layers", *module.split("."))
            yield AdapterTensor(f"{stem}.lora_A.weight", path + ("lora_a",), layer, kernel_layout)
            yield AdapterTensor(f"{stem}.lora_B.weight", path + ("lora_b",), layer, KERNEL)


def _at(tree: dict, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


def adapter_config(lora: LoRAConfig, base_model: str | None) -> dict:
    """adapter_config.json for `lora`: the fields PEFT's LoraConfig reads, the update stated exactly."""
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": lora.rank, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout,
        "target_modules": sorted(lora.targets), "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
        "use_dora": False, "modules_to_save": None, "layers_to_transform": None, "rank_pattern": {},
        "alpha_pattern": {}, "init_lora_weights": True, "inference_mode": True,
    }


def save_adapter(model: Qwen, config: QwenConfig, path: str | Path, base_model: str | None = None,
                 dtype: np.dtype = np.dtype(np.float32)) -> Path:
    """Write `model`'s adapters (it must have some) to `path` in PEFT's layout. `base_model`: what
    adapter_config.json names as the base (PEFT loads it from there when given only the adapter)."""
    if not model.lora.rank:
        raise ValueError("the model has no LoRA adapters to export (lora.rank is 0): export the full model")
    path = Path(path)
    state = nnx.to_pure_dict(nnx.state(model, nnx.LoRAParam))
    writer = jax.process_index() == 0

    def produce(t: AdapterTensor):
        return lambda: t.layout.to_hf(_to_host(_take_layer(_at(state, t.path), t.layer))).astype(dtype)

    planned = [PlannedTensor(t.name, t.layout.hf_shape(tuple(_at(state, t.path).shape[1:])), dtype, produce(t))
               for t in adapter_tensors(config, model.lora)]
    if not writer:  # still join the gathers, in the same order
        for t in planned:
            t.produce()
        return path
    path.mkdir(parents=True, exist_ok=True)
    write_safetensors(path / ADAPTER_WEIGHTS, planned, metadata={"format": "pt"})
    (path / ADAPTER_CONFIG).write_text(json.dumps(adapter_config(model.lora, base_model), indent=2) + "\n")
    return path


def read_adapter_config(path: str | Path) -> LoRAConfig:
    """The LoRAConfig an adapter directory's adapter_config.json states; HFCheckpointError naming the
    field for anything this model's adapters cannot compute."""
    file = Path(path) / ADAPTER_CONFIG
    if not file.is_file():
        raise HFCheckpointError(f"{path}: no {ADAPTER_CONFIG}: not a PEFT adapter directory")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HFCheckpointError(f"{file}: not valid JSON: {e}") from None

    def refuse(name: str, why: str):
        raise HFCheckpointError(f"{file}: {name}: {why}")

    if data.get("peft_type") != "LORA":
        refuse("peft_type", f"is {data.get('peft_type')!r}; only LORA adapters load here")
    unsupported = {  # field -> its value that changes nothing
        "use_dora": False, "use_rslora": False, "fan_in_fan_out": False, "bias": "none",
    }
    for name, neutral in unsupported.items():
        if data.get(name, neutral) != neutral:
            refuse(name, f"is {data[name]!r}; these adapters compute the plain LoRA update ({name}: {neutral!r})")
    for name in ("rank_pattern", "alpha_pattern", "modules_to_save", "layers_to_transform", "layers_pattern"):
        if data.get(name):
            refuse(name, f"is {data[name]!r}; these adapters have one rank and alpha on every layer and train no "
                         "other module")
    targets = data.get("target_modules")
    if targets == ALL_LINEAR:
        targets = list(LINEAR_LAYERS)
    if isinstance(targets, str) or not targets:
        refuse("target_modules", f"is {targets!r}; give the linear layers by name ({list(LINEAR_LAYERS)})")
    targets = [t.rsplit(".", 1)[-1] for t in targets]  # "self_attn.q_proj" names the q_proj layers too
    unknown = sorted(set(targets) - set(LINEAR_LAYERS))
    if unknown:
        refuse("target_modules", f"{unknown} are not decoder linear layers ({list(LINEAR_LAYERS)})")
    try:
        return LoRAConfig(rank=int(data["r"]), alpha=float(data["lora_alpha"]),
                          dropout=float(data.get("lora_dropout", 0.0)),
                          targets=tuple(t for t in LINEAR_LAYERS if t in targets))
    except KeyError as e:
        refuse(e.args[0], "missing")
    except (TypeError, ValueError) as e:  # FieldError is a ValueError: it names the field
        refuse("r / lora_alpha / lora_dropout", str(e))


def _weights_file(path: Path) -> Path:
    file = path / ADAPTER_WEIGHTS
    if file.is_file():
        return file
    if (path / "adapter_model.bin").is_file():
        raise HFCheckpointError(f"{path}: adapter_model.bin is a pickle; adapters load from safetensors only "
                                "(save the adapter with safe_serialization=True)")
    raise HFCheckpointError(f"{path}: no {ADAPTER_WEIGHTS}")


def load_adapter(model: Qwen, config: QwenConfig, path: str | Path, mesh=None, lora: LoRAConfig | None = None) -> Qwen:
    """`model` (without adapters; weights shared, not copied) plus the PEFT adapter in `path`. Every tensor
    the adapter config implies must be there with its shape, and no other: HFCheckpointError names the file
    and tensor otherwise, before any adapter weight is placed. `lora`: the section the adapters are built
    with (a training run's: its dropout), which must continue the adapter's rank, alpha and targets."""
    path = Path(path)
    stated = read_adapter_config(path)
    if lora is not None and not lora.continues(stated):
        raise HFCheckpointError(f"{path}: the adapter has rank {stated.rank}, alpha {stated.alpha}, targets "
                                f"{list(stated.targets)}; the LoRA section given has {lora.rank}, {lora.alpha}, "
                                f"{list(lora.targets)}")
    lora = stated if lora is None else lora
    file = _weights_file(path)
    shell = add_lora(model, lora, mesh)  # adapters laid out (and sharded) as training would
    state = nnx.to_pure_dict(nnx.state(shell, nnx.LoRAParam))
    expected = list(adapter_tensors(config, lora))
    weights = SafetensorsFile(file)
    try:
        names = {n.replace(".default.", ".", 1) for n in weights.keys()}  # some writers keep the adapter's name
        stored = {n.replace(".default.", ".", 1): n for n in weights.keys()}
        missing = [t.name for t in expected if t.name not in names]
        extra = sorted(names - {t.name for t in expected})
        if missing:
            raise HFCheckpointError(f"{file}: missing tensor {missing[0]!r} ({len(missing)} missing) for the "
                                    f"targets {list(lora.targets)} on {config.num_layers} layers")
        if extra:
            raise HFCheckpointError(f"{file}: tensor {extra[0]!r} ({len(extra)} unexpected) is not an adapter of "
                                    f"the targets {list(lora.targets)} on {config.num_layers} layers")
        stacks: dict[tuple[str, ...], list] = {}
        for t in expected:
            leaf = _at(state, t.path)
            value = weights.read(stored[t.name])
            want = t.layout.hf_shape(tuple(leaf.shape[1:]))
            if tuple(value.shape) != want:
                raise HFCheckpointError(f"{file}: tensor {t.name!r} has shape {list(value.shape)}, this model "
                                        f"needs {list(want)} (rank {lora.rank})")
            stacks.setdefault(t.path, []).append(t.layout.to_param(value, tuple(leaf.shape[1:])))
    finally:
        weights.close()

    def place(tree: dict, prefix: tuple[str, ...] = ()) -> dict:
        out = {}
        for key, value in tree.items():
            if isinstance(value, dict):
                out[key] = place(value, prefix + (key,))
            else:
                host = np.stack(stacks[prefix + (key,)]).astype(value.dtype)
                out[key] = jax.device_put(host, value.sharding)
        return out

    graphdef, _, rest = nnx.split(shell, nnx.LoRAParam, ...)
    return nnx.merge(graphdef, place(state), rest)
