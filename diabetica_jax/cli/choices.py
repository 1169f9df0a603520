"""The values the argument parser offers, kept here so that parsing (and every `--help`) imports no JAX.

The evaluation tasks and modes come from `evaluation.task_names` (no imports; `evaluation.config` builds its fields
from the same tuples), the model's dtypes and attention kernels from `model.runtime` (no JAX either).
"""

from diabetica_jax.evaluation.task_names import MODES as EVAL_MODES
from diabetica_jax.evaluation.task_names import TASKS
from diabetica_jax.model.runtime import ATTENTION_BACKENDS, COMPUTE_DTYPES

# A config's kind is the folder it lives in: configs/recipes/ (the whole pipeline) or configs/train/.
CONFIG_KINDS = ("recipe", "train")

__all__ = ["ATTENTION_BACKENDS", "COMPUTE_DTYPES", "CONFIG_KINDS", "EVAL_MODES", "TASKS"]
