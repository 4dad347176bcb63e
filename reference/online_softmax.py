"""Kata 03 reference: stable softmax, the streaming (max, sum) state, and a Triton row softmax.

The whole kata is one identity: for a running max m and s = sum_i exp(x_i - m),

    (m_a, s_a) merge (m_b, s_b) = (m, s_a e^(m_a - m) + s_b e^(m_b - m)),  m = max(m_a, m_b).

Every "-inf - -inf" below is guarded: the empty state (m = -inf, s = 0) must stay NaN-free.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

_NEG_INF = float("-inf")


def _finite_or_zero(m: torch.Tensor) -> torch.Tensor:
    """A max of -inf (nothing seen yet) becomes 0, so that x - m never computes -inf - -inf."""
    return torch.where(m == _NEG_INF, torch.zeros_like(m), m)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32  # fp16/bf16 -> fp32


# ------------------------------------------------------------------------------ Task 1
def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """exp(x - max) / sum(exp(x - max)) along `dim`; an all -inf slice gives zeros."""
    xf = x.to(_compute_dtype(x.dtype))
    m = _finite_or_zero(xf.amax(dim=dim, keepdim=True))  # subtracting the max: exp(<= 0) <= 1
    e = torch.exp(xf - m)
    s = e.sum(dim=dim, keepdim=True)  # >= 1 unless the slice is all -inf (then 0)
    return (e / torch.where(s == 0, torch.ones_like(s), s)).to(x.dtype)


# ------------------------------------------------------------------------------ Task 2
class SoftmaxState(NamedTuple):
    """The softmax normaliser of everything seen so far, one per row."""

    max: torch.Tensor  # (*batch) running max m; -inf before anything is seen
    sum: torch.Tensor  # (*batch) sum of exp(x - m) over everything seen; 0 when empty


def init_state(
    shape: int | tuple[int, ...] | torch.Size,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> SoftmaxState:
    """The empty state: max = -inf, sum = 0 (the identity of `merge`)."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    return SoftmaxState(
        max=torch.full(shape, _NEG_INF, dtype=dtype, device=device),
        sum=torch.zeros(shape, dtype=dtype, device=device),
    )


def update(state: SoftmaxState, chunk: torch.Tensor) -> SoftmaxState:
    """Fold chunk (*batch, n) into state (*batch): reduce over the chunk's last dim."""
    chunk = chunk.to(state.max.dtype)
    m = torch.maximum(state.max, chunk.amax(dim=-1))  # (*batch)
    safe = _finite_or_zero(m)
    # The old sum was taken relative to the old max: rescale it to the new one.
    s = state.sum * torch.exp(state.max - safe) + torch.exp(chunk - safe[..., None]).sum(dim=-1)
    return SoftmaxState(max=m, sum=s)


# ------------------------------------------------------------------------------ Task 3
def merge(a: SoftmaxState, b: SoftmaxState) -> SoftmaxState:
    """The state of the concatenation of what a and b saw (associative, commutative)."""
    m = torch.maximum(a.max, b.max)
    safe = _finite_or_zero(m)  # both empty: exp(-inf - 0) = 0, not exp(-inf - -inf) = NaN
    s = a.sum * torch.exp(a.max - safe) + b.sum * torch.exp(b.max - safe)
    return SoftmaxState(max=m, sum=s)


# ------------------------------------------------------------------------------ Task 4
def logsumexp(state: SoftmaxState) -> torch.Tensor:
    """log(sum_i exp(x_i)) = m + log(s); -inf for the empty state (log 0 = -inf)."""
    return state.max + torch.log(state.sum)


