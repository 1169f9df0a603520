"""Model FLOPs per trained token, and accelerator peaks, for MFU.

Per token, with N = matmul parameters (attention and MLP projections of every layer plus the
output projection; the embedding lookup is not a matmul), L layers, T sequence length, H query
heads of size D:

    forward            2 N + 4 L T H D        (4 L T H D: the QK^T and PV products, no causal discount)
    full fine-tuning   3 x forward = 6 N + 12 L T H D   (backward = 2 x forward)
    LoRA               2 x forward = 4 N +  8 L T H D   (no weight gradients for the frozen base)

MFU = achieved model FLOP/s / (peak FLOP/s per device x devices). Remat recomputation is not
counted as useful work, as usual for MFU.
"""

from __future__ import annotations

import jax

from diabetica_jax.model.config import QwenConfig

# Dense bf16 peak per chip, TFLOP/s (vendor figures). Override with train.peak_tflops.
PEAK_TFLOPS = {
    "H100": 989.0,
    "H200": 989.0,
    "A100": 312.0,
    "TPU v4": 275.0,
    "TPU v5 lite": 197.0,
    "TPU v5e": 197.0,
    "TPU v5p": 459.0,
    "TPU v5": 459.0,
    "TPU v6 lite": 918.0,
    "TPU v6e": 918.0,
}


def matmul_params(cfg: QwenConfig) -> int:
    e, i, h, k, d = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    per_layer = e * h * d + 2 * e * k * d + h * d * e + 3 * e * i
    return cfg.num_layers * per_layer + e * cfg.vocab_size


def train_flops_per_token(cfg: QwenConfig, seq_len: int, lora: bool = False) -> float:
    forward = 2 * matmul_params(cfg) + 4 * cfg.num_layers * seq_len * cfg.num_heads * cfg.head_dim
    return (2 if lora else 3) * forward


def peak_flops_per_device(override_tflops: float | None = None) -> float | None:
    """Peak FLOP/s of one local device, or None when unknown (CPU)."""
    if override_tflops:
        return override_tflops * 1e12
    kind = jax.devices()[0].device_kind
    for name, tflops in sorted(PEAK_TFLOPS.items(), key=lambda kv: -len(kv[0])):
        if name.lower() in kind.lower():
            return tflops * 1e12
    return None
