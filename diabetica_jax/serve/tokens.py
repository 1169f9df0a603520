"""The tokenizer over HTTP, as vLLM serves it: POST /tokenize, POST /detokenize and GET /tokenizer_info.

Clients that send token ids need the server's own tokenizer: lm-evaluation-harness's `local-completions`
finds these routes by itself and tokenizes through them, so it needs no local copy of the tokenizer and
cannot drift from the one the model was trained with.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool

from diabetica_jax.serve.protocol import APIError, as_integer, check_token_ids, parse_messages


async def tokenize(served, body: dict) -> dict:
    """{"prompt": text, "add_special_tokens": bool} or {"messages": [...]} (the chat template applied)."""
    _check_model(served, body)
    add_special = body.get("add_special_tokens", True)
    if not isinstance(add_special, bool):
        raise APIError(400, "'add_special_tokens' must be true or false", "add_special_tokens")
    if "messages" in body:
        tokens = await run_in_threadpool(served.chat_tokens, parse_messages(body.get("messages")))
    else:
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise APIError(400, "'prompt' must be a string (or send 'messages')", "prompt")
        tokens = await run_in_threadpool(served.tokenizer.encode, prompt, add_special_tokens=add_special)
    return {"count": len(tokens), "max_model_len": served.context_length, "tokens": tokens}


def detokenize(served, body: dict) -> dict:
    _check_model(served, body)
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or any(as_integer(t) is None or t < 0 for t in tokens):
        raise APIError(400, "'tokens' must be a list of token ids", "tokens")
    tokens = [as_integer(t) for t in tokens]
    check_token_ids(tokens, served.vocab_size, "tokens")
    return {"prompt": served.tokenizer.decode(tokens)}


def tokenizer_info(served) -> dict:
    tokenizer = served.tokenizer
    return {"tokenizer_class": type(tokenizer).__name__, "eos_token": tokenizer.eos_token,
            "bos_token": tokenizer.bos_token, "pad_token": tokenizer.pad_token,
            "chat_template": getattr(tokenizer, "chat_template", None), "model_max_length": served.context_length,
            "vocab_size": served.vocab_size}


def _check_model(served, body: dict) -> None:
    model = body.get("model")
    if model is not None and model != served.name:
        raise APIError(404, f"model {model!r} is not served here; this server has {served.name!r}", "model",
                       "model_not_found", kind="not_found_error")
