"""Kata 14 reference: tensor parallelism from point-to-point messages up.

- `ring_all_reduce`: the bandwidth-optimal all-reduce of n ranks as a ring: n - 1
  reduce-scatter steps (each rank ends up owning the full sum of one chunk of 1/n of the
  tensor), then n - 1 all-gather steps (each owned chunk travels once around the ring).
  Every rank sends 2(n - 1)/n of the tensor's bytes, whatever n is.
- `ColumnParallelLinear`, `RowParallelLinear`: nn.Linear split across ranks (Megatron-LM):
  the column layer splits the output features, the row layer the input features.
- `ParallelMLP`: column then row, so that the activation between them stays sharded and a
  forward needs a single all-reduce.

Speed on NCCL (GPUs): each reduce-scatter step is cut into a few pieces, sent with one
`batch_isend_irecv` per piece; the add of piece k is queued right after the transfer of
piece k + 1 was issued, so the add overlaps the transfer. Received pieces land in two
preallocated buffers (no allocation per step); the adds are in place.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

# A reduce-scatter step is sent in at most MAX_PIECES pieces of at least MIN_PIECE_BYTES:
# enough pieces to hide the adds behind the transfers, few enough that the per-piece launch
# cost stays small next to a piece's transfer time.
MAX_PIECES = 8
MIN_PIECE_BYTES = 4 << 20


def _chunk(numel: int, n: int, i: int) -> tuple[int, int]:
    """(start, length) of chunk i when numel elements are split into n contiguous chunks
    whose lengths differ by at most one (the first numel % n chunks are one longer)."""
    q, r = divmod(numel, n)
    return i * q + min(i, r), q + (1 if i < r else 0)


def _pieces(start: int, length: int, piece: int) -> list[tuple[int, int]]:
    return [(s, min(piece, start + length - s)) for s in range(start, start + length, piece)]


def ring_all_reduce(tensor: torch.Tensor, group: dist.ProcessGroup | None = None) -> None:
    """Sum `tensor` over the ranks of `group` in place, with point-to-point messages only."""
    n = dist.get_world_size(group)
    if n == 1 or tensor.numel() == 0:
        return None
    rank = dist.get_rank(group)
    right, left = (rank + 1) % n, (rank - 1) % n
    flat = tensor.view(-1) if tensor.is_contiguous() else tensor.contiguous().view(-1)
    numel = flat.numel()
    chunk_len = _chunk(numel, n, 0)[1]  # the longest chunk
    piece = max(-(-chunk_len // MAX_PIECES), MIN_PIECE_BYTES // flat.element_size(), 1)
    bufs = torch.empty(2, min(piece, chunk_len), dtype=flat.dtype, device=flat.device)

    def exchange(send: tuple[int, int] | None, recv_into: torch.Tensor | None) -> list:
        ops = []
        if send is not None:
            ops.append(dist.P2POp(dist.isend, flat[send[0]:send[0] + send[1]], group=group,
                                  group_peer=right))
        if recv_into is not None:
            ops.append(dist.P2POp(dist.irecv, recv_into, group=group, group_peer=left))
        return dist.batch_isend_irecv(ops) if ops else []

    # Reduce-scatter: at step s rank r sends chunk (r - s) and adds the received chunk (r - s - 1)
    # into its own copy. After n - 1 steps rank r holds the full sum of chunk (r + 1) % n.
    for step in range(n - 1):
        sends = _pieces(*_chunk(numel, n, (rank - step) % n), piece)
        recvs = _pieces(*_chunk(numel, n, (rank - step - 1) % n), piece)
        pending = None  # (works, received piece, where it adds in)
        for k in range(max(len(sends), len(recvs))):
            got = dst = None
            if k < len(recvs):
                start, length = recvs[k]
                got, dst = bufs[k % 2, :length], flat[start:start + length]
            works = exchange(sends[k] if k < len(sends) else None, got)
            if pending is not None:  # add the previous piece while this one is in flight
                for work in pending[0]:
                    work.wait()
                pending[2].add_(pending[1])
            pending = (works, got, dst) if got is not None else None
            if got is None:
                for work in works:
                    work.wait()
        if pending is not None:
            for work in pending[0]:
                work.wait()
            pending[2].add_(pending[1])

    # All-gather: at step s rank r sends its finished chunk (r + 1 - s) and receives the
    # finished chunk (r - s) straight into place.
    for step in range(n - 1):
        start, length = _chunk(numel, n, (rank + 1 - step) % n)
        rstart, rlength = _chunk(numel, n, (rank - step) % n)
        works = exchange((start, length) if length else None,
                         flat[rstart:rstart + rlength] if rlength else None)
        for work in works:
            work.wait()

    if flat.data_ptr() != tensor.data_ptr():  # a non-contiguous input was reduced in a copy
        tensor.copy_(flat.view(tensor.shape))
    return None


def _world(group: dist.ProcessGroup | None) -> tuple[int, int]:
    return dist.get_world_size(group), dist.get_rank(group)


class ColumnParallelLinear(nn.Module):
    """y = x @ W.T + b with W (out_features, in_features) split by rows (output features):
    this rank holds rows [rank * out/n, (rank + 1) * out/n) of W and the same slice of b.

    forward(x (..., in_features)) -> (..., out_features / n), this rank's slice of y; with
    gather_output=True the slices of all ranks are gathered: (..., out_features) on every rank.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 gather_output: bool = False, group: dist.ProcessGroup | None = None) -> None:
        super().__init__()
        self.world_size, self.rank = _world(group)
        if out_features % self.world_size:
            raise ValueError(f"out_features={out_features} is not divisible by the world size "
                             f"{self.world_size}")
        self.in_features, self.out_features = in_features, out_features
        self.out_per_rank = out_features // self.world_size
        self.gather_output, self.group = gather_output, group
        self.weight = nn.Parameter(torch.empty(self.out_per_rank, in_features))
        self.bias = nn.Parameter(torch.zeros(self.out_per_rank)) if bias else None
        bound = in_features ** -0.5  # nn.Linear's default range
        nn.init.uniform_(self.weight, -bound, bound)

    @torch.no_grad()
    def load_full_weight(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """Copy this rank's rows of the unsharded weight (out_features, in_features) and bias."""
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise ValueError(f"weight must be ({self.out_features}, {self.in_features}), "
                             f"got {tuple(weight.shape)}")
        rows = slice(self.rank * self.out_per_rank, (self.rank + 1) * self.out_per_rank)
        self.weight.copy_(weight[rows])
        if bias is not None:
            if self.bias is None:
                raise ValueError("this layer was built with bias=False")
            if tuple(bias.shape) != (self.out_features,):
                raise ValueError(f"bias must be ({self.out_features},), got {tuple(bias.shape)}")
            self.bias.copy_(bias[rows])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if not self.gather_output or self.world_size == 1:
            return y
        y = y.contiguous()
        parts = [torch.empty_like(y) for _ in range(self.world_size)]
        dist.all_gather(parts, y, group=self.group)
        return torch.cat(parts, dim=-1)


class RowParallelLinear(nn.Module):
    """y = x @ W.T + b with W (out_features, in_features) split by columns (input features):
    this rank holds columns [rank * in/n, (rank + 1) * in/n) of W and the full bias.

    forward(x) -> (..., out_features), the same on every rank: each rank's partial product
    x_r @ W_r.T is summed by one all-reduce, then b is added once. x is this rank's slice
    (..., in_features / n) when input_is_parallel, else the full (..., in_features).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 input_is_parallel: bool = True, group: dist.ProcessGroup | None = None) -> None:
        super().__init__()
        self.world_size, self.rank = _world(group)
        if in_features % self.world_size:
            raise ValueError(f"in_features={in_features} is not divisible by the world size "
                             f"{self.world_size}")
        self.in_features, self.out_features = in_features, out_features
        self.in_per_rank = in_features // self.world_size
        self.input_is_parallel, self.group = input_is_parallel, group
        self.weight = nn.Parameter(torch.empty(out_features, self.in_per_rank))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        bound = in_features ** -0.5
        nn.init.uniform_(self.weight, -bound, bound)

    @torch.no_grad()
    def load_full_weight(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """Copy this rank's columns of the unsharded weight (out_features, in_features) and
        the whole bias."""
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise ValueError(f"weight must be ({self.out_features}, {self.in_features}), "
                             f"got {tuple(weight.shape)}")
        cols = slice(self.rank * self.in_per_rank, (self.rank + 1) * self.in_per_rank)
        self.weight.copy_(weight[:, cols])
        if bias is not None:
            if self.bias is None:
                raise ValueError("this layer was built with bias=False")
            if tuple(bias.shape) != (self.out_features,):
                raise ValueError(f"bias must be ({self.out_features},), got {tuple(bias.shape)}")
            self.bias.copy_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.input_is_parallel:
            x = x[..., self.rank * self.in_per_rank:(self.rank + 1) * self.in_per_rank]
        y = F.linear(x, self.weight)  # this rank's partial sum, no bias yet
        if self.world_size > 1:
            dist.all_reduce(y, group=self.group)
        if self.bias is not None:
            y = y + self.bias  # once, after the reduction
        return y


class ParallelMLP(nn.Module):
    """gelu(x @ w_up.T) @ w_down.T split Megatron-style: w_up by columns, w_down by rows.

    Each rank computes d_ff / n of the hidden features from the full x, applies gelu to its
    own slice (elementwise: no communication) and multiplies by its rows of w_down; one
    all-reduce sums the partial outputs. forward(x (..., d_model)) -> (..., d_model) on every rank.
    """

    def __init__(self, d_model: int, d_ff: int, group: dist.ProcessGroup | None = None) -> None:
        super().__init__()
        self.up = ColumnParallelLinear(d_model, d_ff, bias=False, gather_output=False, group=group)
        self.down = RowParallelLinear(d_ff, d_model, bias=False, input_is_parallel=True, group=group)

    def load_full_weights(self, w_up: torch.Tensor, w_down: torch.Tensor) -> None:
        """w_up (d_ff, d_model), w_down (d_model, d_ff): nn.Linear layout, unsharded."""
        self.up.load_full_weight(w_up)
        self.down.load_full_weight(w_down)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))
