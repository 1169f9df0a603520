"""Which model a stage opens, and how it computes: the `model:` section of every config that opens one.

One spelling for every stage: `model.path` (a directory; eval also takes openai:NAME), else `model.preset` with
random weights, and `model.runtime` (dtypes, attention kernel, remat). The `--model` flag of the commands is
the shorthand of `model.path`. Training's section (train/config.py) adds where its weights start from.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from diabetica_jax.configuration import field
from diabetica_jax.model.runtime import RuntimeConfig


@dataclasses.dataclass(frozen=True)
class ModelChoice:
    path: str | None = field(None, "Hugging Face checkpoint directory (config.json + safetensors) or training run "
                             "directory (its latest checkpoint); default: the preset, with random weights", path=True)
    preset: str = field("tiny", "model preset with random weights when no path is given")
    runtime: RuntimeConfig = field(RuntimeConfig(), "how the model computes")

    # the keys this section had before `path` and `runtime` (see configuration.RENAMED_KEYS)
    RENAMED_KEYS: ClassVar[dict[str, str]] = {"hf_path": "path", "dtype": "runtime.dtype",
                                              "param_dtype": "runtime.param_dtype", "attention": "runtime.attention",
                                              "remat": "runtime.remat"}
