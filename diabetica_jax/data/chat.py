"""Records -> token ids and loss masks through the chat template.

The conversation is rendered once with the tokenizer's chat template; the loss mask is derived from
that rendered text: a token counts when it lies inside an assistant turn's content or its closing
`<|im_end|>` (character offsets from the fast tokenizer). Role headers, user and system turns get no
loss. A record whose mask comes out empty is an error, never a silent zero-loss example. Passages
are plain text followed by `<|endoftext|>`, with loss on every token.
"""

from __future__ import annotations

import numpy as np

from diabetica_jax.data.records import Record

IM_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"


class EmptyLossMask(ValueError):
    pass


def assistant_spans(rendered: str, messages: list[dict[str, str]]) -> list[tuple[int, int]]:
    """Character spans [start, end) of each assistant content plus its closing <|im_end|>."""
    spans, cursor = [], 0
    for message in messages:
        header = f"<|im_start|>{message['role']}\n"
        start = rendered.index(header, cursor) + len(header)
        end = rendered.index(IM_END, start)
        if rendered[start:end] != message["content"]:
            raise ValueError("the chat template altered a message's content; cannot place the loss mask")
        if message["role"] == "assistant":
            spans.append((start, end + len(IM_END)))
        cursor = end + len(IM_END)
    return spans


def encode_messages(tokenizer, messages: list[dict[str, str]], record_id: str = "?") -> tuple[np.ndarray, np.ndarray]:
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    encoded = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(encoded["input_ids"], dtype=np.int32)
    offsets = np.asarray(encoded["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    mask = np.zeros(len(ids), dtype=np.int32)
    for start, end in assistant_spans(rendered, messages):
        mask |= ((offsets[:, 0] >= start) & (offsets[:, 1] <= end) & (offsets[:, 1] > offsets[:, 0])).astype(np.int32)
    if not mask.any():
        raise EmptyLossMask(f"record {record_id}: no assistant tokens to train on")
    return ids, mask


def encode_record(tokenizer, record: Record) -> tuple[np.ndarray, np.ndarray]:
    """(token ids, loss mask) int32 arrays of equal length."""
    if record.text is not None:
        ids = np.asarray(tokenizer.encode(record.text, add_special_tokens=False) +
                         [tokenizer.convert_tokens_to_ids(END_OF_TEXT)], dtype=np.int32)
        return ids, np.ones(len(ids), dtype=np.int32)
    return encode_messages(tokenizer, record.messages, record.id)
