"""Planted bugs for kata 08: classic paged-attention mistakes. Each must be caught by a test."""
from harness import Mutant

MUTANTS: list[Mutant] = [
    # -- Task 1: write_kv
    Mutant("write_kv_writes_padding",
           "writes the -1 (padding) slots too: as an index -1 is the last slot of the cache",
           "keep = slot_mapping >= 0", "keep = slot_mapping >= -1"),
    Mutant("write_kv_block_offset_swapped",
           "splits a slot into (offset, block) instead of (block, offset)",
           "blocks, offsets = slots // block_size, slots % block_size",
           "blocks, offsets = slots % k_cache.shape[0], slots // k_cache.shape[0]"),
    # -- Task 2: paged_attention in torch
    Mutant("torch_length_off_by_one",
           "attends to seq_len + 1 tokens (the one about to be written, or a stale slot)",
           "reshape(n_blocks * block_size, Hkv, D)[:n]", "reshape(n_blocks * block_size, Hkv, D)[:n + 1]"),
    Mutant("torch_floor_blocks",
           "counts a sequence's blocks as len // block_size: the partly filled last block is lost",
           "n_blocks = _cdiv(n, block_size)", "n_blocks = n // block_size"),
    Mutant("torch_reads_whole_table",
           "gathers every entry of the table row, also those past the sequence's blocks",
           "blocks = block_tables[b, :n_blocks].long()",
           "blocks = block_tables[b].long(); n_blocks = blocks.numel()"),
    Mutant("torch_gqa_head_mod",
           "query head h reads kv head h % Hkv (repeat instead of repeat_interleave)",
           "k = k.repeat_interleave(group, dim=1)  # (n, Hq, D)", "k = k.repeat(1, group, 1)  # (n, Hq, D)"),
    Mutant("scale_sqrt_d",
           "default scale sqrt(D) instead of 1 / sqrt(D)",
           "return head_dim ** -0.5 if scale is None else scale",
           "return head_dim ** 0.5 if scale is None else scale"),
    Mutant("torch_ignores_block_table",
           "ignores the table: reads every sequence from blocks 0, 1, 2, ... as if the cache were its own",
           "blocks = block_tables[b, :n_blocks].long()",
           "blocks = torch.arange(n_blocks, device=q.device)"),
    # -- Task 3: the Triton kernel
    Mutant("kernel_length_off_by_one",
           "the kernel's mask lets token seq_len in (one key too many)",
           "valid = tok < hi", "valid = tok <= hi"),
    Mutant("kernel_gqa_head_mod",
           "the program of kv head kvh serves query heads kvh, kvh + Hkv, ... (h % Hkv mapping)",
           "heads = kvh * GROUP + offs_h", "heads = offs_h * tl.num_programs(1) + kvh"),
    Mutant("kernel_no_online_rescale",
           "forgets to rescale acc by exp(m_old - m_new) when a step raises the max",
           "acc = acc * alpha[:, None] + tl.dot(", "acc = acc + tl.dot("),
    Mutant("kernel_exp2_without_log2e",
           "uses exp2 on scores scaled by scale alone (forgot the log2(e) factor)",
           "qk_scale = _default_scale(D, scale) * LOG2E", "qk_scale = _default_scale(D, scale)"),
    Mutant("kernel_offset_pow2_only",
           "offset inside the block as t & (block_size - 1): right only for power-of-two block sizes",
           "off = (tok % PAGE).to(tl.int64)", "off = (tok & (PAGE - 1)).to(tl.int64)"),
    Mutant("kernel_ignores_block_table",
           "ignores the table: reads token t of every sequence from block t // block_size",
           "blk = tl.load(bt_row + tok // PAGE, mask=valid, other=0).to(tl.int64)",
           "blk = (tok // PAGE).to(tl.int64)"),
    Mutant("kernel_first_step_only",
           "walks only the first BLOCK_N tokens of each split (a skipped loop)",
           "for start in range(lo, hi, BLOCK_N):", "for start in range(lo, tl.minimum(hi, lo + 1), BLOCK_N):"),
    Mutant("kernel_zero_length_nan",
           "divides by the softmax sum without a guard: a sequence of length 0 gives 0/0 = NaN",
           "l_safe = tl.where(l_i == 0.0, 1.0, l_i)", "l_safe = l_i"),
    # Not a mutant: masking the head dim against BLOCK_D instead of D (test_head_dim_and_group_
    # not_powers_of_two catches it) writes past the output under the interpreter, which can abort
    # the whole pytest session instead of failing a check: the self-test could not judge it.
    Mutant("kernel_cached_by_data_ptr",
           "caches the result by the inputs' data_ptr and shapes: a cache or q written in place "
           "(every decode step) returns the stale answer",
           "def paged_attention_triton(",
           "_CACHE: dict = {}\n\n\n"
           "def paged_attention_triton(q, k_cache, v_cache, block_tables, seq_lens, *, scale=None, num_splits=None):\n"
           "    key = (q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), block_tables.data_ptr(),\n"
           "           seq_lens.data_ptr(), tuple(q.shape), tuple(k_cache.shape), tuple(block_tables.shape),\n"
           "           scale, num_splits)\n"
           "    if key not in _CACHE:\n"
           "        _CACHE[key] = _uncached(q, k_cache, v_cache, block_tables, seq_lens, scale=scale,\n"
           "                                num_splits=num_splits)\n"
           "    return _CACHE[key].clone()\n\n\n"
           "def _uncached("),
    # -- Task 4: split-KV and the merge
    Mutant("split_path_ignores_scale",
           "the split path (num_splits > 1) uses the default scale, ignoring the scale argument",
           "qk_scale = _default_scale(D, scale) * LOG2E",
           "qk_scale = _default_scale(D, scale if num_splits == 1 else None) * LOG2E"),
    Mutant("split_floor_drops_tail",
           "tiles per split rounded down: the last tiles of a sequence belong to no split",
           "tiles_per_split = tl.cdiv(n_tiles, num_splits)", "tiles_per_split = n_tiles // num_splits"),
    Mutant("merge_without_rescale",
           "merges the partial outputs as a plain average, ignoring each split's softmax mass",
           "w = tl.exp(lse - m_safe)  # (BLOCK_S,); 0 for an empty split",
           "w = tl.where(lse > -float(\"inf\"), 1.0, 0.0)"),
    Mutant("lse_log2_mixed_with_ln",
           "stores the partial lse in log2 units but merges with exp (natural log)",
           "lse = (m_i + tl.log2(l_safe)) * LN2", "lse = m_i + tl.log2(l_safe)"),
    Mutant("merge_empty_split_nan",
           "no -inf guard in the merge: all-empty splits compute exp(-inf - -inf) = NaN",
           "m_safe = tl.where(m_new == -float(\"inf\"), 0.0, m_new)", "m_safe = m_new"),
    Mutant("num_splits_not_checked",
           "accepts num_splits < 1 instead of raising ValueError",
           "if num_splits is not None and num_splits < 1:", "if num_splits is not None and num_splits < 0:"),
]
