"""Kata 15 reference: a Mixtral-style sparse mixture-of-experts block.

T tokens x (T, d) go through E experts, each a SwiGLU MLP
    expert_e(x) = (silu(x @ w_gate[e].T) * (x @ w_up[e].T)) @ w_down[e].T
A router picks top_k experts per token; the block's output is the weighted sum of those
experts' outputs. Every function here works on any device; `moe_forward_triton` runs its
routing bookkeeping and its two grouped matrix products as Triton kernels, with no host
synchronisation (so it can be captured in a CUDA graph).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


# ------------------------------------------------------------------------------ Task 1
def route(router_logits: torch.Tensor, top_k: int, *,
          renormalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's top_k experts by router probability: (weights float32, experts long),
    both (T, top_k), in descending probability; ties go to the lower expert id."""
    if router_logits.dim() != 2:
        raise ValueError(f"router_logits must be (T, E), got shape {tuple(router_logits.shape)}")
    num_experts = router_logits.shape[1]
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k must be in 1..{num_experts} (the number of experts), got {top_k}")
    probs = torch.softmax(router_logits.float(), dim=-1)
    # A stable descending sort keeps equal probabilities in id order: the lower id wins a tie.
    sorted_probs, sorted_ids = torch.sort(probs, dim=-1, descending=True, stable=True)
    weights = sorted_probs[:, :top_k]
    experts = sorted_ids[:, :top_k]
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights.contiguous(), experts.contiguous()