def online_softmax(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """Softmax over the last dim, streaming blocks of `block_size` columns through `update`."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    xf = x.to(_compute_dtype(x.dtype))  # (*batch, n)
    n = x.shape[-1]
    state = init_state(x.shape[:-1], dtype=xf.dtype, device=x.device)
    for start in range(0, n, block_size):  # the last block may be shorter
        state = update(state, xf[..., start:start + block_size])
    # Second pass: each element against the final max and sum.
    m = _finite_or_zero(state.max)[..., None]
    s = state.sum[..., None]
    return (torch.exp(xf - m) / torch.where(s == 0, torch.ones_like(s), s)).to(x.dtype)


# ------------------------------------------------------------------------------ Task 5
# Softmax reads n values and writes n: a few flops per byte, so the kernel is bound by
# memory bandwidth and the goal is to move each byte once (one read, one write) while
# keeping enough loads in flight to saturate HBM.
#
# Rows up to _MAX_FUSED_COLS columns are held in registers whole (_softmax_rows_kernel):
# one read, one write. Longer rows do not fit on chip and stream through the online
# (max, sum) update (_softmax_long_rows_kernel): two reads, one write.
_MAX_FUSED_COLS = 32768
# The long-row loop's step: 16384 columns, 16 values per thread with 32 warps. On an H200
# this beat 4096 and 8192 at 65k and 262k columns (and it keeps the interpreter's loop short).
_LONG_BLOCK_N = 16384
# Under the CPU interpreter: 4 rows a tile (its cost is per tile, not per element) and a
# grid of 3 programs, so that each program walks several tiles as a persistent launch does.
_CPU_BLOCK_M, _CPU_PROGRAMS = 4, 3
# Rows of up to 4096 columns get a pinned launch. Timed with the perf harness on an H200 (scripts/softmax_config_sweep.py,
# 2026-11-29), one row per program with 64 bytes per thread was within 1.5% of the fastest
# config at 1k and 4k columns in fp32 and bf16 (4.02-4.22 TB/s of 4.27), while the slowest
# config the autotuner could pick ran 12% slower at bf16 1k.
_SHORT_ROW_COLS = 4096


def _fused_configs() -> list[triton.Config]:
    """Rows per tile x warps, one program per tile; plus persistent pipelined launches."""
    one_tile_each = [triton.Config({"BLOCK_M": bm, "NUM_STAGES": 1, "PROGRAMS_PER_SM": 0}, num_warps=w)
                     for bm in (1, 2, 4, 8, 16) for w in (1, 2, 4, 8, 16, 32)]
    persistent = [triton.Config({"BLOCK_M": 1, "NUM_STAGES": 3, "PROGRAMS_PER_SM": p}, num_warps=w)
                  for p in (1, 2) for w in (16, 32)]
    return one_tile_each + persistent


def _prune_fused(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Keep 8 to 32 values per thread: fewer leaves too few bytes in flight per SM, more
    spills registers (on an H100 and an H200 the best config of every perf case was in this
    range, or within 1% of one that was). Rows of up to 4096 columns: at most 2 rows a tile;
    timed with the perf harness's method on an H200 (scripts/softmax_config_sweep.py), the
    1- and 2-row tiles led at 1k and 4k columns and 4- to 8-row tiles ran 2-15% slower, a gap
    the autotuner's own quick timing could miss. Keep the
    persistent configs only for rows too big for two tiles to share an SM (a tile of 32 KiB
    or more) whose 3-stage prefetch fits in shared memory."""
    block_n = kwargs["BLOCK_N"]
    tile_bytes = block_n * named_args["x_ptr"].element_size()

    def per_thread(c: triton.Config) -> int:
        return c.kwargs["BLOCK_M"] * block_n // (32 * c.num_warps)

    kept = [c for c in configs if per_thread(c) in (8, 16, 32) and (
        c.kwargs["PROGRAMS_PER_SM"] == 0 or 32 * 1024 <= tile_bytes and 3 * tile_bytes <= 192 * 1024)
        and (block_n > 4096 or c.kwargs["BLOCK_M"] <= 2)]
    return kept or [max(configs, key=lambda c: (per_thread(c) <= 64, per_thread(c), -c.num_warps))]


@triton.jit
def _softmax_rows_kernel(x_ptr, y_ptr, n_rows, n_cols, x_row_stride, y_row_stride,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         NUM_STAGES: tl.constexpr, PROGRAMS_PER_SM: tl.constexpr):
    """Tiles of BLOCK_M whole rows, each row held in registers (BLOCK_N >= n_cols).

    Program p does tiles p, p + P, p + 2P, ... (P programs in the grid). Launched with one
    program per tile, the loop runs once. Launched persistent (PROGRAMS_PER_SM programs per
    SM, read by the launcher's grid), NUM_STAGES > 1 lets Triton load the next tile into
    shared memory while this one is reduced: with a 32k-column row only one or two programs
    fit on an SM, and without the prefetch HBM would idle during every reduction.
    """
    cols = tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    n_tiles = tl.cdiv(n_rows, BLOCK_M)
    for tile in tl.range(tl.program_id(0), n_tiles, tl.num_programs(0), num_stages=NUM_STAGES):
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
        mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)  # (BLOCK_M, BLOCK_N)
        rows64 = rows.to(tl.int64)[:, None]  # rows * stride can pass 2^31 elements
        x = tl.load(x_ptr + rows64 * x_row_stride + cols[None, :], mask=mask, other=-float("inf"))
        x = x.to(tl.float32)  # all math in fp32 (and the interpreter needs it for bf16)
        m = tl.max(x, axis=1)  # (BLOCK_M,)
        m = tl.where(m == -float("inf"), 0.0, m)  # an all -inf row: exp(-inf) = 0, not NaN
        e = tl.exp(x - m[:, None])
        s = tl.sum(e, axis=1)
        inv = 1.0 / tl.where(s == 0.0, 1.0, s)  # one division per row, then multiplies
        y = e * inv[:, None]
        tl.store(y_ptr + rows64 * y_row_stride + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)


