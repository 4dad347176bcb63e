"""Kata 11: kernel designs for w4a16_matmul beside the reference's, each timed over its launch
configs on a GPU (kata 11's README tabulates what each reached on an H200).

    python3 scripts/w4a16_variants.py --check   # CPU (interpreter) or GPU: each design equals the float64 oracle
    python3 scripts/w4a16_variants.py [FLAG]    # GPU: time one design over its configs, beside cuBLAS and the reference
    python3 scripts/w4a16_variants.py --probe   # GPU: how fast the packed bytes stream with no math at all

FLAG picks the design (none: `tc` and `gemv`):
- `tc`: pointer loads, the low nibbles against x's even columns and the high nibbles against its
  odd columns, two dots into one partial product (no interleave); `--tcp` the same with the
  next two groups' loads issued by hand.
- `gemv` (M <= 4): CUDA cores, codes converted with int-to-float, one reduction a group.
- `--tma`, `--tma2`, `--tma3`: the split-nibble product with the packed weight and x through TMA
  tensor descriptors; x pre-split into even and odd columns; two groups a step.
- `--tma4`: the reference's Hopper kernel (nibbles interleaved in registers, one dot a group).
- `--fold`, `--fold2`: scale and zero folded into the weight in float32 before the dot, so the
  dots chain through one accumulator (`fold2`: x pre-split, no interleave).
- `--gemv8` (M = 1): CUDA cores, the packed weight read as int32 words (eight codes a load),
  codes to float by bits, loads pipelined with `tl.range(..., num_stages=...)`.
All but `fold` apply scale and zero per group to the partial product:
sum_k x (c - z) s = s (sum_k x c - z sum_k x).
"""
from __future__ import annotations

