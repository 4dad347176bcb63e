"""Kata 03: online softmax. Read katas/03_online_softmax/README.md, then fill in the functions.

The idea of the whole kata: softmax needs the max and the sum of exponentials of a row,
and both can be carried along in a small state (m, s) that is updated one chunk at a time
and merged between pieces, in any order. Run `pytest katas/03` to see how far you got.

On a machine without a GPU, your Triton kernel (Task 5) runs under the Triton interpreter:
cast every value to float32 right after `tl.load` (the interpreter computes garbage with
bf16/fp16 arithmetic), and cast back only in `tl.store`.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton  # noqa: F401  (Task 5)
import triton.language as tl  # noqa: F401  (Task 5)


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """exp(x) / sum(exp(x)) along `dim`, computed so that it never overflows.

    Args:
        x: any shape, float32/float64/float16/bfloat16.
        dim: the dimension to normalise over.

    Returns:
        Same shape and dtype as x. Finite inputs of any magnitude (|x| up to 1e30 in fp32)
        give no inf and no NaN; -inf entries get probability 0; a slice that is entirely
        -inf gives all zeros (not NaN). x is left unmodified.

    Task 1.
    """
    raise NotImplementedError("Task 1: a numerically stable softmax")


class SoftmaxState(NamedTuple):
    """The softmax normaliser of everything seen so far, one per row.

    max: (*batch) running max m of the values seen; -inf before anything is seen.
    sum: (*batch) sum over the values seen of exp(x - m); 0 when nothing is seen.
    """

    max: torch.Tensor
    sum: torch.Tensor


def init_state(
    shape: int | tuple[int, ...] | torch.Size,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> SoftmaxState:
    """The empty state of the given batch shape: max = -inf and sum = 0 everywhere.

    Task 2.
    """
    raise NotImplementedError("Task 2: the empty state (max = -inf, sum = 0)")


def update(state: SoftmaxState, chunk: torch.Tensor) -> SoftmaxState:
    """Fold a chunk of new values into the state.

    Args:
        state: fields of shape (*batch).
        chunk: (*batch, n) with n >= 1, reduced over its last dim. Entries may be -inf.

    Returns:
        A new state (in the state's dtype) equal to the state of everything the old state
        saw plus the chunk. Neither argument is modified. A chunk that is all -inf leaves
        the state as it was (an empty state stays empty, with no NaN).

    Task 2.
    """
    raise NotImplementedError("Task 2: fold a chunk into the (max, sum) state")


def merge(a: SoftmaxState, b: SoftmaxState) -> SoftmaxState:
    """The state of the concatenation of what a saw and what b saw.

    a and b have the same shape and dtype. merge is associative and commutative, and the
    empty state (init_state) is its identity: merging two empty states gives the empty
    state, not NaN. Neither argument is modified.

    Task 3.
    """
    raise NotImplementedError("Task 3: merge two states (rescale both sums to the new max)")


def logsumexp(state: SoftmaxState) -> torch.Tensor:
    """log(sum_i exp(x_i)) over everything the state saw, shape (*batch); -inf when empty.

    Task 4.
    """
    raise NotImplementedError("Task 4: log-sum-exp from the state")


def online_softmax(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """Softmax over the last dim of x, streaming blocks of `block_size` columns through `update`.

    Every block (block_size columns wide except possibly the last) goes through `update`,
    then a second pass writes exp(x - m) / s. The result equals
    softmax(x, dim=-1) for every block size (1, one that does not divide the length, one
    larger than the length): same shape and dtype as x.

    Raises:
        ValueError: block_size < 1.

    Task 4.
    """
    raise NotImplementedError("Task 4: softmax by streaming blocks through update()")


def softmax_triton(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim of x, computed by a Triton kernel you write.

    Args:
        x: float32, float16 or bfloat16; at least 1-D, any leading dims (flattened into rows),
            any strides (copy to contiguous if your kernel needs it). Rows of any length,
            also far longer than one block of your kernel (and than 2^20 columns, the most
            Triton allows in one block: loop over the row).

    Returns:
        Same shape and dtype as x, computed in float32 inside the kernel. Finite inputs of
        any magnitude give no NaN; -inf entries get 0. x is left unmodified. Every call
        launches the kernel on its own input (no torch fallback, no result kept from an
        earlier call).

    Task 5.
    """
    raise NotImplementedError("Task 5: a Triton row-softmax kernel and its launcher")
