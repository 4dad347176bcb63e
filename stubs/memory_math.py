"""Kata 01: memory math for LLM serving.

Before a single kernel runs, a handful of integer formulas decide what a GPU can serve:
how many bytes the weights take, how many bytes each token of context costs in the KV
cache, how many tokens fit beside the weights, and whether a matmul is limited by memory
bandwidth or by arithmetic. Read katas/01_memory_math/README.md, then fill in each
function. Run `pytest katas/01` to see how far you got.

Conventions (docs/CONTRACT.md, section memory_math):
- Byte counts are Python ints. A dtype size may be fractional (0.5 bytes for int4):
  round the total up to whole bytes.
- A shape that cannot exist (a size <= 0, num_heads not a multiple of num_kv_heads)
  raises ValueError.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelShape:
    """A LLaMA-style decoder: RMSNorm with a weight, SwiGLU MLP, no biases.

    vocab_size        V, rows of the token embedding (and of lm_head)
    hidden_size       h, width of the residual stream
    intermediate_size I, width of the SwiGLU MLP (gate and up project h -> I, down I -> h)
    num_layers        L, decoder layers
    num_heads         Hq, query heads
    num_kv_heads      Hkv, key/value heads: Hq for MHA, 1 for MQA, in between for GQA
    head_dim          D per head; None means hidden_size // num_heads. It may differ from
                      hidden_size / num_heads: then q_proj is h -> Hq * D, o_proj Hq * D -> h.
    tie_embeddings    lm_head reuses the embedding matrix (one tensor, counted once)
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int | None = None  # None: hidden_size // num_heads
    tie_embeddings: bool = False


# -- Task 1: parameters and weight bytes ---------------------------------------------------
def param_count(m: ModelShape) -> int:
    """Number of parameters, equal to transformers' LlamaForCausalLM with the same config.

    Walk the model: the embedding, per layer four attention projections (mind num_kv_heads
    and head_dim), three MLP matrices and two RMSNorm weights, the final norm, and lm_head
    (not a second time when tied). ValueError for a shape that cannot exist. For shapes
    transformers refuses to build (odd head_dim, hidden_size not a multiple of num_heads),
    the same structural count.
    """
    raise NotImplementedError("Task 1: count the parameters of a LLaMA-style model")


def weight_bytes(m: ModelShape, dtype_bytes: float = 2) -> int:
    """param_count(m) * dtype_bytes, rounded up to a whole number of bytes."""
    raise NotImplementedError("Task 1: bytes of the weights at dtype_bytes per parameter")


# -- Task 2: KV cache ----------------------------------------------------------------------
def kv_cache_bytes(m: ModelShape, batch: int, seq_len: int, dtype_bytes: float = 2) -> int:
    """Bytes of the KV cache of `batch` sequences of `seq_len` tokens each.

    Every layer keeps a K and a V vector of head_dim values per KV head per token.
    ValueError for a shape that cannot exist.
    """
    raise NotImplementedError("Task 2: bytes of K and V for batch x seq_len tokens")


def max_kv_tokens(m: ModelShape, memory_bytes: int, weight_dtype_bytes: float = 2,
                  kv_dtype_bytes: float = 2) -> int:
    """The largest n such that the weights plus a KV cache of n tokens fit in memory_bytes.

    n tokens fit when weight_bytes(m, weight_dtype_bytes) + kv_cache_bytes(m, 1, n,
    kv_dtype_bytes) <= memory_bytes; n + 1 then must not. 0 when the weights alone do not
    fit. (Tokens may be spread over sequences any way: batch x context <= n.)
    """
    raise NotImplementedError("Task 2: how many KV-cache tokens fit beside the weights")


# -- Task 3: roofline ----------------------------------------------------------------------
def matmul_intensity(M: int, N: int, K: int, dtype_bytes: float = 2) -> float:
    """Arithmetic intensity (FLOP per byte) of C = A @ B with A (M x K) and B (K x N).

    FLOPs: 2 * M * N * K (a multiply and an add each). Bytes: A and B read once, C written
    once, each element dtype_bytes.
    """
    raise NotImplementedError("Task 3: FLOPs per byte of one matmul")


def is_memory_bound(intensity: float, peak_flops: float, peak_bytes_per_s: float) -> bool:
    """True when `intensity` (FLOP/byte) lies below the device's ridge point.

    The ridge point is the intensity at which moving the bytes and doing the FLOPs take
    equally long. At the ridge itself the kernel is not below it.
    """
    raise NotImplementedError("Task 3: compare the intensity with the ridge point")


def decode_step_seconds(m: ModelShape, batch: int, context_len: int, bytes_per_s: float,
                        dtype_bytes: float = 2) -> float:
    """Lower bound (seconds) of one decode step, from memory bandwidth alone.

    One step reads every weight once and, for each of the `batch` sequences, its KV cache
    of context_len tokens once; weights and cache use dtype_bytes per value. The byte count
    may be exact (fractional for int4) or rounded up (weight_bytes + kv_cache_bytes).
    """
    raise NotImplementedError("Task 3: bytes one decode step must read, over the bandwidth")
