"""The Qwen family (Qwen2, Qwen2.5, Qwen3 dense) as one Flax NNX model.

Decoder layers are created stacked (one leading `layers` axis on every layer parameter) and run
under `jax.lax.scan`, so compile time does not grow with depth; the remat policy wraps the scanned
layer body.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from diabetica_jax.model.attention import attend, xla_attention
from diabetica_jax.model.config import QwenConfig
from diabetica_jax.model.layers import Embed, Linear, RMSNorm, apply_rope, rope_tables
from diabetica_jax.parallel.rules import constrain

# Activations named by Linear(name=...), kept (not recomputed) by the `save_matmuls` remat policy.
MATMUL_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _key(rng: jax.Array | None, index: int) -> jax.Array | None:
    """A distinct dropout key per linear layer, or None when dropout is off."""
    return None if rng is None else jax.random.fold_in(rng, index)


class Attention(nnx.Module):
    def __init__(self, cfg: QwenConfig, *, rngs: nnx.Rngs):
        e, h, k, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        self.backend = cfg.attention

        def proj(name, in_shape, out_shape, in_axes, out_axes, bias=False):
            return Linear(in_shape, out_shape, in_axes=in_axes, out_axes=out_axes, use_bias=bias, name=name,
                          lora=cfg.lora_for(name), dtype=dt, param_dtype=pdt, rngs=rngs)

        self.q_proj = proj("q_proj", (e,), (h, d), ("embed",), ("heads", "head_dim"), cfg.qkv_bias)
        self.k_proj = proj("k_proj", (e,), (k, d), ("embed",), ("kv_heads", "head_dim"), cfg.qkv_bias)
        self.v_proj = proj("v_proj", (e,), (k, d), ("embed",), ("kv_heads", "head_dim"), cfg.qkv_bias)
        self.o_proj = proj("o_proj", (h, d), (e,), ("heads", "head_dim"), ("embed",))
        if cfg.qk_norm:  # Qwen3: RMSNorm over head_dim, per head, before RoPE
            self.q_norm = RMSNorm(d, eps=cfg.rms_norm_eps, param_dtype=pdt)
            self.k_norm = RMSNorm(d, eps=cfg.rms_norm_eps, param_dtype=pdt)
        else:
            self.q_norm = self.k_norm = None

    def _qkv(self, x, cos, sin, dropout_rng):
        q = self.q_proj(x, _key(dropout_rng, 0))  # [b, t, heads, head_dim]
        k = self.k_proj(x, _key(dropout_rng, 1))  # [b, t, kv_heads, head_dim]
        v = self.v_proj(x, _key(dropout_rng, 2))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = constrain(apply_rope(q, cos, sin), ("batch", "seq", "act_heads", None))
        k = constrain(apply_rope(k, cos, sin), ("batch", "seq", "act_kv_heads", None))
        v = constrain(v, ("batch", "seq", "act_kv_heads", None))
        return q, k, v

    def __call__(self, x, cos, sin, segment_ids, dropout_rng=None):
        q, k, v = self._qkv(x, cos, sin, dropout_rng)
        out = attend(q, k, v, segment_ids=segment_ids, backend=self.backend)
        return self.o_proj(out, _key(dropout_rng, 3))

    def cached(self, x, cos, sin, cache_k, cache_v, write_index, key_valid):
        """Attend over a KV cache [b, max_len, kv_heads, head_dim] after writing this step's keys and values
        at slots write_index .. write_index + t. A query at slot i sees valid keys at slots <= i."""
        q, k, v = self._qkv(x, cos, sin, None)
        cache_k = jax.lax.dynamic_update_slice_in_dim(cache_k, k.astype(cache_k.dtype), write_index, axis=1)
        cache_v = jax.lax.dynamic_update_slice_in_dim(cache_v, v.astype(cache_v.dtype), write_index, axis=1)
        query_slots = write_index + jnp.arange(x.shape[1])
        visible = jnp.arange(cache_k.shape[1])[None, :] <= query_slots[:, None]  # [t, max_len]
        mask = visible[None, None] & key_valid[:, None, None, :]
        out = xla_attention(q, cache_k.astype(q.dtype), cache_v.astype(q.dtype), mask=mask)
        return self.o_proj(out), cache_k, cache_v


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: QwenConfig, *, rngs: nnx.Rngs):
        e, i = cfg.hidden_size, cfg.intermediate_size
        dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)

        def proj(name, n_in, n_out, in_axis, out_axis):
            return Linear((n_in,), (n_out,), in_axes=(in_axis,), out_axes=(out_axis,), name=name,
                          lora=cfg.lora_for(name), dtype=dt, param_dtype=pdt, rngs=rngs)

        self.gate_proj = proj("gate_proj", e, i, "embed", "mlp")
        self.up_proj = proj("up_proj", e, i, "embed", "mlp")
        self.down_proj = proj("down_proj", i, e, "mlp", "embed")

    def __call__(self, x, dropout_rng=None):
        h = jax.nn.silu(self.gate_proj(x, _key(dropout_rng, 4))) * self.up_proj(x, _key(dropout_rng, 5))
        return self.down_proj(constrain(h, ("batch", "seq", "act_mlp")), _key(dropout_rng, 6))


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: QwenConfig, *, rngs: nnx.Rngs):
        pdt = jnp.dtype(cfg.param_dtype)
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=pdt)
        self.self_attn = Attention(cfg, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=pdt)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x, cos, sin, segment_ids, dropout_rng=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, segment_ids, dropout_rng)
        x = x + self.mlp(self.post_attention_layernorm(x), dropout_rng)
        return constrain(x, ("batch", "seq", "act_embed"))

    def cached(self, x, cos, sin, cache_k, cache_v, write_index, key_valid):
        attn, cache_k, cache_v = self.self_attn.cached(self.input_layernorm(x), cos, sin, cache_k, cache_v,
                                                      write_index, key_valid)
        x = x + attn
        x = x + self.mlp(self.post_attention_layernorm(x))
        return constrain(x, ("batch", "seq", "act_embed")), cache_k, cache_v


def _remat(body, policy: str):
    if policy == "none":
        return body
    if policy == "full":
        return jax.checkpoint(body, prevent_cse=False)
    return jax.checkpoint(
        body, prevent_cse=False, policy=jax.checkpoint_policies.save_only_these_names(*MATMUL_NAMES)
    )


class Qwen(nnx.Module):
    """Decoder-only Qwen LM: tokens [batch, seq] -> logits [batch, seq, vocab] (float32)."""

    def __init__(self, cfg: QwenConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        self.dtype = jnp.dtype(cfg.dtype)
        pdt = jnp.dtype(cfg.param_dtype)
        self.embed_tokens = Embed(cfg.vocab_size, cfg.hidden_size, dtype=self.dtype, param_dtype=pdt, rngs=rngs)

        @nnx.split_rngs(splits=cfg.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, axis_size=cfg.num_layers)
        def make_layers(layer_rngs):
            return DecoderLayer(cfg, rngs=layer_rngs)

        self.layers = make_layers(rngs)
        for _, node in nnx.iter_graph(self.layers):
            if isinstance(node, nnx.Variable):
                node.set_metadata(axes=("layers",) + tuple(node.get_metadata()["axes"]))

        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=pdt)
        self.lm_head = None if cfg.tie_word_embeddings else Linear(
            (cfg.hidden_size,), (cfg.vocab_size,), in_axes=("embed",), out_axes=("vocab",),
            dtype=self.dtype, param_dtype=pdt, rngs=rngs,
        )

    def hidden_states(self, tokens, positions=None, segment_ids=None, dropout_rng=None):
        """Final-norm hidden states [batch, seq, embed]; the loss projects these to the vocabulary in chunks.

        `dropout_rng` switches on LoRA dropout (training); without it the model is deterministic.
        """
        b, t = tokens.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        cos, sin = rope_tables(positions, self.config.head_dim, self.config.rope_theta)
        x = constrain(self.embed_tokens(tokens), ("batch", "seq", "act_embed"))

        graphdef, stacked = nnx.split(self.layers)

        def layer_step(h, layer):
            layer_state, layer_rng = layer
            return nnx.merge(graphdef, layer_state)(h, cos, sin, segment_ids, layer_rng), None

        layer_rngs = None if dropout_rng is None else jax.random.split(dropout_rng, self.config.num_layers)
        x, _ = jax.lax.scan(_remat(layer_step, self.config.remat), x, (stacked, layer_rngs))
        return self.norm(x)

    def output_kernel(self) -> jax.Array:
        """The [embed, vocab] output projection (the embedding table, transposed, when tied)."""
        if self.lm_head is None:
            return self.embed_tokens.embedding[...].T
        return self.lm_head.kernel[...]

    def logits(self, hidden):
        """Project hidden states to float32 logits (matmul in the compute dtype, float32 accumulation)."""
        logits = jnp.einsum("...e,ev->...v", hidden.astype(self.dtype), self.output_kernel().astype(self.dtype),
                            preferred_element_type=jnp.float32)
        return constrain(logits, ("batch", "seq", "act_vocab")) if logits.ndim == 3 else logits

    def __call__(self, tokens, positions=None, segment_ids=None):
        return self.logits(self.hidden_states(tokens, positions, segment_ids))

    def decode_step(self, tokens, positions, cache, write_index, key_valid):
        """One prefill or decode step against a KV cache.

        tokens/positions [b, t]; cache = (k, v), each [layers, b, max_len, kv_heads, head_dim];
        key_valid [b, max_len] marks cache slots holding real tokens (left padding stays False).
        Returns the float32 logits of the last position [b, vocab] and the updated cache.
        """
        cos, sin = rope_tables(positions, self.config.head_dim, self.config.rope_theta)
        x = constrain(self.embed_tokens(tokens), ("batch", "seq", "act_embed"))
        graphdef, stacked = nnx.split(self.layers)

        def layer_step(h, layer):
            layer_state, cache_k, cache_v = layer
            h, cache_k, cache_v = nnx.merge(graphdef, layer_state).cached(h, cos, sin, cache_k, cache_v,
                                                                            write_index, key_valid)
            return h, (cache_k, cache_v)

        x, (cache_k, cache_v) = jax.lax.scan(layer_step, x, (stacked, cache[0], cache[1]))
        cache_axes = ("layers", "batch", None, "act_kv_heads", None)
        return self.logits(self.norm(x[:, -1])), (constrain(cache_k, cache_axes), constrain(cache_v, cache_axes))
