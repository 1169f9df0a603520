"""A deterministic in-memory batch source with learnable structure, for smoke tests and benchmarks.

Each row packs two documents (segment ids 1 and 2, positions restarting at 0). A document walks a
fixed random permutation of the first `vocab` token ids from a random start (next = perm[current]),
a bigram rule a model picks up within tens of steps, so its loss visibly falls. The second half of
each document is marked as loss tokens, like an assistant answer after a user prompt.

Row r of step s depends only on (seed, s, r): any host can build exactly its own rows of any step,
and a resumed run sees the very batches it would have seen.
"""

from __future__ import annotations

import numpy as np

from diabetica_jax.data.batch import Batch


class SyntheticSource:
    def __init__(self, seq_len: int, global_batch: int, grad_accum: int, seed: int = 0, vocab: int = 64):
        if seq_len < 8:
            raise ValueError(f"synthetic rows need seq_len >= 8, got {seq_len}")
        self.seq_len, self.global_batch, self.grad_accum = seq_len, global_batch, grad_accum
        self.micro_batch = global_batch // grad_accum
        self.seed, self.vocab = seed, vocab
        successor = np.random.default_rng([seed, 2**31 - 1]).permutation(vocab).astype(np.int32)
        # walks[s, i]: the token i steps after start token s; rows are slices of it, no Python per token
        self.walks = np.empty((vocab, seq_len), np.int32)
        self.walks[:, 0] = np.arange(vocab)
        for i in range(1, seq_len):
            self.walks[:, i] = successor[self.walks[:, i - 1]]

    def row(self, step: int, index: int) -> tuple[np.ndarray, ...]:
        rng = np.random.default_rng([self.seed, step, index])
        t = self.seq_len
        split = int(rng.integers(t // 4, 3 * t // 4))
        tokens = np.empty(t, np.int32)
        loss_mask = np.zeros(t, np.int32)
        segment_ids = np.empty(t, np.int32)
        positions = np.empty(t, np.int32)
        for seg, (lo, hi) in enumerate(((0, split), (split, t)), start=1):
            n = hi - lo
            tokens[lo:hi] = self.walks[int(rng.integers(0, self.vocab)), :n]
            loss_mask[lo + n // 2 : hi] = 1
            segment_ids[lo:hi] = seg
            positions[lo:hi] = np.arange(n)
        return tokens, loss_mask, segment_ids, positions

    def batch(self, step: int, rows: range | None = None) -> Batch:
        """Host arrays [grad_accum, len(rows), seq] for the given micro-batch rows (default: all)."""
        rows = rows if rows is not None else range(self.micro_batch)
        fields = [np.empty((self.grad_accum, len(rows), self.seq_len), np.int32) for _ in range(4)]
        for a in range(self.grad_accum):
            for i, r in enumerate(rows):
                for field, values in zip(fields, self.row(step, a * self.micro_batch + r)):
                    field[a, i] = values
        return Batch(*fields)