# ------------------------------------------------------------------------------ Task 2
def permute(x: torch.Tensor, experts: torch.Tensor,
            num_experts: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group the T * top_k (token, slot) assignments by expert: (x_sorted, counts, order)."""
    if experts.dim() != 2 or x.dim() != 2 or x.shape[0] != experts.shape[0]:
        raise ValueError(f"x must be (T, d) and experts (T, top_k), got {tuple(x.shape)} and "
                         f"{tuple(experts.shape)}")
    top_k = experts.shape[1]
    flat = experts.reshape(-1)  # index t * top_k + slot
    order = torch.argsort(flat, stable=True)  # by expert; equal ids keep token order
    x_sorted = x.index_select(0, order // top_k)
    counts = torch.zeros(num_experts, dtype=torch.long, device=x.device)
    counts.scatter_add_(0, flat, torch.ones_like(flat))
    return x_sorted, counts, order


def unpermute(y_sorted: torch.Tensor, order: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """out[t] = sum over slots of weights[t, slot] * y_sorted[row of (t, slot)], in float32."""
    T, top_k = weights.shape
    if y_sorted.shape[0] != T * top_k or order.shape != (T * top_k,):
        raise ValueError(f"y_sorted {tuple(y_sorted.shape)} and order {tuple(order.shape)} must "
                         f"have T * top_k = {T * top_k} rows")
    acc = torch.promote_types(y_sorted.dtype, torch.float32)
    row_of = torch.empty_like(order)  # the inverse permutation: flat index -> sorted row
    row_of[order] = torch.arange(order.numel(), device=order.device)
    rows = y_sorted.index_select(0, row_of).to(acc).view(T, top_k, -1)
    out = (rows * weights.to(acc).unsqueeze(-1)).sum(dim=1)
    return out.to(y_sorted.dtype)


# ------------------------------------------------------------------------------ Task 3
def capacity_mask(experts: torch.Tensor, num_experts: int, capacity: int) -> torch.Tensor:
    """(T, top_k) bool: the assignments kept when each expert takes at most `capacity`,
    every token's first choice served before any token's second choice."""
    if capacity < 0:
        raise ValueError(f"capacity must be >= 0, got {capacity}")
    T, top_k = experts.shape
    queue = experts.t().reshape(-1)  # (slot, token) order: all first choices, then all second
    onehot = F.one_hot(queue, num_experts)
    position = (onehot.cumsum(dim=0) * onehot).sum(dim=-1) - 1  # place in its expert's queue
    keep = position < capacity
    return keep.view(top_k, T).t().contiguous()


# ------------------------------------------------------------------------------ Task 4
def load_balancing_loss(router_logits: torch.Tensor, experts: torch.Tensor,
                        num_experts: int) -> torch.Tensor:
    """E * sum_e f_e * P_e: f_e = assignments to e / T, P_e = mean router probability of e."""
    T = router_logits.shape[0]
    probs = torch.softmax(router_logits.float(), dim=-1)
    mean_prob = probs.mean(dim=0)
    flat = experts.reshape(-1)
    assigned = torch.zeros(num_experts, dtype=torch.float32, device=router_logits.device)
    assigned.scatter_add_(0, flat, torch.ones(flat.shape, dtype=torch.float32, device=flat.device))
    fraction = assigned / T
    return num_experts * (fraction * mean_prob).sum()


# ------------------------------------------------------------------------------ Task 5
def _check_block(x, router_weight, w_gate, w_up, w_down, top_k) -> None:
    if x.dim() != 2:
        raise ValueError(f"x must be (T, d), got shape {tuple(x.shape)}")
    d = x.shape[1]
    if w_gate.dim() != 3 or w_gate.shape[2] != d:
        raise ValueError(f"w_gate must be (E, d_ff, d) with d = {d}, got {tuple(w_gate.shape)}")
    E, d_ff, _ = w_gate.shape
    for name, t, shape in (("router_weight", router_weight, (E, d)), ("w_up", w_up, (E, d_ff, d)),
                           ("w_down", w_down, (E, d, d_ff))):
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must be {shape} for x {tuple(x.shape)} and w_gate "
                             f"{tuple(w_gate.shape)}, got {tuple(t.shape)}")
    if not 1 <= top_k <= E:
        raise ValueError(f"top_k must be in 1..{E} (the number of experts), got {top_k}")


def moe_forward(x: torch.Tensor, router_weight: torch.Tensor, w_gate: torch.Tensor,
                w_up: torch.Tensor, w_down: torch.Tensor, top_k: int) -> torch.Tensor:
    """The MoE block in torch: route, permute, one SwiGLU MLP per expert, unpermute."""
    _check_block(x, router_weight, w_gate, w_up, w_down, top_k)
    num_experts = w_gate.shape[0]
    logits = x @ router_weight.t()
    weights, experts = route(logits, top_k)
    x_sorted, counts, order = permute(x, experts, num_experts)
    y_sorted = torch.empty(x_sorted.shape, dtype=x.dtype, device=x.device)
    start = 0
    for e, n in enumerate(counts.tolist()):  # a host sync: fine here, not in the Triton path
        if n:
            xs = x_sorted[start:start + n]
            h = F.silu(xs @ w_gate[e].t()) * (xs @ w_up[e].t())
            y_sorted[start:start + n] = h @ w_down[e].t()
        start += n
    return unpermute(y_sorted, order, weights)


# ------------------------------------------------------------------------------ Task 6
# A fixed number of launches whatever E and T:
#   1. _route_topk_kernel (one program per block of tokens): softmax + top-k per token; the
#      routing weights and each assignment's expert, and every expert's row count (atomics).
#   2. _tile_table_kernel (one program): each expert's first sorted row (a scan of the counts)
#      and a tile table: tile u covers sorted rows [row_start[u], min(row_start[u] + BLOCK_M,
#      row_end[u])) of expert tile_expert[u] (-1 for the unused tiles at the end of the table).
#   3. _scatter_kernel: each assignment takes the next free row of its expert (an atomic
#      counter), writing `order` (sorted row -> flat index t * top_k + slot). The order of the
#      rows within an expert varies run to run; no result depends on it (each row's dot
#      products are the same wherever it sits in a tile).
#   4. _gate_up_kernel: H[rows] = silu(x[tok] @ w_gate[e].T) * (x[tok] @ w_up[e].T) for every
#      tile of every expert in one launch; the rows of x are gathered through `order`.
#   5. _down_kernel: Y[flat] = weight * (H[rows] @ w_down[e].T), stored at each assignment's
#      flat index, so that out = Y.view(T, top_k, d).sum(1) (the unpermute) needs no index.
# The grids are sized by an upper bound on the tile count, known on the host from T, top_k and
# E alone: no .item(), no .tolist(), nothing that waits for the GPU.


@triton.jit
def _route_topk_kernel(Logits, Weights, Experts, Counts, T, E, stride_lt, stride_le,
                       TOP_K: tl.constexpr, E_PAD: tl.constexpr, BLOCK_T: tl.constexpr):
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_e = tl.arange(0, E_PAD)
    tmask = offs_t < T
    emask = offs_e < E
    lmask = tmask[:, None] & emask[None, :]
    logits = tl.load(Logits + offs_t[:, None] * stride_lt + offs_e[None, :] * stride_le,
                     mask=lmask, other=float("-inf")).to(tl.float32)
    row_max = tl.where(tmask, tl.max(logits, axis=1), 0.0)
    ex = tl.where(lmask, tl.exp(logits - row_max[:, None]), 0.0)
    total = tl.sum(ex, axis=1)
    probs = ex / tl.where(total > 0, total, 1.0)[:, None]
    # top-k by repeated argmax (ties: the lower id); renormalise over the k picked
    left = probs
    top_sum = tl.zeros([BLOCK_T], dtype=tl.float32)
    chosen = tl.zeros([BLOCK_T, E_PAD], dtype=tl.int32)
    for _ in tl.static_range(TOP_K):
        best = tl.argmax(left, axis=1, tie_break_left=True)
        pick = offs_e[None, :] == best[:, None]
        top_sum += tl.sum(tl.where(pick, left, 0.0), axis=1)
        chosen += pick.to(tl.int32)
        left = tl.where(pick, -1.0, left)
    left = probs
    for j in tl.static_range(TOP_K):  # the same picks again, now stored
        best = tl.argmax(left, axis=1, tie_break_left=True)
        pick = offs_e[None, :] == best[:, None]
        w = tl.sum(tl.where(pick, left, 0.0), axis=1) / tl.where(top_sum > 0, top_sum, 1.0)
        tl.store(Weights + offs_t * TOP_K + j, w, mask=tmask)
        tl.store(Experts + offs_t * TOP_K + j, best.to(tl.int32), mask=tmask)
        left = tl.where(pick, -1.0, left)
    counts = tl.sum(tl.where(tmask[:, None], chosen, 0), axis=0)
    tl.atomic_add(Counts + offs_e, counts, mask=emask)


@triton.jit
def _tile_table_kernel(Counts, Cursor, TileExpert, TileRow, TileEnd, E, num_tiles,
                       E_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_U: tl.constexpr):
    offs_e = tl.arange(0, E_PAD)
    counts = tl.load(Counts + offs_e, mask=offs_e < E, other=0)
    offsets = tl.cumsum(counts, axis=0) - counts  # each expert's first sorted row
    tl.store(Cursor + offs_e, offsets, mask=offs_e < E)
    tiles = (counts + BLOCK_M - 1) // BLOCK_M
    tiles_end = tl.cumsum(tiles, axis=0)
    tiles_start = tiles_end - tiles
    for u0 in range(0, num_tiles, BLOCK_U):
        offs_u = u0 + tl.arange(0, BLOCK_U)
        # the expert of tile u: how many experts' tiles end at or before u
        e_of_u = tl.sum((tiles_end[None, :] <= offs_u[:, None]).to(tl.int32), axis=1)
        sel = offs_e[None, :] == e_of_u[:, None]
        off_e = tl.sum(tl.where(sel, offsets[None, :], 0), axis=1)
        cnt_e = tl.sum(tl.where(sel, counts[None, :], 0), axis=1)
        tstart_e = tl.sum(tl.where(sel, tiles_start[None, :], 0), axis=1)
        valid = e_of_u < E
        umask = offs_u < num_tiles
        tl.store(TileExpert + offs_u, tl.where(valid, e_of_u, -1), mask=umask)
        tl.store(TileRow + offs_u, tl.where(valid, off_e + (offs_u - tstart_e) * BLOCK_M, 0), mask=umask)
        tl.store(TileEnd + offs_u, tl.where(valid, off_e + cnt_e, 0), mask=umask)


@triton.jit
def _scatter_kernel(Experts, Cursor, Order, n_rows, BLOCK: tl.constexpr):
    flat = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = flat < n_rows
    e = tl.load(Experts + flat, mask=mask, other=0)
    row = tl.atomic_add(Cursor + e, 1, mask=mask)  # the old value: this assignment's row
    tl.store(Order + row, flat, mask=mask)


@triton.jit
def _tile_of(pid, N, num_tiles, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Program -> (tile, column block), GROUP_M tiles at a time down each column block, so that
    programs running together share weight columns (and x rows) through the L2."""
    in_group = GROUP_M * tl.cdiv(N, BLOCK_N)
    first_m = (pid // in_group) * GROUP_M
    size_m = tl.minimum(num_tiles - first_m, GROUP_M)
    return first_m + (pid % in_group) % size_m, (pid % in_group) // size_m


@triton.jit
def _gate_up_kernel(X, Order, TileExpert, TileRow, TileEnd, Wg, Wu, H,
                    N, K, num_tiles,
                    stride_xt, stride_xk,
                    stride_ge, stride_gn, stride_gk,
                    stride_ue, stride_un, stride_uk,
                    stride_hm,
                    TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, EVEN_K: tl.constexpr,
                    TO_F32: tl.constexpr, PRECISION: tl.constexpr):
    pid_m, pid_n = _tile_of(tl.program_id(0), N, num_tiles, BLOCK_N, GROUP_M)
    e = tl.load(TileExpert + pid_m)
    if e < 0:  # past the last tile of the last expert: nothing to do
        return
    rows = tl.load(TileRow + pid_m) + tl.arange(0, BLOCK_M)
    rmask = rows < tl.load(TileEnd + pid_m)
    tok = tl.load(Order + rows, mask=rmask, other=0) // TOP_K
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    e64 = e.to(tl.int64)
    a_ptrs = X + tok.to(tl.int64)[:, None] * stride_xt + offs_k[None, :] * stride_xk
    g_ptrs = Wg + e64 * stride_ge + offs_n[None, :] * stride_gn + offs_k[:, None] * stride_gk
    u_ptrs = Wu + e64 * stride_ue + offs_n[None, :] * stride_un + offs_k[:, None] * stride_uk
    acc_g = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs, mask=rmask[:, None], other=0.0)
            g = tl.load(g_ptrs, mask=nmask[None, :], other=0.0)
            u = tl.load(u_ptrs, mask=nmask[None, :], other=0.0)
        else:
            kmask = (k0 + offs_k) < K
            a = tl.load(a_ptrs, mask=rmask[:, None] & kmask[None, :], other=0.0)
            g = tl.load(g_ptrs, mask=kmask[:, None] & nmask[None, :], other=0.0)
            u = tl.load(u_ptrs, mask=kmask[:, None] & nmask[None, :], other=0.0)
        if TO_F32:  # the interpreter computes garbage with bf16 values
            a = a.to(tl.float32)
            g = g.to(tl.float32)
            u = u.to(tl.float32)
        acc_g = tl.dot(a, g, acc_g, input_precision=PRECISION)
        acc_u = tl.dot(a, u, acc_u, input_precision=PRECISION)
        a_ptrs += BLOCK_K * stride_xk
        g_ptrs += BLOCK_K * stride_gk
        u_ptrs += BLOCK_K * stride_uk
    h = acc_g / (1.0 + tl.exp(-acc_g)) * acc_u  # silu(gate) * up
    h_ptrs = H + rows.to(tl.int64)[:, None] * stride_hm + offs_n[None, :]
    tl.store(h_ptrs, h.to(H.dtype.element_ty), mask=rmask[:, None] & nmask[None, :])


@triton.jit
def _down_kernel(Hs, Order, Weights, TileExpert, TileRow, TileEnd, Wd, Y,
                 N, K, num_tiles,
                 stride_hm, stride_de, stride_dn, stride_dk, stride_ym,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 GROUP_M: tl.constexpr, EVEN_K: tl.constexpr,
                 TO_F32: tl.constexpr, PRECISION: tl.constexpr):
    pid_m, pid_n = _tile_of(tl.program_id(0), N, num_tiles, BLOCK_N, GROUP_M)
    e = tl.load(TileExpert + pid_m)
    if e < 0:
        return
    rows = tl.load(TileRow + pid_m) + tl.arange(0, BLOCK_M)
    rmask = rows < tl.load(TileEnd + pid_m)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = Hs + rows.to(tl.int64)[:, None] * stride_hm + offs_k[None, :]
    b_ptrs = Wd + e.to(tl.int64) * stride_de + offs_n[None, :] * stride_dn + offs_k[:, None] * stride_dk
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs, mask=rmask[:, None], other=0.0)
            b = tl.load(b_ptrs, mask=nmask[None, :], other=0.0)
        else:
            kmask = (k0 + offs_k) < K
            a = tl.load(a_ptrs, mask=rmask[:, None] & kmask[None, :], other=0.0)
            b = tl.load(b_ptrs, mask=kmask[:, None] & nmask[None, :], other=0.0)
        if TO_F32:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K * stride_dk
    flat = tl.load(Order + rows, mask=rmask, other=0)  # t * top_k + slot of each row
    w = tl.load(Weights + flat, mask=rmask, other=0.0)
    y = acc * w[:, None]
    y_ptrs = Y + flat.to(tl.int64)[:, None] * stride_ym + offs_n[None, :]
    tl.store(y_ptrs, y.to(Y.dtype.element_ty), mask=rmask[:, None] & nmask[None, :])