_softmax_rows_tuned = triton.autotune(
    configs=_fused_configs(), key=["n_cols"],  # the autotuner adds the dtypes to the key
    prune_configs_by={"early_config_prune": _prune_fused},
)(_softmax_rows_kernel)


@triton.jit
def _softmax_long_rows_kernel(x_ptr, y_ptr, n_cols, x_row_stride, y_row_stride,
                              BLOCK_N: tl.constexpr):
    """One program per row, the row streamed in blocks: the online softmax on a GPU."""
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * x_row_stride
    y_row = y_ptr + row * y_row_stride
    offs = tl.arange(0, BLOCK_N)
    # Pass 1: every lane keeps its own (max, sum) state over the blocks.
    m = tl.full([BLOCK_N], -float("inf"), tl.float32)
    s = tl.zeros([BLOCK_N], tl.float32)
    for start in range(0, n_cols, BLOCK_N):
        cols = start + offs
        x = tl.load(x_row + cols, mask=cols < n_cols, other=-float("inf")).to(tl.float32)
        m_new = tl.maximum(m, x)
        safe = tl.where(m_new == -float("inf"), 0.0, m_new)
        s = s * tl.exp(m - safe) + tl.exp(x - safe)  # rescale the old sum, add the new term
        m = m_new
    # Merge the BLOCK_N lane states into the row's state.
    m_row = tl.max(m, axis=0)
    m_row = tl.where(m_row == -float("inf"), 0.0, m_row)
    s_row = tl.sum(s * tl.exp(m - m_row), axis=0)
    inv = 1.0 / tl.where(s_row == 0.0, 1.0, s_row)
    # Pass 2: read the row again and write the probabilities.
    for start in range(0, n_cols, BLOCK_N):
        cols = start + offs
        x = tl.load(x_row + cols, mask=cols < n_cols, other=-float("inf")).to(tl.float32)
        tl.store(y_row + cols, (tl.exp(x - m_row) * inv).to(y_ptr.dtype.element_ty), mask=cols < n_cols)


@functools.cache
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _grid(n_rows: int, n_sm: int):
    """Grid for the autotuned launch: one program per tile, or a persistent few per SM."""
    def grid(meta: dict) -> tuple[int]:
        n_tiles = triton.cdiv(n_rows, meta["BLOCK_M"])
        per_sm = meta["PROGRAMS_PER_SM"]
        return (min(n_tiles, per_sm * n_sm) if per_sm else n_tiles,)
    return grid


def softmax_triton(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim of x (any leading dims) with a Triton kernel; x's dtype out."""
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"softmax_triton supports float32, float16 and bfloat16, got {x.dtype}")
    n_cols = x.shape[-1]
    x2 = x.reshape(-1, n_cols)  # (rows, n_cols): a view when it can be
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()  # the kernels need unit stride along a row
    n_rows = x2.shape[0]
    y = torch.empty((n_rows, n_cols), dtype=x.dtype, device=x.device)
    if n_rows == 0 or n_cols == 0:
        return y.reshape(x.shape)
    if n_cols <= _MAX_FUSED_COLS:
        block_n = triton.next_power_of_2(n_cols)
        row_bytes = block_n * x.element_size()
        if x.is_cuda and block_n <= _SHORT_ROW_COLS:
            # Short rows: one row per program, 64 bytes per thread. Pinned, not autotuned: the
            # autotuner's pick among configs 1-12% apart changed from run to run on an H200.
            _softmax_rows_kernel[(n_rows,)](x2, y, n_rows, n_cols, x2.stride(0), y.stride(0),
                                            BLOCK_M=1, BLOCK_N=block_n, NUM_STAGES=1,
                                            PROGRAMS_PER_SM=0, num_warps=max(1, row_bytes // 2048))
        elif x.is_cuda:  # rows per program, warps and persistence by measurement, once per n_cols
            n_sm = _num_sms(x.device.index)
            _softmax_rows_tuned[_grid(n_rows, n_sm)](x2, y, n_rows, n_cols, x2.stride(0), y.stride(0),
                                                     BLOCK_N=block_n)
        else:  # the CPU interpreter: timing means nothing there
            n_tiles = triton.cdiv(n_rows, _CPU_BLOCK_M)
            _softmax_rows_kernel[(min(n_tiles, _CPU_PROGRAMS),)](
                x2, y, n_rows, n_cols, x2.stride(0), y.stride(0),
                BLOCK_M=_CPU_BLOCK_M, BLOCK_N=block_n, NUM_STAGES=1, PROGRAMS_PER_SM=0)
    else:
        _softmax_long_rows_kernel[(n_rows,)](x2, y, n_cols, x2.stride(0), y.stride(0),
                                             BLOCK_N=_LONG_BLOCK_N, num_warps=32)
    return y.reshape(x.shape)
