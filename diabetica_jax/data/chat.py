"""Records -> token ids and loss masks through the chat template.

The conversation is rendered once with the tokenizer's chat template; the loss mask is derived from
that rendered text: a token counts when it lies inside an assistant turn's content or its closing
`<|im_end|>` (character offsets from the fast tokenizer). Role headers, user and system turns get no
loss, nor does whatever else a template puts inside an assistant turn: Qwen3's templates open the
last answer with an empty `<think>\n\n</think>\n\n` block, so a message's content is looked up
verbatim within its turn rather than assumed to follow the header. A record whose mask cannot be
derived (empty, content altered by the template, content not on token boundaries) raises an
`EmptyLossMask` (or its subclass `LossMaskError`), which callers count as a rejected record, never
a silent zero-loss example. Templates other than ChatML (Llama 3's `<|start_header_id|>` turns, say)
are refused with `UnsupportedTemplate` before any record is counted, since no record could be
masked. Passages are plain text followed by `<|endoftext|>` (the tokenizer's EOS where the vocabulary
has no such token), with loss on every token: pretraining text.

`loss_on="all"` (data.loss_on) puts the loss on every token of every example instead: a chat record's
whole rendered conversation (template headers, system and user turns included), as for continued
pretraining; no assistant spans are looked for, so any chat template will do.
"""

from __future__ import annotations

import numpy as np

from diabetica_jax.data.records import Record

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"


class UnsupportedTemplate(ValueError):
    """The tokenizer's chat template does not write ChatML turns, so assistant spans cannot be found."""


class EmptyLossMask(ValueError):
    """A record with no loss mask to train on. TokenStore counts these (dropped_empty_mask)."""


class LossMaskError(EmptyLossMask):
    """The loss mask cannot be derived from the rendered template. A subclass of EmptyLossMask so
    that every place that counts unusable records counts these too, instead of aborting."""


def assistant_spans(rendered: str, messages: list[dict[str, str]]) -> list[tuple[int, int]]:
    """Character spans [start, end) of each assistant content and of its closing <|im_end|>."""
    spans, cursor = [], 0
    for message in messages:
        header = f"<|im_start|>{message['role']}\n"
        try:  # the turn: from its header to its <|im_end|>; templates may add turns (a default system prompt)
            start = rendered.index(header, cursor) + len(header)
            end = rendered.index(IM_END, start)
        except ValueError:
            raise LossMaskError(f"no {message['role']} turn for a message in the rendered template") from None
        # the content is the end of the turn in the Qwen templates, after anything they put first
        # (Qwen3's think block): the last verbatim occurrence inside the turn
        offset = rendered.rfind(message["content"], start, end)
        if offset < 0:
            raise LossMaskError(f"the chat template altered a {message['role']} message's content; "
                                "cannot place the loss mask")
        if message["role"] == "assistant":
            spans += [(offset, offset + len(message["content"])), (end, end + len(IM_END))]
        cursor = end + len(IM_END)
    return spans


def encode_messages(tokenizer, messages: list[dict[str, str]], record_id: str = "?",
                    loss_on: str = "assistant") -> tuple[np.ndarray, np.ndarray]:
    """(token ids, loss mask) of a conversation rendered by the chat template; the mask marks the assistant
    turns (loss_on="assistant") or every token (loss_on="all")."""
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    if loss_on == "all":
        ids = np.asarray(tokenizer(rendered, add_special_tokens=False)["input_ids"], dtype=np.int32)
        if not ids.size:
            raise EmptyLossMask(f"record {record_id}: the rendered conversation has no tokens")
        return ids, np.ones(len(ids), dtype=np.int32)
    if loss_on != "assistant":
        raise ValueError(f"loss_on must be 'assistant' or 'all', got {loss_on!r}")
    if IM_START not in rendered:  # every record would be rejected: say why once, before any work
        raise UnsupportedTemplate("the tokenizer's chat template does not write ChatML turns (<|im_start|>role ... "
                                  "<|im_end|>); loss masks are derived for ChatML templates (Qwen family) only")
    encoded = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(encoded["input_ids"], dtype=np.int32)
    offsets = np.asarray(encoded["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    return ids, assistant_mask(rendered, messages, offsets, record_id).astype(np.int32)


def assistant_mask(rendered: str, messages: list[dict[str, str]], offsets: np.ndarray, record_id: str = "?") -> np.ndarray:
    """The assistant turns' tokens (bool, one per token) of a rendered conversation, from the encoding's
    character `offsets` ([tokens, 2]); LossMaskError / EmptyLossMask when they cannot be derived or are none."""
    first, last = offsets[:, 0], offsets[:, 1]
    try:
        spans = assistant_spans(rendered, messages)
    except LossMaskError as e:
        raise LossMaskError(f"record {record_id}: {e}") from None
    mask = np.zeros(len(offsets), dtype=bool)
    for start, end in spans:
        # a token across a span edge would be dropped from the mask (or leak a prompt token into it)
        if np.any((first < start) & (last > start)) or np.any((first < end) & (last > end)):
            raise LossMaskError(f"record {record_id}: an assistant answer does not start or end on a token boundary")
        mask |= (first >= start) & (last <= end) & (last > first)
    if not mask.any():
        raise EmptyLossMask(f"record {record_id}: no assistant tokens to train on")
    return mask


def end_of_document(tokenizer) -> int:
    """The token that ends a passage: Qwen's <|endoftext|>, else the tokenizer's own EOS."""
    token = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    if token is None or token == tokenizer.unk_token_id:
        token = tokenizer.eos_token_id
    if token is None:
        raise UnsupportedTemplate(f"the tokenizer has neither {END_OF_TEXT} nor an EOS token to end passages with")
    return token


def encode_text(tokenizer, text: str) -> np.ndarray:
    """Plain text as pretraining tokens: its ids followed by the end-of-document token."""
    return np.asarray(tokenizer.encode(text, add_special_tokens=False) + [end_of_document(tokenizer)], dtype=np.int32)


def encode_record(tokenizer, record: Record, loss_on: str = "assistant") -> tuple[np.ndarray, np.ndarray]:
    """(token ids, loss mask) int32 arrays of equal length. Text records (passages) carry loss on every token
    whatever `loss_on` says; chat records on their assistant turns, or on everything with loss_on="all"."""
    if record.text is not None:
        ids = encode_text(tokenizer, record.text)
        return ids, np.ones(len(ids), dtype=np.int32)
    return encode_messages(tokenizer, record.messages, record.id, loss_on)
