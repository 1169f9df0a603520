"""The Qwen family in Flax NNX, its config, attention backends and model construction.

The names below are imported when first asked for, not with the package: the command line reads
model/runtime.py (the compute dtypes and attention kernels it offers in --help), which must answer without
loading JAX, as the modules behind these names do.
"""

import importlib

_MODULE_OF = {"ConfigError": "config", "QwenConfig": "config", "Qwen": "qwen", "abstract_model": "factory",
              "create_model": "factory", "forward": "factory"}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
