"""Kata 08: paged attention for decode (reference solution).

The KV cache is a pool of blocks, k_cache and v_cache (num_blocks, block_size, Hkv, D).
Token t of sequence b lives in block block_tables[b, t // block_size] at offset
t % block_size (its slot is block * block_size + offset, as kata 07's `slot`).

- `write_kv` stores the new tokens' K/V at their slots (slot -1: padding, skipped).
- `paged_attention` is the plain-torch version: gather each sequence's K/V, attend.
- `paged_attention_triton` is split-KV ("flash decoding"): one program per (sequence, kv
  head, split) reads its share of the sequence's keys through the block table, for all the
  query heads of that kv head at once, and leaves a partial (out, lse); a second kernel
  merges the partials with kata 03's rule

      lse = log sum_s exp(lse_s),   out = sum_s exp(lse_s - lse) * out_s.

Shapes: B sequences, Hq query heads, Hkv kv heads (GROUP = Hq // Hkv query heads share one),
D head dim, S splits per sequence.
"""
from __future__ import annotations

import functools
import math
import os

import torch
import triton
import triton.language as tl

LOG2E = math.log2(math.e)
LN2 = tl.constexpr(math.log(2.0))  # a constexpr: a @triton.jit function may read it


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _default_scale(head_dim: int, scale: float | None) -> float:
    return head_dim ** -0.5 if scale is None else scale


def _check_shapes(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                  block_tables: torch.Tensor, seq_lens: torch.Tensor) -> None:
    if q.dim() != 3 or k_cache.dim() != 4 or v_cache.shape != k_cache.shape:
        raise ValueError(f"expected q (B, Hq, D) and k_cache = v_cache (num_blocks, block_size, "
                         f"Hkv, D), got q {tuple(q.shape)}, k_cache {tuple(k_cache.shape)}, "
                         f"v_cache {tuple(v_cache.shape)}")
    B, Hq, D = q.shape
    Hkv = k_cache.shape[2]
    if k_cache.shape[3] != D or Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(f"q {tuple(q.shape)} does not fit the cache {tuple(k_cache.shape)}: "
                         "the head dims must agree and Hq must be a multiple of Hkv")
    if block_tables.dim() != 2 or block_tables.shape[0] != B or tuple(seq_lens.shape) != (B,):
        raise ValueError(f"expected block_tables (B, max_blocks) and seq_lens (B,) for B={B}, got "
                         f"{tuple(block_tables.shape)} and {tuple(seq_lens.shape)}")


# ------------------------------------------------------------------------------ Task 1
def write_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Store token i's k[i], v[i] (Hkv, D) at slot slot_mapping[i]; slot -1 is skipped. In place."""
    block_size = k_cache.shape[1]
    keep = slot_mapping >= 0  # -1 marks padding; as an index it would hit the last slot
    slots = slot_mapping[keep].long()
    blocks, offsets = slots // block_size, slots % block_size
    k_cache[blocks, offsets] = k[keep].to(k_cache.dtype)
    v_cache[blocks, offsets] = v[keep].to(v_cache.dtype)


# ------------------------------------------------------------------------------ Task 2
def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    block_tables: torch.Tensor, seq_lens: torch.Tensor, *,
                    scale: float | None = None) -> torch.Tensor:
    """One decode query per sequence over its seq_lens[b] cached tokens, in plain torch."""
    _check_shapes(q, k_cache, v_cache, block_tables, seq_lens)
    B, Hq, D = q.shape
    _, block_size, Hkv, _ = k_cache.shape
    group = Hq // Hkv
    scale = _default_scale(D, scale)
    cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
    out = torch.zeros(B, Hq, D, dtype=cdt, device=q.device)
    for b, n in enumerate(seq_lens.tolist()):
        n_blocks = _cdiv(n, block_size)
        blocks = block_tables[b, :n_blocks].long()  # entries past these are never read

        def gather(cache: torch.Tensor) -> torch.Tensor:  # (n, Hkv, D): the sequence's tokens in order
            return cache[blocks].reshape(n_blocks * block_size, Hkv, D)[:n].to(cdt)

        k, v = gather(k_cache), gather(v_cache)
        # Query head h reads kv head h // group: repeat each kv head group times, in order.
        k = k.repeat_interleave(group, dim=1)  # (n, Hq, D)
        v = v.repeat_interleave(group, dim=1)
        scores = torch.einsum("hd,nhd->hn", q[b].to(cdt), k) * scale  # (Hq, n)
        p = torch.softmax(scores, dim=-1)  # n = 0: an empty softmax, and the sum below is 0
        out[b] = torch.einsum("hn,nhd->hd", p, v)
    return out.to(q.dtype)


