"""The values the argument parser offers, kept here so that parsing (and every `--help`) imports no JAX.

The evaluation tasks and modes come from `evaluation.task_names` (no imports; `evaluation.config` builds its fields
from the same tuples). The model's dtypes and attention kernels mirror `model.config`, which loads JAX: those
copies are checked equal to the originals in tests/test_cli.py, so they cannot drift apart unnoticed.
"""

from diabetica_jax.evaluation.task_names import MODES as EVAL_MODES
from diabetica_jax.evaluation.task_names import TASKS

COMPUTE_DTYPES = ("float32", "bfloat16", "float16")  # model.config.COMPUTE_DTYPES
ATTENTION_BACKENDS = ("auto", "xla", "cudnn", "splash")  # model.config.ATTENTION_BACKENDS
DEFAULT_DTYPE = "float32"  # model.config.DEFAULT_RUNTIME["dtype"]
DEFAULT_ATTENTION = "auto"  # model.config.DEFAULT_RUNTIME["attention"]
# A config's kind is the folder it lives in: configs/recipes/ (the whole pipeline) or configs/train/.
CONFIG_KINDS = ("recipe", "train")

__all__ = ["ATTENTION_BACKENDS", "COMPUTE_DTYPES", "CONFIG_KINDS", "DEFAULT_ATTENTION", "DEFAULT_DTYPE", "EVAL_MODES",
           "TASKS"]
