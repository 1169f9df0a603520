"""The batch every data source produces and the train step consumes."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Batch(NamedTuple):
    """Packed rows, each field [grad_accum, micro_batch, seq] int32 (host arrays or global jax arrays).

    tokens       token ids
    loss_mask    1 where the token is a training target (assistant content), 0 elsewhere and on padding
    segment_ids  document number within the row (1, 2, ...); 0 marks padding
    positions    position of each token within its own document (restarts at 0 per segment)
    """

    tokens: np.ndarray
    loss_mask: np.ndarray
    segment_ids: np.ndarray
    positions: np.ndarray
