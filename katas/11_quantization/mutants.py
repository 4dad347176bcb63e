"""Planted bugs for kata 11: classic quantization mistakes. Each must be caught by a test."""
from harness import Mutant

MUTANTS: list[Mutant] = [
    # -- Task 1: dequantize
    Mutant("dequant_zero_after_scale",
           "subtracts the zero point after scaling: codes * scale - zero, the zero in the wrong units",
           "return ((c - z) * s).reshape(rows, cols)", "return (c * s - z).reshape(rows, cols)"),
    Mutant("dequant_first_group_only",
           "indexes scales per row only: every column uses the row's first group's scale",
           "s = scales.to(torch.float32).unsqueeze(-1)", "s = scales.to(torch.float32)[:, :1].unsqueeze(-1)"),
    # -- Task 2: symmetric
    Mutant("round_by_truncation",
           "truncates toward zero instead of rounding to nearest (errors up to a whole step)",
           "q = torch.round(wg / safe.unsqueeze(-1))", "q = torch.trunc(wg / safe.unsqueeze(-1))"),
    Mutant("sym_scale_over_2_pow_bits_minus_1",
           "divides max|w| by 2**(bits-1) instead of 2**(bits-1) - 1: the top level cannot reach max|w|",
           "scales = (amax / (2 ** (bits - 1) - 1)).to(torch.float32)",
           "scales = (amax / (2 ** (bits - 1))).to(torch.float32)"),
    Mutant("zero_scale_not_guarded",
           "divides by the scale of an all-zero group (0): NaN codes and zero points",
           "safe = torch.where(scales > 0, scales, torch.ones_like(scales)).to(cdt)",
           "safe = scales.to(cdt)"),
    Mutant("groups_strided_not_contiguous",
           "groups columns j % n_groups together (a reshape in the wrong order) instead of j // group_size",
           "wg = w.to(cdt).reshape(rows, n_groups, gs)",
           "wg = w.to(cdt).reshape(rows, gs, n_groups).transpose(1, 2)"),
    # -- Task 3: asymmetric
    Mutant("asym_range_excludes_zero",
           "takes the range [w.min, w.max] without 0: an all-positive group's zero point is negative "
           "(then clamped), and 0.0 may fall off the grid",
           "lo = wg.amin(dim=-1).clamp(max=0.0)", "lo = wg.amin(dim=-1)"),
    Mutant("zero_point_floored",
           "floors the zero point instead of rounding it: the grid shifts by up to a step",
           "zeros = torch.round(-lo / safe)", "zeros = torch.floor(-lo / safe)"),
    Mutant("codes_not_clamped",
           "does not clamp the codes: a tie at both ends of the range gives code 2**bits",
           "codes = q.clamp(0, qmax).to(torch.uint8)", "codes = q.to(torch.uint8)"),
    # -- Task 4: packing
    Mutant("nibble_order_swapped",
           "packs column 2j into the high nibble and 2j + 1 into the low one",
           "return c[:, 0::2] | (c[:, 1::2] << 4)", "return c[:, 1::2] | (c[:, 0::2] << 4)"),
    Mutant("pack_accepts_codes_over_15",
           "packs codes >= 16 silently (their top bits spill into the neighbour's nibble)",
           "int(codes.max()) >= 16", "int(codes.max()) >= 256"),
    # -- Task 5: the kernel
    Mutant("kernel_nibbles_swapped",
           "the kernel pairs the high nibble with column 2j and the low one with 2j + 1",
           "w = tl.interleave(lo, hi)", "w = tl.interleave(hi, lo)", count=2),
    Mutant("kernel_zero_not_subtracted",
           "the kernel multiplies the raw codes by the scale, forgetting the zero point",
           "acc += s[:, None] * (part - (z[:, None] + OFFSET) * xs)",
           "acc += s[:, None] * (part - OFFSET * xs)"),
    Mutant("kernel_group_from_row",
           "the kernel takes the group index from the K block's index over the whole K "
           "(col // K): every block reads group 0",
           "g = (kb * BLOCK_K) // group_size", "g = (kb * BLOCK_K) // K"),
    Mutant("kernel_drops_k_tail",
           "the K loop stops one block early (range(start, end - 1))",
           "for kb in range(kb_start, kb_end):", "for kb in range(kb_start, kb_end - 1):"),
    Mutant("split_k_keeps_first_split",
           "the split-K reduction returns the first split's partial sum only",
           "for s in range(SPLITS):", "for s in range(1):"),
    Mutant("torch_dequantize_then_matmul",
           "a shortcut: dequantizes W_hat with torch into memory and multiplies with torch "
           "(right values, but no Triton kernel and a full-size W_hat)",
           "    out = torch.empty((M, N), device=x.device, dtype=x.dtype)\n",
           "    codes = unpack_int4(packed)\n"
           "    return (x.float() @ dequantize(codes, scales, zeros, group_size).T).to(x.dtype)\n"),
]