# Prefill on Hopper and later: the same two products with every operand loaded by the tensor
# memory accelerator (TMA) through tensor descriptors. x is first gathered into expert order
# (one contiguous copy, about 1% of the time at T = 8192), so a tile's rows are a contiguous
# range and need no per-row pointers; the copy engine then feeds the tensor cores without
# any address arithmetic in the loop (0.67x -> 0.72-0.78x the dense matmul rate on an H200).
# A tile past its expert's rows reads the next expert's (or TMA's zero fill): computed, never stored.
@triton.jit
def _gate_up_tma_kernel(xs_desc, wg_desc, wu_desc, H, TileExpert, TileRow, TileEnd, N, K, num_tiles,
                        stride_hm, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        GROUP_M: tl.constexpr):
    pid_m, pid_n = _tile_of(tl.program_id(0), N, num_tiles, BLOCK_N, GROUP_M)
    e = tl.load(TileExpert + pid_m)
    if e < 0:
        return
    row0 = tl.load(TileRow + pid_m)
    n0 = pid_n * BLOCK_N
    acc_g = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        a = xs_desc.load([row0, k0])  # (BLOCK_M, BLOCK_K) rows of x in expert order
        g = wg_desc.load([e * N + n0, k0])  # (BLOCK_N, BLOCK_K) of w_gate viewed (E * d_ff, d)
        u = wu_desc.load([e * N + n0, k0])
        acc_g = tl.dot(a, g.T, acc_g)
        acc_u = tl.dot(a, u.T, acc_u)
    h = acc_g / (1.0 + tl.exp(-acc_g)) * acc_u  # silu(gate) * up
    rows = row0 + tl.arange(0, BLOCK_M)
    offs_n = n0 + tl.arange(0, BLOCK_N)
    tl.store(H + rows.to(tl.int64)[:, None] * stride_hm + offs_n[None, :], h.to(H.dtype.element_ty),
             mask=(rows < tl.load(TileEnd + pid_m))[:, None] & (offs_n < N)[None, :])


