"""Planted bugs for kata 14: classic tensor-parallel mistakes. Each must be caught by a test."""
from harness import Mutant

_RING_START = ("    n = dist.get_world_size(group)\n"
               "    if n == 1 or tensor.numel() == 0:\n"
               "        return None\n")

MUTANTS: list[Mutant] = [
    Mutant("ring_uses_all_reduce",
           "ring_all_reduce calls dist.all_reduce instead of building the ring from send/recv",
           _RING_START, _RING_START.replace("    n = dist", "    dist.all_reduce(tensor, group=group)\n"
                                            "    return None\n    n = dist")),
    Mutant("ring_through_rank_zero",
           "everyone sends its whole tensor to rank 0, which sends the sum back: right values, "
           "but rank 0 sends (n-1)x the tensor instead of 2(n-1)/n of it",
           _RING_START, _RING_START + (
               "    if dist.get_rank(group) == 0:\n"
               "        got = torch.empty_like(tensor)\n"
               "        for src in range(1, n):\n"
               "            dist.recv(got, group=group, group_src=src)\n"
               "            tensor.add_(got)\n"
               "        for dst in range(1, n):\n"
               "            dist.send(tensor, group=group, group_dst=dst)\n"
               "    else:\n"
               "        dist.send(tensor, group=group, group_dst=0)\n"
               "        dist.recv(tensor, group=group, group_src=0)\n"
               "    return None\n")),
    Mutant("reduce_scatter_recv_chunk_off_by_one",
           "the reduce-scatter adds the received chunk into the chunk it just sent, (r - s) "
           "instead of (r - s - 1)",
           "recvs = _pieces(*_chunk(numel, n, (rank - step - 1) % n), piece)",
           "recvs = _pieces(*_chunk(numel, n, (rank - step) % n), piece)"),
    Mutant("all_gather_skipped",
           "stops after the reduce-scatter: each rank holds the full sum of one chunk only",
           "    for step in range(n - 1):\n        start, length = _chunk(numel, n, (rank + 1 - step) % n)",
           "    for step in range(0):\n        start, length = _chunk(numel, n, (rank + 1 - step) % n)"),
    Mutant("remainder_dropped",
           "splits into n chunks of numel // n: the last numel % n elements are never reduced",
           "    return i * q + min(i, r), q + (1 if i < r else 0)",
           "    return i * q, q"),
    Mutant("small_tensor_skipped",
           "returns early when the tensor has fewer elements than ranks (no chunk for everyone)",
           "    if n == 1 or tensor.numel() == 0:", "    if n == 1 or tensor.numel() < n:"),
    Mutant("ring_direction_mismatch",
           "sends to rank - 1 and receives from rank + 1 but keeps the chunk schedule of the "
           "other direction (fine for 2 ranks, wrong chunks from 3 on)",
           "right, left = (rank + 1) % n, (rank - 1) % n", "right, left = (rank - 1) % n, (rank + 1) % n"),
    Mutant("group_rank_used_as_global_rank",
           "passes the neighbour's rank in the group as dist's global `peer`: right in the "
           "default group, wrong in any other",
           "group_peer=right", "peer=right"),
    Mutant("column_rows_interleaved",
           "ColumnParallelLinear takes every n-th row of W (rank, rank + n, ...) instead of one "
           "contiguous block",
           "self.weight.copy_(weight[rows])",
           "self.weight.copy_(weight[self.rank::self.world_size])"),
    Mutant("gather_output_ignored",
           "ColumnParallelLinear returns the local slice even when gather_output=True",
           "if not self.gather_output or self.world_size == 1:", "if True:"),
    Mutant("row_bias_on_every_rank",
           "RowParallelLinear adds the bias on every rank before the all-reduce: n * b",
           "        y = F.linear(x, self.weight)  # this rank's partial sum, no bias yet\n"
           "        if self.world_size > 1:\n"
           "            dist.all_reduce(y, group=self.group)\n"
           "        if self.bias is not None:\n"
           "            y = y + self.bias  # once, after the reduction\n",
           "        y = F.linear(x, self.weight, self.bias)\n"
           "        if self.world_size > 1:\n"
           "            dist.all_reduce(y, group=self.group)\n"),
    Mutant("mlp_gathers_then_reduces",
           "ParallelMLP gathers the hidden activation and slices it again for the down projection: "
           "right values, but an all-gather on top of the all-reduce",
           "gather_output=False, group=group)\n        self.down = RowParallelLinear(d_ff, d_model, "
           "bias=False, input_is_parallel=True, group=group)",
           "gather_output=True, group=group)\n        self.down = RowParallelLinear(d_ff, d_model, "
           "bias=False, input_is_parallel=False, group=group)"),
    Mutant("piece_added_at_chunk_start",
           "a chunk sent in several pieces (large tensors) adds every received piece at the "
           "chunk's start instead of the piece's own offset: right whenever a chunk is one piece",
           "got, dst = bufs[k % 2, :length], flat[start:start + length]",
           "got, dst = bufs[k % 2, :length], flat[recvs[0][0]:recvs[0][0] + length]"),
]
