"""Kata 11: weight quantization, reference solution.

Round-to-nearest (RTN) quantization of a weight matrix w (out, in) along `in`, in groups of
`group_size` columns, into unsigned codes with a float32 scale and zero point per group:

    W_hat[i, j] = (codes[i, j] - zeros[i, g]) * scales[i, g],    g = j // group_size

then 4-bit packing (two codes a byte) and a Triton kernel that multiplies activations by the
packed weight without ever writing W_hat to memory (w4a16: 4-bit weights, 16-bit activations).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor


# -- Tasks 1-3: quantize / dequantize --------------------------------------------------------
def _group_count(cols: int, group_size: int) -> tuple[int, int]:
    """(group size, number of groups) for a row of `cols` columns; ValueError if it does not divide."""
    gs = cols if group_size == -1 else group_size
    if not isinstance(group_size, int) or gs <= 0 or cols % gs != 0:
        raise ValueError(f"group_size {group_size} does not divide in = {cols} (use a divisor of in, or -1)")
    return gs, cols // gs


def dequantize(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
               group_size: int) -> torch.Tensor:
    """W_hat = (codes - zeros[group]) * scales[group], float32 (out, in)."""
    if codes.dim() != 2:
        raise ValueError(f"codes must be (out, in), got shape {tuple(codes.shape)}")
    rows, cols = codes.shape
    gs, n_groups = _group_count(cols, group_size)
    if tuple(scales.shape) != (rows, n_groups) or tuple(zeros.shape) != (rows, n_groups):
        raise ValueError(f"scales and zeros must be ({rows}, {n_groups}) for codes {tuple(codes.shape)} "
                         f"and group_size {group_size}; got {tuple(scales.shape)} and {tuple(zeros.shape)}")
    c = codes.to(torch.float32).reshape(rows, n_groups, gs)
    z = zeros.to(torch.float32).unsqueeze(-1)
    s = scales.to(torch.float32).unsqueeze(-1)
    return ((c - z) * s).reshape(rows, cols)


def quantize(w: torch.Tensor, *, bits: int = 8, group_size: int = -1,
             sym: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest quantization of w (out, in): (codes uint8, scales f32, zeros f32)."""
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an int in 2..8, got {bits!r}")
    if w.dim() != 2 or not w.is_floating_point():
        raise ValueError(f"w must be a 2-D float tensor (out, in), got {tuple(w.shape)} {w.dtype}")
    rows, cols = w.shape
    gs, n_groups = _group_count(cols, group_size)
    # float64 weights are computed in float64; everything else in float32 (fp16/bf16 are exact there)
    cdt = torch.float64 if w.dtype == torch.float64 else torch.float32
    wg = w.to(cdt).reshape(rows, n_groups, gs)
    qmax = 2**bits - 1
    if sym:
        amax = wg.abs().amax(dim=-1)
        scales = (amax / (2 ** (bits - 1) - 1)).to(torch.float32)
        zeros = torch.full_like(scales, float(2 ** (bits - 1)))
    else:
        lo = wg.amin(dim=-1).clamp(max=0.0)  # the range always holds 0.0, so 0.0 is on the grid
        hi = wg.amax(dim=-1).clamp(min=0.0)
        scales = ((hi - lo) / qmax).to(torch.float32)
    # An all-zero group has scale 0: divide by 1 there instead (its codes land on the zero point).
    safe = torch.where(scales > 0, scales, torch.ones_like(scales)).to(cdt)
    if not sym:
        zeros = torch.round(-lo / safe).clamp(0, qmax).to(torch.float32)
    q = torch.round(wg / safe.unsqueeze(-1)) + zeros.to(cdt).unsqueeze(-1)
    codes = q.clamp(0, qmax).to(torch.uint8).reshape(rows, cols)
    return codes, scales, zeros


