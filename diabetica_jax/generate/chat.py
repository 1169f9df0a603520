"""Chat: prompts through the chat template, an engine built for a tokenizer's stop tokens, and the terminal REPL."""

from __future__ import annotations

from collections.abc import Callable

from diabetica_jax.generate.sized import SizedBatcher

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


def engine_for(model, tokenizer, mesh=None, slots: int = 16) -> SizedBatcher:
    """The generation engine for `model` (blocking `generate` of many prompts, `stream` of one), stopping where
    the tokenizer's stop tokens say (stop_and_pad); `slots`: the most prompts decoded together."""
    stop, pad = stop_and_pad(tokenizer)
    return SizedBatcher(model, stop, pad, slots=slots, mesh=mesh)


def chat_prompt(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of `messages` ready for the assistant's reply. A tokenizer without a chat template (a base
    model: Llama 2, Meditron) gets the messages' contents as plain text, one paragraph each, after its BOS."""
    if not getattr(tokenizer, "chat_template", None):
        return tokenizer.encode("\n\n".join(m["content"] for m in messages) + "\n", add_special_tokens=True)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer.encode(text, add_special_tokens=False)


CHAT_HELP = """commands (anything else is a message to the model):
  /help          this list
  /reset         forget the conversation (the system prompt stays)
  /system TEXT   set the system prompt and start a new conversation (/system alone: none)
  /exit, /quit   leave (or Ctrl-D)
  //TEXT         send a message that begins with /"""


def repl(engine, tokenizer, sampling, max_new_tokens: int, system: str | None = None,
         read: Callable[[str], str] | None = None, write: Callable[..., None] | None = None) -> None:
    """Interactive chat in the terminal: streamed tokens, multi-turn history. A line starting with / is a
    command handled here (CHAT_HELP), never sent to the model: a mistyped command would otherwise be answered
    as a question. `read` and `write` default to input() and print(), looked up now (tests script either)."""
    read, write = read or input, write or print
    history: list[dict[str, str]] = []
    write("diabetica-jax chat: type a message; /help lists the commands, /quit (or Ctrl-D) leaves.")
    while True:
        try:
            text = read("\nyou> ").strip()
        except (EOFError, KeyboardInterrupt):
            write()
            return
        if not text:
            continue
        if text.startswith("/") and not text.startswith("//"):
            name, _, rest = text.partition(" ")
            if name in ("/quit", "/exit"):
                return
            if name == "/help":
                write(CHAT_HELP)
            elif name == "/reset":
                history = []
                write("(conversation cleared" + (": the system prompt stays)" if system else ")"))
            elif name == "/system":
                system, history = rest.strip() or None, []
                write(f"(system prompt set: {system!r}; new conversation)" if system
                      else "(no system prompt; new conversation)")
            else:
                write(f"(unknown command {name}: /help lists the commands; //{text[1:]} sends it to the model)")
            continue
        if text.startswith("//"):
            text = text[1:]
        history.append({"role": "user", "content": text})
        messages = ([{"role": "system", "content": system}] if system else []) + history
        write("assistant> ", end="", flush=True)
        reply: list[int] = []
        shown = ""
        for token in engine.stream(chat_prompt(tokenizer, messages), max_new_tokens, sampling):
            reply.append(token)
            decoded = tokenizer.decode(reply, skip_special_tokens=True)
            write(decoded[len(shown):], end="", flush=True)  # decode the whole reply: multi-byte characters
            shown = decoded
        write()
        history.append({"role": "assistant", "content": shown})