@triton.jit
def _down_tma_kernel(h_desc, wd_desc, Order, Weights, TileExpert, TileRow, TileEnd, Y, N, K, num_tiles,
                     stride_ym, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     GROUP_M: tl.constexpr):
    pid_m, pid_n = _tile_of(tl.program_id(0), N, num_tiles, BLOCK_N, GROUP_M)
    e = tl.load(TileExpert + pid_m)
    if e < 0:
        return
    row0 = tl.load(TileRow + pid_m)
    n0 = pid_n * BLOCK_N
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        a = h_desc.load([row0, k0])
        b = wd_desc.load([e * N + n0, k0])  # w_down viewed (E * d, d_ff)
        acc = tl.dot(a, b.T, acc)
    rows = row0 + tl.arange(0, BLOCK_M)
    rmask = rows < tl.load(TileEnd + pid_m)
    offs_n = n0 + tl.arange(0, BLOCK_N)
    flat = tl.load(Order + rows, mask=rmask, other=0)
    w = tl.load(Weights + flat, mask=rmask, other=0.0)
    tl.store(Y + flat.to(tl.int64)[:, None] * stride_ym + offs_n[None, :], (acc * w[:, None]).to(Y.dtype.element_ty),
             mask=rmask[:, None] & (offs_n < N)[None, :])


