"""Kata 05, the fast path: the same FlashAttention forward, written for Hopper (sm_90) in Gluon.

`flash_attention.py` is the textbook kernel and runs everywhere, the Triton interpreter
included. This file computes the same function on an H100/H200 with the two things that
kernel cannot ask Triton for (FlashAttention-3, section 3.2, "intra-warpgroup overlapping"):

* Asynchronous tensor-core matmuls (`warpgroup_mma(..., is_async=True)`) ordered by hand,
  so that the softmax of key tile j (exp2 on the special-function units, max and sum on the
  CUDA cores) runs while the tensor cores compute P_{j-1} @ V_{j-1}:

      S_j = Q K_j^T            issue          (tensor cores)
      acc += P_{j-1} V_{j-1}   issue          (tensor cores, queued behind S_j)
      wait for S_j; softmax(S_j) -> P_j       (overlaps the PV matmul)
      wait for the PV matmul; acc *= alpha_j

* K/V tiles copied by the TMA engine into a shared-memory ring of STAGES tiles, each stage
  refilled (STAGES tiles ahead) as soon as the matmul that read it has finished.

The copies see Q, K and V as (B*H*S, D) matrices, so the last key tile of a head may run into
the next head's rows: those columns are masked to -inf like any key past Sk (p = 0), and past
the end of the tensor the TMA engine fills zeros.

The math is the online softmax of kata 03 in base 2, exactly as in `flash_attention.py`.
Gluon kernels do not run under the interpreter: `flash_attention.py` calls this file only
on a GPU of compute capability 9.x, for fp16/bf16 and D in (64, 128) (`supports`).
"""
from __future__ import annotations

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

# Gluon is young and renames things: the TMA load is async_copy_global_to_shared in triton
# 3.6 and async_load from 3.7 on (same arguments). Checked on 3.6 (our H100) and 3.9 (pinned).
_tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared

# (BLOCK_M, BLOCK_N, STAGES, num_warps, Q_IN_REGS) by head dim, the winners of
# scripts/flash_hopper_check.py on an H100 (docs/flash_tuning.md). One warpgroup of 64 query
# rows per program and 82 KB of shared memory: two programs share each SM, and one's softmax
# fills the gaps in the other's matmuls. At D = 128, Q sits in registers so that QK^T reads
# only K from shared memory (64-key tiles otherwise hit the shared-memory bandwidth).
CONFIG = {64: (64, 64, 2, 4, False), 128: (64, 64, 2, 4, True)}


@gluon.jit
def _load_kv(desc, bars, bufs, tile, row0, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, pred):
    """Start the TMA copy of key (or value) tile `tile` into ring stage tile % STAGES."""
    stage = tile % STAGES
    bar = bars.index(stage)
    mbarrier.expect(bar, desc.block_type.nbytes, pred=pred)
    _tma_load(desc, [row0 + tile * BLOCK_N, 0], bar, bufs.index(stage), pred=pred)


@gluon.jit
def _wait_kv(bars, tile, STAGES: gl.constexpr):
    """Wait for tile `tile`: its stage's barrier completes once per use, so the phase flips."""
    mbarrier.wait(bars.index(tile % STAGES), phase=(tile // STAGES) & 1)


@gluon.jit
def _scores_to_probs(s, m_i, l_i, tile, first_masked, start_m, Sk, diag, qk_scale,
                     CAUSAL: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                     s_layout: gl.constexpr):
    """Online-softmax step on one (BLOCK_M, BLOCK_N) score tile: returns p, alpha, m, l."""
    if tile >= first_masked:  # the diagonal or the ragged last tile: mask keys
        cols = tile * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
        keep = gl.expand_dims(cols < Sk, 0)
        if CAUSAL:  # bottom-right: query i sees key j iff j <= i + (Sk - Sq)
            rows = start_m + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, s_layout))
            keep = keep & (gl.expand_dims(cols, 0) <= gl.expand_dims(rows + diag, 1))
        s = gl.where(keep, s, float("-inf"))
    # qk_scale > 0, so the max of the raw scores, scaled, is the max of the scaled scores.
    m_new = gl.maximum(m_i, gl.max(s, axis=1) * qk_scale)  # (BLOCK_M,) base-2 units
    m_use = gl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no key yet: no -inf - -inf
    alpha = gl.exp2(m_i - m_use)
    p = gl.exp2(s * qk_scale - gl.expand_dims(m_use, 1))  # one FMA and one exp2 per score
    l_i = l_i * alpha + gl.sum(p, axis=1)
    return p, alpha, m_new, l_i


