"""Kata 12 reference: GPTQ (Frantar et al., 2022). See katas/12_gptq/README.md.

A weight W (out, in) is quantized one input column at a time. After each column, the
rounding error is spread over the columns not yet quantized, weighted by the inverse
Hessian H^-1 of the layer-output error (H = 2 X^T X / n over calibration inputs X), so the
remaining columns compensate for it. The rows of the upper Cholesky factor of H^-1 give every
step's update at once; updates are applied lazily, a block of columns at a time, as one
matrix product for everything right of the block.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class QuantizedLinear:
    """A quantized (out, in) weight in the layout of GPTQ checkpoints.

    W_hat[:, j] = (codes[:, j] - zeros[:, g_idx[j]]) * scales[:, g_idx[j]].
    """

    codes: torch.Tensor  # (out, in) integer codes in [0, 2**bits), original column order
    scales: torch.Tensor  # (out, n_groups) float32
    zeros: torch.Tensor  # (out, n_groups) float32 holding whole numbers in [0, 2**bits)
    g_idx: torch.Tensor  # (in,) long: the group of each column
    bits: int
    group_size: int  # as requested; -1 means one group per row
    perm: torch.Tensor | None = None  # act-order: perm[k] is the k-th column quantized


def dequantize(q: QuantizedLinear) -> torch.Tensor:
    """W_hat (out, in) float32 from codes, scales, zeros and g_idx."""
    g = q.g_idx.long()
    return (q.codes.to(torch.float32) - q.zeros.to(torch.float32)[:, g]) * q.scales.to(torch.float32)[:, g]


# ------------------------------------------------------------------------------ helpers
def _check_args(w: torch.Tensor, bits: int, group_size: int) -> int:
    """Validate; return the number of columns per group (the last group may be shorter)."""
    if w.dim() != 2:
        raise ValueError(f"w must be (out, in), got shape {tuple(w.shape)}")
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an int in 2..8, got {bits!r}")
    n = w.shape[1]
    if group_size == -1:
        return n
    if not isinstance(group_size, int) or group_size <= 0:
        raise ValueError(f"group_size must be -1 or a positive int, got {group_size!r}")
    return min(group_size, n)


def _grid(w: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (scale, zero) of the min-max grid covering the columns w (out, k).

    asym: the range [min(w, 0), max(w, 0)] over 2**bits - 1 steps, an integer zero point
    (0.0 is exact). sym: zero = 2**(bits - 1), scale = 2 max|w| / (2**bits - 1) (the GPTQ
    checkpoints' grid). An all-zero row gets scale 1 (any positive value gives exact zeros).
    """
    maxq = 2**bits - 1
    wmax = w.amax(dim=1).clamp(min=0)
    wmin = w.amin(dim=1).clamp(max=0)
    if sym:
        scale = 2 * torch.maximum(wmax, -wmin) / maxq
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = torch.full_like(scale, 2 ** (bits - 1))
    else:
        scale = (wmax - wmin) / maxq
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = torch.round(-wmin / scale)
    return scale, zero


