"""How this process computes a model: the dtypes, the attention kernel and the rematerialisation policy.

None of it is part of the weights (config.json holds none of it): one checkpoint runs in float32 on a laptop and
in bfloat16 with remat on an accelerator. The model takes it beside its architecture (QwenConfig), and every
config that opens a model nests it as a `runtime:` section. Importing this module loads no JAX, so that the
command line can offer these choices, with their defaults, in `--help`.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from diabetica_jax.configuration import FieldError, field, shown

COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
ATTENTION_BACKENDS = ("auto", "xla", "cudnn", "splash")
# save_matmuls keeps the linear layers' outputs, save_attention the attention kernel's output (the costliest
# activation to recompute per byte kept), save_matmuls_attention both; the rest is recomputed in the backward pass
REMAT_POLICIES = ("none", "full", "save_matmuls", "save_attention", "save_matmuls_attention")


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    # The defaults are one story for every entry point (hf.load, create_model, the CLI, training, evaluation):
    # exact float32 with no rematerialisation. Accelerator configs opt into bfloat16 and remat explicitly.
    dtype: Literal[COMPUTE_DTYPES] = field("float32", "compute dtype of matmuls and attention")
    param_dtype: Literal[COMPUTE_DTYPES] = field("float32", "dtype of the weights in memory (training's master "
                                                 "weights), whatever the checkpoint's dtype")
    attention: Literal[ATTENTION_BACKENDS] = field("auto", "attention kernel; auto: the fastest this device has")
    remat: Literal[REMAT_POLICIES] = field("none", "activation rematerialisation policy (matters in training only)")
    unroll_decode: bool = field(False, "generation: run the layers unrolled in the decode step (one program per "
                                "layer, no loop around them: fewer launches per token, longer compiles)")

    def __post_init__(self):
        # build() checks these against the Literal types already; this is for configs made in Python
        for name, allowed in (("dtype", COMPUTE_DTYPES), ("param_dtype", COMPUTE_DTYPES),
                              ("attention", ATTENTION_BACKENDS), ("remat", REMAT_POLICIES)):
            if getattr(self, name) not in allowed:
                raise FieldError(name, f"{shown(getattr(self, name))} is not one of {list(allowed)}")
