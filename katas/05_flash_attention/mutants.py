"""Planted bugs for kata 05: each is a classic FlashAttention mistake the tests must catch.
Where `expect` is set, the failing output must contain that phrase of a diagnostic hint: the
first check to fail (the self-test runs with -x) must be the probe that names the bug."""
from harness import Mutant

MUTANTS: list[Mutant] = [
    Mutant("causal_top_left", "aligns the causal mask top-left (j <= i), like torch's is_causal",
           find="    diag = Sk - Sq  # query i sees keys j <= i + diag",
           replace="    diag = 0", expect="aligned top-left"),
    Mutant("causal_strict", "masks the diagonal key too (j < i + Sk - Sq)",
           find="(cols[None, :] <= offs_m[:, None] + diag)",
           replace="(cols[None, :] < offs_m[:, None] + diag)", expect="with <=, not <"),
    Mutant("diagonal_tile_unmasked", "runs the diagonal tiles through the unmasked loop",
           find="full_hi = tl.minimum(tl.maximum(start_m + diag + 1, 0), Sk)",
           replace="full_hi = tl.minimum(tl.maximum(start_m + BLOCK_M + diag, 0), Sk)",
           expect="past the bottom-right diagonal"),
    Mutant("causal_loop_stops_early", "ends the causal loop at start_m + BLOCK_M, forgetting Sk - Sq",
           find="hi = tl.minimum(tl.maximum(start_m + BLOCK_M + diag, 0), Sk)",
           replace="hi = tl.minimum(start_m + BLOCK_M, Sk)", expect="stops too early"),
    Mutant("missing_scale", "forgets the 1/sqrt(D) scale of the scores",
           find="qk_scale = (D**-0.5 if scale is None else scale) * LOG2E",
           replace="qk_scale = LOG2E", expect="softmax scale"),
    Mutant("gqa_modulo", "maps query head h to kv head h % Hkv",
           find="kv_h = (h // group).to(tl.int64)",
           replace="kv_h = (h % (Hq // group)).to(tl.int64)", expect="h // (Hq // Hkv)"),
    Mutant("no_acc_rescale", "does not rescale the accumulator when the running max grows",
           find="        acc = acc * alpha[:, None]\n", replace="", expect="rescale acc"),
    Mutant("no_sum_rescale", "does not rescale the running sum l when the running max grows",
           find="l_i = l_i * alpha + tl.sum(p, 1)", replace="l_i = l_i + tl.sum(p, 1)",
           expect="running sum l"),
    Mutant("lse_without_max", "returns log(l) as the LSE, forgetting to add the running max",
           find="(m_i + tl.log2(tl.where(seen, l_i, 1.0)))",
           replace="(tl.log2(tl.where(seen, l_i, 1.0)))", expect="add the running max"),
    Mutant("lse_base_2", "returns the LSE in base 2 (no conversion to natural log)",
           find=") * 0.6931471805599453,", replace="),", expect="base 2"),
    Mutant("last_key_tile_skipped", "loops over Sk // BLOCK_N key tiles, skipping the partial one",
           find="        full_hi = Sk // BLOCK_N * BLOCK_N\n        hi = Sk\n",
           replace="        full_hi = Sk // BLOCK_N * BLOCK_N\n        hi = full_hi\n",
           expect="partial tile"),
    Mutant("padded_keys_unmasked", "does not mask the keys past Sk in the last, partial tile",
           find="            keep = in_seq[None, :]\n",
           replace="            keep = cols[None, :] >= 0\n", expect="partial tile"),
    Mutant("nan_when_row_sees_nothing", "subtracts m = -inf for rows that have seen no key yet",
           find="m_safe = tl.where(m_new == float(\"-inf\"), 0.0, m_new)",
           replace="m_safe = m_new", expect="see no key"),
    Mutant("zero_div_when_row_sees_nothing", "divides by l = 0 for a query that sees no key",
           find="out = acc / tl.where(seen, l_i, 1.0)[:, None]",
           replace="out = acc / l_i[:, None]", expect="see no key"),
    Mutant("no_float32_cast", "computes with bf16/fp16 values under the Triton interpreter",
           find="if TO_F32:", replace="if False:", count=2,
           expect="cast to float32 right after every tl.load"),
    # Strides: each passes with contiguous inputs and fails on views (transposed, padded, strided).
    Mutant("contiguous_strides", "computes every offset as if q, k, v were contiguous (Sq * D, D)",
           find="""        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),""",
           replace="""        Hq * Sq * D, Sq * D, D,
        Hkv * Sk * D, Sk * D, D,
        Hkv * Sk * D, Sk * D, D,""", expect="look at the strides"),
    Mutant("last_dim_stride_ignored", "assumes stride(-1) == 1 (no .contiguous() for a strided last dim)",
           find="    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))\n",
           replace="", expect="look at the strides"),
    Mutant("out_uses_q_strides", "stores out with q's strides",
           find="out.stride(0), out.stride(1), out.stride(2),",
           replace="q.stride(0), q.stride(1), q.stride(2),",
           expect="look at the strides"),  # q transposed comes first: in bounds
    Mutant("k_row_stride_from_q", "walks the keys with q's row stride",
           find="k.stride(0), k.stride(1), k.stride(2),",
           replace="k.stride(0), k.stride(1), q.stride(2),", expect="look at the strides"),
    Mutant("v_uses_k_strides", "reads v with k's strides",
           find="v.stride(0), v.stride(1), v.stride(2),",
           replace="k.stride(0), k.stride(1), k.stride(2),", expect="look at the strides"),
    Mutant("kv_offset_from_flat_index", "offsets k/v by (b * Hq + h) // group * stride_kh, ignoring stride_kb",
           find="k_base = K + b * stride_kb + kv_h * stride_kh\n    v_base = V + b * stride_vb + kv_h * stride_vh",
           replace="k_base = K + (pid_bh // group) * stride_kh\n    v_base = V + (pid_bh // group) * stride_vh",
           expect="look at the strides"),
    # Causal bounds and rows that see nothing.
    Mutant("causal_hi_off_by_one", "ends the causal key loop at start_m + BLOCK_M - 1 + Sk - Sq (exclusive)",
           find="hi = tl.minimum(tl.maximum(start_m + BLOCK_M + diag, 0), Sk)",
           replace="hi = tl.minimum(tl.maximum(start_m + BLOCK_M - 1 + diag, 0), Sk)",
           expect="stops too early"),
    Mutant("alpha_nan_before_first_key", "rescales by exp2(m - m_new) unguarded: NaN while a row has seen nothing",
           find="alpha = tl.exp2(m_i - m_safe)", replace="alpha = tl.exp2(m_i - m_new)",
           expect="see no key"),
    # Numerics, scale, dtypes, defaults.
    Mutant("running_max_starts_at_zero", "starts the running max at 0: exp underflows when every score is far below 0",
           find='m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)',
           replace="m_i = tl.zeros([BLOCK_M], tl.float32)", expect="Start the running max m at -inf"),
    Mutant("scale_zero_means_default", "writes `scale or D ** -0.5`: an explicit scale=0 becomes the default",
           find="(D**-0.5 if scale is None else scale)", replace="(scale or D**-0.5)",
           expect="even 0 or negative"),
    Mutant("mask_before_scale", "masks the raw scores with -inf, then scales: NaN for scale <= 0",
           find="""        s = tl.dot(q, tl.trans(k)) * qk_scale  # (BLOCK_M, BLOCK_N) scores, base-2 units, fp32
        if MASKED:
            keep = in_seq[None, :]
            if CAUSAL:  # bottom-right: query i sees key j iff j <= i + (Sk - Sq)
                keep = keep & (cols[None, :] <= offs_m[:, None] + diag)
            s = tl.where(keep, s, float("-inf"))
""", replace="""        s = tl.dot(q, tl.trans(k))
        if MASKED:
            keep = in_seq[None, :]
            if CAUSAL:
                keep = keep & (cols[None, :] <= offs_m[:, None] + diag)
            s = tl.where(keep, s, float("-inf"))
        s = s * qk_scale
"""),
    Mutant("scale_q_in_place", "multiplies the caller's q by an explicit scale in place",
           find="    qk_scale = (D**-0.5 if scale is None else scale) * LOG2E",
           replace="    if scale is not None:\n        q.mul_(scale)\n"
                   "    qk_scale = (D**-0.5 if scale is None else 1.0) * LOG2E",
           expect="modified its input"),
    Mutant("default_scale_one", "defaults scale to 1.0 instead of None (= D ** -0.5)",
           find="    scale: float | None = None,\n) -> tuple",
           replace="    scale: float | None = 1.0,\n) -> tuple", expect="check the signature's defaults"),
    Mutant("out_rounded_to_fp16", "stores out as float16 whatever q's dtype: bf16 values past 65504 become inf",
           find="out.to(Out.dtype.element_ty)", replace="out.to(tl.float16)",
           expect="converted to float16"),
    # Validation.
    Mutant("no_head_dim_128", "rejects D = 128, a head dim of the contract",
           find="HEAD_DIMS = (16, 32, 64, 128)", replace="HEAD_DIMS = (16, 32, 64)",
           expect="one of the contract's head dims"),
    Mutant("batch_not_checked", "does not check q's batch size against k/v's",
           find=" or k.shape[0] != B", replace="", expect="batch size"),
    Mutant("v_shape_not_checked", "checks k's shape against q but not v's",
           find="if k.shape != v.shape or ", replace="if ", expect="against both k and v"),
    # Shortcuts (red team): a torch fallback, a single tile, one length, skipped loops.
    Mutant("torch_fallback", "computes attention with torch ops instead of a Triton kernel",
           find="    fast = _hopper_path(q, k, v, qk_scale)\n",
           replace="""    kr = k.repeat_interleave(Hq // Hkv, dim=1).float()
    vr = v.repeat_interleave(Hq // Hkv, dim=1).float()
    sc = (q.float() @ kr.transpose(-1, -2)) * (D**-0.5 if scale is None else scale)
    if causal:
        seen_by = torch.ones(Sq, Sk, dtype=torch.bool, device=q.device).tril(Sk - Sq)
        sc = sc.masked_fill(~seen_by, float("-inf"))
    lse = torch.logsumexp(sc, dim=-1)
    return (torch.exp(sc - lse[..., None]).nan_to_num(0.0) @ vr).to(q.dtype), lse
    fast = _hopper_path(q, k, v, qk_scale)
""", expect="launched no Triton kernel"),
    Mutant("only_first_key_tile", "visits only the first key tile (a single tile assumed)",
           find="        full_hi = Sk // BLOCK_N * BLOCK_N\n        hi = Sk\n",
           replace="        full_hi = 0\n        hi = tl.minimum(Sk, BLOCK_N)\n",
           expect="the loop over key tiles stops"),
    Mutant("keys_bounded_by_sq", "passes Sq as the key length too (assumes Sq == Sk)",
           find="Hq, Hq // Hkv, Sq, Sk, qk_scale,", replace="Hq, Hq // Hkv, Sq, Sq, qk_scale,",
           expect="bounded by the number of queries"),  # with -x it stops before Sq > Sk reads past k
    Mutant("unmasked_loop_skipped", "never runs the unmasked loop over the whole key tiles",
           find="offs_m, offs_d, 0, full_hi, Sk, diag, qk_scale,",
           replace="offs_m, offs_d, full_hi, full_hi, Sk, diag, qk_scale,",
           expect="some key tiles are skipped"),
    Mutant("only_first_query_tile", "computes only the first query tile (Sq <= BLOCK_M assumed)",
           find="    start_m = pid_m * BLOCK_M\n", replace="    start_m = pid_m * 0\n",
           expect="never computed"),
    Mutant("kv_ignores_batch", "leaves the batch offset out of k and v (B = 1 assumed)",
           find="k_base = K + b * stride_kb + kv_h * stride_kh\n    v_base = V + b * stride_vb + kv_h * stride_vh",
           replace="k_base = K + kv_h * stride_kh\n    v_base = V + kv_h * stride_vh",
           expect="a batch offset left out"),
    Mutant("lse_zero_when_row_sees_nothing", "writes lse = 0 (not -inf) for a query that sees no key",
           find='                   float("-inf"))  # back to natural log',
           replace="                   0.0)  # back to natural log", expect="see no key"),
]
