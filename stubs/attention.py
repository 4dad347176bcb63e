"""Kata 04: attention. Read katas/04_attention/README.md, then fill in the two functions.

Shapes: B batch, Hq query heads, Hkv key/value heads (Hq % Hkv == 0), Sq queries,
Sk keys, D head dim. Run `pytest katas/04` to see how far you got.
"""
from __future__ import annotations

import torch


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    scale: float | None = None,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention: softmax(q k^T * scale + mask) v.

    Args:
        q: (B, Hq, Sq, D) queries.
        k, v: (B, Hkv, Sk, D) keys and values. Query head h reads kv head h // (Hq // Hkv)
            (Hkv == Hq: multi-head; 1 < Hkv < Hq: grouped-query; Hkv == 1: multi-query).
        causal: query i sees key j only when j <= i + (Sk - Sq) (aligned bottom-right:
            the last query sees every key). This is NOT torch's `is_causal` when Sq != Sk.
        scale: multiplies the scores; None means D ** -0.5.
        key_padding_mask: (B, Sk) bool, True = this key may be attended to.

    Returns:
        (B, Hq, Sq, D) in q's dtype. A query that sees no key (all masked) outputs zeros,
        never NaN. NaN in q, or in a K/V row a query sees, comes out as NaN for that query
        (never hidden). (Non-finite K/V of masked keys: no promise either way.)
        q, k, v and the mask are left unmodified.

    Raises:
        ValueError: Hq not a multiple of Hkv, or q and k with different head dims D.

    Task 1: plain multi-head attention (Hq == Hkv, no masks), the scale, the dtype.
    Task 2: the causal and padding masks, and zeros for a query that sees nothing.
    Task 3: grouped-query and multi-query attention (Hkv < Hq).
    """
    raise NotImplementedError("Task 1: scaled dot-product attention (then Tasks 2 and 3)")


def decode_step(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    cache_len: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One decode step of every sequence in the batch against its KV cache.

    Args:
        q: (B, Hq, 1, D) the new token's query.
        k_cache, v_cache: (B, Hkv, S_max, D). Row b holds cache_len[b] valid tokens at
            positions 0..cache_len[b]-1; later positions may hold anything (even NaN).
        k_new, v_new: (B, Hkv, 1, D) the new token's key and value.
        cache_len: (B,) long, each sequence's own length before this step.

    Returns:
        (out, k_cache, v_cache): out (B, Hq, 1, D) in q's dtype is the new token attending
        over positions 0..cache_len[b] of its row (itself included); the caches hold
        k_new/v_new at position cache_len[b]. Updating the caches in place is allowed;
        q, k_new, v_new and cache_len are left unmodified.

    Raises:
        ValueError: cache_len[b] >= S_max for some row (no free slot), Hq not a multiple
            of Hkv, or q's head dim differs from the cache's.

    Task 4.
    """
    raise NotImplementedError("Task 4: append to the KV cache and attend over the prefix")
