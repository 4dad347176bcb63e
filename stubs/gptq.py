"""Kata 12: GPTQ. Read katas/12_gptq/README.md, then fill in the functions. Run
`pytest katas/12` to see how far you got.

A weight W (out, in) is quantized one input column at a time; after each column its rounding
error is spread over the columns not yet quantized, weighted by the inverse Hessian of the
layer-output error, H = 2 X^T X / n over calibration inputs X (n, in).
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
    """W_hat (out, in) float32 from codes, scales, zeros and g_idx. Task 1."""
    raise NotImplementedError("Task 1: dequantize codes with each column's group (g_idx)")


def quantize_rtn(w: torch.Tensor, *, bits: int = 4, group_size: int = 128, sym: bool = False) -> QuantizedLinear:
    """Round-to-nearest baseline: each group's min-max grid, every weight to its nearest code.

    group_size=-1: one group per row; when group_size does not divide in, the last group is
    shorter. ValueError when group_size is neither -1 nor positive, or bits is not in 2..8.
    Task 1.
    """
    raise NotImplementedError("Task 1: round-to-nearest on each group's min-max grid")


def hessian(x: torch.Tensor) -> torch.Tensor:
    """H = 2 X^T X / n for calibration inputs x (n, in): (in, in), float32 (float64 for
    float64 inputs). Task 2."""
    raise NotImplementedError("Task 2: the Hessian 2 X^T X / n of the layer-output error")


def gptq_quantize(w: torch.Tensor, h: torch.Tensor, *, bits: int = 4, group_size: int = 128,
                  damp: float = 0.01, block_size: int = 128, act_order: bool = False,
                  sym: bool = False) -> QuantizedLinear:
    """GPTQ on weight w (out, in) with Hessian h (in, in); w and h are left unchanged.

    Task 3: dead columns, damping, the upper Cholesky factor of H^-1, column-by-column error
    feedback. Task 4: lazy block updates (block_size columns at a time). Task 5: groups whose
    grid is chosen when the group starts. Task 6: act-order (perm; codes and g_idx back in the
    original column order). ValueError as for quantize_rtn, or when h is not (in, in).
    """
    raise NotImplementedError("Task 3: GPTQ, one column at a time with error feedback")
