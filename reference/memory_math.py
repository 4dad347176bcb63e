"""Memory math for LLM serving: parameters, weight and KV-cache bytes, roofline.

Reference solution of kata 01 (katas/01_memory_math/README.md).
"""
from __future__ import annotations

import math
from fractions import Fraction
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelShape:
    """A LLaMA-style decoder: RMSNorm with a weight, SwiGLU MLP, no biases."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int | None = None  # None: hidden_size // num_heads
    tie_embeddings: bool = False


def _check(m: ModelShape) -> int:
    """Raise ValueError for a shape that cannot exist; return the head dim."""
    sizes = dict(vocab_size=m.vocab_size, hidden_size=m.hidden_size,
                 intermediate_size=m.intermediate_size, num_layers=m.num_layers,
                 num_heads=m.num_heads, num_kv_heads=m.num_kv_heads)
    if m.head_dim is not None:
        sizes["head_dim"] = m.head_dim
    for name, value in sizes.items():
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    if m.num_heads % m.num_kv_heads != 0:
        raise ValueError(f"num_heads={m.num_heads} is not a multiple of num_kv_heads={m.num_kv_heads}")
    head_dim = m.head_dim if m.head_dim is not None else m.hidden_size // m.num_heads
    if head_dim <= 0:
        raise ValueError(f"hidden_size={m.hidden_size} < num_heads={m.num_heads}: head_dim would be 0")
    return head_dim


def _bytes(count: int, dtype_bytes: float) -> int:
    """count elements of dtype_bytes each, rounded up to whole bytes (0.5: int4)."""
    return math.ceil(count * dtype_bytes)


# -- Task 1: parameters and weight bytes ---------------------------------------------------
def param_count(m: ModelShape) -> int:
    """Parameters of the model (transformers' LlamaForCausalLM with the same config)."""
    d = _check(m)
    h, q_width, kv_width = m.hidden_size, m.num_heads * d, m.num_kv_heads * d
    attention = h * q_width + 2 * h * kv_width + q_width * h  # q, k, v, o projections
    mlp = 3 * h * m.intermediate_size  # gate, up (h -> I) and down (I -> h)
    norms = 2 * h  # input and post-attention RMSNorm weights
    embeddings = m.vocab_size * h * (1 if m.tie_embeddings else 2)  # embed (+ lm_head)
    return embeddings + m.num_layers * (attention + mlp + norms) + h  # + final norm


def weight_bytes(m: ModelShape, dtype_bytes: float = 2) -> int:
    """Bytes of all weights at dtype_bytes per parameter, rounded up."""
    return _bytes(param_count(m), dtype_bytes)


# -- Task 2: KV cache ----------------------------------------------------------------------
def kv_cache_bytes(m: ModelShape, batch: int, seq_len: int, dtype_bytes: float = 2) -> int:
    """Bytes of K and V of every layer and KV head for batch x seq_len tokens."""
    d = _check(m)
    per_token = 2 * m.num_layers * m.num_kv_heads * d  # K and V: (L, 2, Hkv, D) elements
    return _bytes(per_token * batch * seq_len, dtype_bytes)


def max_kv_tokens(m: ModelShape, memory_bytes: int, weight_dtype_bytes: float = 2,
                  kv_dtype_bytes: float = 2) -> int:
    """Largest n with weight_bytes + kv_cache_bytes(1 x n) <= memory_bytes (0 if none fits)."""
    free = memory_bytes - weight_bytes(m, weight_dtype_bytes)
    if free <= 0:
        return 0
    d = _check(m)
    per_token = Fraction(2 * m.num_layers * m.num_kv_heads * d) * Fraction(kv_dtype_bytes)
    # ceil(n * per_token) <= free  <=>  n * per_token <= free, since free is whole bytes.
    # Fractions keep this exact (a float division can land one token off).
    return math.floor(free / per_token)


# -- Task 3: roofline ----------------------------------------------------------------------
def matmul_intensity(M: int, N: int, K: int, dtype_bytes: float = 2) -> float:
    """FLOPs per byte of C = A @ B, A (M x K), B (K x N): read A and B once, write C once."""
    flops = 2 * M * N * K  # one multiply and one add per (m, n, k)
    moved = (M * K + K * N + M * N) * dtype_bytes
    return flops / moved


def is_memory_bound(intensity: float, peak_flops: float, peak_bytes_per_s: float) -> bool:
    """True below the ridge point peak_flops / peak_bytes_per_s (FLOP per byte)."""
    return intensity < peak_flops / peak_bytes_per_s


def decode_step_seconds(m: ModelShape, batch: int, context_len: int, bytes_per_s: float,
                        dtype_bytes: float = 2) -> float:
    """Bandwidth lower bound of one decode step: all weights + every sequence's KV, read once."""
    moved = weight_bytes(m, dtype_bytes) + kv_cache_bytes(m, batch, context_len, dtype_bytes)
    return moved / bytes_per_s
