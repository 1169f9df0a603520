"""The train step's settings from the config: what attention is told of the rows' documents."""

import pytest

from diabetica_jax.configuration import load_config
from diabetica_jax.data.config import DataSection
from diabetica_jax.train.config import TrainConfig
from diabetica_jax.train.setup import step_settings


@pytest.mark.parametrize("overrides, one_document_rows, max_segments", [
    (["data.source=curated", "data.path=curated", "data.packing=none"], True, None),
    (["data.source=curated", "data.path=curated", "data.packing=best_fit", "data.max_segments_per_row=8"], False, 8),
    (["data.source=curated", "data.path=curated"], False, DataSection().max_segments_per_row),
    # synthetic rows hold two documents whatever data.packing says
    (["data.packing=none"], False, DataSection().max_segments_per_row),
], ids=["packing-none", "packed-cap", "packed-default-cap", "synthetic"])
def test_attention_settings_follow_what_the_rows_hold(overrides, one_document_rows, max_segments):
    settings = step_settings(load_config(TrainConfig, None, ["loop.loss_chunk=64", "lora.rank=4", "lora.dropout=0.1",
                                                             *overrides]))
    assert settings == {"loss_chunk": 64, "dropout": True, "one_document_rows": one_document_rows,
                        "max_segments": max_segments}
