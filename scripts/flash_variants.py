"""Developer tool: time design variants of kata 05's kernel, config by config, on a GPU.

    python scripts/flash_variants.py [--seq 1024 4096 16384] [--dims 128 64] [--dtype bf16]
        [--variants ptr-mfast desc-mfast ...] [--wide | --configs 128,64,8,3 ...] [--repeat N]

Not a kata file; results and their reading are in docs/flash_tuning.md.
One kernel with constexpr switches for the design choices being weighed:
  M_FAST  grid axis 0 walks the query tiles of one head (programs that run together share
          that head's K/V in L2) instead of walking the heads
  DESC    K/V/Q/O through on-device tensor descriptors (TMA on Hopper) instead of pointers
  WS      warp specialisation of the key loop (tl.range(..., warp_specialize=True))
  PIPE    the unmasked loop pipelined by hand (next tile's QK^T before this tile's softmax)
plus a persistent kernel (`pers*`: one program per SM or two, looping over tiles).
Each variant x config is compiled once per (D, causal) and timed per case (CUDA events,
median, L2 flushed); the table lists the best config per variant and case.
"""
from __future__ import annotations

import argparse
import itertools
import math
import sys
import traceback
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness.perf import cuda_median_ms  # noqa: E402

LOG2E = math.log2(math.e)


@triton.jit
def _key_bounds(start_m, Sq, Sk, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr):
    """Keys [0, full_hi) need no mask for this query tile; [full_hi, hi) need one."""
    diag = Sk - Sq
    if CAUSAL:
        full_hi = tl.minimum(tl.maximum(start_m + diag + 1, 0), Sk) // BLOCK_N * BLOCK_N
        hi = tl.minimum(tl.maximum(start_m + BLOCK_M + diag, 0), Sk)
    else:
        full_hi = Sk // BLOCK_N * BLOCK_N
        hi = Sk
    return full_hi, hi


@triton.jit
def _finish(acc, l_i, m_i):
    """(out, natural-log lse); zeros and -inf for a query that saw no key."""
    seen = l_i > 0.0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(seen, (m_i + tl.log2(tl.where(seen, l_i, 1.0))) * 0.6931471805599453,
                   float("-inf"))
    return out, lse


@triton.jit
def _exp2_packed(x):
    """exp2 of an fp16/bf16 tensor, two values per MUFU instruction (sm_90 ex2 .f16x2/.bf16x2)."""
    if x.dtype == tl.float16:
        return tl.inline_asm_elementwise("ex2.approx.f16x2 $0, $1;", "=r,r", [x],
                                         dtype=tl.float16, is_pure=True, pack=2)
    else:
        return tl.inline_asm_elementwise("ex2.approx.ftz.bf16x2 $0, $1;", "=r,r", [x],
                                         dtype=tl.bfloat16, is_pure=True, pack=2)