@gluon.jit
def _flash_fwd_hopper(q_desc, k_desc, v_desc, Out, Lse,
                      Hq, group, Sq, Sk, qk_scale,
                      HEAD_D: gl.constexpr, CAUSAL: gl.constexpr,
                      BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                      Q_IN_REGS: gl.constexpr, num_warps: gl.constexpr):
    dtype: gl.constexpr = q_desc.dtype
    # One wgmma accumulator layout per matmul: S is (BLOCK_M, BLOCK_N), acc is (BLOCK_M, D).
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, HEAD_D, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    q_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=s_layout, k_width=2)
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)

    # Same program order as flash_attention.py: the query tiles of one head run together.
    n_m = gl.cdiv(Sq, BLOCK_M)
    pid_bh = gl.program_id(0) // n_m
    pid_m = n_m - 1 - gl.program_id(0) % n_m
    kv_bh = (pid_bh // Hq) * (Hq // group) + (pid_bh % Hq) // group  # GQA: b * Hkv + h // group
    start_m = pid_m * BLOCK_M
    q_row0 = pid_bh * Sq + start_m  # rows of the (B*H*S, D) views
    kv_row0 = kv_bh * Sk

    diag = Sk - Sq  # query i sees keys j <= i + diag
    if CAUSAL:
        hi = gl.minimum(gl.maximum(start_m + BLOCK_M + diag, 0), Sk)
        full_hi = gl.minimum(gl.maximum(start_m + diag + 1, 0), Sk)
    else:
        hi = Sk
        full_hi = Sk
    n_tiles = gl.cdiv(hi, BLOCK_N)
    first_masked = full_hi // BLOCK_N  # tiles before it need no mask

    q_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, HEAD_D], q_desc.layout)
    k_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_D], k_desc.layout)
    v_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_D], v_desc.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_bars.index(i), count=1)
        mbarrier.init(v_bars.index(i), count=1)

    m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, layout=row_s)
    l_i = gl.zeros([BLOCK_M], gl.float32, layout=row_s)
    acc = gl.zeros([BLOCK_M, HEAD_D], gl.float32, layout=o_layout)
    if n_tiles > 0:
        mbarrier.expect(q_bar, q_desc.block_type.nbytes)
        _tma_load(q_desc, [q_row0, 0], q_bar, q_smem)
        for t in gl.static_range(STAGES):  # fill the ring
            _load_kv(k_desc, k_bars, k_smem, t, kv_row0, BLOCK_N, STAGES, t < n_tiles)
            _load_kv(v_desc, v_bars, v_smem, t, kv_row0, BLOCK_N, STAGES, t < n_tiles)
        mbarrier.wait(q_bar, phase=0)
        if Q_IN_REGS:  # the A operand from registers: QK^T then reads only K from shared memory
            q = q_smem.load(q_layout)
        else:
            q = q_smem

        # Tile 0: scores, then softmax, nothing to overlap yet.
        _wait_kv(k_bars, 0, STAGES)
        s = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=s_layout)
        s = warpgroup_mma(q, k_smem.index(0).permute((1, 0)), s, use_acc=False)
        _load_kv(k_desc, k_bars, k_smem, STAGES, kv_row0, BLOCK_N, STAGES, STAGES < n_tiles)
        p, alpha, m_i, l_i = _scores_to_probs(s, m_i, l_i, 0, first_masked, start_m, Sk, diag,
                                              qk_scale, CAUSAL, BLOCK_M, BLOCK_N, s_layout)
        p = gl.convert_layout(p.to(dtype), p_layout)

        for j in range(1, n_tiles):
            _wait_kv(k_bars, j, STAGES)
            s_tok = warpgroup_mma(q, k_smem.index(j % STAGES).permute((1, 0)), s,
                                  use_acc=False, is_async=True)
            _wait_kv(v_bars, j - 1, STAGES)
            acc_tok = warpgroup_mma(p, v_smem.index((j - 1) % STAGES), acc, is_async=True)
            # At most one matmul outstanding: S_j (issued first) is done, PV may still run.
            s = warpgroup_mma_wait(num_outstanding=1, deps=(s_tok, ))
            _load_kv(k_desc, k_bars, k_smem, j + STAGES, kv_row0, BLOCK_N, STAGES,
                     j + STAGES < n_tiles)
            p_next, alpha, m_i, l_i = _scores_to_probs(s, m_i, l_i, j, first_masked, start_m, Sk,
                                                       diag, qk_scale, CAUSAL, BLOCK_M, BLOCK_N,
                                                       s_layout)
            acc, p = warpgroup_mma_wait(num_outstanding=0, deps=(acc_tok, p))
            _load_kv(v_desc, v_bars, v_smem, j - 1 + STAGES, kv_row0, BLOCK_N, STAGES,
                     j - 1 + STAGES < n_tiles)
            # Only now may acc be rescaled: the PV matmul above was writing it.
            acc = acc * gl.expand_dims(gl.convert_layout(alpha, row_o), 1)
            p = gl.convert_layout(p_next.to(dtype), p_layout)

        _wait_kv(v_bars, n_tiles - 1, STAGES)
        acc = warpgroup_mma(p, v_smem.index((n_tiles - 1) % STAGES), acc)

    mbarrier.invalidate(q_bar)
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(k_bars.index(i))
        mbarrier.invalidate(v_bars.index(i))

    # A query that saw no key has l = 0: zeros out, lse = -inf (natural log otherwise).
    seen = l_i > 0.0
    l_safe = gl.where(seen, l_i, 1.0)
    lse = gl.where(seen, (m_i + gl.log2(l_safe)) * 0.6931471805599453, float("-inf"))
    out = acc / gl.expand_dims(gl.convert_layout(l_safe, row_o), 1)

    # Store through a plain blocked layout: 16-byte vectors, rows past Sq left alone.
    st_layout: gl.constexpr = gl.BlockedLayout([1, 8], [32 * 8 // HEAD_D, HEAD_D // 8],
                                               [num_warps, 1], [1, 0])
    out = gl.convert_layout(out.to(dtype), st_layout)
    rows = start_m + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, st_layout))
    cols = gl.arange(0, HEAD_D, layout=gl.SliceLayout(0, st_layout))
    offs = gl.expand_dims((pid_bh * Sq + rows).to(gl.int64) * HEAD_D, 1) + gl.expand_dims(cols, 0)
    gl.store(Out + offs, out, mask=gl.expand_dims(rows < Sq, 1))
    lse_rows = start_m + gl.arange(0, BLOCK_M, layout=row_s)
    gl.store(Lse + pid_bh.to(gl.int64) * Sq + lse_rows, lse, mask=lse_rows < Sq)


