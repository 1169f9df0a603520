"""Cutting a sequence into equal chunks for the vocabulary projection (the loss and perplexity scoring)."""


def chunk_size(seq_len: int, requested: int) -> int:
    """The largest divisor of seq_len that is at most `requested` (static shapes per chunk)."""
    for size in range(min(requested, seq_len), 0, -1):
        if seq_len % size == 0:
            return size
    return seq_len