@triton.jit
def _tiles(acc, l_i, m_i, q, k_src, v_src, stride_kn, stride_vn, offs_m, offs_d, lo, hi, Sk,
           diag, qk_scale, MASKED: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr,
           DESC: tl.constexpr, WS: tl.constexpr, FEXP: tl.constexpr = False):
    offs_n = tl.arange(0, BLOCK_N)
    for start_n in tl.range(lo, hi, BLOCK_N, warp_specialize=WS):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_n
        if DESC:
            k = k_src.load([start_n, 0])  # (BLOCK_N, D), rows past Sk zero-filled
            v = v_src.load([start_n, 0])
        else:
            k_ptrs = k_src + cols[:, None] * stride_kn + offs_d[None, :]
            v_ptrs = v_src + cols[:, None] * stride_vn + offs_d[None, :]
            if MASKED:
                k = tl.load(k_ptrs, mask=(cols < Sk)[:, None], other=0.0)
                v = tl.load(v_ptrs, mask=(cols < Sk)[:, None], other=0.0)
            else:
                k = tl.load(k_ptrs)
                v = tl.load(v_ptrs)
        s = tl.dot(q, k.T)  # raw scores, fp32
        if MASKED:
            keep = (cols < Sk)[None, :]
            if CAUSAL:
                keep = keep & (cols[None, :] <= offs_m[:, None] + diag)
            s = tl.where(keep, s * qk_scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp2(s - m_safe[:, None])
            alpha = tl.exp2(m_i - m_safe)
        else:
            m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
            if FEXP:
                p = _exp2_packed((s * qk_scale - m_new[:, None]).to(v.dtype))
            else:
                p = tl.exp2(s * qk_scale - m_new[:, None])  # one FMA per score
            alpha = tl.exp2(m_i - m_new)
        if FEXP:
            l_i = l_i * alpha + tl.sum(p.to(tl.float32), 1)
        else:
            l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _fold(acc, l_i, m_i, s, v, qk_scale):
    """One unmasked tile's online-softmax update from its raw scores s."""
    m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
    p = tl.exp2(s * qk_scale - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc)
    return acc, l_i, m_new


@triton.jit
def _tiles_pipelined(acc, l_i, m_i, q, k_src, v_src, stride_kn, stride_vn, offs_d, lo, hi,
                     qk_scale, BLOCK_N: tl.constexpr):
    """Unmasked tiles, software-pipelined by hand: tile j+1's QK^T is issued before tile j's
    softmax, so the tensor cores can work while the softmax runs."""
    offs_n = tl.arange(0, BLOCK_N)
    if lo < hi:
        k = tl.load(k_src + (lo + offs_n)[:, None] * stride_kn + offs_d[None, :])
        s = tl.dot(q, k.T)
        for start_n in range(lo + BLOCK_N, hi, BLOCK_N):
            start_n = tl.multiple_of(start_n, BLOCK_N)
            k = tl.load(k_src + (start_n + offs_n)[:, None] * stride_kn + offs_d[None, :])
            s_next = tl.dot(q, k.T)
            v = tl.load(v_src + (start_n - BLOCK_N + offs_n)[:, None] * stride_vn + offs_d[None, :])
            acc, l_i, m_i = _fold(acc, l_i, m_i, s, v, qk_scale)
            s = s_next
        v = tl.load(v_src + (hi - BLOCK_N + offs_n)[:, None] * stride_vn + offs_d[None, :])
        acc, l_i, m_i = _fold(acc, l_i, m_i, s, v, qk_scale)
    return acc, l_i, m_i


@triton.jit
def _fwd(Q, K, V, Out, Lse, stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
         stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om,
         Hq, group, Sq, Sk, qk_scale,
         HEAD_D: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
         BLOCK_N: tl.constexpr, M_FAST: tl.constexpr, DESC: tl.constexpr, WS: tl.constexpr,
         PIPE: tl.constexpr, FEXP: tl.constexpr):
    if M_FAST:
        pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
        pid_bh = tl.program_id(1)
    else:
        pid_m = tl.num_programs(1) - 1 - tl.program_id(1)
        pid_bh = tl.program_id(0)
    b = (pid_bh // Hq).to(tl.int64)
    h = pid_bh % Hq
    kv_h = (h // group).to(tl.int64)
    h = h.to(tl.int64)
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_D)
    row_ok = offs_m < Sq
    q_base = Q + b * stride_qb + h * stride_qh
    o_base = Out + b * stride_ob + h * stride_oh
    k_base = K + b * stride_kb + kv_h * stride_kh
    v_base = V + b * stride_vb + kv_h * stride_vh
    if DESC:
        q_src = tl.make_tensor_descriptor(q_base, [Sq, HEAD_D], [stride_qm, 1], [BLOCK_M, HEAD_D])
        o_dst = tl.make_tensor_descriptor(o_base, [Sq, HEAD_D], [stride_om, 1], [BLOCK_M, HEAD_D])
        k_src = tl.make_tensor_descriptor(k_base, [Sk, HEAD_D], [stride_kn, 1], [BLOCK_N, HEAD_D])
        v_src = tl.make_tensor_descriptor(v_base, [Sk, HEAD_D], [stride_vn, 1], [BLOCK_N, HEAD_D])
        q = q_src.load([start_m, 0])
    else:
        k_src = k_base
        v_src = v_base
        q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :], mask=row_ok[:, None],
                    other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_D], tl.float32)
    diag = Sk - Sq
    full_hi, hi = _key_bounds(start_m, Sq, Sk, CAUSAL, BLOCK_M, BLOCK_N)
    if PIPE:
        acc, l_i, m_i = _tiles_pipelined(acc, l_i, m_i, q, k_src, v_src, stride_kn, stride_vn,
                                         offs_d, 0, full_hi, qk_scale, BLOCK_N)
    else:
        acc, l_i, m_i = _tiles(acc, l_i, m_i, q, k_src, v_src, stride_kn, stride_vn, offs_m,
                               offs_d, 0, full_hi, Sk, diag, qk_scale, False, CAUSAL, BLOCK_N,
                               DESC, WS, FEXP)
    acc, l_i, m_i = _tiles(acc, l_i, m_i, q, k_src, v_src, stride_kn, stride_vn, offs_m, offs_d,
                           full_hi, hi, Sk, diag, qk_scale, True, CAUSAL, BLOCK_N, DESC, False)
    out, lse = _finish(acc, l_i, m_i)
    if DESC:
        o_dst.store([start_m, 0], out.to(Out.dtype.element_ty))
    else:
        tl.store(o_base + offs_m[:, None] * stride_om + offs_d[None, :],
                 out.to(Out.dtype.element_ty), mask=row_ok[:, None])
    tl.store(Lse + pid_bh.to(tl.int64) * Sq + offs_m, lse, mask=row_ok)


