"""Kata 11: round-to-nearest weight quantization, int4 packing, a w4a16 Triton matmul.
The checks, one class per README task.

Expected values never come from the module under test. W_hat is computed here in float64
from the returned codes, scales and zeros ((codes - zeros[g]) * scales[g], g = column //
group_size); the properties every correct round-to-nearest quantizer has are checked
against it (codes in range, every element within half a step, the grid's zero exact, ...),
never one implementation's codes (an element exactly halfway between two levels may round
either way). The packed layout is the contract's formula written out here; the matmul's
oracle is float64 torch on codes generated and packed by this file.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import (assert_close, assert_raises, assert_triton_ran, count_triton_launches,
                     load_kata_module, max_examples)

m = load_kata_module("quantization")

W_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
X_DTYPES = [torch.float16, torch.bfloat16]
KINDS = ["randn", "outliers", "positive", "negative", "planted_zeros", "constant", "zero_groups"]
seeds = st.integers(0, 2**31 - 1)


# ---------------------------------------------------------------- helpers
def name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def n_cols(gs: int, n_groups: int) -> int:
    return gs * n_groups


def per_column(t: torch.Tensor, gs: int) -> torch.Tensor:
    """(rows, n_groups) -> (rows, n_groups * gs): each group's value on each of its columns."""
    return t.repeat_interleave(gs, dim=1)


def w_hat64(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, gs: int) -> torch.Tensor:
    """(codes - zeros[g]) * scales[g] in float64, g = column // gs."""
    return (codes.double() - per_column(zeros.double(), gs)) * per_column(scales.double(), gs)


