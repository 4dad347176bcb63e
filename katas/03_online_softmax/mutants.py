"""Planted bugs for kata 03: classic online-softmax mistakes. Every one must be caught."""
from harness import Mutant

MUTANTS: list[Mutant] = [
    Mutant(
        "softmax_no_max_subtraction",
        "softmax computes exp(x) without subtracting the max: exp(1e30) = inf, inf / inf = NaN",
        find="    e = torch.exp(xf - m)\n",
        replace="    e = torch.exp(xf)\n",
    ),
    Mutant(
        "softmax_all_neg_inf_nan",
        "softmax subtracts a -inf max for an all -inf slice: -inf - -inf = NaN instead of zeros",
        find="m = _finite_or_zero(xf.amax(dim=dim, keepdim=True))",
        replace="m = xf.amax(dim=dim, keepdim=True)",
    ),
    Mutant(
        "init_state_max_zero",
        "init_state starts the running max at 0 instead of -inf (wrong max for negative rows)",
        find="max=torch.full(shape, _NEG_INF, dtype=dtype, device=device)",
        replace="max=torch.zeros(shape, dtype=dtype, device=device)",
    ),
    Mutant(
        "update_no_rescale",
        "update adds the chunk's terms to the old sum without rescaling it to the new max",
        find="s = state.sum * torch.exp(state.max - safe) + ",
        replace="s = state.sum + ",
    ),
    Mutant(
        "merge_no_rescale",
        "merge adds the two sums as they are, each still relative to its own max",
        find="s = a.sum * torch.exp(a.max - safe) + b.sum * torch.exp(b.max - safe)",
        replace="s = a.sum + b.sum",
    ),
    Mutant(
        "merge_sum_of_maxes",
        "merge takes m_a + m_b as the new max instead of max(m_a, m_b)",
        find="m = torch.maximum(a.max, b.max)",
        replace="m = a.max + b.max",
    ),
    Mutant(
        "merge_empty_nan",
        "merge rescales by exp(m_a - m) with m = -inf for two empty states: -inf - -inf = NaN",
        find="safe = _finite_or_zero(m)  # both empty",
        replace="safe = m  # both empty",
    ),
    Mutant(
        "logsumexp_without_max",
        "logsumexp returns log(s) and forgets to add back the max m",
        find="return state.max + torch.log(state.sum)",
        replace="return torch.log(state.sum)",
    ),
    Mutant(
        "online_drops_last_partial_block",
        "online_softmax streams only full blocks: the tail of a row that block_size does not divide is lost",
        find="for start in range(0, n, block_size):",
        replace="for start in range(0, n - block_size + 1, block_size):",
    ),
    Mutant(
        "online_all_neg_inf_nan",
        "online_softmax's second pass subtracts a -inf final max: an all -inf row gives NaN",
        find="m = _finite_or_zero(state.max)[..., None]",
        replace="m = state.max[..., None]",
    ),
    Mutant(
        "triton_first_block_only",
        "the Triton kernel for long rows reads and writes only the first block of each row",
        find="for start in range(0, n_cols, BLOCK_N):",
        replace="for start in range(0, BLOCK_N, BLOCK_N):",
        count=2,
    ),
    Mutant(
        "triton_lane_merge_no_rescale",
        "the long-row kernel sums its per-lane partial sums without rescaling them to the row max",
        find="s_row = tl.sum(s * tl.exp(m - m_row), axis=0)",
        replace="s_row = tl.sum(s, axis=0)",
    ),
    Mutant(
        "triton_mask_off_by_one",
        "the Triton kernel's column mask is cols <= n_cols: it reads one element past each row",
        find="(cols[None, :] < n_cols)",
        replace="(cols[None, :] <= n_cols)",
    ),
    Mutant(
        "triton_single_program",
        "the Triton launch grid is (1,): only the first row is computed",
        find="_softmax_rows_kernel[(n_rows,)]",
        replace="_softmax_rows_kernel[(1,)]",
    ),
    Mutant(
        "triton_no_neg_inf_guard",
        "the long-row kernel rescales by exp(m - m_new) while m_new is still -inf: NaN after an all -inf block",
        find="safe = tl.where(m_new == -float(\"inf\"), 0.0, m_new)",
        replace="safe = m_new",
    ),
    Mutant(
        "update_keeps_chunk_dtype",
        "update does not cast the chunk to the state's dtype: a float64 chunk turns a float32 state into float64",
        find="    chunk = chunk.to(state.max.dtype)\n",
        replace="",
    ),
    Mutant(
        "softmax_half_in_fp16",
        "softmax computes fp16/bf16 inputs in fp16: a finite bf16 value of 1e30 becomes inf, and inf - inf is NaN",
        find="    xf = x.to(_compute_dtype(x.dtype))\n",
        replace="    xf = x.to(torch.float16 if x.dtype in (torch.float16, torch.bfloat16) else _compute_dtype(x.dtype))\n",
    ),
    Mutant(
        "online_half_in_fp16",
        "online_softmax streams fp16/bf16 inputs in fp16: a finite bf16 value of 1e30 becomes inf",
        find="    xf = x.to(_compute_dtype(x.dtype))  # (*batch, n)",
        replace="    xf = x.to(torch.float16 if x.dtype in (torch.float16, torch.bfloat16) else _compute_dtype(x.dtype))",
    ),
    Mutant(
        "softmax_half_all_neg_inf_nan",
        "softmax guards an all -inf slice only for float32/float64 inputs: fp16/bf16 give NaN",
        find="    m = _finite_or_zero(xf.amax(dim=dim, keepdim=True))",
        replace="    m = xf.amax(dim=dim, keepdim=True) if x.dtype != xf.dtype else _finite_or_zero(xf.amax(dim=dim, keepdim=True))",
    ),
    Mutant(
        "online_half_all_neg_inf_nan",
        "online_softmax guards an all -inf row only for float32/float64 inputs: fp16/bf16 give NaN",
        find="    m = _finite_or_zero(state.max)[..., None]",
        replace="    m = (_finite_or_zero(state.max) if x.dtype == xf.dtype else state.max)[..., None]",
    ),
]