@triton.jit
def _one_loop(acc, l_i, m_i, q, k_src, v_src, offs_m, hi, full_hi, Sk, diag, qk_scale,
              CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr):
    """All key tiles in one loop; the edge/diagonal tiles take a run-time masked branch."""
    offs_n = tl.arange(0, BLOCK_N)
    for start_n in tl.range(0, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        k = k_src.load([start_n, 0])
        v = v_src.load([start_n, 0])
        s = tl.dot(q, k.T)
        if start_n >= full_hi:
            cols = start_n + offs_n
            keep = (cols < Sk)[None, :]
            if CAUSAL:
                keep = keep & (cols[None, :] <= offs_m[:, None] + diag)
            s = tl.where(keep, s * qk_scale, -1.0e30)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.exp2(s - m_new[:, None])
        else:
            m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
            p = tl.exp2(s * qk_scale - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _fwd_persistent(Q, K, V, Out, Lse, stride_qb, stride_qh, stride_qm, stride_kb, stride_kh,
                    stride_kn, stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om,
                    Hq, group, Sq, Sk, qk_scale, n_m, n_tiles,
                    HEAD_D: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr, NPROG: tl.constexpr, FLAT: tl.constexpr):
    for tile in tl.range(tl.program_id(0), n_tiles, NPROG, flatten=FLAT):
        pid_m = n_m - 1 - tile % n_m
        pid_bh = tile // n_m
        b = (pid_bh // Hq).to(tl.int64)
        h = pid_bh % Hq
        kv_h = (h // group).to(tl.int64)
        h = h.to(tl.int64)
        start_m = pid_m * BLOCK_M
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q_src = tl.make_tensor_descriptor(Q + b * stride_qb + h * stride_qh, [Sq, HEAD_D],
                                          [stride_qm, 1], [BLOCK_M, HEAD_D])
        o_dst = tl.make_tensor_descriptor(Out + b * stride_ob + h * stride_oh, [Sq, HEAD_D],
                                          [stride_om, 1], [BLOCK_M, HEAD_D])
        k_src = tl.make_tensor_descriptor(K + b * stride_kb + kv_h * stride_kh, [Sk, HEAD_D],
                                          [stride_kn, 1], [BLOCK_N, HEAD_D])
        v_src = tl.make_tensor_descriptor(V + b * stride_vb + kv_h * stride_vh, [Sk, HEAD_D],
                                          [stride_vn, 1], [BLOCK_N, HEAD_D])
        q = q_src.load([start_m, 0])
        m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_D], tl.float32)
        diag = Sk - Sq
        full_hi, hi = _key_bounds(start_m, Sq, Sk, CAUSAL, BLOCK_M, BLOCK_N)
        acc, l_i, m_i = _one_loop(acc, l_i, m_i, q, k_src, v_src, offs_m, hi, full_hi, Sk, diag,
                                  qk_scale, CAUSAL, BLOCK_N)
        out, lse = _finish(acc, l_i, m_i)
        o_dst.store([start_m, 0], out.to(Out.dtype.element_ty))
        tl.store(Lse + pid_bh.to(tl.int64) * Sq + offs_m, lse, mask=offs_m < Sq)


def run_persistent(q, k, v, causal, *, PER_SM, FLAT, BLOCK_M, BLOCK_N, num_warps, num_stages):
    B, Hq, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    out = torch.empty_like(q)
    lse = torch.empty((B, Hq, Sq), device=q.device, dtype=torch.float32)
    n_m = triton.cdiv(Sq, BLOCK_M)
    n_tiles = n_m * B * Hq
    sms = torch.cuda.get_device_properties(q.device).multi_processor_count if q.is_cuda else 3
    nprog = min(n_tiles, PER_SM * sms)
    _fwd_persistent[(nprog,)](
        q, k, v, out, lse, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1),
        k.stride(2), v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1),
        out.stride(2), Hq, Hq // Hkv, Sq, Sk, D**-0.5 * LOG2E, n_m, n_tiles,
        HEAD_D=D, CAUSAL=causal, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, NPROG=nprog, FLAT=FLAT,
        num_warps=num_warps, num_stages=num_stages)
    return out, lse


