"""A checkpoint's generation_config.json: the decoding `transformers.generate` uses when a call names none."""

from __future__ import annotations

import json
from pathlib import Path

from diabetica_jax.configuration import InputError

# transformers' GenerationConfig defaults, for keys a sampling generation_config.json leaves out
HF_SAMPLING_DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "top_k": 50, "repetition_penalty": 1.0}
# a null top_k / top_p in generation_config.json: transformers leaves that filter out
FILTER_OFF = {"top_k": 0, "top_p": 1.0}


def read_generation_config(path: str | Path | None) -> dict:
    """The decoding a transformers checkpoint's `generate()` uses with no sampling arguments, from its
    generation_config.json (`path`: the file or the directory holding it): {'do_sample', 'temperature',
    'top_p', 'top_k', 'repetition_penalty', 'source'}. Sampling keys the file leaves out take transformers'
    defaults (temperature 1.0, top_p 1.0, top_k 50, repetition_penalty 1.0); no file or `do_sample` false or
    absent: greedy (with the file's repetition_penalty, which transformers applies to greedy search too).
    A file that is there but is no JSON object is an InputError naming it, not a silent fall back to greedy."""
    if path is None:
        return {"do_sample": False, "repetition_penalty": 1.0, "source": "no model directory: greedy"}
    file = Path(path)
    if file.is_dir():
        file = file / "generation_config.json"
    if not file.exists():
        return {"do_sample": False, "repetition_penalty": 1.0, "source": f"{file} not found: greedy"}
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"{file}: not a readable JSON file ({e}); fix or delete it (without it: greedy "
                         "decoding)") from None
    if not isinstance(data, dict):
        raise InputError(f"{file}: expected a JSON object of decoding settings, got {type(data).__name__}")
    do_sample = bool(data.get("do_sample", False))
    keys = HF_SAMPLING_DEFAULTS if do_sample else {"repetition_penalty": 1.0}
    values = {k: data.get(k, default) for k, default in keys.items()}
    # transformers reads null as "this filter off" (top_k 0 / top_p 1.0 here); a null temperature or
    # repetition_penalty as its default
    values = {k: (FILTER_OFF.get(k, keys[k]) if v is None else v) for k, v in values.items()}
    return {"do_sample": do_sample, **values, "source": str(file)}
