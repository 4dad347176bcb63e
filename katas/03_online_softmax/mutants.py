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
        "triton_tile_loop_runs_once",
        "each program computes one tile while the grid has fewer programs than tiles (a grid too "
        "small for a kernel without the tile loop): the rows past the first few are never written",
        find="tl.range(tl.program_id(0), n_tiles, tl.num_programs(0), num_stages=NUM_STAGES)",
        replace="tl.range(tl.program_id(0), tl.program_id(0) + 1, 1, num_stages=NUM_STAGES)",
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
    # Shortcuts that look right on small tests (red-team of kata 03).
    Mutant(
        "triton_one_block_per_row",
        "one block per row for every length (BLOCK = next_power_of_2(n_cols), no loop): fine up to "
        "2^20 columns, then Triton refuses the block",
        find="    if n_cols <= _MAX_FUSED_COLS:\n",
        replace="    if True:  # one block per row, whatever its length\n",
    ),
    Mutant(
        "triton_torch_fallback",
        "softmax_triton returns torch.softmax: right values, no Triton kernel",
        find='    """Softmax over the last dim of x (any leading dims) with a Triton kernel; x\'s dtype out."""\n',
        replace='    """Softmax over the last dim of x (any leading dims) with a Triton kernel; x\'s dtype out."""\n'
                "    return torch.softmax(x.float(), dim=-1).to(x.dtype)\n",
    ),
    Mutant(
        "triton_cached_result",
        "softmax_triton keeps its results keyed on (data_ptr, shape, dtype) and returns a kept one "
        "for a tensor it has seen, though its values may have changed",
        find="def softmax_triton(x: torch.Tensor) -> torch.Tensor:\n",
        replace="_KEPT: dict = {}\n\n\n"
                "def softmax_triton(x: torch.Tensor) -> torch.Tensor:\n"
                "    key = (x.data_ptr(), tuple(x.shape), x.dtype)\n"
                "    if key not in _KEPT:\n"
                "        _KEPT[key] = _softmax_triton_uncached(x)\n"
                "    return _KEPT[key]\n\n\n"
                "def _softmax_triton_uncached(x: torch.Tensor) -> torch.Tensor:\n",
    ),
    Mutant(
        "triton_pads_with_zero",
        "the Triton kernel loads the masked tail as 0 instead of -inf: each padding lane adds "
        "exp(0 - m) to the sum, so only power-of-two row lengths come out right",
        find='x = tl.load(x_ptr + rows64 * x_row_stride + cols[None, :], mask=mask, other=-float("inf"))',
        replace="x = tl.load(x_ptr + rows64 * x_row_stride + cols[None, :], mask=mask, other=0.0)",
    ),
    Mutant(
        "triton_no_max_subtraction",
        "the Triton kernel computes exp(x) without subtracting the row max: exp(1e30) = inf, inf / inf = NaN",
        find="e = tl.exp(x - m[:, None])",
        replace="e = tl.exp(x)",
    ),
    Mutant(
        "triton_row_stride_is_n_cols",
        "the launcher passes n_cols as the row stride: a strided view (a slice of a wider tensor) is read wrong",
        find="x2.stride(0)",
        replace="n_cols",
        count=4,
    ),
    Mutant(
        "triton_loop_drops_tail",
        "the long-row loop runs over whole blocks only (range(0, n_cols - BLOCK_N + 1, BLOCK_N)): "
        "the last, partial block of each row is lost",
        find="for start in range(0, n_cols, BLOCK_N):",
        replace="for start in range(0, n_cols - BLOCK_N + 1, BLOCK_N):",
        count=2,
    ),
    Mutant(
        "triton_returns_2d",
        "softmax_triton returns the flattened (rows, n_cols) result instead of x's shape",
        find="    return y.reshape(x.shape)\n",
        replace="    return y\n",
        count=2,
    ),
    Mutant(
        "merge_rescales_only_a",
        "merge rescales a's sum to the new max but adds b's sum as it is, relative to b's own max",
        find="s = a.sum * torch.exp(a.max - safe) + b.sum * torch.exp(b.max - safe)",
        replace="s = a.sum * torch.exp(a.max - safe) + b.sum",
    ),
    Mutant(
        "merge_keeps_a_max",
        "merge keeps a's max as the merged max (b's max ignored): wrong whenever b saw the larger value",
        find="m = torch.maximum(a.max, b.max)",
        replace="m = a.max",
    ),
    Mutant(
        "update_ignores_chunk_max",
        "update keeps the state's max and never raises it to the chunk's: the sum is taken against "
        "a max that is not the max",
        find="m = torch.maximum(state.max, chunk.amax(dim=-1))  # (*batch)",
        replace="m = state.max  # (*batch)",
    ),
    Mutant(
        "online_softmax_skips_streaming",
        "online_softmax calls softmax on the whole row and never streams blocks through update",
        find="    state = init_state(x.shape[:-1], dtype=xf.dtype, device=x.device)\n",
        replace="    return softmax(x)\n",
    ),
]