# Tile sizes by the average rows per expert (T * top_k / E), chosen on the host from shapes
# only. Few rows (decode): the matmuls are weight reads; narrow column blocks give enough
# programs to fill every SM several times over, wide K blocks keep many bytes in flight.
# Many rows (prefill): 128-row tiles for tensor-core throughput.
#   rows per expert up to, BLOCK_M, gate/up (BLOCK_N, BLOCK_K, warps, stages), down (same)
_CONFIGS = [
    (8,     16, (64, 128, 4, 4), (32, 256, 4, 4)),
    (24,    32, (64, 128, 4, 4), (32, 256, 4, 4)),
    (64,    64, (64, 128, 4, 4), (64, 128, 4, 4)),
    (None, 128, (128, 64, 8, 3), (256, 64, 8, 3)),
]
_INTERPRETER_CONFIG = (16, (32, 32, 1, 1), (32, 32, 1, 1))  # small tiles: several per test
GROUP_M = 8
# The TMA path (prefill, Hopper+): gate/up (BLOCK_N, BLOCK_K, warps, stages, GROUP_M), down (same);
# from sweeps on an H200 (scripts/moe_config_sweep.py --tma); the
# perf test: 659 TFLOP/s at T = 4096, 697 at 8192 (0.81x and 0.86x the dense matmul rate).
_TMA_CONFIG = ((128, 64, 8, 3, 16), (256, 64, 8, 3, 16))


