"""Kata 05: FlashAttention forward in Triton. Read katas/05_flash_attention/README.md first.

Shapes: B batch, Hq query heads, Hkv key/value heads (Hq % Hkv == 0), Sq queries, Sk keys,
D head dim (16, 32, 64 or 128). Run `pytest katas/05` to see how far you got.

Without a GPU the tests run your kernel under the Triton interpreter (TRITON_INTERPRET=1).
The interpreter loads and stores bf16/fp16 correctly but computes garbage with them: cast to
float32 right after every tl.load there (and only there: on a GPU, tl.dot wants the native
fp16/bf16 inputs for tensor cores). `os.environ.get("TRITON_INTERPRET") == "1"` tells you
which case you are in; pass it to the kernel as a tl.constexpr.
"""
from __future__ import annotations

import torch
import triton  # noqa: F401  (you will need these)
import triton.language as tl  # noqa: F401


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention softmax(q k^T * scale) v with a Triton kernel that never stores the scores.

    Args:
        q: (B, Hq, Sq, D) queries, float16 or bfloat16.
        k, v: (B, Hkv, Sk, D) keys and values, same dtype. Query head h reads kv head
            h // (Hq // Hkv) (Hkv == Hq: multi-head; Hkv < Hq: grouped-query; Hkv == 1:
            multi-query). Do not copy K/V per query head: index the kv head in the kernel.
        causal: query i sees key j only when j <= i + (Sk - Sq) (aligned bottom-right: the
            last query sees every key). Whole key tiles above the diagonal are skipped.
        scale: multiplies the scores; None means D ** -0.5.

    Returns:
        out: (B, Hq, Sq, D) in q's dtype.
        lse: (B, Hq, Sq) float32, the natural-log log-sum-exp of each query's scaled scores
            over the keys it sees (what a backward pass or a split-KV merge needs).
        A query that sees no key (causal with Sq > Sk) outputs zeros and lse = -inf, never NaN.

    Raises:
        ValueError: Hq not a multiple of Hkv, or q, k, v with different head dims or batch.

    Task 1: the kernel: one program per (query tile, batch * head), key tiles streamed through
            the online softmax; non-causal, Hq == Hkv.
    Task 2: the LSE output.
    Task 3: causal (bottom-right), skipping tiles above the diagonal; rows that see nothing.
    Task 4: grouped-query attention.
    Task 5: fast on a GPU (see perf_targets/flash_attention.toml).
    """
    raise NotImplementedError("Task 1: a Triton FlashAttention forward kernel (then Tasks 2-5)")
