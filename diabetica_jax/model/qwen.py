"""The Qwen family (Qwen2, Qwen2.5, Qwen3 dense) and the Llama family (Llama 2/3/3.1, Yi, Meditron,
Mistral without sliding window) as one Flax NNX decoder: the families differ only in config flags
(q/k/v/o biases, q/k norms, tied embeddings, RoPE scaling), never in code paths.

Decoder layers are created stacked (one leading `layers` axis on every layer parameter) and run
under `jax.lax.scan`, so compile time does not grow with depth; the remat policy wraps the scanned
layer body. One forward path serves training, scoring and generation: attention takes an optional
KV cache, and `decode_step` runs the same layers with the cache carried through the scan and updated
in place (optionally unrolled: runtime.unroll_decode).
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from diabetica_jax.model import axes
from diabetica_jax.model.attention import attend, xla_attention
from diabetica_jax.model.config import QwenConfig
from diabetica_jax.model.layers import Embed, Linear, RMSNorm, apply_rope, rope_tables
from diabetica_jax.model.lora_config import LINEAR_LAYERS, NO_LORA, LoRAConfig
from diabetica_jax.model.runtime import RuntimeConfig
from diabetica_jax.parallel.rules import constrain


class KVCache(NamedTuple):
    """Keys and values of every layer, each [layers, batch, max_len, kv_heads, head_dim]."""

    k: jax.Array
    v: jax.Array


class LayerCache(NamedTuple):
    """What one layer's attention needs of the cache for one step: the whole cache (every layer's keys and values,
    [layers, batch, max_len, kv_heads, head_dim], carried through the layer loop and updated in place), which
    layer this is, the slot this step's first token is written to (a scalar, or [batch] when rows are at
    different lengths), and which slots hold real tokens [batch, max_len] (left padding stays False)."""

    k: jax.Array
    v: jax.Array
    layer: jax.Array | int
    write_index: jax.Array | int
    key_valid: jax.Array


def _write(cache: jax.Array, layer, new: jax.Array, write_index) -> jax.Array:
    """`new` [b, t, ...] written into layer `layer` of `cache` [layers, b, max_len, ...] from slot write_index on:
    the same slot for every row (a scalar), or one per row ([b], continuous batching, each row at its own length).

    Only those slots change: updating the carried buffer in place is what keeps the decode loop free of
    cache-sized copies (a cache passed through the layer scan as inputs and outputs is rebuilt every step).
    """
    new = new.astype(cache.dtype)
    if jnp.ndim(write_index) == 0:
        start = (layer, 0, write_index) + (0,) * (cache.ndim - 3)
        return jax.lax.dynamic_update_slice(cache, new[None], start)
    b, t = new.shape[:2]
    rows = jnp.arange(b)[:, None]
    slots = jnp.reshape(write_index, (b, 1)) + jnp.arange(t)
    return cache.at[layer, rows, slots].set(new, mode="promise_in_bounds")


def _key(rng: jax.Array | None, index: int) -> jax.Array | None:
    """A distinct dropout key per linear layer, or None when dropout is off."""
    return None if rng is None else jax.random.fold_in(rng, index)


class Attention(nnx.Module):
    def __init__(self, cfg: QwenConfig, runtime: RuntimeConfig, lora: LoRAConfig, *, rngs: nnx.Rngs):
        e, h, k, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        dt, pdt = jnp.dtype(runtime.dtype), jnp.dtype(runtime.param_dtype)
        self.backend = runtime.attention

        def proj(name, in_shape, out_shape, in_axes, out_axes, bias=False):
            return Linear(in_shape, out_shape, in_axes=in_axes, out_axes=out_axes, use_bias=bias, name=name,
                          lora=lora.for_layer(name), dtype=dt, param_dtype=pdt, rngs=rngs)

        self.q_proj = proj("q_proj", (e,), (h, d), ("embed",), ("heads", "head_dim"), cfg.qkv_bias)
        self.k_proj = proj("k_proj", (e,), (k, d), ("embed",), ("kv_heads", "head_dim"), cfg.qkv_bias)
        self.v_proj = proj("v_proj", (e,), (k, d), ("embed",), ("kv_heads", "head_dim"), cfg.qkv_bias)
        self.o_proj = proj("o_proj", (h, d), (e,), ("heads", "head_dim"), ("embed",), cfg.o_proj_bias)
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
        q = constrain(apply_rope(q, cos, sin), axes.Q)
        k = constrain(apply_rope(k, cos, sin), axes.KV)
        v = constrain(v, axes.KV)
        return q, k, v

    def __call__(self, x, cos, sin, segment_ids=None, dropout_rng=None, cache: LayerCache | None = None,
                 packed=None):
        """Self-attention over the sequence, or over the KV cache when one is given. Returns the output and
        the cache with this step's keys and values written in (None without a cache).

        Without a cache: causal within `segment_ids` through the configured backend (training, scoring).
        With one: keys and values land at slots write_index .. write_index + t, and a query at slot i sees
        the valid keys at slots <= i. That mask is explicit, so this path runs the XLA reference attention.
        """
        q, k, v = self._qkv(x, cos, sin, dropout_rng)
        if cache is None:
            out = checkpoint_name(attend(q, k, v, segment_ids=segment_ids, packed=packed, backend=self.backend),
                                  ATTENTION_OUTPUT)
        else:
            cache = cache._replace(k=_write(cache.k, cache.layer, k, cache.write_index),
                                   v=_write(cache.v, cache.layer, v, cache.write_index))
            keys, values = cache.k[cache.layer], cache.v[cache.layer]  # [b, max_len, kv_heads, head_dim]
            # [b or 1, t]: the slot each query sits in (rows differ under continuous batching)
            query_slots = jnp.reshape(cache.write_index, (-1, 1)) + jnp.arange(x.shape[1])
            visible = jnp.arange(keys.shape[1]) <= query_slots[:, :, None]  # [b or 1, t, max_len]
            mask = visible[:, None] & cache.key_valid[:, None, None, :]
            out = xla_attention(q, keys.astype(q.dtype), values.astype(q.dtype), mask=mask)
        return self.o_proj(out, _key(dropout_rng, 3)), cache


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: QwenConfig, runtime: RuntimeConfig, lora: LoRAConfig, *, rngs: nnx.Rngs):
        e, i = cfg.hidden_size, cfg.intermediate_size
        dt, pdt = jnp.dtype(runtime.dtype), jnp.dtype(runtime.param_dtype)

        def proj(name, n_in, n_out, in_axis, out_axis):
            return Linear((n_in,), (n_out,), in_axes=(in_axis,), out_axes=(out_axis,), name=name,
                          lora=lora.for_layer(name), dtype=dt, param_dtype=pdt, rngs=rngs)

        self.gate_proj = proj("gate_proj", e, i, "embed", "mlp")
        self.up_proj = proj("up_proj", e, i, "embed", "mlp")
        self.down_proj = proj("down_proj", i, e, "mlp", "embed")

    def __call__(self, x, dropout_rng=None):
        h = jax.nn.silu(self.gate_proj(x, _key(dropout_rng, 4))) * self.up_proj(x, _key(dropout_rng, 5))
        return self.down_proj(constrain(h, axes.MLP_HIDDEN), _key(dropout_rng, 6))


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: QwenConfig, runtime: RuntimeConfig, lora: LoRAConfig, *, rngs: nnx.Rngs):
        pdt = jnp.dtype(runtime.param_dtype)
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=pdt)
        self.self_attn = Attention(cfg, runtime, lora, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=pdt)
        self.mlp = MLP(cfg, runtime, lora, rngs=rngs)

    def __call__(self, x, cos, sin, segment_ids=None, dropout_rng=None, cache: LayerCache | None = None,
                 packed=None):
        attn, cache = self.self_attn(self.input_layernorm(x), cos, sin, segment_ids, dropout_rng, cache, packed)
        x = x + attn
        x = x + self.mlp(self.post_attention_layernorm(x), dropout_rng)
        return constrain(x, axes.RESIDUAL), cache


ATTENTION_OUTPUT = "attention"  # the name remat policies save the attention kernel's output by

# the activations each named policy keeps (Linear names its output after the layer); the rest is recomputed
SAVED_BY_POLICY = {
    "save_matmuls": LINEAR_LAYERS,
    "save_attention": (ATTENTION_OUTPUT,),
    "save_matmuls_attention": LINEAR_LAYERS + (ATTENTION_OUTPUT,),
}


def _remat(body, policy: str):
    if policy == "none":
        return body
    if policy == "full":
        return jax.checkpoint(body, prevent_cse=False)
    return jax.checkpoint(
        body, prevent_cse=False, policy=jax.checkpoint_policies.save_only_these_names(*SAVED_BY_POLICY[policy])
    )


class Qwen(nnx.Module):
    """Decoder-only LM (any supported family): tokens [batch, seq] -> logits [batch, seq, vocab] (float32).

    `config` is the architecture, `runtime` how it computes, `lora` the adapters it carries (rank 0: none).
    """

    def __init__(self, cfg: QwenConfig, runtime: RuntimeConfig = RuntimeConfig(), lora: LoRAConfig = NO_LORA, *,
                 rngs: nnx.Rngs):
        self.config, self.runtime, self.lora = cfg, runtime, lora
        self.dtype = jnp.dtype(runtime.dtype)
        pdt = jnp.dtype(runtime.param_dtype)
        self.embed_tokens = Embed(cfg.vocab_size, cfg.hidden_size, dtype=self.dtype, param_dtype=pdt, rngs=rngs)

        @nnx.split_rngs(splits=cfg.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, axis_size=cfg.num_layers)
        def make_layers(layer_rngs):
            return DecoderLayer(cfg, runtime, lora, rngs=layer_rngs)

        self.layers = make_layers(rngs)
        for _, node in nnx.iter_graph(self.layers):
            if isinstance(node, nnx.Variable):
                node.set_metadata(axes=("layers",) + tuple(node.get_metadata()["axes"]))

        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=pdt)
        self.lm_head = None if cfg.tie_word_embeddings else Linear(
            (cfg.hidden_size,), (cfg.vocab_size,), in_axes=("embed",), out_axes=("vocab",),
            dtype=self.dtype, param_dtype=pdt, rngs=rngs,
        )

    def hidden_states(self, tokens, positions=None, segment_ids=None, dropout_rng=None, packed=None):
        """Final-norm hidden states [batch, seq, embed]; the loss projects these to the vocabulary in chunks.

        `dropout_rng` switches on LoRA dropout (training); without it the model is deterministic.
        `packed` (model.segments.SegmentLayout, made once per batch from segment_ids) lets a fused kernel run
        packed rows as per-document lengths and offsets instead of a dense mask; backends without such a
        path use segment_ids.
        """
        x, _ = self._run_layers(tokens, positions, segment_ids=segment_ids, dropout_rng=dropout_rng, packed=packed)
        return self.norm(x)

    def _run_layers(self, tokens, positions, *, segment_ids=None, dropout_rng=None, cache=None, write_index=0,
                    key_valid=None, packed=None):
        """Embed, build the rope tables and scan the stacked layers, with or without a KV cache.

        Returns the last layer's output (before the final norm) and the updated KVCache (None without one).
        The remat policy wraps the scanned body; it only matters under differentiation.
        """
        chex.assert_rank(tokens, 2)
        chex.assert_type(tokens, int)
        b, t = tokens.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        chex.assert_equal_shape([tokens, positions])
        chex.assert_type(positions, int)
        cos, sin = rope_tables(positions, self.config.head_dim, self.config.rope_theta, self.config.rope_scaling)
        x = constrain(self.embed_tokens(tokens), axes.RESIDUAL)

        graphdef, stacked = nnx.split(self.layers)
        if cache is None:
            def layer_step(h, layer):
                layer_state, layer_rng = layer
                return nnx.merge(graphdef, layer_state)(h, cos, sin, segment_ids, layer_rng, None, packed)[0], None

            layer_rngs = None if dropout_rng is None else jax.random.split(dropout_rng, self.config.num_layers)
            x, _ = jax.lax.scan(_remat(layer_step, self.runtime.remat), x, (stacked, layer_rngs))
            return x, None

        def cached_layer_step(carry, layer):
            h, kv = carry
            layer_state, index = layer
            view = LayerCache(kv.k, kv.v, index, write_index, key_valid)
            h, view = nnx.merge(graphdef, layer_state)(h, cos, sin, None, None, view)
            return (h, KVCache(view.k, view.v)), None

        # the cache is carried, not scanned over: each layer updates its slots of the one buffer in place
        unroll = self.config.num_layers if self.runtime.unroll_decode else 1
        (x, cache), _ = jax.lax.scan(cached_layer_step, (x, cache),
                                     (stacked, jnp.arange(self.config.num_layers)), unroll=unroll)
        return x, cache

    def output_kernel(self) -> jax.Array:
        """The [embed, vocab] output projection (the embedding table, transposed, when tied)."""
        if self.lm_head is None:
            return self.embed_tokens.embedding[...].T
        return self.lm_head.kernel[...]

    def logits(self, hidden):
        """Project hidden states to float32 logits (matmul in the compute dtype, float32 accumulation)."""
        logits = jnp.einsum("...e,ev->...v", hidden.astype(self.dtype), self.output_kernel().astype(self.dtype),
                            preferred_element_type=jnp.float32)
        return constrain(logits, axes.LOGITS) if logits.ndim == 3 else logits

    def __call__(self, tokens, positions=None, segment_ids=None):
        return self.logits(self.hidden_states(tokens, positions, segment_ids))

    def decode_step(self, tokens, positions, cache, write_index, key_valid):
        """One prefill or decode step against a KV cache.

        tokens/positions [b, t]; cache = KVCache (or a (k, v) pair), each [layers, b, max_len, kv_heads, head_dim];
        key_valid [b, max_len] marks cache slots holding real tokens (left padding stays False).
        write_index: the slot the first token goes to, shared (a scalar) or per row ([b]).
        Returns the float32 logits of the last position [b, vocab] and the updated KVCache.
        """
        chex.assert_rank(key_valid, 2)
        x, cache = self._run_layers(tokens, positions, cache=KVCache(*cache), write_index=write_index,
                                    key_valid=key_valid)
        return self.logits(self.norm(x[:, -1])), KVCache(constrain(cache.k, axes.KV_CACHE),
                                                          constrain(cache.v, axes.KV_CACHE))