# -- Task 4: int4 packing ---------------------------------------------------------------------
def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """(out, in) codes < 16 -> (out, in // 2) uint8: column 2j low nibble, 2j + 1 high nibble."""
    if codes.dim() != 2 or codes.shape[1] % 2 != 0:
        raise ValueError(f"pack_int4 needs (out, in) codes with an even in, got shape {tuple(codes.shape)}")
    if codes.is_floating_point() or codes.dtype == torch.bool:
        raise ValueError(f"pack_int4 needs integer codes, got {codes.dtype}")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= 16):
        raise ValueError(f"pack_int4 needs codes in [0, 16), got values in "
                         f"[{int(codes.min())}, {int(codes.max())}]")
    c = codes.to(torch.uint8)
    return c[:, 0::2] | (c[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of pack_int4: (out, in // 2) uint8 -> (out, in) uint8 codes."""
    if packed.dim() != 2 or packed.dtype != torch.uint8:
        raise ValueError(f"unpack_int4 needs a (out, in // 2) uint8 tensor, got "
                         f"{tuple(packed.shape)} {packed.dtype}")
    lo = packed & 0xF
    hi = packed >> 4
    return torch.stack((lo, hi), dim=-1).reshape(packed.shape[0], 2 * packed.shape[1])


# -- Task 5: the w4a16 Triton kernel ----------------------------------------------------------
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
MAGIC_F32 = tl.constexpr(0x4B000000)  # the bits of 2.0**23: (MAGIC_F32 | c) read as a float32 is 2**23 + c


@triton.jit
def _w4a16_kernel(
    x_ptr, p_ptr, s_ptr, z_ptr, out_ptr,
    M, N, K, group_size, blocks_per_split,
    stride_xm, stride_xk, stride_pn, stride_pk,
    stride_sn, stride_sg, stride_zn, stride_zg,
    stride_os, stride_om, stride_on,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_PER_BLOCK: tl.constexpr, DOT_F32: tl.constexpr,
):
    """One program: BLOCK_N output features x BLOCK_M rows of x, over one split of K.

    Per K block it loads BLOCK_N x BLOCK_K/2 packed bytes, unpacks both nibbles in registers
    and feeds them to tl.dot as the A operand, (BLOCK_N, BLOCK_K) @ x^T (BLOCK_K, BLOCK_M):
    W_hat never leaves the registers. When a block lies in one group (GROUP_PER_BLOCK) the
    scale and zero are applied once per block to the (BLOCK_N, BLOCK_M) partial product:
        sum_k x_k (c_k - z) s = s * (sum_k x_k c_k - z * sum_k x_k),
    so the tensor cores multiply raw codes (small integers, exact in fp16/bf16).
    """
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_m = tl.program_id(2)
    HALF: tl.constexpr = BLOCK_K // 2
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n_mask = offs_n < N
    m_mask = offs_m < M
    offs_b = tl.arange(0, HALF)
    offs_k = tl.arange(0, BLOCK_K)
    x_dtype = x_ptr.dtype.element_ty
    if DOT_F32:  # the interpreter: float32 throughout
        dot_dtype = tl.float32
        OFFSET: tl.constexpr = 0.0
    else:  # fp16/bf16 tiles on the tensor cores, fp32 accumulation
        dot_dtype = x_dtype
        # A code as a half-precision float without any arithmetic: OR it into the mantissa of
        # 128.0 (bf16 bits 0x4300) or 1024.0 (fp16 bits 0x6400); the value is OFFSET + c,
        # exactly, and OFFSET * sum(x) comes off with the zero point below.
        if x_dtype == tl.bfloat16:
            MAGIC_PAIR: tl.constexpr = 0x43004300
            OFFSET: tl.constexpr = 128.0
        else:
            MAGIC_PAIR: tl.constexpr = 0x64006400
            OFFSET: tl.constexpr = 1024.0
    ones = tl.full([BLOCK_N, BLOCK_K], 1.0, dot_dtype)  # ones @ x^T: every row is sum_k x
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    kb_start = pid_s * blocks_per_split
    kb_end = tl.minimum(kb_start + blocks_per_split, tl.cdiv(K, BLOCK_K))
    # Rows past N (or M) read row N - 1 (M - 1) again instead of being masked: the loads stay
    # unpredicated, and the store below drops those rows.
    rows_n = tl.minimum(offs_n, N - 1)
    rows_m = tl.minimum(offs_m, M - 1)
    for kb in range(kb_start, kb_end):
        # packed bytes of this block: (BLOCK_N, HALF), contiguous along K in each row
        byte = kb * HALF + offs_b
        cols = kb * BLOCK_K + offs_k
        p_ptrs = p_ptr + rows_n[:, None] * stride_pn + byte[None, :] * stride_pk
        x_ptrs = x_ptr + rows_m[None, :] * stride_xm + cols[:, None] * stride_xk
        if GROUP_PER_BLOCK:  # BLOCK_K divides the group, hence K: every block is whole
            pk = tl.load(p_ptrs).to(tl.int32)
            xt = tl.load(x_ptrs)  # (BLOCK_K, BLOCK_M)
        else:
            k_mask = cols < K
            pk = tl.load(p_ptrs, mask=(byte < K // 2)[None, :], other=0).to(tl.int32)
            xt = tl.load(x_ptrs, mask=k_mask[:, None], other=0.0)
        if DOT_F32:
            xt = xt.to(tl.float32)
        if GROUP_PER_BLOCK:  # the whole block in one group: one scale and zero per row n
            g = (kb * BLOCK_K) // group_size
            s = tl.load(s_ptr + rows_n * stride_sn + g * stride_sg).to(tl.float32)
            z = tl.load(z_ptr + rows_n * stride_zn + g * stride_zg).to(tl.float32)
            if DOT_F32:  # nibble -> float32: OR into the mantissa of 2**23, subtract 2**23
                lo = ((pk & 0xF) | MAGIC_F32).to(tl.float32, bitcast=True) - 8388608.0
                hi = ((pk >> 4) | MAGIC_F32).to(tl.float32, bitcast=True) - 8388608.0
            else:  # both nibbles -> OFFSET + code in x's dtype, by bits alone, in one 32-bit word:
                # byte * 4097 copies the high nibble to bits 16-19 (the low one stays at 0-3)
                pair = ((pk * 4097) & 0x000F000F) | MAGIC_PAIR
                lo = pair.to(tl.int16).to(dot_dtype, bitcast=True)
                hi = (pair >> 16).to(tl.int16).to(dot_dtype, bitcast=True)
            w = tl.interleave(lo, hi)  # (BLOCK_N, BLOCK_K): column 2j low nibble, 2j + 1 high
            part = tl.dot(w, xt)  # (BLOCK_N, BLOCK_M): sum_k (OFFSET + c) x
            xs = tl.dot(ones, xt)  # (BLOCK_N, BLOCK_M): sum_k x, the same in every row
            acc += s[:, None] * (part - (z[:, None] + OFFSET) * xs)
        else:  # groups smaller than a block (or odd): dequantize element by element in fp32
            lo = ((pk & 0xF) | MAGIC_F32).to(tl.float32, bitcast=True) - 8388608.0
            hi = ((pk >> 4) | MAGIC_F32).to(tl.float32, bitcast=True) - 8388608.0
            w = tl.interleave(lo, hi)
            gcol = cols // group_size
            s2 = tl.load(s_ptr + rows_n[:, None] * stride_sn + gcol[None, :] * stride_sg,
                         mask=k_mask[None, :], other=0.0).to(tl.float32)
            z2 = tl.load(z_ptr + rows_n[:, None] * stride_zn + gcol[None, :] * stride_zg,
                         mask=k_mask[None, :], other=0.0).to(tl.float32)
            acc += tl.dot(((w - z2) * s2).to(dot_dtype), xt)  # W_hat rounded to x's dtype
    out_base = out_ptr + pid_s * stride_os
    tl.store(out_base + offs_m[None, :] * stride_om + offs_n[:, None] * stride_on,
             acc.to(out_ptr.dtype.element_ty), mask=n_mask[:, None] & m_mask[None, :])


# -- The Hopper path: both operands through TMA ----------------------------------------------
# Measured on an H200: _w4a16_kernel's weight loads are pointer loads whose bytes must be
# re-laid-out for the tensor cores, and Triton does not pipeline those (one memory latency per
# K block: ~1 TB/s of int4). Loads through tensor descriptors (TMA) are pipelined whatever
# their consumer. So on Hopper-class GPUs (and under the interpreter, to test it on CPU) the
# kernel streams the packed bytes and x's tiles with TMA; each group's sum of x, needed for
# the zero point, comes from a tiny kernel first.
@triton.jit
def _x_group_sums_kernel(x_ptr, xsum_ptr, K, stride_xm, stride_xk, GS: tl.constexpr):
    """xsum (M, K/GS) float32: the sum of each group of GS columns of each row of x. Program (m, g)."""
    m = tl.program_id(0)
    g = tl.program_id(1)
    xv = tl.load(x_ptr + m * stride_xm + (g * GS + tl.arange(0, GS)) * stride_xk).to(tl.float32)
    tl.store(xsum_ptr + m * (K // GS) + g, tl.sum(xv, axis=0))


@triton.jit
def _w4a16_tma_kernel(x_desc, p_desc, xsum_ptr, s_ptr, z_ptr, out_ptr, M, N, K, groups_per_split,
                      stride_sn, stride_sg, stride_zn, stride_zg, stride_os, stride_om, stride_on,
                      GS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, F32: tl.constexpr):
    """One program: BLOCK_N output features x BLOCK_M rows of x over one split of K, one group
    per step: (BLOCK_N, GS/2) packed bytes and the (BLOCK_M, GS) tile of x arrive by TMA, the
    nibbles are unpacked and interleaved back into column order in registers (no shared-memory
    round trip: each thread holds both nibbles of its bytes), one tensor-core dot, and the
    group's scale and zero applied to the partial product:
        sum_k x (c - z) s = s * (sum_k x c - z * sum_k x)."""
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_m = tl.program_id(2)
    HALF: tl.constexpr = GS // 2
    G = K // GS
    n0 = pid_n * BLOCK_N
    m0 = pid_m * BLOCK_M
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    rows_n = tl.minimum(offs_n, N - 1)  # past N / M: read the last row again, store nothing
    rows_m = tl.minimum(offs_m, M - 1)
    if F32:  # the interpreter: float32 throughout
        OFFSET: tl.constexpr = 0.0
    else:  # a code as OFFSET + code in x's dtype by bits alone (see _w4a16_kernel)
        dt = x_desc.dtype
        if dt == tl.bfloat16:
            MAGIC: tl.constexpr = 0x4300
            OFFSET: tl.constexpr = 128.0
        else:
            MAGIC: tl.constexpr = 0x6400
            OFFSET: tl.constexpr = 1024.0
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    g0 = pid_s * groups_per_split
    g1 = tl.minimum(g0 + groups_per_split, G)
    s = tl.load(s_ptr + rows_n * stride_sn + g0 * stride_sg)
    z = tl.load(z_ptr + rows_n * stride_zn + g0 * stride_zg)
    xs = tl.load(xsum_ptr + rows_m[None, :] * G + g0)  # (1, BLOCK_M): sum_k x over the group
    for g in range(g0, g1):
        pk = p_desc.load([n0, g * HALF])  # (BLOCK_N, HALF) packed bytes; rows past N read as 0
        xt = x_desc.load([m0, g * GS])  # (BLOCK_M, GS); rows past M read as 0
        if F32:
            lo = (pk & 0xF).to(tl.float32)
            hi = (pk >> 4).to(tl.float32)
            xt = xt.to(tl.float32)
        else:
            p16 = pk.to(tl.int16)
            lo = ((p16 & 0xF) | MAGIC).to(dt, bitcast=True)
            hi = ((p16 >> 4) | MAGIC).to(dt, bitcast=True)
        w = tl.interleave(lo, hi)  # (BLOCK_N, GS): column 2j low nibble, 2j + 1 high
        part = tl.dot(w, tl.trans(xt))  # (BLOCK_N, BLOCK_M): sum_k (OFFSET + c) x
        nxt = tl.minimum(g + 1, g1 - 1)  # the next group's scale, zero and x sum, a step early
        s_next = tl.load(s_ptr + rows_n * stride_sn + nxt * stride_sg)
        z_next = tl.load(z_ptr + rows_n * stride_zn + nxt * stride_zg)
        xs_next = tl.load(xsum_ptr + rows_m[None, :] * G + nxt)
        acc += s[:, None] * (part - (z[:, None] + OFFSET) * xs)
        s, z, xs = s_next, z_next, xs_next
    tl.store(out_ptr + pid_s * stride_os + offs_m[None, :] * stride_om + offs_n[:, None] * stride_on,
             acc.to(out_ptr.dtype.element_ty), mask=(offs_n < N)[:, None] & (offs_m < M)[None, :])


def _tma_ok(x: torch.Tensor, packed: torch.Tensor, gs: int) -> bool:
    """The TMA path needs a Hopper-class GPU (or the interpreter), a group of 32..256 columns
    (a power of two), and x and the packed weight with contiguous, 16-byte-aligned rows."""
    if not (_INTERPRET or (x.is_cuda and torch.cuda.get_device_capability(x.device)[0] >= 9)):
        return False
    return (gs in (32, 64, 128, 256) and all(
        t.stride(1) == 1 and (t.stride(0) * t.element_size()) % 16 == 0 and t.data_ptr() % 16 == 0
        for t in (x, packed)))


@triton.jit
def _sum_splits_kernel(ws_ptr, out_ptr, numel, SPLITS: tl.constexpr, BLOCK: tl.constexpr):
    """out[i] = sum over the splits of the float32 partials ws[s, i], cast to out's dtype."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    total = tl.zeros([BLOCK], dtype=tl.float32)
    for s in range(SPLITS):
        total += tl.load(ws_ptr + s * numel + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, total.to(out_ptr.dtype.element_ty), mask=mask)


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # the interpreter: a handful of programs, but enough to exercise split-K


def _config(M: int, N: int, K: int, gs: int, sms: int) -> dict:
    """The launch configuration, a function of the shapes alone (no autotuning).

    BLOCK_K: the largest power of two (<= 128, >= 32) dividing the group, so a block never
    straddles two groups; else 64 with per-element scales. BLOCK_M: M padded to 16, 32 or 64
    (tl.dot needs 16; at M = 1 the tensor cores still beat a CUDA-core dot product, which
    spends more instructions per weight). Split-K until the grid has about four programs
    per SM: an 8192-row weight has only 128 tiles of 64 rows, too few for 132 SMs.
    """
    bk = next((b for b in (128, 64, 32) if gs % b == 0), None)
    per_block = bk is not None
    if bk is None:
        bk = 64
    bm = 16 if M <= 16 else 32 if M <= 32 else 64
    bn = 64
    split, per_split = _splits(triton.cdiv(K, bk), triton.cdiv(N, bn) * triton.cdiv(M, bm), sms)
    return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_PER_BLOCK=per_block,
                num_warps=4, split=split, per_split=per_split)


def w4a16_matmul(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor,
                 zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    """x (M, K) fp16/bf16 @ W_hat^T, W_hat (N, K) given as packed int4 codes, scales and zeros."""
    if x.dim() != 2 or packed.dim() != 2:
        raise ValueError(f"x must be (M, K) and packed (N, K // 2), got {tuple(x.shape)} and {tuple(packed.shape)}")
    if x.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"x must be float16 or bfloat16, got {x.dtype}")
    if packed.dtype != torch.uint8:
        raise ValueError(f"packed must be uint8, got {packed.dtype}")
    M, K = x.shape
    N = packed.shape[0]
    if packed.shape[1] * 2 != K:
        raise ValueError(f"packed {tuple(packed.shape)} holds {2 * packed.shape[1]} columns, x has K = {K}")
    gs, n_groups = _group_count(K, group_size)
    if tuple(scales.shape) != (N, n_groups) or tuple(zeros.shape) != (N, n_groups):
        raise ValueError(f"scales and zeros must be ({N}, {n_groups}), got {tuple(scales.shape)} and {tuple(zeros.shape)}")
    out = torch.empty((M, N), device=x.device, dtype=x.dtype)
    if M == 0 or N == 0:
        return out
    if _tma_ok(x, packed, gs):
        return _w4a16_tma(x, packed, scales, zeros, gs, out)
    cfg = _config(M, N, K, gs, _sm_count(x.device))
    split, per_split = cfg.pop("split"), cfg.pop("per_split")
    warps = cfg.pop("num_warps")
    if split == 1:
        target, stride_os = out, 0
    else:  # float32 partial sums, one slab per split, summed by a second kernel
        target = torch.empty((split, M, N), device=x.device, dtype=torch.float32)
        stride_os = target.stride(0)
    grid = (triton.cdiv(N, cfg["BLOCK_N"]), split, triton.cdiv(M, cfg["BLOCK_M"]))
    _w4a16_kernel[grid](
        x, packed, scales, zeros, target,
        M, N, K, gs, per_split,
        x.stride(0), x.stride(1), packed.stride(0), packed.stride(1),
        scales.stride(0), scales.stride(1), zeros.stride(0), zeros.stride(1),
        stride_os, target.stride(-2), target.stride(-1),
        DOT_F32=_INTERPRET, num_warps=warps, num_stages=1 if _INTERPRET else 3, **cfg,
    )
    if split > 1:
        numel = M * N
        block = 1024
        _sum_splits_kernel[(triton.cdiv(numel, block),)](target, out, numel, SPLITS=split, BLOCK=block)
    return out


def _splits(k_blocks: int, tiles: int, sms: int) -> tuple[int, int]:
    """(splits, K blocks per split): split K until the grid has about four programs per SM."""
    split = max(1, min(triton.cdiv(4 * sms, tiles), k_blocks, 16))
    per_split = triton.cdiv(k_blocks, split)
    return triton.cdiv(k_blocks, per_split), per_split  # no empty splits


def _w4a16_tma(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
               gs: int, out: torch.Tensor) -> torch.Tensor:
    """w4a16_matmul's Hopper path: the group sums of x, then _w4a16_tma_kernel (split-K with a
    float32 slab per split, summed by _sum_splits_kernel, when N alone leaves SMs idle)."""
    M, K = x.shape
    N = packed.shape[0]
    bm = 16 if M <= 16 else 32 if M <= 32 else 64
    bn = 16 if _INTERPRET else 64
    stages = 1 if _INTERPRET else 4 if M <= 16 else 3
    split, per_split = _splits(K // gs, triton.cdiv(N, bn) * triton.cdiv(M, bm), _sm_count(x.device))
    xsum = torch.empty((M, K // gs), device=x.device, dtype=torch.float32)
    _x_group_sums_kernel[(M, K // gs)](x, xsum, K, x.stride(0), x.stride(1), GS=gs)
    target = out if split == 1 else torch.empty((split, M, N), device=x.device, dtype=torch.float32)
    _w4a16_tma_kernel[(triton.cdiv(N, bn), split, triton.cdiv(M, bm))](
        TensorDescriptor.from_tensor(x, [bm, gs]), TensorDescriptor.from_tensor(packed, [bn, gs // 2]),
        xsum, scales, zeros, target, M, N, K, per_split,
        scales.stride(0), scales.stride(1), zeros.stride(0), zeros.stride(1),
        0 if split == 1 else target.stride(0), target.stride(-2), target.stride(-1),
        GS=gs, BLOCK_M=bm, BLOCK_N=bn, F32=_INTERPRET, num_warps=4, num_stages=stages)
    if split > 1:
        numel = M * N
        _sum_splits_kernel[(triton.cdiv(numel, 1024),)](target, out, numel, SPLITS=split, BLOCK=1024)
    return out
