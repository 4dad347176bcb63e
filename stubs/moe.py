"""Kata 15: a Mixtral-style sparse mixture-of-experts block. Read katas/15_moe/README.md, then
fill in the functions. Run `pytest katas/15` to see how far you got.

T tokens x (T, d) go through E experts, each a SwiGLU MLP
    expert_e(x) = (silu(x @ w_gate[e].T) * (x @ w_up[e].T)) @ w_down[e].T
with w_gate, w_up (E, d_ff, d) and w_down (E, d, d_ff). A router (router_weight (E, d),
router_logits = x @ router_weight.T in x's dtype) picks top_k experts per token; the block's
output is the weighted sum of those experts' outputs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: F401  (F.silu, F.one_hot: you will want them)
import triton  # noqa: F401
import triton.language as tl  # noqa: F401


# ------------------------------------------------------------------------------ Task 1
def route(router_logits: torch.Tensor, top_k: int, *,
          renormalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's top_k experts by router probability.

    router_logits (T, E), any float dtype; the softmax over the E logits is taken in float32.
    Returns (weights, experts), both (T, top_k): weights float32, the chosen experts'
    probabilities (renormalised to sum 1 per token when `renormalize`); experts int64, in
    descending probability, ties going to the lower expert id.

    Raises:
        ValueError: top_k not in 1..E.

    Task 1.
    """
    raise NotImplementedError("Task 1: softmax in float32, top_k experts (ties: lower id first), renormalise")


# ------------------------------------------------------------------------------ Task 2
def permute(x: torch.Tensor, experts: torch.Tensor,
            num_experts: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group the T * top_k (token, slot) assignments by expert.

    x (T, d); experts (T, top_k) long, distinct within a token. Returns:
      x_sorted (T * top_k, d): row i is the token of assignment order[i];
      counts (num_experts,) long: assignments per expert (0 for unused experts);
      order (T * top_k,) long: the flat index t * top_k + slot of each sorted row, grouped by
        expert id ascending, token order kept inside an expert.

    Task 2.
    """
    raise NotImplementedError("Task 2: sort the flat assignments by expert (stable), gather x rows, count")


def unpermute(y_sorted: torch.Tensor, order: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Undo permute, weighting each assignment.

    y_sorted (T * top_k, d) in permute's row order; order as permute returned it; weights
    (T, top_k). Returns (T, d) in y_sorted's dtype:
        out[t] = sum over slots of weights[t, slot] * y_sorted[i]  where order[i] == t * top_k + slot,
    accumulated in float32 (float64 for float64 y).

    Task 2.
    """
    raise NotImplementedError("Task 2: scatter each sorted row back to its (token, slot), weight it, sum the slots")


# ------------------------------------------------------------------------------ Task 3
def capacity_mask(experts: torch.Tensor, num_experts: int, capacity: int) -> torch.Tensor:
    """Which assignments survive when each expert takes at most `capacity` of them.

    experts (T, top_k) long. Returns (T, top_k) bool. Assignments are served in (slot, token)
    order: every token's first choice before any token's second choice (GShard's priority),
    tokens in order within a slot; an expert keeps the first `capacity` it is offered.

    Raises:
        ValueError: capacity < 0.

    Task 3.
    """
    raise NotImplementedError("Task 3: serve the assignments slot by slot, token by token, up to capacity each")


# ------------------------------------------------------------------------------ Task 4
def load_balancing_loss(router_logits: torch.Tensor, experts: torch.Tensor,
                        num_experts: int) -> torch.Tensor:
    """The auxiliary load-balancing loss, a 0-dim float32 tensor:
        E * sum_e f_e * P_e,  f_e = (assignments to e, all slots) / T,
                              P_e = mean over tokens of the softmax probability of e.

    Task 4.
    """
    raise NotImplementedError("Task 4: E * sum_e f_e * P_e")


# ------------------------------------------------------------------------------ Task 5
def moe_forward(x: torch.Tensor, router_weight: torch.Tensor, w_gate: torch.Tensor,
                w_up: torch.Tensor, w_down: torch.Tensor, top_k: int) -> torch.Tensor:
    """The MoE block in torch: (T, d) in x's dtype, no capacity limit, renormalised weights.

    Raises:
        ValueError: shapes that do not fit together, top_k not in 1..E.

    Task 5.
    """
    raise NotImplementedError("Task 5: route, permute, one SwiGLU MLP per expert, unpermute")


# ------------------------------------------------------------------------------ Task 6
def moe_forward_triton(x: torch.Tensor, router_weight: torch.Tensor, w_gate: torch.Tensor,
                       w_up: torch.Tensor, w_down: torch.Tensor, top_k: int) -> torch.Tensor:
    """moe_forward with the expert MLPs as grouped matrix products in Triton: one launch per
    matrix product for all experts (a fixed number of launches, whatever E and T), no host
    synchronisation (Task 7: capturable in a CUDA graph).

    Task 6.
    """
    raise NotImplementedError("Task 6: grouped GEMM kernels over expert-sorted rows (gate+up, then down)")