def _alloc(size: int, alignment: int, stream):
    return torch.empty(size, device="cuda", dtype=torch.int8)


def run_variant(q, k, v, causal, *, PER_SM=0, FLAT=False, M_FAST=True, DESC=True, WS=False,
                PIPE=False, FEXP=False, **cfg):
    if PER_SM:
        return run_persistent(q, k, v, causal, PER_SM=PER_SM, FLAT=FLAT, **cfg)
    return run_grid(q, k, v, causal, M_FAST=M_FAST, DESC=DESC, WS=WS, PIPE=PIPE, FEXP=FEXP, **cfg)


def run_grid(q, k, v, causal, *, M_FAST, DESC, WS, PIPE, FEXP, BLOCK_M, BLOCK_N, num_warps, num_stages):
    B, Hq, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    out = torch.empty_like(q)
    lse = torch.empty((B, Hq, Sq), device=q.device, dtype=torch.float32)
    nm = triton.cdiv(Sq, BLOCK_M)
    grid = (nm, B * Hq) if M_FAST else (B * Hq, nm)
    _fwd[grid](q, k, v, out, lse, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1),
               k.stride(2), v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1),
               out.stride(2), Hq, Hq // Hkv, Sq, Sk, D**-0.5 * LOG2E,
               HEAD_D=D, CAUSAL=causal, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, M_FAST=M_FAST,
               DESC=DESC, WS=WS, PIPE=PIPE, FEXP=FEXP, num_warps=num_warps,
               num_stages=num_stages)
    return out, lse


VARIANTS = {
    "ptr-headfast": dict(M_FAST=False, DESC=False, WS=False),
    "ptr-mfast": dict(M_FAST=True, DESC=False, WS=False),
    "ptr-pipe": dict(M_FAST=True, DESC=False, WS=False, PIPE=True),
    "ptr-fexp": dict(M_FAST=True, DESC=False, WS=False, FEXP=True),
    "desc-mfast": dict(M_FAST=True, DESC=True, WS=False),
    "desc-mfast-ws": dict(M_FAST=True, DESC=True, WS=True),
    "pers1": dict(PER_SM=1, FLAT=False),
    "pers2": dict(PER_SM=2, FLAT=False),
    "pers1-flat": dict(PER_SM=1, FLAT=True),
    "pers2-flat": dict(PER_SM=2, FLAT=True),
}
CONFIGS = [(128, 64, 4, 3), (128, 64, 8, 3), (128, 64, 4, 4), (128, 128, 8, 2), (128, 128, 8, 3),
           (128, 128, 4, 3), (64, 64, 4, 4), (128, 32, 4, 4)]
