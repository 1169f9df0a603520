"""Tokens to text as they arrive: incremental detokenisation that never splits a character, and stop strings.

Decoding token by token and gluing the pieces breaks multi-byte characters (a Chinese character or an emoji
can span tokens) and the tokenizer's whitespace rules, so the whole reply is decoded again at each token
(replies are short; this costs microseconds) and only the new, settled part is released. Text that could be
the start of a stop string is held back until it is clear that it is not.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"  # what a decoder gives for an incomplete UTF-8 sequence


class TextStream:
    def __init__(self, tokenizer, stop: list[str] | tuple[str, ...] = ()):
        self.tokenizer, self.stop = tokenizer, [s for s in stop if s]
        self.tokens: list[int] = []
        self.released = 0  # characters of the reply handed out so far
        self.stopped = False  # a stop string was found: the reply ends before it
        self._text = ""

    def push(self, token: int) -> str:
        """The text that became final with `token` ('' while it is held back)."""
        if self.stopped:
            return ""
        self.tokens.append(token)
        self._text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        end = self._stop_at()
        if end is not None:
            self.stopped = True
            return self._release(end)
        text = self._text
        settled = len(text.rstrip(REPLACEMENT))  # an incomplete character waits for its next token
        return self._release(settled - self._partial_stop(text[:settled]))

    def finish(self) -> str:
        """What is left once generation ends (held-back text that did not turn into a stop string)."""
        if self.stopped:
            return ""
        return self._release(len(self._text))

    @property
    def text(self) -> str:
        """The reply as released so far."""
        return self._text[: self.released]

    def _release(self, end: int) -> str:
        end = max(end, self.released)
        out, self.released = self._text[self.released:end], end
        return out

    def _stop_at(self) -> int | None:
        """Where the earliest stop string starts in the reply, if one has appeared."""
        start = max(0, self.released - max((len(s) for s in self.stop), default=0))
        found = [i for i in (self._text.find(s, start) for s in self.stop) if i >= 0]
        return min(found) if found else None

    def _partial_stop(self, text: str) -> int:
        """Length of the longest end of `text` that a stop string starts with (held back: it may complete)."""
        longest = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), longest, -1):
                if text.endswith(s[:n]):
                    longest = n
                    break
        return longest


def _byte_level_alphabet() -> dict[str, int]:
    """Byte-level BPE's printable stand-ins for the 256 byte values (GPT-2's scheme, which Qwen's tokenizer
    uses): printable Latin-1 bytes stand for themselves, the others are shifted to code points from 256 up."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    alphabet, shifted = {}, 0
    for byte in range(256):
        if byte in printable:
            alphabet[chr(byte)] = byte
        else:
            alphabet[chr(256 + shifted)] = byte
            shifted += 1
    return alphabet


BYTE_LEVEL = _byte_level_alphabet()


def token_bytes(tokenizer, token_id: int) -> bytes:
    """The raw bytes a token stands for: part of a character for a token that splits one (which decoding
    alone shows as the replacement character), the text itself for special tokens and non-byte-level vocabularies."""
    piece = tokenizer.convert_ids_to_tokens(int(token_id))
    if piece is None:
        return b""
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):  # SentencePiece's byte fallback
        return bytes.fromhex(piece[3:5])
    if token_id in getattr(tokenizer, "all_special_ids", ()) or not all(ch in BYTE_LEVEL for ch in piece):
        return tokenizer.decode([int(token_id)]).encode()
    return bytes(BYTE_LEVEL[ch] for ch in piece)
