"""The logical axes of every array the model shards, so that the sharding rules (the `mesh.rules` overrides of a
config) are checked against them when the config is read, before any model is built or compiled: a table that
puts two dimensions of one array on one mesh axis is refused there, naming the key.

The activations are pinned with these tuples (model/qwen.py, train/loss.py); the parameters name theirs where
they are made (model/layers.py, model/qwen.py), and tests/parallel/test_mesh.py checks that every one of them is listed.
"""

# activations [batch, seq, ...]; a None dimension is never sharded
Q = ("batch", "seq", "act_heads", None)
KV = ("batch", "seq", "act_kv_heads", None)
MLP_HIDDEN = ("batch", "seq", "act_mlp")
RESIDUAL = ("batch", "seq", "act_embed")
LOGITS = ("batch", "seq", "act_vocab")
KV_CACHE = ("layers", "batch", None, "act_kv_heads", None)  # [layers, batch, max_len, kv_heads, head_dim]
ACTIVATIONS = (Q, KV, MLP_HIDDEN, RESIDUAL, LOGITS, KV_CACHE)

# parameters, with the `layers` axis of the stacked decoder layers; biases and norms shard as a part of these.
# The projections as (input axes, output axes): q, k and v, o, gate and up, down.
_PROJECTIONS = ((("embed",), ("heads", "head_dim")), (("embed",), ("kv_heads", "head_dim")),
                (("heads", "head_dim"), ("embed",)), (("embed",), ("mlp",)), (("mlp",), ("embed",)))
PARAMETERS = (
    ("vocab", "embed"),  # the embedding table
    ("embed", "vocab"),  # lm_head, when not tied
    ("norm",),
    ("layers", "norm"),
    *(("layers", *inputs, *outputs) for inputs, outputs in _PROJECTIONS),
    # LoRA adapters: A [inputs..., rank] and B [rank, outputs...] of each projection
    *(("layers", *inputs, "lora_rank") for inputs, _ in _PROJECTIONS),
    *(("layers", "lora_rank", *outputs) for _, outputs in _PROJECTIONS),
)
ARRAYS = ACTIVATIONS + PARAMETERS