import itertools
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@triton.jit
def _tc_kernel(x_ptr, p_ptr, s_ptr, z_ptr, out_ptr, M, N, K, blocks_per_split,
               stride_xm, stride_pn, stride_sn, stride_zn, stride_os, stride_om,
               GS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, F32: tl.constexpr,
               MAGIC: tl.constexpr):
    """One program: BLOCK_N features x BLOCK_M rows over one split of K, one group per step."""
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_m = tl.program_id(2)
    HALF: tl.constexpr = GS // 2
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rows_n = tl.minimum(offs_n, N - 1)
    rows_m = tl.minimum(offs_m, M - 1)
    offs_b = tl.arange(0, HALF)
    if F32:
        dt = tl.float32
    else:
        dt = x_ptr.dtype.element_ty
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    g0 = pid_s * blocks_per_split
    g1 = tl.minimum(g0 + blocks_per_split, K // GS)
    for g in range(g0, g1):
        pk = tl.load(p_ptr + rows_n[:, None] * stride_pn + (g * HALF + offs_b)[None, :])  # (BN, HALF) u8
        xe = tl.load(x_ptr + rows_m[None, :] * stride_xm + (g * GS + 2 * offs_b)[:, None])  # (HALF, BM)
        xo = tl.load(x_ptr + rows_m[None, :] * stride_xm + (g * GS + 2 * offs_b + 1)[:, None])
        if MAGIC:  # code -> OFFSET + code by OR-ing it into the mantissa of 128.0 (bf16) / 1024.0 (fp16)
            if x_ptr.dtype.element_ty == tl.bfloat16:
                MAGIC_BITS: tl.constexpr = 0x4300
                OFFSET: tl.constexpr = 128.0
            else:
                MAGIC_BITS: tl.constexpr = 0x6400
                OFFSET: tl.constexpr = 1024.0
            p16 = pk.to(tl.int16)
            lo = ((p16 & 0xF) | MAGIC_BITS).to(dt, bitcast=True)
            hi = ((p16 >> 4) | MAGIC_BITS).to(dt, bitcast=True)
        else:
            OFFSET: tl.constexpr = 0.0
            lo = (pk & 0xF).to(dt)
            hi = (pk >> 4).to(dt)
        if F32:
            xe = xe.to(tl.float32)
            xo = xo.to(tl.float32)
        part = tl.dot(lo, xe.to(dt))
        part = tl.dot(hi, xo.to(dt), part)  # (BN, BM): sum_k c x over the group
        xs = tl.sum(xe.to(tl.float32), axis=0) + tl.sum(xo.to(tl.float32), axis=0)  # (BM,)
        s = tl.load(s_ptr + rows_n * stride_sn + g)
        z = tl.load(z_ptr + rows_n * stride_zn + g)
        acc += s[:, None] * (part - (z[:, None] + OFFSET) * xs[None, :])
    tl.store(out_ptr + pid_s * stride_os + offs_m[None, :] * stride_om + offs_n[:, None],
             acc.to(out_ptr.dtype.element_ty), mask=(offs_n < N)[:, None] & (offs_m < M)[None, :])


@triton.jit
def _load_group(x_ptr, p_ptr, s_ptr, z_ptr, g, valid, rows_n, rows_m, offs_b, stride_xm, stride_pn, stride_sn,
                stride_zn, GS: tl.constexpr):
    """Group g's packed codes (BN, GS/2), x's even and odd columns (GS/2, BM), scales, zeros (BN,).
    Nothing is read when not valid (the loads past the split's end)."""
    HALF: tl.constexpr = GS // 2
    pm = (rows_n[:, None] * 0 + offs_b[None, :] * 0 + g) < valid  # valid: the split's end
    xm = (rows_m[None, :] * 0 + offs_b[:, None] * 0 + g) < valid
    vm = (rows_n * 0 + g) < valid
    pk = tl.load(p_ptr + rows_n[:, None] * stride_pn + (g * HALF + offs_b)[None, :], mask=pm, other=0)
    xe = tl.load(x_ptr + rows_m[None, :] * stride_xm + (g * GS + 2 * offs_b)[:, None], mask=xm, other=0.0)
    xo = tl.load(x_ptr + rows_m[None, :] * stride_xm + (g * GS + 2 * offs_b + 1)[:, None], mask=xm, other=0.0)
    s = tl.load(s_ptr + rows_n * stride_sn + g, mask=vm, other=0.0)
    z = tl.load(z_ptr + rows_n * stride_zn + g, mask=vm, other=0.0)
    return pk, xe, xo, s, z


@triton.jit
def _group_update(acc, pk, xe, xo, s, z):
    """acc += s * (sum_k c x - z sum_k x) for one group, codes through the magic-number trick."""
    if xe.dtype == tl.bfloat16:
        MAGIC_BITS: tl.constexpr = 0x4300
        OFFSET: tl.constexpr = 128.0
    else:
        MAGIC_BITS: tl.constexpr = 0x6400
        OFFSET: tl.constexpr = 1024.0
    p16 = pk.to(tl.int16)
    lo = ((p16 & 0xF) | MAGIC_BITS).to(xe.dtype, bitcast=True)
    hi = ((p16 >> 4) | MAGIC_BITS).to(xe.dtype, bitcast=True)
    part = tl.dot(lo, xe)
    part = tl.dot(hi, xo, part)
    xs = tl.sum(xe.to(tl.float32), axis=0) + tl.sum(xo.to(tl.float32), axis=0)
    return acc + s[:, None] * (part - (z[:, None] + OFFSET) * xs[None, :])


@triton.jit
def _tcp_kernel(x_ptr, p_ptr, s_ptr, z_ptr, out_ptr, M, N, K, blocks_per_split,
                stride_xm, stride_pn, stride_sn, stride_zn, stride_os, stride_om,
                GS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """_tc_kernel with the next two groups' loads issued before this group's math (register
    double buffering): the loop is a chain of dependent loads otherwise, one latency a group."""
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_m = tl.program_id(2)
    HALF: tl.constexpr = GS // 2
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rows_n = tl.minimum(offs_n, N - 1)
    rows_m = tl.minimum(offs_m, M - 1)
    offs_b = tl.arange(0, HALF)
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    g0 = pid_s * blocks_per_split
    g1 = tl.minimum(g0 + blocks_per_split, K // GS)
    a_pk, a_xe, a_xo, a_s, a_z = _load_group(x_ptr, p_ptr, s_ptr, z_ptr, g0, g1, rows_n, rows_m, offs_b,
                                             stride_xm, stride_pn, stride_sn, stride_zn, GS)
    b_pk, b_xe, b_xo, b_s, b_z = _load_group(x_ptr, p_ptr, s_ptr, z_ptr, g0 + 1, g1, rows_n, rows_m,
                                             offs_b, stride_xm, stride_pn, stride_sn, stride_zn, GS)
    for g in range(g0, g1, 2):
        acc = _group_update(acc, a_pk, a_xe, a_xo, a_s, a_z)
        a_pk, a_xe, a_xo, a_s, a_z = _load_group(x_ptr, p_ptr, s_ptr, z_ptr, g + 2, g1, rows_n, rows_m,
                                                 offs_b, stride_xm, stride_pn, stride_sn, stride_zn, GS)
        acc = _group_update(acc, b_pk, b_xe, b_xo, b_s, b_z)  # zeros past the end: adds nothing
        b_pk, b_xe, b_xo, b_s, b_z = _load_group(x_ptr, p_ptr, s_ptr, z_ptr, g + 3, g1, rows_n, rows_m,
                                                 offs_b, stride_xm, stride_pn, stride_sn, stride_zn, GS)
    tl.store(out_ptr + pid_s * stride_os + offs_m[None, :] * stride_om + offs_n[:, None],
             acc.to(out_ptr.dtype.element_ty), mask=(offs_n < N)[:, None] & (offs_m < M)[None, :])


@triton.jit
def _tma_kernel(x_desc, p_desc, s_ptr, z_ptr, out_ptr, M, N, K, blocks_per_split,
                stride_sn, stride_zn, stride_os, stride_om,
                GS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, F32: tl.constexpr):
    """The split-nibble product with the packed weight and x loaded through tensor descriptors
    (TMA): the compiler pipelines descriptor loads (pointer loads whose result must be
    re-laid-out for the tensor cores were not: one memory latency per group)."""
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_m = tl.program_id(2)
    HALF: tl.constexpr = GS // 2
    n0 = pid_n * BLOCK_N
    m0 = pid_m * BLOCK_M
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    rows_n = tl.minimum(offs_n, N - 1)
    if F32:
        dt = tl.float32
        OFFSET: tl.constexpr = 0.0
    else:
        dt = x_desc.dtype
        if dt == tl.bfloat16:
            MAGIC_BITS: tl.constexpr = 0x4300
            OFFSET: tl.constexpr = 128.0
        else:
            MAGIC_BITS: tl.constexpr = 0x6400
            OFFSET: tl.constexpr = 1024.0
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    g0 = pid_s * blocks_per_split
    g1 = tl.minimum(g0 + blocks_per_split, K // GS)
    s = tl.load(s_ptr + rows_n * stride_sn + g0)
    z = tl.load(z_ptr + rows_n * stride_zn + g0)
    for g in range(g0, g1):
        pk = p_desc.load([n0, g * HALF])  # (BLOCK_N, HALF) uint8
        xt = x_desc.load([m0, g * GS])  # (BLOCK_M, GS); rows past M read as zeros
        xe, xo = tl.split(tl.reshape(xt, (BLOCK_M, HALF, 2)))  # x's even and odd columns
        if F32:
            lo = (pk & 0xF).to(tl.float32)
            hi = (pk >> 4).to(tl.float32)
            xe = xe.to(tl.float32)
            xo = xo.to(tl.float32)
        else:
            p16 = pk.to(tl.int16)
            lo = ((p16 & 0xF) | MAGIC_BITS).to(dt, bitcast=True)
            hi = ((p16 >> 4) | MAGIC_BITS).to(dt, bitcast=True)
        part = tl.dot(lo, tl.trans(xe))
        part = tl.dot(hi, tl.trans(xo), part)  # (BLOCK_N, BLOCK_M)
        xs = tl.sum(xt.to(tl.float32), axis=1)  # (BLOCK_M,)
        nxt = tl.minimum(g + 1, g1 - 1)  # the next group's scale and zero, loaded a group early
        s_next = tl.load(s_ptr + rows_n * stride_sn + nxt)
        z_next = tl.load(z_ptr + rows_n * stride_zn + nxt)
        acc += s[:, None] * (part - (z[:, None] + OFFSET) * xs[None, :])
        s = s_next
        z = z_next
    tl.store(out_ptr + pid_s * stride_os + offs_m[None, :] * stride_om + offs_n[:, None],
             acc.to(out_ptr.dtype.element_ty), mask=(offs_n < N)[:, None] & (offs_m < M)[None, :])


@triton.jit
def _prep_x_kernel(x_ptr, xeo_ptr, xsum_ptr, M, K, stride_xm, GS: tl.constexpr):
    """x (M, K) -> x_eo (2, M, K/2): even columns, then odd ones; and xsum (M, K/GS) float32,
    the sum of each group of x. One program per (row, group)."""
    m = tl.program_id(0)
    g = tl.program_id(1)
    HALF: tl.constexpr = GS // 2
    offs = tl.arange(0, HALF)
    xe = tl.load(x_ptr + m * stride_xm + g * GS + 2 * offs)
    xo = tl.load(x_ptr + m * stride_xm + g * GS + 2 * offs + 1)
    tl.store(xeo_ptr + m * (K // 2) + g * HALF + offs, xe)
    tl.store(xeo_ptr + (M + m) * (K // 2) + g * HALF + offs, xo)
    tl.store(xsum_ptr + m * (K // GS) + g, tl.sum(xe.to(tl.float32), axis=0) + tl.sum(xo.to(tl.float32), axis=0))


@triton.jit
def _tma2_kernel(xeo_desc, p_desc, xsum_ptr, s_ptr, z_ptr, out_ptr, M, N, K, blocks_per_split,
                 stride_sn, stride_zn, stride_os, stride_om,
                 GS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, F32: tl.constexpr):
    """_tma_kernel with x split into even and odd columns beforehand (and each group's sum of x
    precomputed): x's tiles go from TMA to the tensor cores without passing through registers."""
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_m = tl.program_id(2)
    HALF: tl.constexpr = GS // 2
    G = K // GS
    n0 = pid_n * BLOCK_N
    m0 = pid_m * BLOCK_M
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    rows_n = tl.minimum(offs_n, N - 1)
    rows_m = tl.minimum(offs_m, M - 1)
    if F32:
        OFFSET: tl.constexpr = 0.0
    else:
        dt = xeo_desc.dtype
        if dt == tl.bfloat16:
            MAGIC_BITS: tl.constexpr = 0x4300
            OFFSET: tl.constexpr = 128.0
        else:
            MAGIC_BITS: tl.constexpr = 0x6400
            OFFSET: tl.constexpr = 1024.0
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    g0 = pid_s * blocks_per_split
    g1 = tl.minimum(g0 + blocks_per_split, G)
    s = tl.load(s_ptr + rows_n * stride_sn + g0)
    z = tl.load(z_ptr + rows_n * stride_zn + g0)
    xs = tl.load(xsum_ptr + rows_m * G + g0)
    for g in range(g0, g1):
        pk = p_desc.load([n0, g * HALF])  # (BLOCK_N, HALF) uint8
        xe = tl.reshape(xeo_desc.load([0, m0, g * HALF]), (BLOCK_M, HALF))  # rows past M: zeros
        xo = tl.reshape(xeo_desc.load([1, m0, g * HALF]), (BLOCK_M, HALF))
        if F32:
            lo = (pk & 0xF).to(tl.float32)
            hi = (pk >> 4).to(tl.float32)
            xe = xe.to(tl.float32)
            xo = xo.to(tl.float32)
        else:
            p16 = pk.to(tl.int16)
            lo = ((p16 & 0xF) | MAGIC_BITS).to(dt, bitcast=True)
            hi = ((p16 >> 4) | MAGIC_BITS).to(dt, bitcast=True)
        part = tl.dot(lo, tl.trans(xe))
        part = tl.dot(hi, tl.trans(xo), part)  # (BLOCK_N, BLOCK_M)
        nxt = tl.minimum(g + 1, g1 - 1)  # the next group's scale, zero and x sum, a group early
        s_next = tl.load(s_ptr + rows_n * stride_sn + nxt)
        z_next = tl.load(z_ptr + rows_n * stride_zn + nxt)
        xs_next = tl.load(xsum_ptr + rows_m * G + nxt)
        acc += s[:, None] * (part - (z[:, None] + OFFSET) * xs[None, :])
        s = s_next
        z = z_next
        xs = xs_next
    tl.store(out_ptr + pid_s * stride_os + offs_m[None, :] * stride_om + offs_n[:, None],
             acc.to(out_ptr.dtype.element_ty), mask=(offs_n < N)[:, None] & (offs_m < M)[None, :])


@triton.jit
def _tma3_group(p_desc, xeo_desc, n0, m0, g, HALF: tl.constexpr, BLOCK_M: tl.constexpr, F32: tl.constexpr,
                MAGIC: tl.constexpr):
    """One group's raw product (BLOCK_N, BLOCK_M): sum_k (OFFSET + c) x."""
    pk = p_desc.load([n0, g * HALF])
    xe = tl.reshape(xeo_desc.load([0, m0, g * HALF]), (BLOCK_M, HALF))
    xo = tl.reshape(xeo_desc.load([1, m0, g * HALF]), (BLOCK_M, HALF))
    if F32:
        lo = (pk & 0xF).to(tl.float32)
        hi = (pk >> 4).to(tl.float32)
        xe = xe.to(tl.float32)
        xo = xo.to(tl.float32)
    else:
        p16 = pk.to(tl.int16)
        lo = ((p16 & 0xF) | MAGIC).to(xe.dtype, bitcast=True)
        hi = ((p16 >> 4) | MAGIC).to(xe.dtype, bitcast=True)
    part = tl.dot(lo, tl.trans(xe))
    return tl.dot(hi, tl.trans(xo), part)


@triton.jit
def _tma3_kernel(xeo_desc, p_desc, xsum_ptr, s_ptr, z_ptr, out_ptr, M, N, K, blocks_per_split,
                 stride_sn, stride_zn, stride_os, stride_om,
                 GS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, F32: tl.constexpr):
    """_tma2_kernel with two groups a step: two independent dot chains in flight, the step's
    fixed latency (barrier waits, the tensor cores' round trip) paid once for twice the bytes."""
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_m = tl.program_id(2)
    HALF: tl.constexpr = GS // 2
    G = K // GS
    n0 = pid_n * BLOCK_N
    m0 = pid_m * BLOCK_M
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    rows_n = tl.minimum(offs_n, N - 1)
    rows_m = tl.minimum(offs_m, M - 1)
    if F32:
        OFFSET: tl.constexpr = 0.0
        MAGIC: tl.constexpr = 0
    else:
        if xeo_desc.dtype == tl.bfloat16:
            MAGIC: tl.constexpr = 0x4300
            OFFSET: tl.constexpr = 128.0
        else:
            MAGIC: tl.constexpr = 0x6400
            OFFSET: tl.constexpr = 1024.0
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    g0 = pid_s * blocks_per_split
    g1 = tl.minimum(g0 + blocks_per_split, G)
    for g in range(g0, g1, 2):
        gb = tl.minimum(g + 1, G - 1)  # the second group (a repeat of the last one past K: scaled by 0)
        part_a = _tma3_group(p_desc, xeo_desc, n0, m0, g, HALF, BLOCK_M, F32, MAGIC)
        part_b = _tma3_group(p_desc, xeo_desc, n0, m0, gb, HALF, BLOCK_M, F32, MAGIC)
        s_a = tl.load(s_ptr + rows_n * stride_sn + g)
        z_a = tl.load(z_ptr + rows_n * stride_zn + g)
        xs_a = tl.load(xsum_ptr + rows_m[None, :] * G + g)
        s_b = tl.load(s_ptr + rows_n * stride_sn + gb)
        s_b = tl.where(g + 1 < g1, s_b, 0.0)
        z_b = tl.load(z_ptr + rows_n * stride_zn + gb)
        xs_b = tl.load(xsum_ptr + rows_m[None, :] * G + gb)
        acc += s_a[:, None] * (part_a - (z_a[:, None] + OFFSET) * xs_a)
        acc += s_b[:, None] * (part_b - (z_b[:, None] + OFFSET) * xs_b)
    tl.store(out_ptr + pid_s * stride_os + offs_m[None, :] * stride_om + offs_n[:, None],
             acc.to(out_ptr.dtype.element_ty), mask=(offs_n < N)[:, None] & (offs_m < M)[None, :])


@triton.jit
def _fold_kernel(x_desc, p_desc, s_ptr, z_ptr, out_ptr, M, N, K, blocks_per_split,
                 stride_sn, stride_zn, stride_os, stride_om,
                 GS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, F32: tl.constexpr,
                 SPLIT_X: tl.constexpr):
    """Scale and zero folded into the weight before the dot: W_hat = c * s - z * s computed in
    float32 (one fma a weight), rounded once to x's dtype, then acc = dot(W_hat, x^T, acc).
    The dots chain through one accumulator, so the tensor cores run asynchronously while the
    next group is unpacked (the split forms wait for each group's dot before scaling it).
    SPLIT_X: x_desc is over x pre-split into even and odd columns, (2, M, K / 2) (two dots, no
    interleave of the nibbles); else over x itself."""
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_m = tl.program_id(2)
    HALF: tl.constexpr = GS // 2
    G = K // GS
    n0 = pid_n * BLOCK_N
    m0 = pid_m * BLOCK_M
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    rows_n = tl.minimum(offs_n, N - 1)
    dt = tl.float32 if F32 else x_desc.dtype
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    g0 = pid_s * blocks_per_split
    g1 = tl.minimum(g0 + blocks_per_split, G)
    for g in range(g0, g1):
        pk = p_desc.load([n0, g * HALF]).to(tl.int32)  # (BLOCK_N, HALF)
        s = tl.load(s_ptr + rows_n * stride_sn + g)[:, None]  # (BLOCK_N, 1)
        zs = tl.load(z_ptr + rows_n * stride_zn + g)[:, None] * s
        # a code as a float32 by bits alone: 2^23 + c, minus 2^23 (exact)
        lo = ((pk & 0xF) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
        hi = ((pk >> 4) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
        w_lo = (lo * s - zs).to(dt)  # (c - z) s, rounded once
        w_hi = (hi * s - zs).to(dt)
        if SPLIT_X:
            xe = tl.reshape(x_desc.load([0, m0, g * HALF]), (BLOCK_M, HALF))
            xo = tl.reshape(x_desc.load([1, m0, g * HALF]), (BLOCK_M, HALF))
            if F32:
                xe = xe.to(tl.float32)
                xo = xo.to(tl.float32)
            acc = tl.dot(w_lo, tl.trans(xe), acc)
            acc = tl.dot(w_hi, tl.trans(xo), acc)
        else:
            xt = x_desc.load([m0, g * GS])
            if F32:
                xt = xt.to(tl.float32)
            acc = tl.dot(tl.interleave(w_lo, w_hi), tl.trans(xt), acc)
    tl.store(out_ptr + pid_s * stride_os + offs_m[None, :] * stride_om + offs_n[:, None],
             acc.to(out_ptr.dtype.element_ty), mask=(offs_n < N)[:, None] & (offs_m < M)[None, :])


@triton.jit
def _prep_x8_kernel(x_ptr, x8_ptr, xsum_ptr, K, GS: tl.constexpr):
    """x (1, K) -> x8 (8, K / 8) float32, plane i holding x[8w + i] (what nibble i of word w
    meets), and xsum (K / GS,) the sum of each group. One program per group."""
    g = tl.program_id(0)
    W: tl.constexpr = GS // 8
    xv = tl.load(x_ptr + g * GS + tl.arange(0, W)[:, None] * 8 + tl.arange(0, 8)[None, :]).to(tl.float32)
    tl.store(x8_ptr + tl.arange(0, 8)[None, :] * (K // 8) + g * W + tl.arange(0, W)[:, None], xv)
    tl.store(xsum_ptr + g, tl.sum(tl.sum(xv, axis=1), axis=0))


@triton.jit
def _gemv8_kernel(x_ptr, w_ptr, xsum_ptr, s_ptr, z_ptr, out_ptr, N, K, blocks_per_split,
                  stride_wn, stride_sn, stride_zn, stride_os,
                  GS: tl.constexpr, BLOCK_N: tl.constexpr, F32: tl.constexpr, STAGES: tl.constexpr):
    """M = 1 on CUDA cores, eight codes a load: the packed weight viewed as int32 words (word w
    of a row holds columns 8w..8w+7, nibble i = column 8w + i). Each code becomes 128 + c in
    float32 by bits alone (c shifted to bits 16-19, OR 0x43000000): one shift, one lop3 and one
    fma per weight; per group one reduction, then s * (sum (128 + c) x - (z + 128) sum x)."""
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    W: tl.constexpr = GS // 8
    G = K // GS
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_n = tl.minimum(offs_n, N - 1)
    offs_w = tl.arange(0, W)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    g0 = pid_s * blocks_per_split
    g1 = tl.minimum(g0 + blocks_per_split, G)
    for g in tl.range(g0, g1, num_stages=STAGES):
        wd = tl.load(w_ptr + rows_n[:, None] * stride_wn + (g * W + offs_w)[None, :])  # (BLOCK_N, W) int32
        part = tl.zeros([BLOCK_N, W], dtype=tl.float32)
        for i in tl.static_range(8):
            xi = tl.load(x_ptr + i * (K // 8) + g * W + offs_w)  # (W,) float32: x[8w + i]
            if F32:
                ci = ((wd >> (4 * i)) & 0xF).to(tl.float32) + 128.0
            else:
                if i < 4:
                    bits = ((wd << (16 - 4 * i)) & 0xF0000) | 0x43000000
                elif i == 4:
                    bits = (wd & 0xF0000) | 0x43000000
                else:
                    bits = ((wd >> (4 * i - 16)) & 0xF0000) | 0x43000000
                ci = bits.to(tl.float32, bitcast=True)  # 128 + c, exactly
            part += ci * xi[None, :]
        xs = tl.load(xsum_ptr + g)
        s = tl.load(s_ptr + rows_n * stride_sn + g)
        z = tl.load(z_ptr + rows_n * stride_zn + g)
        acc += s * (tl.sum(part, axis=1) - (z + 128.0) * xs)
    tl.store(out_ptr + pid_s * stride_os + offs_n, acc.to(out_ptr.dtype.element_ty), mask=offs_n < N)


@triton.jit
def _gemv_kernel(x_ptr, p_ptr, s_ptr, z_ptr, out_ptr, M, N, K, blocks_per_split,
                 stride_xm, stride_pn, stride_sn, stride_zn, stride_os, stride_om,
                 GS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """CUDA cores: (BLOCK_N, HALF) codes x (HALF, BLOCK_M) x summed over the group in fp32."""
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    HALF: tl.constexpr = GS // 2
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    rows_n = tl.minimum(offs_n, N - 1)
    rows_m = tl.minimum(offs_m, M - 1)
    offs_b = tl.arange(0, HALF)
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    g0 = pid_s * blocks_per_split
    g1 = tl.minimum(g0 + blocks_per_split, K // GS)
    for g in range(g0, g1):
        pk = tl.load(p_ptr + rows_n[:, None] * stride_pn + (g * HALF + offs_b)[None, :]).to(tl.int32)
        xe = tl.load(x_ptr + rows_m[None, :] * stride_xm + (g * GS + 2 * offs_b)[:, None]).to(tl.float32)
        xo = tl.load(x_ptr + rows_m[None, :] * stride_xm + (g * GS + 2 * offs_b + 1)[:, None]).to(tl.float32)
        lo = (pk & 0xF).to(tl.float32)
        hi = (pk >> 4).to(tl.float32)
        part = tl.sum(lo[:, :, None] * xe[None, :, :] + hi[:, :, None] * xo[None, :, :], axis=1)  # (BN, BM)
        xs = tl.sum(xe, axis=0) + tl.sum(xo, axis=0)
        s = tl.load(s_ptr + rows_n * stride_sn + g)
        z = tl.load(z_ptr + rows_n * stride_zn + g)
        acc += s[:, None] * (part - z[:, None] * xs[None, :])
    tl.store(out_ptr + pid_s * stride_os + offs_m[None, :] * stride_om + offs_n[:, None],
             acc.to(out_ptr.dtype.element_ty), mask=(offs_n < N)[:, None] & (offs_m < M)[None, :])


def run(kind: str, x, packed, scales, zeros, gs: int, *, bn: int, warps: int, stages: int,
        per_sm: int, bm: int | None = None, magic: bool = False) -> torch.Tensor:
    M, K = x.shape
    N = packed.shape[0]
    interp = x.device.type != "cuda"
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count if not interp else 4
    if bm is None:
        bm = (16 if M <= 16 else 32 if M <= 32 else 64) if kind != "gemv" else triton.next_power_of_2(M)
    m_tiles = triton.cdiv(M, bm)
    groups = K // gs
    split = max(1, min(triton.cdiv(per_sm * sms, triton.cdiv(N, bn) * m_tiles), groups, 32))
    per = triton.cdiv(groups, split)
    split = triton.cdiv(groups, per)
    out = torch.empty(M, N, device=x.device, dtype=x.dtype)
    target = out if split == 1 else torch.empty(split, M, N, device=x.device, dtype=torch.float32)
    stride_os = 0 if split == 1 else target.stride(0)
    args = (x, packed, scales, zeros, target, M, N, K, per, x.stride(0), packed.stride(0),
            scales.stride(0), zeros.stride(0), stride_os, target.stride(-2))
    if kind == "gemv8":
        assert M == 1 and (K // 2) % 4 == 0
        x8 = torch.empty(8, K // 8, device=x.device, dtype=torch.float32)
        xsum = torch.empty(K // gs, device=x.device, dtype=torch.float32)
        _prep_x8_kernel[(K // gs,)](x, x8, xsum, K, GS=gs)
        words = packed.view(torch.int32)  # (N, K // 8)
        _gemv8_kernel[(triton.cdiv(N, bn), split)](
            x8, words, xsum, scales, zeros, target, N, K, per, words.stride(0), scales.stride(0), zeros.stride(0),
            stride_os, GS=gs, BLOCK_N=bn, F32=interp, STAGES=stages, num_warps=warps, num_stages=stages)
    elif kind in ("fold", "fold2"):
        split_x = kind == "fold2"
        x_desc = _even_odd_x(x, bm, gs)[0] if split_x else TensorDescriptor.from_tensor(x, [bm, gs])
        _fold_kernel[(triton.cdiv(N, bn), split, m_tiles)](
            x_desc, TensorDescriptor.from_tensor(packed, [bn, gs // 2]), scales, zeros, target,
            M, N, K, per, scales.stride(0), zeros.stride(0), stride_os, target.stride(-2),
            GS=gs, BLOCK_M=bm, BLOCK_N=bn, F32=interp, SPLIT_X=split_x, num_warps=warps, num_stages=stages)
    elif kind == "tma4":  # the reference's Hopper path, launched with this sweep's config
        ref = _load_ref()
        xsum = torch.empty(M, K // gs, device=x.device, dtype=torch.float32)
        ref._x_group_sums_kernel[(M, K // gs)](x, xsum, K, x.stride(0), x.stride(1), GS=gs)
        ref._w4a16_tma_kernel[(triton.cdiv(N, bn), split, m_tiles)](
            TensorDescriptor.from_tensor(x, [bm, gs]), TensorDescriptor.from_tensor(packed, [bn, gs // 2]),
            xsum, scales, zeros, target, M, N, K, per, scales.stride(0), scales.stride(1), zeros.stride(0),
            zeros.stride(1), stride_os, target.stride(-2), target.stride(-1), GS=gs, BLOCK_M=bm, BLOCK_N=bn,
            F32=interp, num_warps=warps, num_stages=stages)
    elif kind in ("tma2", "tma3"):
        xeo_desc, xsum = _even_odd_x(x, bm, gs)
        (_tma3_kernel if kind == "tma3" else _tma2_kernel)[(triton.cdiv(N, bn), split, m_tiles)](
            xeo_desc, TensorDescriptor.from_tensor(packed, [bn, gs // 2]),
            xsum, scales, zeros, target, M, N, K, per, scales.stride(0), zeros.stride(0), stride_os,
            target.stride(-2), GS=gs, BLOCK_M=bm, BLOCK_N=bn, F32=interp, num_warps=warps, num_stages=stages)
    elif kind == "tma":
        x_desc = TensorDescriptor.from_tensor(x, [bm, gs])
        p_desc = TensorDescriptor.from_tensor(packed, [bn, gs // 2])
        _tma_kernel[(triton.cdiv(N, bn), split, m_tiles)](
            x_desc, p_desc, scales, zeros, target, M, N, K, per, scales.stride(0), zeros.stride(0), stride_os,
            target.stride(-2), GS=gs, BLOCK_M=bm, BLOCK_N=bn, F32=interp, num_warps=warps, num_stages=stages)
    elif kind == "tcp":
        _tcp_kernel[(triton.cdiv(N, bn), split, m_tiles)](*args, GS=gs, BLOCK_M=bm, BLOCK_N=bn,
                                                          num_warps=warps, num_stages=stages)
    elif kind == "tc":
        _tc_kernel[(triton.cdiv(N, bn), split, m_tiles)](*args, GS=gs, BLOCK_M=bm, BLOCK_N=bn, F32=interp,
                                                         MAGIC=magic and not interp,
                                                         num_warps=warps, num_stages=stages)
    else:
        assert M <= bm
        _gemv_kernel[(triton.cdiv(N, bn), split)](*args, GS=gs, BLOCK_M=bm, BLOCK_N=bn,
                                                  num_warps=warps, num_stages=stages)
    if split > 1:
        _load_ref()._sum_splits_kernel[(triton.cdiv(M * N, 1024),)](target, out, M * N, SPLITS=split, BLOCK=1024)
    return out


def _even_odd_x(x: torch.Tensor, bm: int, gs: int) -> tuple[TensorDescriptor, torch.Tensor]:
    """x split into its even and odd columns, (2, M, K / 2), as a (1, bm, gs / 2) tensor
    descriptor, and each group's sum of x (M, K / gs) float32: _prep_x_kernel's two outputs."""
    M, K = x.shape
    xeo = torch.empty(2, M, K // 2, device=x.device, dtype=x.dtype)
    xsum = torch.empty(M, K // gs, device=x.device, dtype=torch.float32)
    _prep_x_kernel[(M, K // gs)](x, xeo, xsum, M, K, x.stride(0), GS=gs)
    return TensorDescriptor.from_tensor(xeo, [1, bm, gs // 2]), xsum


def _load_ref():
    """reference/quantization.py, imported once (its kernels and the split-K sum are reused here)."""
    from harness import load_kata_file

    return load_kata_file(ROOT / "reference" / "quantization.py", "ref_quant")


def check(device: str) -> None:
    ref = _load_ref()
    for M, N, K, kind in [(1, 40, 256, "tc"), (3, 72, 512, "tc"), (17, 64, 256, "tc"), (1, 40, 256, "gemv"),
                          (3, 72, 512, "gemv"), (1, 40, 640, "tcp"), (17, 64, 384, "tcp"),
                          (1, 40, 640, "tma"), (17, 72, 384, "tma"), (1, 40, 640, "tma2"), (17, 72, 384, "tma2"),
                          (1, 40, 640, "tma3"), (17, 72, 384, "tma3"), (2, 24, 896, "tma3"),
                          (1, 40, 640, "tma4"), (17, 72, 384, "tma4"),
                          (1, 40, 640, "gemv8"), (1, 72, 384, "gemv8"), (1, 40, 640, "fold"), (17, 72, 384, "fold"), (1, 40, 640, "fold2"), (17, 72, 384, "fold2")]:
        g = torch.Generator().manual_seed(M * 7 + N)
        xdt = torch.float16 if kind == "tcp" and device == "cpu" else torch.bfloat16  # the interpreter and bf16
        x = torch.randn(M, K, generator=g).to(xdt).to(device)
        w = torch.randn(N, K, generator=g)
        codes, scales, zeros = ref.quantize(w, bits=4, group_size=128, sym=False)
        packed = ref.pack_int4(codes).to(device)
        want = x.double().cpu() @ ref.dequantize(codes, scales, zeros, 128).double().T
        got = run(kind, x, packed, scales.to(device), zeros.to(device), 128, bn=16 if device == "cpu" else 64,
                  warps=4, stages=1 if device == "cpu" else 3, per_sm=2)
        err = ((got.double().cpu() - want).norm() / want.norm()).item()
        print(f"check {kind} M={M} N={N} K={K}: rel err {err:.2e}", "OK" if err < 1e-2 else "FAIL")


@triton.jit
def _probe_kernel(p_ptr, out_ptr, N, KB, bytes_per_split, stride_pn,
                  BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr):
    """Bandwidth probe: read (BLOCK_N, BLOCK_B) byte tiles of the packed weight along K and sum
    them; how fast this access pattern alone can stream the weight."""
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_b = tl.arange(0, BLOCK_B)
    acc = tl.zeros([BLOCK_N, BLOCK_B], dtype=tl.int32)
    b0 = pid_s * bytes_per_split
    for b in range(b0, tl.minimum(b0 + bytes_per_split, KB), BLOCK_B):
        acc += tl.load(p_ptr + offs_n[:, None] * stride_pn + (b + offs_b)[None, :]).to(tl.int32)
    tl.store(out_ptr + pid_s * N + offs_n, tl.sum(acc, axis=1))


def probe(packed, bn: int, bb: int, warps: int, stages: int, per_sm: int) -> torch.Tensor:
    N, KB = packed.shape
    sms = torch.cuda.get_device_properties(packed.device).multi_processor_count
    chunks = KB // bb
    split = max(1, min(triton.cdiv(per_sm * sms, N // bn), chunks))
    per = triton.cdiv(chunks, split) * bb
    split = triton.cdiv(KB, per)
    out = torch.empty(split, N, device=packed.device, dtype=torch.int32)
    _probe_kernel[(N // bn, split)](packed, out, N, KB, per, packed.stride(0), BLOCK_N=bn, BLOCK_B=bb,
                                    num_warps=warps, num_stages=stages)
    return out


def main_probe() -> None:
    from harness.perf import cuda_median_ms, measure_device_peaks

    peaks = measure_device_peaks()
    print(f"copy {peaks.copy_bytes_per_s / 1e12:.2f} TB/s")
    for N, K in [(8192, 8192), (28672, 8192), (8192, 28672)]:
        packed = torch.randint(0, 256, (N, K // 2), device="cuda", dtype=torch.uint8)
        rows = []
        for bn, bb, warps, stages, per_sm in itertools.product((16, 32, 64, 128), (64, 128, 256, 512), (4, 8),
                                                               (1, 3), (2, 4)):
            if bn * bb > 64 * 512:
                continue
            try:
                t = cuda_median_ms(lambda: probe(packed, bn, bb, warps, stages, per_sm), warmup=3, rep=15)
            except Exception as e:  # noqa: BLE001
                continue
            rows.append((packed.numel() / t / 1e9, bn, bb, warps, stages, per_sm))
        rows.sort(reverse=True)
        by_bb = {}
        for r in rows:
            by_bb.setdefault(r[2], r)
        print(f"N={N} K={K}: best per row chunk: " + "; ".join(
            f"{bb} B/row: {r[0]:.2f} TB/s (BN{r[1]} w{r[3]} s{r[4]} {r[5]}/SM)" for bb, r in sorted(by_bb.items())),
            flush=True)


def main() -> None:
    if "--probe" in sys.argv:
        return main_probe()
    if "--check" in sys.argv:
        check("cuda" if torch.cuda.is_available() else "cpu")
        return
    from harness.perf import cuda_median_ms

    ref = _load_ref()
    check("cuda")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"GPU {torch.cuda.get_device_name()}, {sms} SMs")
    summary = []
    for (N, K), M in itertools.product([(8192, 8192), (28672, 8192), (8192, 28672)], (1, 4, 16, 64)):
        gen = torch.Generator(device="cuda").manual_seed(0)
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16, generator=gen)
        w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16, generator=gen)
        codes, scales, zeros = ref.quantize(w, bits=4, group_size=128, sym=False)
        packed = ref.pack_int4(codes)
        want = x.float() @ ref.dequantize(codes, scales, zeros, 128).T
        t_cublas = cuda_median_ms(lambda: torch.nn.functional.linear(x, w), rep=30)
        t_ref = cuda_median_ms(lambda: ref.w4a16_matmul(x, packed, scales, zeros, 128), rep=30)
        best: dict[str, tuple] = {}
        kinds = [k for k in ("fold", "fold2", "gemv8") if f"--{k}" in sys.argv and (k != "gemv8" or M == 1)]
        kinds = kinds if kinds else ["tma4"] if "--tma4" in sys.argv else ["tma3"] if "--tma3" in sys.argv else ["tma2"] if "--tma2" in sys.argv else ["tma"] if "--tma" in sys.argv else ["tcp"] if "--tcp" in sys.argv else ["tc", "tc_magic"] + (["gemv"] if M <= 4 else [])
        for kind in kinds:
            if kind == "gemv8":
                grid = itertools.product((32, 64, 128, 256), (4, 8), (2, 3, 4), (2, 4, 8))
            elif kind.startswith("fold"):
                grid = itertools.product((32, 64, 128), (4,), (3, 4, 6), (2, 4, 8))
            elif kind == "tma4":
                grid = itertools.product((32, 64, 128), (4, 8), (3, 4, 6), (2, 4, 8))
            elif kind == "tma3":
                grid = itertools.product((32, 64, 128), (4, 8), (2, 3, 4), (2, 4, 8))
            elif kind == "tma2":
                grid = itertools.product((32, 64, 128), (4, 8), (3, 4, 6), (2, 4, 8))
            elif kind == "tma":
                grid = itertools.product((32, 64, 128), (4, 8), (2, 3, 4, 6), (2, 4))
            elif kind == "tcp":
                grid = itertools.product((32, 64, 128), (4, 8), (1,), (1, 2, 4, 8))
            elif kind.startswith("tc"):
                grid = itertools.product((32, 64, 128), (4, 8), (2, 3, 4), (2, 4))
            else:
                grid = itertools.product((8, 16, 32, 64), (2, 4), (1, 2), (2, 4))
            for bn, warps, stages, per_sm in grid:
                def fn(kind=kind, bn=bn, warps=warps, stages=stages, per_sm=per_sm):
                    return run({"tc_magic": "tc"}.get(kind, kind), x, packed, scales, zeros, 128, bn=bn, warps=warps,
                               stages=stages, per_sm=per_sm, magic=kind == "tc_magic")
                try:
                    got = fn()
                    err = ((got.float() - want).norm() / want.norm()).item()
                    if not err < 1e-2:
                        print(f"  WRONG {kind} BN{bn} w{warps} s{stages} {per_sm}/SM: rel err {err:.2e}")
                        continue
                    t = cuda_median_ms(fn, warmup=3, rep=15)
                except Exception as e:  # out of resources
                    print(f"  skip {kind} BN{bn} w{warps} s{stages}: {type(e).__name__}")
                    continue
                if kind not in best or t < best[kind][0]:
                    best[kind] = (t, bn, warps, stages, per_sm)
        line = f"M={M:2d} N={N:5d} K={K:5d}: cuBLAS {t_cublas * 1e3:7.1f} us, ref {t_cublas / t_ref:.2f}x"
        for kind, (t, bn, warps, stages, per_sm) in best.items():
            line += f", {kind} {t_cublas / t:.2f}x ({t * 1e3:.1f} us, {N * K / 2 / t / 1e9:.2f} TB/s; BN{bn} w{warps} s{stages} {per_sm}/SM)"
        print(line, flush=True)
        summary.append(line)
    print("\n".join(summary))


if __name__ == "__main__":
    main()
