"""Kata 11: weight quantization. Read katas/11_quantization/README.md, then fill in the functions.

A weight matrix w (out, in) is stored as small unsigned integer codes plus, for every group of
`group_size` consecutive columns of a row, a float32 scale and zero point:

    W_hat[i, j] = (codes[i, j] - zeros[i, j // group_size]) * scales[i, j // group_size]

Run `pytest katas/11` to see how far you got.

On a machine without a GPU, your Triton kernel (Task 5) runs under the Triton interpreter:
cast every value to float32 right after `tl.load` (the interpreter computes garbage with
bf16/fp16 arithmetic), and cast back only in `tl.store`.
"""
from __future__ import annotations

import torch
import triton  # noqa: F401  (Task 5)
import triton.language as tl  # noqa: F401  (Task 5)


def dequantize(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
               group_size: int) -> torch.Tensor:
    """W_hat = (codes - zeros[group]) * scales[group].

    Args:
        codes: (out, in) integer codes (uint8 from `quantize`).
        scales, zeros: (out, n_groups) float32, n_groups = in // group_size.
        group_size: columns per group, a divisor of in; -1 means one group per row.

    Returns:
        W_hat, float32 (out, in). Column j of row i uses scales[i, j // group_size] and
        zeros[i, j // group_size]. ValueError when group_size does not divide in, or when
        scales / zeros do not have shape (out, n_groups).

    Task 1.
    """
    raise NotImplementedError("Task 1: dequantize, (codes - zeros[group]) * scales[group]")


def quantize(w: torch.Tensor, *, bits: int = 8, group_size: int = -1,
             sym: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest quantization of w (out, in) along `in`, in groups of group_size columns.

    Returns (codes, scales, zeros): codes uint8 (out, in) in [0, 2**bits); scales and zeros
    float32 (out, n_groups), such that dequantize(codes, scales, zeros, group_size) puts every
    element within half a step (half its group's scale) of w.

    sym=True (Task 2): zeros = 2**(bits - 1), scale = max|w| of the group / (2**(bits - 1) - 1),
    so codes lie in [1, 2**bits - 1].
    sym=False (Task 3): the range [min(w.min(), 0), max(w.max(), 0)] of the group spread over
    2**bits - 1 steps, with an integer zero point in [0, 2**bits): 0.0 is exactly on the grid.

    An all-zero group gives no NaN or inf anywhere and dequantizes to exact zeros.
    ValueError for bits outside 2..8 or a group_size that does not divide in.
    w (float32, float16, bfloat16 or float64) is not modified.
    """
    raise NotImplementedError("Task 2: round-to-nearest quantize (sym=True first; sym=False is Task 3)")


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """(out, in) codes in [0, 16) -> (out, in // 2) uint8.

    Byte j of a row holds column 2j in its low nibble and column 2j + 1 in its high nibble.
    ValueError for an odd `in` or a code outside [0, 16).

    Task 4.
    """
    raise NotImplementedError("Task 4: pack two 4-bit codes per byte (column 2j low nibble, 2j + 1 high)")


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of pack_int4: (out, in // 2) uint8 -> (out, in) uint8 codes.

    Task 4.
    """
    raise NotImplementedError("Task 4: unpack the low and high nibbles of every byte")


def w4a16_matmul(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor,
                 zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    """x @ W_hat^T from a Triton kernel that never writes W_hat to memory.

    Args:
        x: (M, K) float16 or bfloat16 activations.
        packed: (N, K // 2) uint8, pack_int4's layout.
        scales, zeros: (N, n_groups) float32, n_groups = K // group_size.
        group_size: a divisor of K, or -1 (one group per row).

    Returns:
        (M, N) in x's dtype, accumulated in float32 (W_hat may be rounded to x's dtype
        before the product, as tensor-core kernels do). ValueError when K != 2 *
        packed.shape[1], group_size does not divide K, or scales / zeros have the wrong shape.

    Task 5.
    """
    raise NotImplementedError("Task 5: a Triton kernel that unpacks, dequantizes and multiplies in registers")
