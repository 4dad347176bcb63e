"""Planted bugs for kata 15: classic mixture-of-experts mistakes. Each must be caught by a test."""
from harness import Mutant

_ROUTE_BLOCK = """    probs = torch.softmax(router_logits.float(), dim=-1)
    # A stable descending sort keeps equal probabilities in id order: the lower id wins a tie.
    sorted_probs, sorted_ids = torch.sort(probs, dim=-1, descending=True, stable=True)
    weights = sorted_probs[:, :top_k]
"""

MUTANTS: list[Mutant] = [
    # -- Task 1: route
    Mutant("softmax_after_top_k",
           "takes the top-k logits first and softmaxes only those: the weights are always "
           "renormalised, even with renormalize=False",
           _ROUTE_BLOCK,
           """    probs = router_logits.float()
    sorted_probs, sorted_ids = torch.sort(probs, dim=-1, descending=True, stable=True)
    weights = torch.softmax(sorted_probs[:, :top_k], dim=-1)
"""),
    Mutant("no_renormalisation",
           "never renormalises the top-k probabilities (Switch-style), even when asked to",
           "    if renormalize:\n        weights = weights / weights.sum(dim=-1, keepdim=True)\n",
           "    if False:\n        weights = weights / weights.sum(dim=-1, keepdim=True)\n"),
    Mutant("ties_to_higher_id",
           "breaks ties between equal probabilities towards the higher expert id",
           "    sorted_probs, sorted_ids = torch.sort(probs, dim=-1, descending=True, stable=True)\n",
           "    sorted_probs, sorted_ids = torch.sort(probs.flip(-1), dim=-1, descending=True, stable=True)\n"
           "    sorted_ids = probs.shape[-1] - 1 - sorted_ids\n"),
    Mutant("top_k_in_ascending_order",
           "returns the chosen experts least probable first",
           "    weights = sorted_probs[:, :top_k]\n    experts = sorted_ids[:, :top_k]\n",
           "    weights = sorted_probs[:, :top_k].flip(-1)\n    experts = sorted_ids[:, :top_k].flip(-1)\n"),
    # -- Task 2: permute / unpermute
    Mutant("permute_not_stable",
           "sorts the assignments by expert with an unstable sort: token order inside an expert is lost",
           "order = torch.argsort(flat, stable=True)", "order = torch.argsort(flat)"),
    Mutant("permute_rows_slot_major",
           "takes the token of flat index i as i % T (slot-major) instead of i // top_k",
           "x.index_select(0, order // top_k)", "x.index_select(0, order % x.shape[0])"),
    Mutant("unpermute_without_weights",
           "sums the experts' outputs without the routing weights",
           "out = (rows * weights.to(acc).unsqueeze(-1)).sum(dim=1)", "out = rows.sum(dim=1)"),
    Mutant("unpermute_uses_order_not_its_inverse",
           "reads row order[j] for flat index j: order maps sorted row -> flat index, not back",
           "rows = y_sorted.index_select(0, row_of)", "rows = y_sorted.index_select(0, order)"),
    Mutant("unpermute_in_input_dtype",
           "weights and sums the rows in y's dtype (bf16 products rounded) instead of float32",
           "acc = torch.promote_types(y_sorted.dtype, torch.float32)", "acc = y_sorted.dtype"),
    # -- Task 3: capacity
    Mutant("capacity_in_token_major_order",
           "serves the assignments token by token (both slots of token 0 first), not every "
           "first choice before any second choice",
           "    queue = experts.t().reshape(-1)", "    queue = experts.reshape(-1)"),
    Mutant("capacity_off_by_one",
           "lets each expert keep capacity + 1 assignments",
           "keep = position < capacity", "keep = position <= capacity"),
    # -- Task 4: loss
    Mutant("loss_missing_factor_e",
           "forgets the factor E (the balanced loss should be top_k, independent of E)",
           "return num_experts * (fraction * mean_prob).sum()", "return (fraction * mean_prob).sum()"),
    Mutant("loss_top1_only",
           "counts only each token's first choice in f_e",
           "    flat = experts.reshape(-1)\n    assigned =",
           "    flat = experts[:, 0].reshape(-1)\n    assigned ="),
    Mutant("loss_divides_by_assignments",
           "divides the counts by T * top_k (assignments) instead of T (tokens)",
           "fraction = assigned / T", "fraction = assigned / flat.numel()"),
    # -- Task 5: the torch block
    Mutant("gate_up_swapped",
           "puts silu on the up projection instead of the gate",
           "h = F.silu(xs @ w_gate[e].t()) * (xs @ w_up[e].t())",
           "h = F.silu(xs @ w_up[e].t()) * (xs @ w_gate[e].t())"),
    Mutant("last_expert_skipped",
           "loops over the experts but stops one short",
           "for e, n in enumerate(counts.tolist()):", "for e, n in enumerate(counts.tolist()[:-1]):"),
    # -- Task 6: the Triton kernels
    Mutant("triton_gate_up_swapped",
           "the gate/up epilogue applies silu to the up accumulator",
           "h = acc_g / (1.0 + tl.exp(-acc_g)) * acc_u", "h = acc_u / (1.0 + tl.exp(-acc_u)) * acc_g",
           count=2),
    Mutant("triton_rows_offset_by_one",
           "each expert's row tiles start one row late in the grouped kernels' tile table",
           "tl.where(valid, off_e + (offs_u - tstart_e) * BLOCK_M, 0)",
           "tl.where(valid, off_e + 1 + (offs_u - tstart_e) * BLOCK_M, 0)"),
    Mutant("triton_one_tile_per_expert",
           "sizes the tile table with one tile per expert: right only while every expert fits one tile",
           "num_tiles = max(1, min(triton.cdiv(n_rows, block_m) + E, n_rows))", "num_tiles = E"),
    Mutant("triton_no_routing_weight",
           "the down kernel stores the expert outputs without the routing weights",
           "y = acc * w[:, None]", "y = acc"),
    Mutant("triton_ties_to_higher_id",
           "the routing kernel breaks ties towards the higher expert id",
           "tl.argmax(left, axis=1, tie_break_left=True)",
           "(E_PAD - 1 - tl.argmax(tl.flip(left, 1), axis=1, tie_break_left=True))", count=2),
    Mutant("triton_last_k_block_dropped",
           "the K loops stop one block early (a partial last block is skipped)",
           "for k0 in range(0, K, BLOCK_K):", "for k0 in range(0, K - BLOCK_K, BLOCK_K):", count=4),
    Mutant("triton_x_assumed_contiguous",
           "hard-codes x's row stride as d: right only for a contiguous x",
           "x.stride(0), x.stride(1),", "d, 1,"),
    Mutant("triton_no_renormalisation",
           "the routing kernel stores the raw top-k probabilities, not renormalised",
           "w = tl.sum(tl.where(pick, left, 0.0), axis=1) / tl.where(top_sum > 0, top_sum, 1.0)",
           "w = tl.sum(tl.where(pick, left, 0.0), axis=1)"),
    Mutant("triton_eight_experts_max",
           "hard-codes the routing kernel's expert axis to 8: right only for E <= 8",
           "TOP_K=top_k, E_PAD=e_pad,", "TOP_K=top_k, E_PAD=8,"),
]
