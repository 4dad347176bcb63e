"""Kata 05: FlashAttention forward in Triton (reference solution).

One program computes one tile of BLOCK_M queries of one (batch, query head). It keeps the
query tile, the running max m, the running sum l and the output accumulator acc on chip,
and streams the key/value tiles of its kv head past them, merging each tile's scores with
the online-softmax rule of kata 03:

    m_new = max(m, rowmax(s))          alpha = exp(m - m_new)
    l     = alpha * l + rowsum(exp(s - m_new))
    acc   = alpha * acc + exp(s - m_new) @ v

and at the end out = acc / l, lse = m + log(l). Scores are kept in base 2 (the scale is
multiplied by log2(e) once) so that every exponential is an exp2.

Shapes: B batch, Hq query heads, Hkv kv heads, Sq queries, Sk keys, D head dim.
"""
from __future__ import annotations

import importlib.util
import math
import os
from functools import cache
from pathlib import Path

import torch
import triton
import triton.language as tl

LOG2E = math.log2(math.e)
LN2 = math.log(2.0)
HEAD_DIMS = (16, 32, 64, 128)  # tl.dot and tl.arange want a power of two, at least 16

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
if _INTERPRET:  # autotuning under the interpreter is slow and pointless: one small config
    _CONFIGS = [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=4, num_stages=1)]
else:
    _CONFIGS = [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm, bn, w, s in [  # the winners of scripts/flash_variants.py on an H100
            (128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 8, 4), (128, 128, 8, 2),
            (128, 32, 4, 4), (64, 64, 4, 3), (64, 64, 4, 4),
        ]
    ]


@triton.jit
def _visit_tiles(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn,
                 offs_m, offs_d, lo, hi, Sk, diag, qk_scale,
                 MASKED: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr,
                 TO_F32: tl.constexpr):
    """Fold the key tiles [lo, hi) into (acc, l, m). MASKED: the tiles on the diagonal or edge."""
    offs_n = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)  # lo is a tile boundary
        cols = start_n + offs_n  # (BLOCK_N,) key positions
        k_ptrs = k_base + cols[:, None] * stride_kn + offs_d[None, :]  # (BLOCK_N, D)
        v_ptrs = v_base + cols[:, None] * stride_vn + offs_d[None, :]  # (BLOCK_N, D)
        if MASKED:
            in_seq = cols < Sk
            k = tl.load(k_ptrs, mask=in_seq[:, None], other=0.0)
            v = tl.load(v_ptrs, mask=in_seq[:, None], other=0.0)
        else:
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        if TO_F32:  # the interpreter computes garbage in fp16/bf16
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k)) * qk_scale  # (BLOCK_M, BLOCK_N) scores, base-2 units, fp32
        if MASKED:
            keep = in_seq[None, :]
            if CAUSAL:  # bottom-right: query i sees key j iff j <= i + (Sk - Sq)
                keep = keep & (cols[None, :] <= offs_m[:, None] + diag)
            s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))  # (BLOCK_M,)
        if MASKED:
            # A row that has seen no key yet has m_new = -inf; subtract 0 instead (no -inf - -inf).
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:  # every row sees every key of these tiles: m_new is finite, no guard needed
            m_safe = m_new
        alpha = tl.exp2(m_i - m_safe)  # rescales what was summed under the old max
        p = tl.exp2(s - m_safe[:, None])  # (BLOCK_M, BLOCK_N)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc)  # fp16/bf16 inputs, fp32 accumulation on GPU
        m_i = m_new
    return acc, l_i, m_i


