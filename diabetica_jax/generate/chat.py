"""Chat: prompts through the chat template, an engine built for a tokenizer's stop tokens, and the terminal REPL."""

from __future__ import annotations

from diabetica_jax.generate.engine import Engine

STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")


def stop_and_pad(tokenizer) -> tuple[list[int], int]:
    """The token ids generation stops at and the pad id: Qwen's <|im_end|> / <|endoftext|>, Llama 3's <|eot_id|>
    (end of a chat turn) and the tokenizer's own eos (Llama 2 </s>, Llama 3 <|end_of_text|>), whichever the
    vocabulary has; the pad id is the tokenizer's, else the first stop id."""
    candidates = [tokenizer.convert_tokens_to_ids(t) for t in (*STOP_TOKENS, "<|eot_id|>")]
    candidates.append(tokenizer.eos_token_id)
    stop: list[int] = []
    for t in candidates:
        if t is not None and t != tokenizer.unk_token_id and t not in stop:
            stop.append(t)
    if not stop:
        raise ValueError("the tokenizer has no end-of-sequence token to stop generation at")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    return stop, pad


def engine_for(model, tokenizer, mesh=None) -> Engine:
    """The batch engine for `model`, stopping where the tokenizer's stop tokens say (stop_and_pad)."""
    stop, pad = stop_and_pad(tokenizer)
    return Engine(model, stop_ids=stop, pad_id=pad, mesh=mesh)


def chat_prompt(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of `messages` ready for the assistant's reply. A tokenizer without a chat template (a base
    model: Llama 2, Meditron) gets the messages' contents as plain text, one paragraph each, after its BOS."""
    if not getattr(tokenizer, "chat_template", None):
        return tokenizer.encode("\n\n".join(m["content"] for m in messages) + "\n", add_special_tokens=True)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer.encode(text, add_special_tokens=False)


def repl(engine, tokenizer, sampling, max_new_tokens: int, system: str | None = None) -> None:
    """Interactive chat in the terminal: streamed tokens, multi-turn history, /reset and /quit (or Ctrl-D)."""
    history = [{"role": "system", "content": system}] if system else []
    print("diabetica-jax chat: type a message; /reset clears the history, /quit (or Ctrl-D) leaves.")
    while True:
        try:
            text = input("\nyou> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if text in ("/quit", "/exit"):
            return
        if text == "/reset":
            history = history[:1] if system else []
            continue
        if not text:
            continue
        history.append({"role": "user", "content": text})
        print("assistant> ", end="", flush=True)
        reply: list[int] = []
        shown = ""
        for token in engine.stream(chat_prompt(tokenizer, history), max_new_tokens, sampling):
            reply.append(token)
            decoded = tokenizer.decode(reply, skip_special_tokens=True)
            print(decoded[len(shown):], end="", flush=True)  # decode the whole reply: multi-byte characters
            shown = decoded
        print()
        history.append({"role": "assistant", "content": shown})
