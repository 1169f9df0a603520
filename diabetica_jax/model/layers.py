"""Building blocks: a general linear map, RMSNorm, token embedding and rotary position embedding.

Every parameter is an `nnx.Param` with `axes` metadata: the logical names of its dimensions, which
the sharding rules (diabetica_jax.parallel.rules) turn into a mesh layout.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from diabetica_jax.model.lora_config import LoRAConfig


def _normal(rngs: nnx.Rngs, shape: Sequence[int], std: float, dtype) -> jax.Array:
    return (std * jax.random.normal(rngs.params(), tuple(shape), jnp.float32)).astype(dtype)


class Linear(nnx.Module):
    """y = x . W (+ b), contracting the trailing `in_shape` dims of x against W[in_shape + out_shape].

    Multi-dimensional in/out shapes let attention keep heads as their own axis
    ([embed] -> [heads, head_dim]) so the head axis can be sharded directly.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        out_shape: Sequence[int],
        *,
        in_axes: Sequence[str],
        out_axes: Sequence[str],
        use_bias: bool = False,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        name: str | None = None,
        lora: LoRAConfig | None = None,
        rngs: nnx.Rngs,
    ):
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        self.dtype = dtype
        self.name = name  # activation name for remat policies (checkpoint_name)
        std = 1.0 / math.sqrt(math.prod(self.in_shape))
        self.kernel = nnx.Param(
            _normal(rngs, self.in_shape + self.out_shape, std, param_dtype), axes=tuple(in_axes) + tuple(out_axes)
        )
        self.bias = (
            nnx.Param(jnp.zeros(self.out_shape, param_dtype), axes=tuple(out_axes)) if use_bias else None
        )
        # LoRA adapter: y += (alpha / rank) * dropout(x) . A . B, with B zero-initialised so a new
        # adapter starts as the identity change. A and B are LoRAParams, the only trainable
        # parameters in LoRA fine-tuning.
        self.lora_scale = lora.scale if lora is not None else 0.0
        self.lora_dropout = lora.dropout if lora is not None else 0.0
        self.lora_a = None if lora is None else nnx.LoRAParam(
            _normal(rngs, self.in_shape + (lora.rank,), std, param_dtype), axes=tuple(in_axes) + ("lora_rank",)
        )
        self.lora_b = None if lora is None else nnx.LoRAParam(
            jnp.zeros((lora.rank,) + self.out_shape, param_dtype), axes=("lora_rank",) + tuple(out_axes)
        )

    def __call__(self, x: jax.Array, dropout_rng: jax.Array | None = None) -> jax.Array:
        x = x.astype(self.dtype)
        y = _contract(x, self.kernel[...].astype(self.dtype), len(self.in_shape))
        if self.lora_a is not None:
            xa = x
            if self.lora_dropout > 0.0 and dropout_rng is not None:
                keep = jax.random.bernoulli(dropout_rng, 1.0 - self.lora_dropout, x.shape)
                xa = jnp.where(keep, x / (1.0 - self.lora_dropout), 0).astype(self.dtype)
            down = _contract(xa, self.lora_a[...].astype(self.dtype), len(self.in_shape))
            y = y + self.lora_scale * _contract(down, self.lora_b[...].astype(self.dtype), 1)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        if self.name is not None:
            y = checkpoint_name(y, self.name)
        return y


def _contract(x: jax.Array, w: jax.Array, n: int) -> jax.Array:
    """Contract the trailing n dims of x with the leading n dims of w."""
    return jax.lax.dot_general(x, w, ((tuple(range(x.ndim - n, x.ndim)), tuple(range(n))), ((), ())))


class RMSNorm(nnx.Module):
    """x / rms(x) * weight, computed in float32 like the reference implementation."""

    def __init__(self, size: int, *, eps: float, param_dtype=jnp.float32, axis_name: str = "norm"):
        self.eps = eps
        self.weight = nnx.Param(jnp.ones((size,), param_dtype), axes=(axis_name,))

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = x.dtype
        x = x.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
        return x.astype(dtype) * self.weight[...].astype(dtype)


class Embed(nnx.Module):
    """Token embedding table [vocab, embed]; also the output projection when embeddings are tied."""

    def __init__(self, vocab_size: int, features: int, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.dtype = dtype
        self.embedding = nnx.Param(_normal(rngs, (vocab_size, features), 0.02, param_dtype), axes=("vocab", "embed"))

    def __call__(self, tokens: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], tokens, axis=0).astype(self.dtype)


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """A RoPE frequency remapping, as config.json's `rope_scaling` / `rope_parameters` describe it.

    kind "linear": every inverse frequency divided by `factor` (positions / factor).
    kind "llama3" (Llama 3.1): wavelengths beyond original_max_position_embeddings / low_freq_factor are
    divided by `factor`, those below original / high_freq_factor are kept, the band between is interpolated.
    """

    kind: str
    factor: float
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    original_max_position_embeddings: int | None = None


def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None = None) -> np.ndarray:
    """Inverse frequencies [head_dim / 2] in float32, computed as transformers' rope initialisers do."""
    inv_freq = (1.0 / (np.float32(theta) ** (np.arange(0, head_dim, 2).astype(np.float32) / np.float32(head_dim))))
    inv_freq = inv_freq.astype(np.float32)
    if scaling is None:
        return inv_freq
    factor = np.float32(scaling.factor)
    if scaling.kind == "linear":
        return (inv_freq / factor).astype(np.float32)
    if scaling.kind != "llama3":
        raise ValueError(f"rope scaling {scaling.kind!r} is not implemented")
    low, high = np.float32(scaling.low_freq_factor), np.float32(scaling.high_freq_factor)
    old_len = np.float32(scaling.original_max_position_embeddings)
    low_freq_wavelen, high_freq_wavelen = old_len / low, old_len / high
    wavelen = np.float32(2 * math.pi) / inv_freq
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_tables(
    positions: jax.Array, head_dim: int, theta: float, scaling: RopeScaling | None = None
) -> tuple[jax.Array, jax.Array]:
    """cos and sin [batch, seq, head_dim] for integer positions, in float32 (optionally frequency-scaled)."""
    inv_freq = jnp.asarray(rope_inv_freq(head_dim, theta, scaling))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [b, t, d/2]
    angles = jnp.concatenate([angles, angles], axis=-1)  # rotate halves (HF layout), not interleaved pairs
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate x [batch, seq, heads, head_dim] by the position tables."""
    dtype = x.dtype
    x = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return (x * cos[:, :, None, :] + rotated * sin[:, :, None, :]).astype(dtype)