def make_weight(seed: int, rows: int, cols: int, gs: int, kind: str,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A seeded (rows, cols) weight of one kind.

    randn: N(0, 1) times a per-row scale in 1e-3..1e3. outliers: randn with ~2% of entries
    times 30. positive / negative: |randn| / -|randn| (the range's other end is 0).
    planted_zeros: randn with ~30% exact zeros. constant: every group one value.
    zero_groups: randn with about half the groups all zero (and the first one always).
    """
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=gen, dtype=torch.float64)
    w = w * 10.0 ** (torch.rand(rows, 1, generator=gen, dtype=torch.float64) * 6 - 3)
    pick = torch.rand(rows, cols, generator=gen, dtype=torch.float64)
    n_groups = cols // gs
    if kind == "outliers":
        w = torch.where(pick < 0.02, w * 30, w)
    elif kind == "positive":
        w = w.abs()
    elif kind == "negative":
        w = -w.abs()
    elif kind == "planted_zeros":
        w = torch.where(pick < 0.3, torch.zeros_like(w), w)
    elif kind == "constant":
        w = per_column(w[:, ::gs][:, :n_groups], gs)
    elif kind == "zero_groups":
        dead = torch.rand(rows, n_groups, generator=gen) < 0.5
        dead[0, 0] = True
        w = torch.where(per_column(dead, gs), torch.zeros_like(w), w)
    return w.to(dtype)


@st.composite
def quant_cases(draw, kinds=KINDS):
    """(seed, rows, cols, group_size, gs, bits, kind, dtype) for quantize."""
    gs = draw(st.sampled_from([1, 2, 3, 4, 5, 8, 16, 32]))
    n_groups = draw(st.integers(1, 4))
    group_size = -1 if (n_groups == 1 and draw(st.booleans())) else gs
    return (draw(seeds), draw(st.integers(1, 6)), n_cols(gs, n_groups), group_size, gs,
            draw(st.integers(2, 8)), draw(st.sampled_from(kinds)), draw(st.sampled_from(W_DTYPES)))


def run_quantize(w: torch.Tensor, bits: int, group_size: int, sym: bool, what: str):
    """quantize(w) with its contract checked: types, shapes, dtypes, w unmodified."""
    before = w.clone()
    out = m.quantize(w, bits=bits, group_size=group_size, sym=sym)
    assert isinstance(out, tuple) and len(out) == 3, (
        f"{what} must return a tuple (codes, scales, zeros), got {type(out).__name__}")
    codes, scales, zeros = out
    rows, cols = w.shape
    n_groups = 1 if group_size == -1 else cols // group_size
    for t, nm, shape, dt in ((codes, "codes", (rows, cols), torch.uint8),
                             (scales, "scales", (rows, n_groups), torch.float32),
                             (zeros, "zeros", (rows, n_groups), torch.float32)):
        assert isinstance(t, torch.Tensor), f"{what}: {nm} is a {type(t).__name__}, not a tensor"
        assert tuple(t.shape) == shape, f"{what}: {nm} has shape {tuple(t.shape)}, expected {shape}"
        assert t.dtype == dt, f"{what}: {nm} has dtype {t.dtype}, expected {dt}"
    assert torch.equal(w, before), f"{what} modified its input w"
    return codes, scales, zeros


def check_finite(what: str, scales: torch.Tensor, zeros: torch.Tensor, hint: str = "") -> None:
    for t, nm in ((scales, "scales"), (zeros, "zeros")):
        bad = ~torch.isfinite(t)
        assert not bool(bad.any()), (f"{what}: {int(bad.sum())} of {t.numel()} {nm} are NaN or inf "
                                     f"(first at {tuple(bad.nonzero()[0].tolist())}){hint}")


def check_codes_in(codes: torch.Tensor, low: int, high: int, what: str, hint: str) -> None:
    c = codes.to(torch.int64)
    bad = (c < low) | (c > high)
    if bool(bad.any()):
        at = tuple(bad.nonzero()[0].tolist())
        raise AssertionError(f"{what}: {int(bad.sum())} codes outside [{low}, {high}], e.g. "
                             f"{int(c[at])} at {at}\n  hint: {hint}")


def check_half_step(w: torch.Tensor, codes, scales, zeros, gs: int, what: str, hint: str) -> None:
    """|W_hat - w| <= step / 2 for every element, step = the group's scale.

    Slack for float arithmetic: w / step rounded in float32 is off by ~2^-24 of |w / step|
    <= 255 steps (so 2^-14 of a step is 60x that), and w itself rounded to float32 (a float64
    weight) by 2^-24 |w|.
    """
    step = per_column(scales.double(), gs)
    err = (w_hat64(codes, scales, zeros, gs) - w.double()).abs()
    bound = step * (0.5 + 2**-14) + 2**-20 * w.double().abs()
    bad = ~(err <= bound)
    if bool(bad.any()):
        excess = torch.where(bad, err / step.clamp_min(1e-300), torch.zeros_like(err))
        at = tuple(int(i) for i in torch.unravel_index(torch.argmax(excess), err.shape))
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {err.numel()} elements are more than half a step from "
            f"their value; worst at {at}: w = {float(w[at]):.6g}, W_hat = "
            f"{float(w_hat64(codes, scales, zeros, gs)[at]):.6g} (code {int(codes[at])}, scale "
            f"{float(scales[at[0], at[1] // gs]):.6g}, zero {float(zeros[at[0], at[1] // gs]):.6g}): "
            f"error {float(err[at] / step[at]):.4g} steps\n  hint: {hint}")


HALF_STEP_HINT = ("round to nearest (torch.round), not toward zero (.to(torch.uint8) or trunc "
                  "alone); clamp the codes to [0, 2**bits - 1] only after adding the zero point")


# ---------------------------------------------------------------- Task 1
class TestTask1Dequantize:
    """dequantize(codes, scales, zeros, group_size) = (codes - zeros[g]) * scales[g], float32."""

    def test_shape_dtype_and_inputs_unmodified(self):
        gen = torch.Generator().manual_seed(1)
        codes = torch.randint(0, 256, (3, 8), generator=gen, dtype=torch.uint8)
        scales, zeros = torch.rand(3, 2, generator=gen), torch.randint(0, 256, (3, 2), generator=gen).float()
        before = (codes.clone(), scales.clone(), zeros.clone())
        out = m.dequantize(codes, scales, zeros, 4)
        assert isinstance(out, torch.Tensor), f"dequantize returned {type(out).__name__}, not a tensor"
        assert tuple(out.shape) == (3, 8), f"dequantize(codes (3, 8), group_size 4) has shape {tuple(out.shape)}"
        assert out.dtype == torch.float32, f"dequantize must return float32, got {out.dtype}"
        assert all(torch.equal(a, b) for a, b in zip((codes, scales, zeros), before)), \
            "dequantize modified its inputs"

    def test_group_size_must_divide_in(self):
        codes = torch.zeros(2, 6, dtype=torch.uint8)
        with assert_raises(ValueError, "dequantize(codes (2, 6), ..., group_size=4)"):
            m.dequantize(codes, torch.ones(2, 2), torch.zeros(2, 2), 4)

    @given(seed=seeds, rows=st.integers(1, 6), gs=st.sampled_from([1, 2, 3, 4, 8, 16]),
           n_groups=st.integers(1, 4), minus_one=st.booleans())
    @settings(max_examples=max_examples(30))
    def test_matches_float64(self, seed, rows, gs, n_groups, minus_one):
        if minus_one:
            gs, n_groups = gs * n_groups, 1
        group_size = -1 if minus_one else gs
        gen = torch.Generator().manual_seed(seed)
        codes = torch.randint(0, 256, (rows, gs * n_groups), generator=gen, dtype=torch.uint8)
        scales = torch.rand(rows, n_groups, generator=gen) * 10 ** torch.randint(-3, 3, (rows, n_groups), generator=gen)
        zeros = torch.randint(0, 256, (rows, n_groups), generator=gen).float()
        scales[0, 0] = 0.0  # a zero scale: exactly zero out
        out = m.dequantize(codes, scales, zeros, group_size)
        assert_close(out, w_hat64(codes, scales, zeros, gs).float(),
                     what=f"dequantize(codes ({rows}, {gs * n_groups}), group_size={group_size})",
                     inputs=dict(codes=codes, scales=scales, zeros=zeros, seed=seed),
                     hint="W_hat[i, j] = (codes[i, j] - zeros[i, j // group_size]) * scales[i, j // group_size]: "
                     "subtract the zero point before scaling, and give each group of columns its own scale")

    def test_each_group_its_own_scale_and_zero(self):
        """One row, four groups of two columns: scale 10^g, zero g."""
        codes = torch.tensor([[5, 6, 5, 6, 5, 6, 5, 6]], dtype=torch.uint8)
        scales = torch.tensor([[1.0, 10.0, 100.0, 1000.0]])
        zeros = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
        expected = torch.tensor([[5.0, 6.0, 40.0, 50.0, 300.0, 400.0, 2000.0, 3000.0]])
        assert_close(m.dequantize(codes, scales, zeros, 2), expected,
                     what="dequantize(codes (1, 8), scales 10^g, zeros g, group_size=2)",
                     inputs=dict(codes=codes), hint="column j belongs to group j // group_size")


# ---------------------------------------------------------------- Task 2
class TestTask2QuantizeSymmetric:
    """quantize(w, bits, group_size, sym=True): zeros 2^(bits-1), scale max|w| / (2^(bits-1) - 1)."""

    @pytest.mark.parametrize("dtype", W_DTYPES)
    def test_shape_dtype_and_input_unmodified(self, dtype):
        w = make_weight(3, 4, 12, 4, "randn", dtype)
        run_quantize(w, 4, 4, True, f"quantize(w (4, 12) {name(dtype)}, bits=4, group_size=4)")
        run_quantize(w, 8, -1, True, f"quantize(w (4, 12) {name(dtype)}, bits=8, group_size=-1)")

    def test_group_size_must_divide_in(self):
        w = make_weight(0, 2, 12, 12, "randn")
        for gs in (5, 8, 24):
            with assert_raises(ValueError, f"quantize(w (2, 12), group_size={gs})"):
                m.quantize(w, bits=4, group_size=gs)

    def test_bits_outside_2_to_8(self):
        """The README's choice: bits outside 2..8 raise ValueError."""
        w = make_weight(0, 2, 8, 8, "randn")
        for bits in (1, 9):
            with assert_raises(ValueError, f"quantize(w (2, 8), bits={bits})"):
                m.quantize(w, bits=bits)

    @given(case=quant_cases())
    @settings(max_examples=max_examples(40))
    def test_scales_and_zeros_as_specified(self, case):
        seed, rows, cols, group_size, gs, bits, kind, dtype = case
        w = make_weight(seed, rows, cols, gs, kind, dtype)
        what = f"quantize(w ({rows}, {cols}) {name(dtype)} {kind}, bits={bits}, group_size={group_size}, sym=True)"
        codes, scales, zeros = run_quantize(w, bits, group_size, True, what)
        check_finite(what, scales, zeros, "; an all-zero group needs a guard against 0 / 0")
        assert bool((zeros == 2 ** (bits - 1)).all()), (
            f"{what}: symmetric zeros must all be 2**(bits - 1) = {2 ** (bits - 1)}, got "
            f"{sorted(set(zeros.flatten().tolist()))[:5]}")
        amax = w.double().reshape(rows, cols // gs, gs).abs().amax(-1)
        nonzero = amax > 0
        assert_close(scales.double()[nonzero], (amax / (2 ** (bits - 1) - 1))[nonzero], atol=0, rtol=1e-6,
                     what=f"{what}: scales of the non-zero groups", inputs=dict(w=w, seed=seed),
                     hint="scale = max|w| over the group's own columns (j // group_size) / (2**(bits - 1) - 1): "
                     "the largest level must reach max|w| exactly")
        assert bool((scales >= 0).all()), f"{what}: negative scales {scales[scales < 0][:4].tolist()}"

    @given(case=quant_cases())
    @settings(max_examples=max_examples(40))
    def test_codes_in_range_and_within_half_a_step(self, case):
        seed, rows, cols, group_size, gs, bits, kind, dtype = case
        w = make_weight(seed, rows, cols, gs, kind, dtype)
        what = f"quantize(w ({rows}, {cols}) {name(dtype)} {kind}, bits={bits}, group_size={group_size}, sym=True)"
        codes, scales, zeros = run_quantize(w, bits, group_size, True, what)
        check_codes_in(codes, 1, 2**bits - 1, what,
                       "symmetric codes are round(w / scale) + 2**(bits - 1), in [1, 2**bits - 1]: "
                       "an all-zero group gets the zero point (scale 0 must not give NaN codes)")
        check_half_step(w, codes, scales, zeros, gs, what, HALF_STEP_HINT)

    @given(seed=seeds, rows=st.integers(1, 5), gs=st.sampled_from([2, 4, 8, 16]),
           n_groups=st.integers(1, 3), bits=st.integers(2, 8))
    @settings(max_examples=max_examples(20))
    def test_grid_is_symmetric(self, seed, rows, gs, n_groups, bits):
        """quantize(-w) has the same scales and dequantizes to -W_hat (elements exactly halfway
        between two levels, which may round either way, are left out)."""
        w = make_weight(seed, rows, gs * n_groups, gs, "outliers")
        what = f"quantize(+-w ({rows}, {gs * n_groups}), bits={bits}, group_size={gs}, sym=True)"
        c1, s1, z1 = run_quantize(w, bits, gs, True, what)
        c2, s2, z2 = run_quantize(-w, bits, gs, True, what)
        assert torch.equal(s1, s2), f"{what}: w and -w got different scales (max |diff| {float((s1 - s2).abs().max()):.3g})"
        ratio = (w.double() / per_column(s1.double(), gs)).abs()
        not_tie = ((ratio - ratio.floor()) - 0.5).abs() > 1e-4
        plus, minus = w_hat64(c1, s1, z1, gs), w_hat64(c2, s2, z2, gs)
        bad = not_tie & (plus != -minus)
        assert not bool(bad.any()), (
            f"{what}: W_hat(-w) != -W_hat(w) at {int(bad.sum())} elements, e.g. "
            f"{tuple(bad.nonzero()[0].tolist())}: {float(plus[bad][0]):.6g} vs {float(minus[bad][0]):.6g} "
            f"(seed={seed})\n  hint: a symmetric grid has levels (c - 2**(bits-1)) * scale for c in "
            "1..2**bits - 1: as many below zero as above")

    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
    def test_all_zero_groups(self, dtype):
        """Zero groups (and a zero row, and a zero matrix) give no NaN or inf and dequantize to 0."""
        for w, desc in ((make_weight(5, 4, 16, 4, "zero_groups", dtype), "w (4, 16) with zero groups"),
                        (torch.zeros(3, 8, dtype=dtype), "w (3, 8) all zero")):
            for bits in (2, 4, 8):
                for group_size in (4, -1):
                    what = f"quantize({desc} {name(dtype)}, bits={bits}, group_size={group_size}, sym=True)"
                    gs = w.shape[1] if group_size == -1 else group_size
                    codes, scales, zeros = run_quantize(w, bits, group_size, True, what)
                    check_finite(what, scales, zeros, "; an all-zero group has max|w| = 0: divide by a safe scale")
                    check_codes_in(codes, 1, 2**bits - 1, what, "w / 0 is NaN: guard the scale of an all-zero group")
                    check_half_step(w, codes, scales, zeros, gs, what, HALF_STEP_HINT)
                    dead = w.double().reshape(w.shape[0], -1, gs).abs().amax(-1) == 0
                    w_hat = w_hat64(codes, scales, zeros, gs)
                    assert bool((w_hat[per_column(dead, gs)] == 0).all()), (
                        f"{what}: an all-zero group dequantizes to non-zero values")


# ---------------------------------------------------------------- Task 3
class TestTask3QuantizeAsymmetric:
    """quantize(w, sym=False): the range [min(w, 0), max(w, 0)] over 2^bits - 1 steps, an
    integer zero point in [0, 2^bits); also what groups guarantee over channels."""

    @pytest.mark.parametrize("dtype", W_DTYPES)
    def test_shape_dtype_and_input_unmodified(self, dtype):
        w = make_weight(4, 4, 12, 4, "randn", dtype)
        run_quantize(w, 4, 4, False, f"quantize(w (4, 12) {name(dtype)}, bits=4, group_size=4, sym=False)")
        run_quantize(w, 3, -1, False, f"quantize(w (4, 12) {name(dtype)}, bits=3, group_size=-1, sym=False)")

    @given(case=quant_cases())
    @settings(max_examples=max_examples(40))
    def test_scales_and_zeros_as_specified(self, case):
        seed, rows, cols, group_size, gs, bits, kind, dtype = case
        w = make_weight(seed, rows, cols, gs, kind, dtype)
        what = f"quantize(w ({rows}, {cols}) {name(dtype)} {kind}, bits={bits}, group_size={group_size}, sym=False)"
        codes, scales, zeros = run_quantize(w, bits, group_size, False, what)
        check_finite(what, scales, zeros, "; an all-zero group has range 0: guard -min / scale against 0 / 0")
        assert bool((zeros == zeros.round()).all()) and bool(((zeros >= 0) & (zeros <= 2**bits - 1)).all()), (
            f"{what}: zero points must be integers in [0, {2**bits - 1}], got e.g. "
            f"{zeros[(zeros != zeros.round()) | (zeros < 0) | (zeros > 2**bits - 1)][:4].tolist()}\n"
            "  hint: zero = round(-lo / scale), lo = min(w.min(), 0), clamped to [0, 2**bits - 1]")
        g = w.double().reshape(rows, cols // gs, gs)
        span = g.amax(-1).clamp(min=0) - g.amin(-1).clamp(max=0)
        nonzero = span > 0
        assert_close(scales.double()[nonzero], (span / (2**bits - 1))[nonzero], atol=0, rtol=1e-6,
                     what=f"{what}: scales of the non-zero groups", inputs=dict(w=w, seed=seed),
                     hint="scale = (max(w.max(), 0) - min(w.min(), 0)) / (2**bits - 1), per group: "
                     "the range always includes 0")

    @given(case=quant_cases())
    @settings(max_examples=max_examples(40))
    def test_codes_in_range_and_within_half_a_step(self, case):
        seed, rows, cols, group_size, gs, bits, kind, dtype = case
        w = make_weight(seed, rows, cols, gs, kind, dtype)
        what = f"quantize(w ({rows}, {cols}) {name(dtype)} {kind}, bits={bits}, group_size={group_size}, sym=False)"
        codes, scales, zeros = run_quantize(w, bits, group_size, False, what)
        check_codes_in(codes, 0, 2**bits - 1, what, "clamp round(w / scale) + zero to [0, 2**bits - 1]")
        check_half_step(w, codes, scales, zeros, gs, what,
                        HALF_STEP_HINT + "; the range must include 0 (lo = min(w.min(), 0), hi = "
                        "max(w.max(), 0)), and the zero point is round(-lo / scale): floor or ceil "
                        "shift the grid by up to a step")

    @given(seed=seeds, rows=st.integers(1, 5), gs=st.sampled_from([2, 4, 8]), n_groups=st.integers(1, 3),
           bits=st.integers(2, 8), kind=st.sampled_from(["randn", "positive", "negative", "planted_zeros"]))
    @settings(max_examples=max_examples(20))
    def test_zero_is_exact(self, seed, rows, gs, n_groups, bits, kind):
        w = make_weight(seed, rows, gs * n_groups, gs, kind)
        w[:, 0] = 0.0  # at least one zero in every row
        what = f"quantize(w ({rows}, {gs * n_groups}) {kind} with zeros, bits={bits}, group_size={gs}, sym=False)"
        codes, scales, zeros = run_quantize(w, bits, gs, False, what)
        w_hat = w_hat64(codes, scales, zeros, gs)
        bad = (w == 0) & (w_hat != 0)
        assert not bool(bad.any()), (
            f"{what}: {int(bad.sum())} exact zeros of w dequantize to non-zero values, e.g. "
            f"{float(w_hat[bad][0]):.6g} (seed={seed})\n  hint: with an integer zero point z, "
            "code z dequantizes to exactly 0; round(0 / scale) + z = z")

    @pytest.mark.parametrize("bits,row", [(4, [-11.5, 3.5, 0.0, 1.0]), (8, [-101.5, 153.5, 0.0, 7.0]),
                                          (2, [-1.5, 1.5, 0.0, 0.5])])
    def test_ties_at_both_ends_stay_in_range(self, bits, row):
        """Rows whose zero point and top end are both exactly halfway: round-half-even (or half
        away from zero) rounds both up, and the top code would be 2^bits without the clamp."""
        w = torch.tensor([row], dtype=torch.float32)
        what = f"quantize(w = {row}, bits={bits}, group_size=-1, sym=False)"
        codes, scales, zeros = run_quantize(w, bits, -1, False, what)
        check_codes_in(codes, 0, 2**bits - 1, what,
                       "round(w / scale) + zero can reach 2**bits when both round up: clamp the codes")
        check_half_step(w, codes, scales, zeros, 4, what, "clamp the codes to [0, 2**bits - 1]")

    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
    def test_all_zero_groups(self, dtype):
        for w, desc in ((make_weight(6, 4, 16, 4, "zero_groups", dtype), "w (4, 16) with zero groups"),
                        (torch.zeros(3, 8, dtype=dtype), "w (3, 8) all zero")):
            for bits in (2, 4, 8):
                for group_size in (4, -1):
                    what = f"quantize({desc} {name(dtype)}, bits={bits}, group_size={group_size}, sym=False)"
                    gs = w.shape[1] if group_size == -1 else group_size
                    codes, scales, zeros = run_quantize(w, bits, group_size, False, what)
                    check_finite(what, scales, zeros, "; -min / scale is 0 / 0 for an all-zero group: guard it")
                    check_codes_in(codes, 0, 2**bits - 1, what, "guard the scale of an all-zero group")
                    check_half_step(w, codes, scales, zeros, gs, what, HALF_STEP_HINT)

    @pytest.mark.parametrize("sym", [True, False])
    @given(seed=seeds, rows=st.integers(1, 6), gs=st.sampled_from([2, 4, 8, 16]),
           n_groups=st.integers(2, 6), bits=st.integers(2, 8))
    @settings(max_examples=max_examples(20))
    def test_groups_never_widen_the_step(self, sym, seed, rows, gs, n_groups, bits):
        """The theorem behind groups (README): a group's range lies inside its row's, so every
        group step is <= the row's per-channel step; hence every element of a row quantized per
        group is within half the per-channel step. (Per-group error is NOT always smaller
        element by element, nor even in total: a value on the per-channel grid can fall between
        two levels of its group's grid. So that is not checked.)"""
        w = make_weight(seed, rows, gs * n_groups, gs, "outliers")
        cols = gs * n_groups
        what = f"quantize(w ({rows}, {cols}) outliers, bits={bits}, sym={sym})"
        cg, sg, zg = run_quantize(w, bits, gs, sym, what + f" group_size={gs}")
        cc, sc, zc = run_quantize(w, bits, -1, sym, what + " group_size=-1")
        ratio = sg.double() / sc.double()
        assert bool((ratio <= 1 + 1e-6).all()), (
            f"{what}: a group step is larger than its row's per-channel step, by {float(ratio.max()):.6g}x "
            f"(seed={seed})\n  hint: each group's range is taken over its own columns, a subset of the row")
        err = (w_hat64(cg, sg, zg, gs) - w.double()).abs().amax(dim=1)
        bound = sc.double()[:, 0] * (0.5 + 2**-14) + 2**-20 * w.double().abs().amax(dim=1)
        assert bool((err <= bound).all()), (
            f"{what}: per-group max error {float(err.max()):.6g} exceeds half the per-channel step "
            f"{float(sc.max()) / 2:.6g} (seed={seed})")

    def test_groups_shrink_the_error_of_outlier_weights(self):
        """An illustration with fixed seeds, not a theorem: on 32 x 1024 Gaussian weights with
        0.2% outliers at 20 sigma, 4-bit per-group (128) error is well under per-channel error.
        Every correct quantizer gives the same codes here (no element is exactly halfway), so
        this cannot fail by chance."""
        gen = torch.Generator().manual_seed(11)
        w = torch.randn(32, 1024, generator=gen)
        w = torch.where(torch.rand(32, 1024, generator=gen) < 0.002, 20 * w.sign(), w)
        for sym in (True, False):
            mse = {}
            for group_size in (-1, 128):
                c, s, z = run_quantize(w, 4, group_size, sym, f"quantize(w (32, 1024), bits=4, group_size={group_size})")
                gs = 1024 if group_size == -1 else group_size
                mse[group_size] = float(((w_hat64(c, s, z, gs) - w.double()) ** 2).mean())
            assert mse[128] < 0.5 * mse[-1], (
                f"4-bit sym={sym} on w (32, 1024) with outliers (seed 11): per-group (128) MSE "
                f"{mse[128]:.4g} should be well under half the per-channel MSE {mse[-1]:.4g}")


# ---------------------------------------------------------------- Task 4
def pack64(codes: torch.Tensor) -> torch.Tensor:
    """The contract's layout, written out: column 2j in the low nibble, 2j + 1 in the high."""
    c = codes.to(torch.int64)
    return (c[:, 0::2] + 16 * c[:, 1::2]).to(torch.uint8)


class TestTask4PackInt4:
    """pack_int4 / unpack_int4: two 4-bit codes per byte, column 2j low, 2j + 1 high."""

    def test_shape_dtype_and_input_unmodified(self):
        codes = torch.randint(0, 16, (3, 10), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
        before = codes.clone()
        packed = m.pack_int4(codes)
        assert isinstance(packed, torch.Tensor), f"pack_int4 returned {type(packed).__name__}"
        assert tuple(packed.shape) == (3, 5) and packed.dtype == torch.uint8, (
            f"pack_int4(codes (3, 10)) must be (3, 5) uint8, got {tuple(packed.shape)} {packed.dtype}")
        assert torch.equal(codes, before), "pack_int4 modified its input"
        p_before = packed.clone()
        out = m.unpack_int4(packed)
        assert isinstance(out, torch.Tensor) and tuple(out.shape) == (3, 10) and out.dtype == torch.uint8, (
            f"unpack_int4(packed (3, 5)) must be (3, 10) uint8, got "
            f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__} "
            f"{getattr(out, 'dtype', '')}")
        assert torch.equal(packed, p_before), "unpack_int4 modified its input"

    def test_value_errors(self):
        with assert_raises(ValueError, "pack_int4(codes (2, 5)) (odd in)"):
            m.pack_int4(torch.zeros(2, 5, dtype=torch.uint8))
        bad = torch.zeros(2, 4, dtype=torch.uint8)
        bad[1, 2] = 16
        with assert_raises(ValueError, "pack_int4(codes with a 16)"):
            m.pack_int4(bad)
        bad[1, 2] = 255
        with assert_raises(ValueError, "pack_int4(codes with a 255)"):
            m.pack_int4(bad)

    def test_nibble_order(self):
        codes = torch.tensor([[1, 2, 3, 4], [15, 0, 0, 15]], dtype=torch.uint8)
        got = m.pack_int4(codes)
        expected = torch.tensor([[0x21, 0x43], [0x0F, 0xF0]], dtype=torch.uint8)
        assert torch.equal(got, expected), (
            f"pack_int4([[1, 2, 3, 4], [15, 0, 0, 15]]) = {[[hex(v) for v in r] for r in got.tolist()]}, "
            f"expected {[[hex(v) for v in r] for r in expected.tolist()]}\n  hint: byte j = "
            "codes[:, 2j] | (codes[:, 2j + 1] << 4): the even column goes in the LOW nibble")

    @given(seed=seeds, rows=st.integers(1, 17), half=st.integers(1, 33))
    @settings(max_examples=max_examples(30))
    def test_layout_and_round_trip_any_shape(self, seed, rows, half):
        gen = torch.Generator().manual_seed(seed)
        codes = torch.randint(0, 16, (rows, 2 * half), generator=gen, dtype=torch.uint8)
        packed = m.pack_int4(codes)
        assert torch.equal(packed, pack64(codes)), (
            f"pack_int4(codes ({rows}, {2 * half}), seed={seed}) differs from codes[:, 0::2] + "
            f"16 * codes[:, 1::2] at {int((packed != pack64(codes)).sum())} bytes")
        back = m.unpack_int4(packed)
        assert torch.equal(back, codes), (
            f"unpack_int4(pack_int4(codes)) != codes for codes ({rows}, {2 * half}), seed={seed}: "
            f"{int((back != codes).sum())} codes differ")
        anything = torch.randint(0, 256, (rows, half), generator=gen, dtype=torch.uint8)
        assert torch.equal(m.pack_int4(m.unpack_int4(anything)), anything), (
            f"pack_int4(unpack_int4(p)) != p for a random uint8 p ({rows}, {half}), seed={seed}")

    def test_non_contiguous_views(self):
        """A transposed view and a column slice: a view is read through its strides (or copied)."""
        gen = torch.Generator().manual_seed(11)
        codes = torch.randint(0, 16, (10, 6), generator=gen, dtype=torch.uint8).T  # (6, 10), strides (1, 6)
        got = m.pack_int4(codes)
        assert torch.equal(got, pack64(codes)), (
            f"pack_int4(codes (6, 10) transposed view, strides {codes.stride()}, seed=11) differs from "
            f"codes[:, 0::2] + 16 * codes[:, 1::2] at {int((got != pack64(codes)).sum())} of {got.numel()} "
            "bytes\n  hint: index the view, not its storage (or call .contiguous() first)")
        packed = torch.randint(0, 256, (4, 12), generator=gen, dtype=torch.uint8)[:, 3:8]  # row stride 12
        back = m.unpack_int4(packed)
        want = torch.stack((packed & 15, packed >> 4), dim=-1).reshape(4, 10)
        assert torch.equal(back, want), (
            f"unpack_int4(packed (4, 5) column slice, strides {packed.stride()}, seed=11) differs from the "
            f"low/high nibbles of each byte at {int((back != want).sum())} of {want.numel()} codes"
            "\n  hint: index the view, not its storage (or call .contiguous() first)")

    def test_pack_what_quantize_gives(self):
        w = make_weight(9, 8, 64, 16, "randn")
        codes, scales, zeros = m.quantize(w, bits=4, group_size=16, sym=False)
        assert torch.equal(m.unpack_int4(m.pack_int4(codes)), codes), \
            "unpack_int4(pack_int4(codes)) != codes for the codes of quantize(w (8, 64), bits=4)"


# ---------------------------------------------------------------- Task 5
def make_matmul_case(seed: int, M: int, N: int, K: int, gs: int, dtype: torch.dtype,
                     int_zeros: bool = True):
    """x (M, K), codes (N, K) in 0..15, scales and zeros (N, K / gs) float32, all seeded."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=gen).to(dtype)
    codes = torch.randint(0, 16, (N, K), generator=gen, dtype=torch.uint8)
    scales = (torch.rand(N, K // gs, generator=gen) + 0.05) * 0.1 * 4.0 ** torch.randint(-2, 3, (N, K // gs), generator=gen)
    zeros = torch.randint(0, 16, (N, K // gs), generator=gen).float()
    if not int_zeros:
        zeros = zeros + torch.rand(N, K // gs, generator=gen)
    return x, codes, scales, zeros


UNIT_ROUNDOFF = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}


def check_matmul(out, x, codes, scales, zeros, gs: int, what: str, inputs: dict, hint: str) -> None:
    """out == x @ W_hat^T within what the contract allows, element by element:
    W_hat may be rounded to x's dtype (|error| <= u * sum_k |x_k| |W_hat_k|; 2u under the
    interpreter, whose casts to bf16 truncate), the fp32
    accumulation (<= 4 K 2^-24 sum_k |x_k| (|c| + |z|) |s|, for any order and for the
    s * (sum x c - z sum x) form), and the output's rounding to x's dtype (<= 2u |y|: the
    interpreter's bf16 stores truncate, under one ulp). Worst-case bounds, so no false
    failures; a kernel that feeds the tensor cores 128 + c or 1024 + c (README) adds fp32
    rounding of its own, which measured at under a fifth of the first term alone."""
    __tracebackhide__ = True
    assert isinstance(out, torch.Tensor), f"{what} returned {type(out).__name__}, not a tensor"
    M, N = x.shape[0], codes.shape[0]
    assert tuple(out.shape) == (M, N), f"{what}: shape {tuple(out.shape)}, expected {(M, N)}"
    assert out.dtype == x.dtype, f"{what}: dtype {out.dtype}, expected x's dtype {x.dtype}"
    K = x.shape[1]
    u = UNIT_ROUNDOFF[x.dtype]
    x64, w64 = x.double().cpu(), w_hat64(codes, scales, zeros, gs)
    y = x64 @ w64.T
    big = (codes.double() + per_column(zeros.double().abs(), gs)) * per_column(scales.double().abs(), gs)
    # Rounding W_hat to x's dtype costs u relative; the interpreter's float32 -> bf16 casts
    # truncate instead of rounding (up to one ulp, 2u), so on CPU the first term doubles.
    w_round = u if x.is_cuda else 2 * u
    bound = w_round * (x64.abs() @ w64.abs().T) + 4 * K * 2.0**-24 * (x64.abs() @ big.T) + 2 * u * y.abs() + 2.0**-24
    got = out.detach().cpu().double()
    err = (got - y).abs()
    bad = ~(err <= bound)
    if bool(bad.any()):
        excess = torch.where(bad, torch.nan_to_num(err / bound, nan=float("inf")), torch.zeros_like(err))
        at = tuple(int(i) for i in torch.unravel_index(torch.argmax(excess), err.shape))
        lines = [f"{what}: {int(bad.sum())} of {err.numel()} outputs differ from x @ W_hat^T (float64)",
                 f"  inputs: {', '.join(f'{k}={v}' for k, v in inputs.items())}",
                 f"  worst at (m, n) = {at}: got {float(got[at]):.6g}, expected {float(y[at]):.6g}, "
                 f"error {float(err[at]):.3g} > allowed {float(bound[at]):.3g}",
                 f"  hint: {hint}"]
        if bool(torch.isnan(got).any()):
            lines.append(f"  the result has {int(torch.isnan(got).sum())} NaN")
        raise AssertionError("\n".join(lines))


def run_matmul(device, x, codes, scales, zeros, group_size: int, call: str) -> torch.Tensor:
    """w4a16_matmul on the device, packed by this file, checked to have run a Triton kernel."""
    packed = pack64(codes)
    args = [t.to(device) for t in (x, packed, scales, zeros)]
    with count_triton_launches() as launches:
        out = m.w4a16_matmul(*args, group_size)
    assert isinstance(out, torch.Tensor), f"{call} returned {type(out).__name__}, not a tensor"
    assert_triton_ran(launches, call)
    return out


MATMUL_HINT = ("unpack byte j of a row into columns 2j (low nibble) and 2j + 1 (high); "
               "column k uses scales/zeros[n, k // group_size]; sum the products over all of K "
               "(every K block, every split) in float32; mask the last N tile")


@st.composite
def matmul_shapes(draw):
    gs = draw(st.sampled_from([2, 4, 8, 16, 32, 64, -1]))
    if gs == -1:
        K = draw(st.sampled_from([2, 6, 16, 34, 64, 128]))
        return draw(st.integers(1, 64)), draw(st.integers(1, 80)), K, -1, K
    n_groups = draw(st.integers(1, 4))
    return draw(st.integers(1, 64)), draw(st.integers(1, 80)), gs * n_groups, gs, gs


class TestTask5W4A16Matmul:
    """w4a16_matmul(x, packed, scales, zeros, group_size) = x @ W_hat^T from a Triton kernel.

    On CPU the kernel runs under the Triton interpreter, so the shapes here stay small; the
    GPU adds larger ones (marked gpu) and the timed checks of test_quantization_perf.py."""

    @pytest.mark.parametrize("dtype", X_DTYPES)
    def test_shape_dtype_and_inputs_unmodified(self, device, dtype):
        x, codes, scales, zeros = make_matmul_case(1, 3, 20, 64, 32, dtype)
        packed = pack64(codes)
        args = [t.to(device) for t in (x, packed, scales, zeros)]
        before = [t.clone() for t in args]
        call = f"w4a16_matmul(x (3, 64) {name(dtype)}, packed (20, 32), scales (20, 2), zeros (20, 2), 32)"
        with count_triton_launches() as launches:
            out = m.w4a16_matmul(*args, 32)
        assert_triton_ran(launches, call)
        assert isinstance(out, torch.Tensor), f"{call} returned {type(out).__name__}"
        assert tuple(out.shape) == (3, 20), f"{call} has shape {tuple(out.shape)}, expected (3, 20)"
        assert out.dtype == dtype, f"{call} returned {out.dtype}: the output is in x's dtype"
        assert out.device == args[0].device, f"{call} returned a tensor on {out.device}"
        assert all(torch.equal(a, b) for a, b in zip(args, before)), f"{call} modified its inputs"

    def test_value_errors(self, device):
        x, codes, scales, zeros = make_matmul_case(2, 2, 8, 16, 8, torch.float16)
        packed = pack64(codes)
        x, packed, scales, zeros = (t.to(device) for t in (x, packed, scales, zeros))
        with assert_raises(ValueError, "w4a16_matmul(x (2, 16), packed (8, 8), ..., group_size=6)"):
            m.w4a16_matmul(x, packed, scales, zeros, 6)
        with assert_raises(ValueError, "w4a16_matmul(x (2, 14), packed (8, 8), ...) (K mismatch)"):
            m.w4a16_matmul(x[:, :14].contiguous(), packed, scales, zeros, 8)

    def test_groups_with_very_different_scales(self, device):
        """Scales 1, 1000, 1, 1000, ... by group: a kernel that reads the wrong group's scale is far off."""
        x, codes, scales, zeros = make_matmul_case(60, 8, 40, 256, 32, torch.float16)
        scales = torch.tensor([1e-3, 1.0] * 4).repeat(40, 1)
        call = "w4a16_matmul(x (8, 256) float16, W (40, 256), group_size=32, scales alternating 1e-3 / 1)"
        check_matmul(run_matmul(device, x, codes, scales, zeros, 32, call), x, codes, scales, zeros, 32,
                     call, dict(M=8, N=40, K=256, seed=60), "column k uses scales[n, k // group_size]")

    def test_groups_longer_than_a_k_block(self, device):
        """group_size 512 over K = 1024, scales 1e-3 and 1: a group spans several of a kernel's
        K blocks (the scale must follow the column, not the block or the split)."""
        x, codes, scales, zeros = make_matmul_case(61, 3, 24, 1024, 512, torch.float16)
        scales = torch.tensor([1e-3, 1.0]).repeat(24, 1)
        call = "w4a16_matmul(x (3, 1024) float16, W (24, 1024), group_size=512, scales 1e-3 / 1)"
        check_matmul(run_matmul(device, x, codes, scales, zeros, 512, call), x, codes, scales, zeros, 512,
                     call, dict(M=3, N=24, K=1024, seed=61), "column k uses scales[n, k // group_size]")

    @pytest.mark.parametrize("M", [1, 4, 16, 64])
    def test_long_k(self, device, M):
        """K = 1024 in groups of 128: many K blocks (and split-K, if the kernel splits)."""
        x, codes, scales, zeros = make_matmul_case(40 + M, M, 24, 1024, 128, torch.bfloat16)
        call = f"w4a16_matmul(x ({M}, 1024) bfloat16, W (24, 1024), group_size=128)"
        check_matmul(run_matmul(device, x, codes, scales, zeros, 128, call), x, codes, scales, zeros, 128,
                     call, dict(M=M, N=24, K=1024, seed=40 + M),
                     "every K block must be summed: loop over all of K (and add up every split)")

    @pytest.mark.parametrize("M", [1, 5])
    def test_odd_group_size(self, device, M):
        """group_size 3: a byte's two codes can belong to two different groups."""
        x, codes, scales, zeros = make_matmul_case(50 + M, M, 9, 12, 3, torch.float16)
        call = f"w4a16_matmul(x ({M}, 12) float16, W (9, 12), group_size=3)"
        check_matmul(run_matmul(device, x, codes, scales, zeros, 3, call), x, codes, scales, zeros, 3,
                     call, dict(M=M, N=9, K=12, seed=50 + M),
                     "the group of column k is k // group_size, separately for the low and the high nibble")

    def test_strided_x(self, device):
        """x a view into a wider buffer (row stride K + 8)."""
        x, codes, scales, zeros = make_matmul_case(70, 3, 17, 64, 16, torch.bfloat16)
        buf = torch.full((3, 72), 1e4, dtype=torch.bfloat16)
        buf[:, :64] = x
        view = buf.to(device)[:, :64]
        packed = pack64(codes).to(device)
        call = "w4a16_matmul(x (3, 64) bfloat16 view with row stride 72, W (17, 64), group_size=16)"
        with count_triton_launches() as launches:
            out = m.w4a16_matmul(view, packed, scales.to(device), zeros.to(device), 16)
        assert_triton_ran(launches, call)
        check_matmul(out, x, codes, scales, zeros, 16, call, dict(seed=70),
                     "step between rows of x by x.stride(0) (or call .contiguous() first)")

    def test_transposed_views(self, device):
        """x, scales and zeros as transposed views (column stride != 1): read through the strides."""
        x, codes, scales, zeros = make_matmul_case(71, 5, 12, 32, 8, torch.float16)
        xv, sv, zv = (t.T.contiguous().to(device).T for t in (x, scales, zeros))
        packed = pack64(codes).to(device)
        call = (f"w4a16_matmul(x (5, 32) float16 with strides {xv.stride()}, W (12, 32), scales and zeros "
                f"(12, 4) with strides {sv.stride()}, group_size=8)")
        with count_triton_launches() as launches:
            out = m.w4a16_matmul(xv, packed, sv, zv, 8)
        assert_triton_ran(launches, call)
        check_matmul(out, x, codes, scales, zeros, 8, call, dict(seed=71),
                     "use both strides of x, scales and zeros (or call .contiguous() first)")

    def test_many_row_tiles(self, device):
        """M = 150 rows of x: more than one tile of rows (any M >= 1, README)."""
        x, codes, scales, zeros = make_matmul_case(72, 150, 6, 32, 16, torch.bfloat16)
        call = "w4a16_matmul(x (150, 32) bfloat16, W (6, 32), group_size=16)"
        check_matmul(run_matmul(device, x, codes, scales, zeros, 16, call), x, codes, scales, zeros, 16,
                     call, dict(M=150, N=6, K=32, seed=72),
                     "launch enough programs along M to cover every row of x (cdiv(M, BLOCK_M))")

    def test_fresh_result_for_new_values(self, device):
        """Same shapes, new values (also written into the same tensors): no result kept from an earlier call."""
        x, codes, scales, zeros = make_matmul_case(80, 2, 16, 32, 16, torch.float16)
        call = "w4a16_matmul(x (2, 32) float16, W (16, 32), group_size=16)"
        check_matmul(run_matmul(device, x, codes, scales, zeros, 16, call), x, codes, scales, zeros, 16,
                     call + ", first call", dict(seed=80), MATMUL_HINT)
        x2, codes2, scales2, zeros2 = make_matmul_case(81, 2, 16, 32, 16, torch.float16)
        dev = [t.to(device) for t in (x, pack64(codes), scales, zeros)]
        for t, new in zip(dev, (x2, pack64(codes2), scales2, zeros2)):
            t.copy_(new.to(device))
        with count_triton_launches() as launches:
            out = m.w4a16_matmul(*dev, 16)
        assert_triton_ran(launches, call)
        check_matmul(out, x2, codes2, scales2, zeros2, 16, call + ", tensors overwritten in place",
                     dict(seed=81), "compute every call from its inputs' current values")

    @pytest.mark.parametrize("dtype", X_DTYPES)
    @given(seed=seeds, shape=matmul_shapes(), int_zeros=st.booleans())
    @settings(max_examples=max_examples(8))
    def test_matches_float64(self, device, dtype, seed, shape, int_zeros):
        M, N, K, group_size, gs = shape
        x, codes, scales, zeros = make_matmul_case(seed, M, N, K, gs, dtype, int_zeros)
        call = f"w4a16_matmul(x ({M}, {K}) {name(dtype)}, W ({N}, {K}), group_size={group_size})"
        out = run_matmul(device, x, codes, scales, zeros, group_size, call)
        check_matmul(out, x, codes, scales, zeros, gs, call, dict(M=M, N=N, K=K, group_size=group_size,
                     int_zeros=int_zeros, seed=seed), MATMUL_HINT)

    @pytest.mark.gpu
    @pytest.mark.parametrize("M", [1, 16, 64])
    @pytest.mark.parametrize("dtype", X_DTYPES)
    def test_large_shapes_on_gpu(self, device, M, dtype):
        if device.type != "cuda":
            pytest.skip("needs a CUDA GPU")
        N, K = 4096 + 37, 4096
        x, codes, scales, zeros = make_matmul_case(90 + M, M, N, K, 128, dtype)
        call = f"w4a16_matmul(x ({M}, {K}) {name(dtype)}, W ({N}, {K}), group_size=128)"
        check_matmul(run_matmul(device, x, codes, scales, zeros, 128, call), x, codes, scales, zeros, 128,
                     call, dict(M=M, N=N, K=K, seed=90 + M), MATMUL_HINT)

    @pytest.mark.gpu
    def test_does_not_write_w_hat(self, device):
        """Peak memory during the call stays far below W_hat's size: a kernel that dequantizes
        into a buffer and then multiplies fails (W_hat in bf16 is 4x the packed weight)."""
        if device.type != "cuda":
            pytest.skip("needs a CUDA GPU")
        N = K = 8192
        x, codes, scales, zeros = make_matmul_case(99, 16, N, K, 128, torch.bfloat16)
        args = [t.to(device) for t in (x, pack64(codes), scales, zeros)]
        del codes
        m.w4a16_matmul(*args, 128)  # compile first
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        m.w4a16_matmul(*args, 128)
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - base
        w_hat_bytes = N * K * 2
        assert extra < w_hat_bytes // 4, (
            f"w4a16_matmul(x (16, {K}), W ({N}, {K})) allocated {extra / 2**20:.1f} MiB during the call; "
            f"W_hat in bf16 would be {w_hat_bytes / 2**20:.0f} MiB. The kernel must dequantize in "
            "registers, tile by tile, never into a buffer in memory")