def describe(D: int) -> str:
    bm, bn, stages, warps, q_regs = CONFIG[D]
    return (f"gluon BLOCK_M={bm} BLOCK_N={bn} stages={stages} warps={warps}"
            + (" Q-in-registers" if q_regs else ""))


def supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, qk_scale: float) -> bool:
    """True where this kernel applies: Hopper GPU, fp16/bf16, D 64 or 128, contiguous
    (B, H, S, D) inputs with at least one key, 16-byte aligned for the TMA engine, and a
    positive scale (the kernel scales the row max of the raw scores)."""
    if qk_scale <= 0 or not (q.is_cuda and torch.cuda.get_device_capability(q.device)[0] == 9):
        return False
    if q.dtype not in (torch.float16, torch.bfloat16) or q.shape[-1] not in CONFIG:
        return False
    if k.shape[2] == 0 or q.numel() == 0:
        return False
    return all(t.is_contiguous() and t.data_ptr() % 16 == 0 for t in (q, k, v))


def _desc(t: torch.Tensor, rows: int) -> TensorDescriptor:
    """A TMA descriptor over t viewed as (B*H*S, D), one tile = `rows` rows."""
    flat = t.view(-1, t.shape[-1])  # (B*H*S, D)
    layout = gl.NVMMASharedLayout.get_default_for([rows, t.shape[-1]], gl.float16
                                                  if t.dtype == torch.float16 else gl.bfloat16)
    return TensorDescriptor.from_tensor(flat, [rows, t.shape[-1]], layout)


def flash_attention_hopper(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                           qk_scale: float, out: torch.Tensor, lse: torch.Tensor) -> None:
    """Fill out (B, Hq, Sq, D) and lse (B, Hq, Sq) for q (B, Hq, Sq, D), k/v (B, Hkv, Sk, D).

    qk_scale is the softmax scale times log2(e) and must be positive: the kernel takes the
    row max of the raw scores and scales it once (a negative scale would turn it into a min).
    """
    assert qk_scale > 0, "the Gluon kernel takes positive scales only"
    B, Hq, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    bm, bn, stages, warps, q_regs = CONFIG[D]
    grid = (B * Hq * triton.cdiv(Sq, bm),)
    _flash_fwd_hopper[grid](
        _desc(q, bm), _desc(k, bn), _desc(v, bn), out, lse,
        Hq, Hq // Hkv, Sq, Sk, qk_scale,
        HEAD_D=D, CAUSAL=causal, BLOCK_M=bm, BLOCK_N=bn, STAGES=stages, Q_IN_REGS=q_regs,
        num_warps=warps,
    )
