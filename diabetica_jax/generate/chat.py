"""Prompts through the chat template, and an engine built for a tokenizer's stop tokens."""

from __future__ import annotations

from diabetica_jax.generate.engine import Engine

STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")


def engine_for(model, tokenizer, mesh=None) -> Engine:
    stop = [tokenizer.convert_tokens_to_ids(t) for t in STOP_TOKENS]
    stop = [t for t in stop if t is not None and t != tokenizer.unk_token_id] or [tokenizer.eos_token_id]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    return Engine(model, stop_ids=stop, pad_id=pad, mesh=mesh)


def chat_prompt(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer.encode(text, add_special_tokens=False)
