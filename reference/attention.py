"""Kata 04 reference: scaled dot-product attention, masks, GQA, one decode step.

Plain torch, written to be read: it builds the whole (Sq, Sk) score matrix, which is
exactly what kata 05's FlashAttention kernel avoids.
"""
from __future__ import annotations

import torch


def _check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be 4-D (B, H, S, D), got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must have the same shape")
    if q.shape[0] != k.shape[0]:
        raise ValueError(f"batch mismatch: q has {q.shape[0]}, k has {k.shape[0]}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"head dim mismatch: q has D={q.shape[-1]}, k has D={k.shape[-1]}")
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"Hq={q.shape[1]} is not a multiple of Hkv={k.shape[1]}")


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    scale: float | None = None,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v for q (B, Hq, Sq, D), k and v (B, Hkv, Sk, D)."""
    _check_shapes(q, k, v)
    B, Hq, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    if key_padding_mask is not None and tuple(key_padding_mask.shape) != (B, Sk):
        raise ValueError(f"key_padding_mask must be (B, Sk) = {(B, Sk)}, "
                         f"got {tuple(key_padding_mask.shape)}")
    scale = D ** -0.5 if scale is None else scale
    acc = torch.promote_types(q.dtype, torch.float32)  # fp16/bf16 -> fp32, fp64 stays fp64

    # GQA: query head h reads kv head h // group (group = Hq // Hkv consecutive query heads
    # share one kv head). Gathering copies K/V Hq/Hkv times; a real kernel indexes instead.
    kv_head = torch.arange(Hq, device=q.device) // (Hq // Hkv)  # (Hq,)
    k = k[:, kv_head].to(acc)  # (B, Hq, Sk, D)
    v = v[:, kv_head].to(acc)  # (B, Hq, Sk, D)

    scores = torch.einsum("bhqd,bhkd->bhqk", q.to(acc) * scale, k)  # (B, Hq, Sq, Sk)

    allowed = torch.ones(Sq, Sk, dtype=torch.bool, device=q.device)  # (Sq, Sk)
    if causal:
        # bottom-right: the last query lines up with the last key
        i = torch.arange(Sq, device=q.device)[:, None]
        j = torch.arange(Sk, device=q.device)[None, :]
        allowed = j <= i + (Sk - Sq)
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask.to(torch.bool)[:, None, None, :]  # (B, 1, Sq, Sk)
    scores = scores.masked_fill(~allowed, float("-inf"))

    probs = torch.softmax(scores, dim=-1)
    # A query that sees no key has a row of -inf: exp gives 0 / 0 = NaN. It outputs zeros.
    probs = probs.masked_fill(~allowed.any(dim=-1, keepdim=True), 0.0)

    out = torch.einsum("bhqk,bhkd->bhqd", probs, v)  # (B, Hq, Sq, D)
    return out.to(q.dtype)


def decode_step(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    cache_len: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Append one token's K/V at cache_len[b], then attend over positions 0..cache_len[b]."""
    B, Hkv, S_max, D = k_cache.shape
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} differ")
    if tuple(k_new.shape) != (B, Hkv, 1, D) or tuple(v_new.shape) != (B, Hkv, 1, D):
        raise ValueError(f"k_new and v_new must be (B, Hkv, 1, D) = {(B, Hkv, 1, D)}, "
                         f"got {tuple(k_new.shape)} and {tuple(v_new.shape)}")
    if q.dim() != 4 or q.shape[0] != B or q.shape[2] != 1 or q.shape[3] != D:
        raise ValueError(f"q must be (B, Hq, 1, D) with B={B}, D={D}, got {tuple(q.shape)}")
    if q.shape[1] % Hkv != 0:
        raise ValueError(f"Hq={q.shape[1]} is not a multiple of Hkv={Hkv}")
    if tuple(cache_len.shape) != (B,):
        raise ValueError(f"cache_len must be (B,) = ({B},), got {tuple(cache_len.shape)}")
    pos = cache_len.to(device=k_cache.device, dtype=torch.long)  # (B,)
    if bool(((pos < 0) | (pos >= S_max)).any()):
        raise ValueError(f"cache_len must lie in [0, S_max={S_max}), got {cache_len.tolist()}")

    rows = torch.arange(B, device=k_cache.device)
    k_cache[rows, :, pos] = k_new[:, :, 0]  # (B, Hkv, D) into slot pos[b] of row b
    v_cache[rows, :, pos] = v_new[:, :, 0]

    # Row b sees positions 0..pos[b], the new token included. Slots past it may hold
    # anything (torch.empty, an old sequence, NaN): masking the scores is not enough,
    # since 0 * NaN = NaN in probs @ V, so zero them too.
    valid = torch.arange(S_max, device=k_cache.device)[None, :] <= pos[:, None]  # (B, S_max)
    keep = valid[:, None, :, None]  # (B, 1, S_max, 1)
    k = torch.where(keep, k_cache, 0.0)
    v = torch.where(keep, v_cache, 0.0)
    out = attention(q, k, v, key_padding_mask=valid)  # (B, Hq, 1, D)
    return out, k_cache, v_cache