@cache
def _hopper_kernel():
    """flash_attention_hopper.py beside this file (the Gluon fast path for sm_90), or None."""
    path = Path(__file__).with_name("flash_attention_hopper.py")
    if not path.is_file():
        return None
    try:
        spec = importlib.util.spec_from_file_location("_flash_attention_hopper", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except ImportError:  # a Triton without Gluon: the portable kernel does the work
        return None
    return module


USE_HOPPER_KERNEL = True  # scripts set False to time the portable kernel on an H100


def _hopper_path(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, qk_scale: float):
    """The Gluon module when it takes these inputs (an H100/H200 and its `supports`), else None."""
    if not (USE_HOPPER_KERNEL and q.is_cuda):
        return None
    fast = _hopper_kernel()
    return fast if fast is not None and fast.supports(q, k, v, qk_scale) else None


def describe_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str:
    """Which kernel flash_attention runs for these inputs at the default scale (bench.py
    prints it per case)."""
    fast = _hopper_path(q, k, v, q.shape[-1] ** -0.5 * LOG2E)
    if fast is not None:
        return fast.describe(q.shape[-1])
    cfg = getattr(_flash_fwd_kernel, "best_config", None)  # the autotuner's pick, after a run
    if cfg is None:
        return "triton (not run yet)"
    return (f"triton BLOCK_M={cfg.kwargs['BLOCK_M']} BLOCK_N={cfg.kwargs['BLOCK_N']} "
            f"stages={cfg.num_stages} warps={cfg.num_warps}")


def _prune_configs(configs: list, named_args: dict, **kwargs) -> list:
    """Up to 1k queries per head, 64-query tiles win on an H100 in every sweep
    (docs/flash_tuning.md) but lose the autotuner's noisier timing: give it only those.
    From 2k queries on, it chooses among the 128-query tiles."""
    short = named_args["Sq"] <= 1024
    kept = [c for c in configs if (c.kwargs["BLOCK_M"] == 64) == short]
    return kept or configs


@triton.autotune(configs=_CONFIGS, key=["Sq", "Sk", "HEAD_D", "CAUSAL"],
                 prune_configs_by={"early_config_prune": _prune_configs})
@triton.jit
def _flash_fwd_kernel(
    Q, K, V, Out, Lse,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_om,
    Hq, group, Sq, Sk, qk_scale,
    HEAD_D: tl.constexpr, CAUSAL: tl.constexpr, TO_F32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # Consecutive programs take the query tiles of one head, so the programs resident at once
    # share that head's K/V in L2: K/V come from HBM about once per head, not once per tile
    # (walking the heads first instead made the kernel memory-bound: 370 vs 500 TFLOP/s).
    # Within a head the heaviest causal tiles (the last queries see the most keys) go first.
    n_m = tl.cdiv(Sq, BLOCK_M)
    pid_bh = tl.program_id(0) // n_m
    pid_m = n_m - 1 - tl.program_id(0) % n_m
    b = (pid_bh // Hq).to(tl.int64)
    h = pid_bh % Hq
    kv_h = (h // group).to(tl.int64)  # GQA: consecutive query heads share one kv head
    h = h.to(tl.int64)

    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)  # (BLOCK_M,) query positions
    offs_d = tl.arange(0, HEAD_D)
    row_ok = offs_m < Sq

    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :]
    q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)  # (BLOCK_M, D), loaded once
    if TO_F32:
        q = q.to(tl.float32)
    k_base = K + b * stride_kb + kv_h * stride_kh
    v_base = V + b * stride_vb + kv_h * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_D], tl.float32)

    diag = Sk - Sq  # query i sees keys j <= i + diag
    if CAUSAL:
        # Keys [0, full_hi) are visible to every row of this tile (whole tiles only); the
        # last row sees keys up to start_m + BLOCK_M - 1 + diag: tiles past hi are skipped.
        full_hi = tl.minimum(tl.maximum(start_m + diag + 1, 0), Sk) // BLOCK_N * BLOCK_N
        hi = tl.minimum(tl.maximum(start_m + BLOCK_M + diag, 0), Sk)
    else:
        full_hi = Sk // BLOCK_N * BLOCK_N
        hi = Sk
    acc, l_i, m_i = _visit_tiles(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn,
                                 offs_m, offs_d, 0, full_hi, Sk, diag, qk_scale,
                                 False, CAUSAL, BLOCK_N, TO_F32)
    acc, l_i, m_i = _visit_tiles(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn,
                                 offs_m, offs_d, full_hi, hi, Sk, diag, qk_scale,
                                 True, CAUSAL, BLOCK_N, TO_F32)

    # A query that saw no key has l = 0: it outputs zeros and lse = -inf.
    seen = l_i > 0.0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(seen, (m_i + tl.log2(tl.where(seen, l_i, 1.0))) * 0.6931471805599453,
                   float("-inf"))  # back to natural log: ln(x) = log2(x) * ln(2)
    o_ptrs = Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None])
    tl.store(Lse + pid_bh.to(tl.int64) * Sq + offs_m, lse, mask=row_ok)


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T * scale [+ causal mask]) v, and the log-sum-exp of each query's scores.

    q (B, Hq, Sq, D); k, v (B, Hkv, Sk, D), fp16 or bf16. Returns out (B, Hq, Sq, D) in q's
    dtype and lse (B, Hq, Sq) float32 (natural log; -inf for a query that sees no key).
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be 4-D (B, H, S, D), got {q.dim()}, {k.dim()}, {v.dim()} dims")
    B, Hq, Sq, D = q.shape
    _, Hkv, Sk, _ = k.shape
    if k.shape != v.shape or k.shape[0] != B or k.shape[3] != D:
        raise ValueError(f"incompatible shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(f"Hq={Hq} is not a multiple of Hkv={Hkv}")
    if q.dtype not in (torch.float16, torch.bfloat16) or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must all be float16 or all bfloat16, got {q.dtype}, {k.dtype}, {v.dtype}")
    if D not in HEAD_DIMS:
        raise ValueError(f"head dim D={D} not supported; use one of {HEAD_DIMS}")

    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    out = torch.empty((B, Hq, Sq, D), device=q.device, dtype=q.dtype)
    lse = torch.empty((B, Hq, Sq), device=q.device, dtype=torch.float32)
    if out.numel() == 0:
        return out, lse
    qk_scale = (D**-0.5 if scale is None else scale) * LOG2E  # one multiply, then exp2
    fast = _hopper_path(q, k, v, qk_scale)
    if fast is not None:  # H100/H200: the Gluon kernel
        fast.flash_attention_hopper(q, k, v, causal, qk_scale, out, lse)
        return out, lse
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    grid = lambda meta: (B * Hq * triton.cdiv(Sq, meta["BLOCK_M"]),)  # noqa: E731
    _flash_fwd_kernel[grid](
        q, k, v, out, lse,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        Hq, Hq // Hkv, Sq, Sk, qk_scale,
        HEAD_D=D, CAUSAL=causal, TO_F32=interpret,
    )
    return out, lse