# ------------------------------------------------------------------------------ Task 3/4
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# Tokens per loop step of the split kernel. On a GPU: 64 tokens (four 16-token blocks) of
# K and V per step, so every step is one (BLOCK_H x D) @ (D x 64) and one (BLOCK_H x 64) @
# (64 x D) tl.dot and 2 x 16 KiB of bf16 loads in flight per stage. Under the interpreter
# the cost is per step, not per element: small steps keep the tests' splits interesting.
_BLOCK_N = 16 if _INTERPRET else 64
_NUM_WARPS, _NUM_STAGES = 4, 3
_MIN_TOKENS_PER_SPLIT = 4 * _BLOCK_N  # a split shorter than this costs more to merge than it saves
_MAX_MERGE_CHUNK = 64  # splits the merge kernel folds per step
# Programs per SM that num_splits=None plans for. Compiled for sm_90 (Triton 3.9), the bf16
# D=128 split kernel with the config above uses 113 registers a thread (x 128 threads) and
# 39 KiB of shared memory (the next step's block ids and K/V tiles prefetched with cp.async),
# so 4 fit on an SM: 528 on an H200. The split count keeps B * Hkv * S within that, so every
# program is resident at once: one wave, no straggler wave of a few programs that would each
# keep only 32 KiB in flight. (If a build needs more registers and only 3 fit, the overflow is
# at most one program per SM.)
_PROGRAMS_PER_SM = 4


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _choose_num_splits(batch: int, num_kv_heads: int, max_tokens: int, device: torch.device) -> int:
    """As many splits as keep all B * Hkv * S programs resident in one wave, but no split
    shorter than _MIN_TOKENS_PER_SPLIT. Decided on the host from shapes only (the table's
    width bounds every length): reading seq_lens would wait for the GPU."""
    sms = _sm_count(device.index if device.index is not None else torch.cuda.current_device()) \
        if device.type == "cuda" else 2
    by_occupancy = (_PROGRAMS_PER_SM * sms) // max(1, batch * num_kv_heads)
    by_length = _cdiv(max_tokens, _MIN_TOKENS_PER_SPLIT)
    return max(1, min(by_occupancy, by_length))


