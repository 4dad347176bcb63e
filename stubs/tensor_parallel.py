"""Kata 14: tensor parallelism. Read katas/14_tensor_parallel/README.md, then fill in the
functions and classes. Run `pytest katas/14` to see how far you got.

Everything here runs inside an initialised torch.distributed process group (gloo on CPU,
NCCL on GPUs); `group=None` means the default group. The tests start the processes for you.
Weights use nn.Linear's (out_features, in_features) layout throughout.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F  # noqa: F401 - you will want F.linear and F.gelu


def ring_all_reduce(tensor: torch.Tensor, group: dist.ProcessGroup | None = None) -> None:
    """Sum `tensor` over the ranks of `group`, in place, using only point-to-point messages
    (dist.send / recv / isend / irecv, or dist.batch_isend_irecv of dist.P2POp's): a
    reduce-scatter, then an all-gather, around a ring (rank r sends to r + 1, receives from
    r - 1). Any shape and numel (also 0, 1, fewer elements than ranks, numel not divisible
    by the world size); each rank sends about 2(n - 1)/n of the tensor's bytes.
    No torch.distributed collective (all_reduce, reduce_scatter, all_gather, ...) may be used.

    Task 1.
    """
    raise NotImplementedError("Task 1: ring all-reduce: reduce-scatter, then all-gather, with send/recv")


class ColumnParallelLinear(nn.Module):
    """nn.Linear(in_features, out_features) split by output features: this rank holds rows
    [rank * out/n, (rank + 1) * out/n) of the full weight as `self.weight`
    (out_features / n, in_features) and the same slice of the bias as `self.bias`
    (out_features / n,), or `self.bias = None` when bias=False.

    forward(x (..., in_features)) -> this rank's slice (..., out_features / n) of
    x @ W.T + b; with gather_output=True the full (..., out_features) on every rank.
    ValueError when out_features is not divisible by the world size.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 gather_output: bool = False, group: dist.ProcessGroup | None = None) -> None:
        """Task 2."""
        raise NotImplementedError("Task 2: ColumnParallelLinear: hold this rank's rows of W and b")

    def load_full_weight(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """Copy this rank's shard out of the unsharded weight (out_features, in_features) and
        bias (out_features,) into self.weight / self.bias. ValueError for a wrong shape. Task 2."""
        raise NotImplementedError("Task 2: ColumnParallelLinear.load_full_weight: take this rank's rows")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Task 2."""
        raise NotImplementedError("Task 2: ColumnParallelLinear.forward (gather_output: all-gather the slices)")


class RowParallelLinear(nn.Module):
    """nn.Linear(in_features, out_features) split by input features: this rank holds columns
    [rank * in/n, (rank + 1) * in/n) of the full weight as `self.weight`
    (out_features, in_features / n), and the full bias (out_features,) as `self.bias`
    (None when bias=False).

    forward(x) -> (..., out_features), the full x @ W.T + b on every rank: x is this rank's
    slice (..., in_features / n) when input_is_parallel, else the full (..., in_features).
    The partial products are summed by one all-reduce; the bias is added once, after it.
    ValueError when in_features is not divisible by the world size.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 input_is_parallel: bool = True, group: dist.ProcessGroup | None = None) -> None:
        """Task 3."""
        raise NotImplementedError("Task 3: RowParallelLinear: hold this rank's columns of W and the full b")

    def load_full_weight(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """Copy this rank's columns of the unsharded weight (out_features, in_features) and the
        whole bias (out_features,). ValueError for a wrong shape. Task 3."""
        raise NotImplementedError("Task 3: RowParallelLinear.load_full_weight: take this rank's columns")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Task 3."""
        raise NotImplementedError("Task 3: RowParallelLinear.forward: partial product, all-reduce, bias once")


class ParallelMLP(nn.Module):
    """forward(x) = gelu(x @ w_up.T) @ w_down.T (exact, erf gelu; no biases), with w_up split
    by columns (ColumnParallelLinear) and w_down by rows (RowParallelLinear): one all-reduce
    per forward. x (..., d_model) is the same on every rank; so is the (..., d_model) result.
    ValueError when d_ff is not divisible by the world size.
    """

    def __init__(self, d_model: int, d_ff: int, group: dist.ProcessGroup | None = None) -> None:
        """Task 4."""
        raise NotImplementedError("Task 4: ParallelMLP: a column-parallel up, a row-parallel down")

    def load_full_weights(self, w_up: torch.Tensor, w_down: torch.Tensor) -> None:
        """w_up (d_ff, d_model), w_down (d_model, d_ff): nn.Linear layout, unsharded. Task 4."""
        raise NotImplementedError("Task 4: ParallelMLP.load_full_weights: shard both weights")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Task 4."""
        raise NotImplementedError("Task 4: ParallelMLP.forward: down(gelu(up(x))), one all-reduce")