def _round(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    """Codes (as floats) of w on the grid: clamp(round(w / scale) + zero, 0, maxq)."""
    return torch.clamp(torch.round(w / scale) + zero, 0, maxq)


# ------------------------------------------------------------------------------ Task 1
def quantize_rtn(w: torch.Tensor, *, bits: int = 4, group_size: int = 128, sym: bool = False) -> QuantizedLinear:
    """Round-to-nearest baseline: each group's min-max grid, every weight to its nearest code."""
    gs = _check_args(w, bits, group_size)
    out, n = w.shape
    maxq = 2**bits - 1
    n_groups = -(-n // gs)
    # Zero-pad a short last group: every grid's range includes 0 anyway, so nothing changes.
    padded = torch.nn.functional.pad(w.detach().to(torch.float32), (0, n_groups * gs - n))
    groups = padded.reshape(out, n_groups, gs)
    scales, zeros = _grid(groups.transpose(0, 1).reshape(-1, gs), bits, sym)  # (n_groups * out,)
    scales = scales.reshape(n_groups, out).T.contiguous()
    zeros = zeros.reshape(n_groups, out).T.contiguous()
    codes = _round(groups, scales[:, :, None], zeros[:, :, None], maxq).reshape(out, -1)[:, :n]
    g_idx = torch.arange(n, device=w.device) // gs
    return QuantizedLinear(codes.to(torch.uint8), scales, zeros, g_idx, bits, group_size, None)


# ------------------------------------------------------------------------------ Task 2
def hessian(x: torch.Tensor) -> torch.Tensor:
    """H = 2 X^T X / n for calibration inputs x (n, in) (leading dims are flattened).

    float32 (float64 for float64 inputs), symmetric (in, in).
    """
    if x.dim() < 2 or x.numel() == 0:
        raise ValueError(f"x must be (n, in) with n >= 1, got shape {tuple(x.shape)}")
    x = x.reshape(-1, x.shape[-1])
    x = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    return 2 * (x.T @ x) / x.shape[0]


# ------------------------------------------------------------------------------ Tasks 3-6
def gptq_quantize(w: torch.Tensor, h: torch.Tensor, *, bits: int = 4, group_size: int = 128,
                  damp: float = 0.01, block_size: int = 128, act_order: bool = False,
                  sym: bool = False) -> QuantizedLinear:
    """GPTQ on weight w (out, in) with Hessian h (in, in). Inputs are left unchanged."""
    gs = _check_args(w, bits, group_size)
    out, n = w.shape
    if h.shape != (n, n):
        raise ValueError(f"h must be (in, in) = ({n}, {n}), got {tuple(h.shape)}")
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    if damp < 0:
        raise ValueError(f"damp must be >= 0, got {damp}")
    maxq = 2**bits - 1

    W = w.detach().to(torch.float32).clone()
    H = h.detach().to(device=W.device, dtype=torch.float32).clone()

    # Dead columns: an input that is always 0 says nothing about its weight. Give it a unit
    # diagonal (H stays invertible) and a zero weight (it never affects the output).
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0

    perm = None
    if act_order:  # the columns with the largest diag(H) first, while many columns remain to absorb errors
        perm = torch.argsort(torch.diagonal(H), descending=True)
        W = W[:, perm]
        H = H[perm][:, perm]

    # Damping: a fraction of the mean diagonal keeps the Cholesky stable on rank-deficient H.
    H.diagonal().add_(damp * torch.diagonal(H).mean())
    # U upper with U^T U = H^-1; row i of U (from column i on) is the update row of step i,
    # already conditioned on the columns before i being fixed.
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)

    Q = torch.empty_like(W)
    scales = torch.empty(out, -(-n // gs), dtype=torch.float32, device=W.device)
    zeros = torch.empty_like(scales)
    scale = zero = None
    for i1 in range(0, n, block_size):
        i2 = min(i1 + block_size, n)
        W1 = W[:, i1:i2].clone()
        U1 = U[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = i1 + i
            if col % gs == 0:  # a group starts: its grid from its weights as they are now
                group = W1[:, i:i + gs]
                if col + gs > i2:  # it reaches past this block: add the block's pending updates
                    group = torch.cat([group, W[:, i2:col + gs] - Err1 @ U[i1:i2, i2:col + gs]], dim=1)
                scale, zero = _grid(group, bits, sym)
                scales[:, col // gs] = scale
                zeros[:, col // gs] = zero
            wcol = W1[:, i]
            q = _round(wcol, scale, zero, maxq)
            Q[:, col] = q
            err = (wcol - (q - zero) * scale) / U1[i, i]
            W1[:, i + 1:].addr_(err, U1[i, i + 1:], alpha=-1)  # error feedback inside the block
            Err1[:, i] = err
        W[:, i2:].addmm_(Err1, U[i1:i2, i2:], alpha=-1)  # lazy update of every later column

    g_idx = torch.arange(n, device=W.device) // gs
    if perm is not None:  # back to the original column order
        inv = torch.argsort(perm)
        Q = Q[:, inv]
        g_idx = g_idx[inv]
    return QuantizedLinear(Q.to(torch.uint8), scales, zeros, g_idx, bits, group_size, perm)