@triton.jit
def _paged_split_kernel(
    q_ptr, k_ptr, v_ptr, bt_ptr, lens_ptr, out_ptr, part_o_ptr, part_lse_ptr,
    stride_qb, stride_qh, stride_qd,
    stride_kb, stride_ks, stride_kh, stride_kd,
    stride_vb, stride_vs, stride_vh, stride_vd,
    stride_btb, stride_ob, stride_oh, stride_od,
    num_splits, qk_scale,
    GROUP: tl.constexpr, BLOCK_H: tl.constexpr, HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr,
    PAGE: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr, TO_F32: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Program (b, kvh, s): the keys of split s of sequence b, for the GROUP query heads of
    kv head kvh. SPLIT=False (one split): writes the normalised output straight to out.
    SPLIT=True: writes the partial out_s = acc / l (fp32) and lse_s = ln(sum exp(scores))."""
    pid_b = tl.program_id(0)
    kvh = tl.program_id(1)
    pid_s = tl.program_id(2)

    offs_h = tl.arange(0, BLOCK_H)  # rows of the tile: query heads of this group (padded)
    offs_d = tl.arange(0, BLOCK_D)
    h_ok = offs_h < GROUP
    d_ok = offs_d < HEAD_D
    heads = kvh * GROUP + offs_h  # query head h reads kv head h // GROUP

    q_ptrs = q_ptr + pid_b.to(tl.int64) * stride_qb + heads[:, None] * stride_qh + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=h_ok[:, None] & d_ok[None, :], other=0.0)  # (BLOCK_H, BLOCK_D)
    if TO_F32:
        q = q.to(tl.float32)
    else:  # tl.dot wants both operands in the cache's dtype
        q = q.to(k_ptr.dtype.element_ty)

    # This split's share of the keys, in whole BLOCK_N tiles: [lo, hi).
    seq_len = tl.load(lens_ptr + pid_b)
    n_tiles = tl.cdiv(seq_len, BLOCK_N)
    tiles_per_split = tl.cdiv(n_tiles, num_splits)
    lo = pid_s * tiles_per_split * BLOCK_N
    hi = tl.minimum(lo + tiles_per_split * BLOCK_N, seq_len)

    bt_row = bt_ptr + pid_b.to(tl.int64) * stride_btb
    k_head = k_ptr + kvh.to(tl.int64) * stride_kh
    v_head = v_ptr + kvh.to(tl.int64) * stride_vh
    offs_n = tl.arange(0, BLOCK_N)

    m_i = tl.full([BLOCK_H], -float("inf"), tl.float32)  # running max, in log2 units
    l_i = tl.zeros([BLOCK_H], tl.float32)  # running sum of exp2(score - m)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)  # running sum of exp2(score - m) * v
    for start in range(lo, hi, BLOCK_N):
        tok = start + offs_n  # (BLOCK_N,) token positions
        valid = tok < hi
        # Each token's physical block from the table, then its row in the cache: one gather
        # of BLOCK_N rows (several blocks) per step. Masked: entries past the sequence's
        # blocks are arbitrary.
        blk = tl.load(bt_row + tok // PAGE, mask=valid, other=0).to(tl.int64)
        off = (tok % PAGE).to(tl.int64)
        k_rows = k_head + blk * stride_kb + off * stride_ks  # (BLOCK_N,)
        v_rows = v_head + blk * stride_vb + off * stride_vs
        kv_mask = valid[:, None] & d_ok[None, :]
        k = tl.load(k_rows[:, None] + offs_d[None, :] * stride_kd, mask=kv_mask, other=0.0)
        v = tl.load(v_rows[:, None] + offs_d[None, :] * stride_vd, mask=kv_mask, other=0.0)
        if TO_F32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)

        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_H, BLOCK_N), log2 units
        s = tl.where(valid[None, :], s, -float("inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))  # finite: every step has a valid token
        alpha = tl.exp2(m_i - m_new)  # rescale what was summed against the old max
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)  # an empty split (or length 0): out 0, not NaN
    o = acc / l_safe[:, None]
    row_mask = h_ok[:, None] & d_ok[None, :]
    if SPLIT:
        # Partials are contiguous (B, Hq, S, D) and (B, Hq, S), fp32.
        row = (pid_b.to(tl.int64) * (tl.num_programs(1) * GROUP) + heads) * num_splits + pid_s
        tl.store(part_o_ptr + row[:, None] * HEAD_D + offs_d[None, :], o, mask=row_mask)
        lse = (m_i + tl.log2(l_safe)) * LN2  # natural log; m_i = -inf for an empty split
        tl.store(part_lse_ptr + row, lse, mask=h_ok)
    else:
        o_ptrs = out_ptr + pid_b.to(tl.int64) * stride_ob + heads[:, None] * stride_oh + offs_d[None, :] * stride_od
        tl.store(o_ptrs, o.to(out_ptr.dtype.element_ty), mask=row_mask)


@triton.jit
def _merge_kernel(part_o_ptr, part_lse_ptr, out_ptr, num_heads, num_splits,
                  stride_ob, stride_oh, stride_od,
                  HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr):
    """Program (b, h): kata 03's merge of the S partial (out_s, lse_s) of one query head.
    Each lse_s is one (max, sum) state in one number: weight out_s by exp(lse_s - max)."""
    pid_b = tl.program_id(0)
    h = tl.program_id(1)
    row0 = (pid_b.to(tl.int64) * num_heads + h) * num_splits
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_D

    m = -float("inf")  # running max of the lse values
    total = 0.0  # sum of exp(lse_s - m)
    acc = tl.zeros([BLOCK_D], tl.float32)
    for s0 in range(0, num_splits, BLOCK_S):
        split = s0 + offs_s
        s_ok = split < num_splits
        lse = tl.load(part_lse_ptr + row0 + split, mask=s_ok, other=-float("inf"))
        o = tl.load(part_o_ptr + (row0 + split)[:, None] * HEAD_D + offs_d[None, :],
                    mask=s_ok[:, None] & d_ok[None, :], other=0.0)
        m_new = tl.maximum(m, tl.max(lse, axis=0))
        m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)  # all empty so far: no -inf - -inf
        alpha = tl.exp(m - m_safe)
        w = tl.exp(lse - m_safe)  # (BLOCK_S,); 0 for an empty split
        total = total * alpha + tl.sum(w, axis=0)
        acc = acc * alpha + tl.sum(w[:, None] * o, axis=0)
        m = m_new
    out = acc / tl.where(total == 0.0, 1.0, total)  # every split empty (length 0): zeros
    tl.store(out_ptr + pid_b.to(tl.int64) * stride_ob + h * stride_oh + offs_d * stride_od,
             out.to(out_ptr.dtype.element_ty), mask=d_ok)


def paged_attention_triton(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, seq_lens: torch.Tensor, *,
                           scale: float | None = None,
                           num_splits: int | None = None) -> torch.Tensor:
    """`paged_attention` as a split-KV Triton kernel plus a merge kernel.

    num_splits: splits per sequence (None: chosen from the batch, the kv heads, the table's
    width and the GPU's SM count). Every positive value gives the same result.
    """
    if num_splits is not None and num_splits < 1:
        raise ValueError(f"num_splits must be >= 1 (or None), got {num_splits}")
    _check_shapes(q, k_cache, v_cache, block_tables, seq_lens)
    B, Hq, D = q.shape
    _, page, Hkv, _ = k_cache.shape
    group = Hq // Hkv
    out = torch.empty((B, Hq, D), dtype=q.dtype, device=q.device)
    if B == 0 or Hq == 0:
        return out
    if block_tables.shape[1] == 0 or D == 0:  # no blocks at all: every length is 0
        return out.zero_()
    if num_splits is None:
        num_splits = _choose_num_splits(B, Hkv, block_tables.shape[1] * page, q.device)
    qk_scale = _default_scale(D, scale) * LOG2E  # scores in log2 units: exp2 in the kernel
    split = num_splits > 1
    if split:
        part_o = torch.empty((B, Hq, num_splits, D), dtype=torch.float32, device=q.device)
        part_lse = torch.empty((B, Hq, num_splits), dtype=torch.float32, device=q.device)
    else:
        part_o = part_lse = out  # unused
    block_d = max(16, triton.next_power_of_2(D))
    _paged_split_kernel[(B, Hkv, num_splits)](
        q, k_cache, v_cache, block_tables, seq_lens, out, part_o, part_lse,
        q.stride(0), q.stride(1), q.stride(2),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), k_cache.stride(3),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), v_cache.stride(3),
        block_tables.stride(0), out.stride(0), out.stride(1), out.stride(2),
        num_splits, qk_scale,
        GROUP=group, BLOCK_H=max(16, triton.next_power_of_2(group)), HEAD_D=D, BLOCK_D=block_d,
        PAGE=page, BLOCK_N=_BLOCK_N, SPLIT=split, TO_F32=_INTERPRET,
        # fp32 caches: full fp32 products (tl.dot's default on a GPU is TF32, ~1e-3 off)
        DOT_PRECISION="ieee" if k_cache.dtype == torch.float32 else "tf32",
        num_warps=_NUM_WARPS, num_stages=_NUM_STAGES,
    )
    if split:
        _merge_kernel[(B, Hq)](
            part_o, part_lse, out, Hq, num_splits, out.stride(0), out.stride(1), out.stride(2),
            HEAD_D=D, BLOCK_D=block_d,
            BLOCK_S=min(_MAX_MERGE_CHUNK, max(2, triton.next_power_of_2(num_splits))),
            num_warps=4,
        )
    return out