CONFIGS_WIDE = CONFIGS + [(128, 64, 8, 2), (128, 64, 8, 4), (128, 128, 8, 4), (128, 128, 4, 2),
                          (64, 64, 4, 2), (64, 64, 4, 3), (64, 128, 4, 2), (64, 128, 4, 3),
                          (128, 64, 4, 2)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq", type=int, nargs="+", default=[1024, 4096, 16384])
    ap.add_argument("--dims", type=int, nargs="+", default=[128, 64])
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--wide", action="store_true", help="more configs")
    ap.add_argument("--configs", nargs="+", default=None,
                    help="explicit configs BLOCK_M,BLOCK_N,warps,stages (e.g. 128,64,8,3)")
    ap.add_argument("--repeat", type=int, default=1, help="time each config this many times")
    args = ap.parse_args()
    triton.set_allocator(_alloc)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    from torch.nn.attention import SDPBackend, sdpa_kernel
    sdpa = torch.nn.functional.scaled_dot_product_attention
    print(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__)
    rows = []
    for D, S, causal in itertools.product(args.dims, args.seq, (False, True)):
        B = 16384 // S
        g = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(B, 32, S, D, device="cuda", dtype=dtype, generator=g) for _ in range(3))
        flops = 4 * B * 32 * S * S * D * (0.5 if causal else 1.0)
        tf = lambda ms: flops / ms / 1e9  # noqa: E731
        ref = sdpa(q, k, v, is_causal=causal).float()
        peers = {}
        for name, be in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)):
            def call(be=be):
                with sdpa_kernel(be):
                    return sdpa(q, k, v, is_causal=causal)
            try:
                peers[name] = tf(cuda_median_ms(call))
            except Exception:  # noqa: BLE001
                peers[name] = float("nan")
        line = f"D={D:3} S={S:5} causal={causal!s:5} flash {peers['flash']:5.0f} cudnn {peers['cudnn']:5.0f} |"
        for vname in args.variants:
            best = (0.0, None)
            configs = (CONFIGS_WIDE if args.wide and not vname.startswith("pers") else CONFIGS)
            if args.configs:
                configs = [tuple(int(x) for x in c.split(",")) for c in args.configs]
            for cfg in configs:
                if vname.endswith("ws") and cfg[2] != 8:
                    continue
                bm, bn, w, st = cfg
                kw = dict(VARIANTS[vname], BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=st)
                try:
                    out, _ = run_variant(q, k, v, causal, **kw)
                    err = (out.float() - ref).abs().max().item()
                    if not err < 2e-2:
                        print(f"  {vname} {cfg}: WRONG max err {err}", flush=True)
                        continue
                    ts = [tf(cuda_median_ms(lambda: run_variant(q, k, v, causal, **kw)))
                          for _ in range(args.repeat)]
                    t = sorted(ts)[len(ts) // 2]
                except Exception as e:  # noqa: BLE001
                    print(f"  {vname} {cfg}: FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
                    if vname.endswith("ws"):
                        traceback.print_exc(limit=1)
                    continue
                print(f"  D={D} S={S} c={causal} {vname} {cfg}: {t:.0f}  ({' '.join(f'{x:.0f}' for x in ts)})",
                      flush=True)
                best = max(best, (t, cfg))
            line += f" {vname} {best[0]:4.0f} {best[1]} |"
        rows.append(line)
        print(line, flush=True)
        del q, k, v, ref
        torch.cuda.empty_cache()
    print("\nSUMMARY (TFLOP/s)")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