def _tma_ok(x: torch.Tensor, *weights: torch.Tensor) -> bool:
    """TMA needs a Hopper-or-later GPU, 16-bit data, contiguous weights and 16-byte-aligned rows."""
    return (not _interpreting() and x.is_cuda and torch.cuda.get_device_capability(x.device)[0] >= 9
            and x.dtype in (torch.float16, torch.bfloat16) and x.shape[1] % 8 == 0
            and all(w.is_contiguous() and w.dtype == x.dtype and w.shape[-1] % 8 == 0 for w in weights))


def _config(rows_per_expert: float):
    if _interpreting():
        return _INTERPRETER_CONFIG
    for limit, block_m, gate_up, down in _CONFIGS:
        if limit is None or rows_per_expert <= limit:
            return block_m, gate_up, down
    raise AssertionError("unreachable")


def _route_and_tile(logits: torch.Tensor, top_k: int, block_m: int):
    """Steps 1-3 above, three launches and no host synchronisation: the routing weights
    (float32, one per assignment t * top_k + slot), `order` (sorted row -> assignment) and the
    tile table (expert, first row, end row of each BLOCK_M tile; expert -1 past the last).
    Returns (weights, order, tile_expert, tile_row, tile_end, num_tiles)."""
    T, E = logits.shape
    dev = logits.device
    n_rows = T * top_k
    # sum_e ceil(c_e / BLOCK_M) <= ceil(n_rows / BLOCK_M) + E, and never more than n_rows.
    num_tiles = max(1, min(triton.cdiv(n_rows, block_m) + E, n_rows))
    weights = torch.empty(n_rows, dtype=torch.float32, device=dev)
    order = torch.empty(n_rows, dtype=torch.int32, device=dev)
    tile_expert = torch.empty(num_tiles, dtype=torch.int32, device=dev)
    tile_row = torch.empty(num_tiles, dtype=torch.int32, device=dev)
    tile_end = torch.empty(num_tiles, dtype=torch.int32, device=dev)
    if T > 0:
        e_pad = triton.next_power_of_2(E)
        block_t = max(1, min(triton.next_power_of_2(T), 2048 // e_pad, 64))
        experts = torch.empty(n_rows, dtype=torch.int32, device=dev)
        counts = torch.zeros(e_pad, dtype=torch.int32, device=dev)
        cursor = torch.empty(e_pad, dtype=torch.int32, device=dev)
        _route_topk_kernel[(triton.cdiv(T, block_t),)](
            logits, weights, experts, counts, T, E, logits.stride(0), logits.stride(1),
            TOP_K=top_k, E_PAD=e_pad, BLOCK_T=block_t, num_warps=4)
        _tile_table_kernel[(1,)](counts, cursor, tile_expert, tile_row, tile_end, E, num_tiles,
                                 E_PAD=e_pad, BLOCK_M=block_m,
                                 BLOCK_U=min(triton.next_power_of_2(num_tiles), 1024), num_warps=4)
        _scatter_kernel[(triton.cdiv(n_rows, 1024),)](experts, cursor, order, n_rows, BLOCK=1024, num_warps=4)
    return weights, order, tile_expert, tile_row, tile_end, num_tiles


def moe_forward_triton(x: torch.Tensor, router_weight: torch.Tensor, w_gate: torch.Tensor,
                       w_up: torch.Tensor, w_down: torch.Tensor, top_k: int) -> torch.Tensor:
    """moe_forward with the routing and the expert MLPs in Triton: a fixed number of launches
    whatever E, and no host synchronisation (CUDA-graph capturable)."""
    _check_block(x, router_weight, w_gate, w_up, w_down, top_k)
    T, d = x.shape
    E, d_ff, _ = w_gate.shape
    dev = x.device
    logits = x @ router_weight.t()  # (T, E) in x's dtype, as transformers computes them
    n_rows = T * top_k
    block_m, (bn1, bk1, w1, s1), (bn2, bk2, w2, s2) = _config(n_rows / E)
    if x.element_size() == 4 and not _interpreting():  # float32 tiles: half the K block fits in shared memory
        bk1, bk2 = bk1 // 2, bk2 // 2
    weights, order, tile_expert, tile_row, tile_end, num_tiles = _route_and_tile(logits, top_k, block_m)

    to_f32 = _interpreting()
    precision = "ieee" if x.dtype == torch.float32 else "tf32"  # fp32 inputs: no TF32 rounding
    h = torch.empty(n_rows, d_ff, dtype=x.dtype, device=dev)
    y = torch.empty(n_rows, d, dtype=x.dtype, device=dev)
    if n_rows > 0 and block_m == 128 and _tma_ok(x, w_gate, w_up, w_down):
        xs = x[(order // top_k).long()]  # (n_rows, d): x in expert order, contiguous
        (bn1, bk1, w1, s1, gm1), (bn2, bk2, w2, s2, gm2) = _TMA_CONFIG
        _gate_up_tma_kernel[(num_tiles * triton.cdiv(d_ff, bn1),)](
            TensorDescriptor.from_tensor(xs, [block_m, bk1]),
            TensorDescriptor.from_tensor(w_gate.view(E * d_ff, d), [bn1, bk1]),
            TensorDescriptor.from_tensor(w_up.view(E * d_ff, d), [bn1, bk1]),
            h, tile_expert, tile_row, tile_end, d_ff, d, num_tiles, h.stride(0),
            BLOCK_M=block_m, BLOCK_N=bn1, BLOCK_K=bk1, GROUP_M=gm1, num_warps=w1, num_stages=s1)
        _down_tma_kernel[(num_tiles * triton.cdiv(d, bn2),)](
            TensorDescriptor.from_tensor(h, [block_m, bk2]),
            TensorDescriptor.from_tensor(w_down.view(E * d, d_ff), [bn2, bk2]),
            order, weights, tile_expert, tile_row, tile_end, y, d, d_ff, num_tiles, y.stride(0),
            BLOCK_M=block_m, BLOCK_N=bn2, BLOCK_K=bk2, GROUP_M=gm2, num_warps=w2, num_stages=s2)
    elif n_rows > 0:
        _gate_up_kernel[(num_tiles * triton.cdiv(d_ff, bn1),)](
            x, order, tile_expert, tile_row, tile_end, w_gate, w_up, h,
            d_ff, d, num_tiles,
            x.stride(0), x.stride(1),
            w_gate.stride(0), w_gate.stride(1), w_gate.stride(2),
            w_up.stride(0), w_up.stride(1), w_up.stride(2),
            h.stride(0),
            TOP_K=top_k, BLOCK_M=block_m, BLOCK_N=bn1, BLOCK_K=bk1, GROUP_M=GROUP_M,
            EVEN_K=d % bk1 == 0, TO_F32=to_f32, PRECISION=precision,
            num_warps=w1, num_stages=s1)
        _down_kernel[(num_tiles * triton.cdiv(d, bn2),)](
            h, order, weights, tile_expert, tile_row, tile_end, w_down, y,
            d, d_ff, num_tiles,
            h.stride(0), w_down.stride(0), w_down.stride(1), w_down.stride(2), y.stride(0),
            BLOCK_M=block_m, BLOCK_N=bn2, BLOCK_K=bk2, GROUP_M=GROUP_M,
            EVEN_K=d_ff % bk2 == 0, TO_F32=to_f32, PRECISION=precision,
            num_warps=w2, num_stages=s2)
    # The unpermute: each token's top_k weighted rows sit next to each other in y.
    return y.view(T, top_k, d).sum(dim=1)  # torch accumulates half-precision sums in float32
