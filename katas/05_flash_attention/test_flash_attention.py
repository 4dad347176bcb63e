"""Kata 05: FlashAttention forward in Triton. Tasks as in README.md.

Expected values come from `diagnose_flash.expected_attention`: float64 torch math with an
explicit bottom-right causal mask and K/V expanded by repeat_interleave. Every value check
passes `diagnose(...)` as its hint: it names the likely bug from where the error lies.

The same test ids run on CPU (Triton interpreter, small shapes: head dims 16/32/64, a few
dozen tokens, so that several 16-wide tiles and partial tiles occur) and on a GPU (head dims
64/128, hundreds of tokens).
"""
from __future__ import annotations

import math
import os
import sys

import pytest
import torch
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from harness import assert_close, load_kata_module

sys.path.insert(0, os.path.dirname(__file__))
from diagnose_flash import (  # noqa: E402
    LSE_TOL, OUT_TOL, Shapes, diagnose, expected_attention, visible,
)

m = load_kata_module("flash_attention")

HALF = [torch.float16, torch.bfloat16]
ON_GPU = torch.cuda.is_available()
HEAD_DIMS = [64, 128] if ON_GPU else [16, 32]
MAX_LEN = 700 if ON_GPU else 48  # CPU: up to three 16-wide tiles, under the interpreter


def dname(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def randn(shape, gen: torch.Generator, dtype=torch.float16) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)


def make_qkv(seed, s: Shapes, dtype):
    gen = torch.Generator().manual_seed(seed)
    return (randn((s.B, s.Hq, s.Sq, s.D), gen, dtype), randn((s.B, s.Hkv, s.Sk, s.D), gen, dtype),
            randn((s.B, s.Hkv, s.Sk, s.D), gen, dtype))


LAYOUTS = ("contiguous", "transposed", "padded", "strided")


def lay_out(t: torch.Tensor, layout: str, device) -> torch.Tensor:
    """A (B, H, S, D) view on `device` with t's values and the memory layout named:
    contiguous; transposed (the storage is (B, S, H, D), as a QKV projection leaves it);
    padded (a window into a longer, wider cache: S rows of 4 * D starting at row 2);
    strided (every other element of the last dim: stride(-1) == 2)."""
    B, H, S, D = t.shape
    if layout == "contiguous":
        return t.contiguous().to(device)
    if layout == "transposed":
        return t.transpose(1, 2).contiguous().to(device).transpose(1, 2)
    if layout == "padded":
        big = torch.zeros(B, H, S + 5, 4 * D, dtype=t.dtype, device=device)
        big[:, :, 2:2 + S, D:2 * D] = t.to(device)
        return big[:, :, 2:2 + S, D:2 * D]
    if layout == "strided":
        big = torch.zeros(B, H, S, D, 2, dtype=t.dtype, device=device)
        big[..., 1] = t.to(device)
        return big[..., 1]
    raise ValueError(layout)


def run(device, q, k, v, *, layouts=None, **kw):
    """The module's (out, lse) for CPU tensors q, k, v, computed on `device`, back on the CPU.
    layouts: one LAYOUTS name per tensor (default: as given)."""
    if layouts is None:
        q, k, v = q.to(device), k.to(device), v.to(device)
    else:
        q, k, v = (lay_out(t, lay, device) for t, lay in zip((q, k, v), layouts))
    res = m.flash_attention(q, k, v, **kw)
    assert isinstance(res, tuple) and len(res) == 2, (
        f"flash_attention must return a tuple (out, lse), got {type(res).__name__}")
    out, lse = res
    assert isinstance(out, torch.Tensor) and isinstance(lse, torch.Tensor), (
        "flash_attention must return two tensors (out, lse)")
    return out.cpu(), lse.cpu()


def check(device, q, k, v, *, causal=False, scale=None, seed=None, check_out=True,
          check_lse=False, what="flash_attention", layouts=None, extra_hint=""):
    """Run, compare out and/or lse with float64 math; the failure hint comes from diagnose()
    (extra_hint, when given, comes first: what this test's inputs single out)."""
    s = Shapes.of(q, k)
    kw = {"causal": True} if causal else {}  # the defaults are left to the module
    if scale is not None:
        kw["scale"] = scale
    out, lse = run(device, q, k, v, layouts=layouts, **kw)
    e_out, e_lse = expected_attention(q, k, v, causal=causal, scale=scale)
    e_out, e_lse = e_out.to(q.dtype), e_lse.float()
    (oa, orr), (la, lr) = OUT_TOL[q.dtype], LSE_TOL[q.dtype]
    inputs = dict(q=q, k=k, v=v, causal=causal, scale=scale, seed=seed)
    if layouts is not None:
        inputs["layouts"] = layouts
    pre = extra_hint + "; " if extra_hint else ""
    out_ok = out.shape == e_out.shape and torch.allclose(
        out.double(), e_out.double(), atol=oa, rtol=orr, equal_nan=False)
    lse_close = ((lse.double() - e_lse.double()).abs() <= la + lr * e_lse.double().abs()) \
        & torch.isfinite(e_lse) if lse.shape == e_lse.shape else None
    lse_ok = lse_close is not None and bool(
        (lse_close | (torch.isinf(e_lse) & (lse == e_lse))).all())
    if check_out:
        hint = diagnose(out, e_out, shapes=s, causal=causal, kind="out", atol=oa, rtol=orr,
                        expected_lse=e_lse, lse_ok=lse_ok if check_lse or lse_ok else None)
        assert_close(out, e_out, what=f"{what}: out", inputs=inputs, atol=oa, rtol=orr,
                     hint=pre + hint)
    if check_lse:
        if lse.shape == e_lse.shape:  # assert_close would let a finite value pass for -inf
            wrong = torch.isinf(e_lse) & (lse != e_lse)
            assert not bool(wrong.any()), (
                f"{what}: lse is {float(lse[wrong][0]):g} for {int(wrong.sum())} queries that see "
                f"no key (first at index {tuple(int(i) for i in wrong.nonzero()[0])}); it must be "
                f"-inf there\n  inputs: {dict(causal=causal, seed=seed, shape=tuple(q.shape))}"
                f"\n  hint: " + pre + diagnose(lse, e_lse, shapes=s, causal=causal, kind="lse",
                                         atol=la, rtol=lr, out_ok=out_ok))
        hint = diagnose(lse, e_lse, shapes=s, causal=causal, kind="lse", atol=la, rtol=lr,
                        out_ok=out_ok)
        assert_close(lse, e_lse, what=f"{what}: lse", inputs=inputs, atol=la, rtol=lr,
                     hint=pre + hint)
    return out, lse


seeds = st.integers(0, 2**31 - 1)
# Under the interpreter one example costs 0.1-0.5 s and shrinking a failure would take
# minutes: on CPU a failing example is reported as found, without the shrink phase.
NO_SHRINK = {} if ON_GPU else dict(phases=[Phase.explicit, Phase.reuse, Phase.generate])


@st.composite
def cases(draw, *, gqa=False):
    """(Shapes, dtype, seed): lengths not multiples of anything, Sq and Sk independent."""
    if gqa:
        hkv = draw(st.sampled_from([1, 2]))
        hq = hkv * draw(st.sampled_from([2, 3] if not ON_GPU else [2, 4]))
    else:
        hkv = hq = draw(st.integers(1, 2))
    s = Shapes(B=draw(st.integers(1, 2)), Hq=hq, Hkv=hkv, Sq=draw(st.integers(1, MAX_LEN)),
               Sk=draw(st.integers(1, MAX_LEN)), D=draw(st.sampled_from(HEAD_DIMS)))
    return s, draw(st.sampled_from(HALF)), draw(seeds)


def growing_scores(seed, s: Shapes, dtype, top: float):
    """q, k, v whose scores rise along the keys to about `top`: the running max grows in every
    tile (the online rescale must be right) and exp(score) overflows float32 when top > 89."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(s.D, generator=gen, dtype=torch.float64)
    u = u / u.norm() * s.D**0.25  # scale * (u . u) = 1 with the default scale
    c = 0.5 + torch.rand(s.B, s.Hq, s.Sq, 1, generator=gen, dtype=torch.float64)
    steps = torch.linspace(0, top / 1.5, s.Sk, dtype=torch.float64)[:, None]
    q = (c * u).to(dtype)
    k = (steps * u + 0.1 * torch.randn(s.B, s.Hkv, s.Sk, s.D, generator=gen,
                                       dtype=torch.float64)).to(dtype)
    v = randn((s.B, s.Hkv, s.Sk, s.D), gen, dtype)
    return q, k, v


# =============================================================================== Task 1
class TestTask1Forward:
    """Non-causal multi-head forward: tiles, the online softmax, out = softmax(q k^T s) v."""

    @pytest.mark.parametrize("dtype", HALF, ids=dname)
    def test_returns_out_and_lse_shapes_and_dtypes(self, device, dtype):
        s = Shapes(2, 2, 2, 5, 7, HEAD_DIMS[0])
        q, k, v = make_qkv(0, s, dtype)
        res = m.flash_attention(q.to(device), k.to(device), v.to(device))
        assert isinstance(res, tuple) and len(res) == 2, (
            f"flash_attention must return a tuple (out, lse), got {type(res).__name__}")
        out, lse = res
        assert tuple(out.shape) == (2, 2, 5, s.D) and out.dtype == dtype, (
            f"out: got {tuple(out.shape)} {out.dtype}, expected (B, Hq, Sq, D) = (2, 2, 5, {s.D}) "
            f"{dtype} (same dtype as q)")
        assert tuple(lse.shape) == (2, 2, 5) and lse.dtype == torch.float32, (
            f"lse: got {tuple(lse.shape)} {lse.dtype}, expected (B, Hq, Sq) = (2, 2, 5) float32")
        assert out.device.type == device.type and lse.device.type == device.type, (
            "out and lse must live on the device of the inputs")

    @pytest.mark.parametrize("dtype", HALF, ids=dname)
    def test_inputs_unmodified(self, device, dtype):
        q, k, v = (t.to(device) for t in make_qkv(1, Shapes(1, 2, 2, 9, 21, HEAD_DIMS[0]), dtype))
        before = [t.clone() for t in (q, k, v)]
        for kw in (dict(causal=True), dict(causal=False, scale=0.5)):
            m.flash_attention(q, k, v, **kw)
            for name, t, b in zip("qkv", (q, k, v), before):
                assert torch.equal(t, b), (
                    f"flash_attention(..., {kw}) modified its input {name} in place "
                    f"({dname(dtype)}): "
                    "scale a copy (or the scores in the kernel), never q itself")

    def test_head_dim_mismatch_raises(self, device):
        gen = torch.Generator().manual_seed(2)
        q = randn((1, 1, 4, 32), gen).to(device)
        k = randn((1, 1, 4, 16), gen).to(device)
        with pytest.raises(ValueError):
            m.flash_attention(q, k, k.clone())

    @pytest.mark.parametrize("which", ["k and v", "v"])
    def test_batch_mismatch_raises(self, device, which):
        """q and k/v disagree on the batch size: ValueError (never a silent broadcast)."""
        gen = torch.Generator().manual_seed(2)
        q = randn((1, 2, 4, 16), gen).to(device)
        k = randn((1 if which == "v" else 2, 2, 4, 16), gen).to(device)
        v = randn((2, 2, 4, 16), gen).to(device)
        with pytest.raises(ValueError):
            m.flash_attention(q, k, v)
            pytest.fail(f"no ValueError for q batch 1, {which} batch 2: check the batch size of "
                        "q against both k and v")

    def test_value_head_dim_mismatch_raises(self, device):
        """q and k agree on D, v does not: ValueError (check v's shape too, not only k's)."""
        gen = torch.Generator().manual_seed(2)
        q = randn((1, 1, 4, 16), gen).to(device)
        k = randn((1, 1, 4, 16), gen).to(device)
        v = randn((1, 1, 4, 32), gen).to(device)
        with pytest.raises(ValueError):
            m.flash_attention(q, k, v)
            pytest.fail("no ValueError for v with head dim 32 while q and k have 16: check v's "
                        "shape as well as k's")

    @pytest.mark.parametrize("d", [16, 32, 64, 128])
    def test_every_head_dim(self, device, d):
        """Every head dim of the contract (16, 32, 64, 128) is supported, causal and GQA too."""
        s = Shapes(1, 2, 1, 21, 35, d)
        q, k, v = make_qkv(16, s, torch.float16)
        try:
            check(device, q, k, v, causal=True, seed=16, check_lse=True,
                  what=f"flash_attention with head dim {d}")
        except ValueError as e:
            pytest.fail(f"flash_attention raised ValueError({e}) for head dim D = {d}, one of the "
                        "contract's head dims (16, 32, 64, 128): accept it and size the kernel's "
                        "D tiles from it")

    @pytest.mark.parametrize("rot", range(3), ids=lambda r: "qkv:" + "-".join(
        LAYOUTS[1 + (r + i) % 3] for i in range(3)))
    def test_non_contiguous_inputs(self, device, rot):
        """Views are valid inputs: a transposed (B, S, H, D) storage, a window of a wider and
        longer cache, a last dim with stride 2. Each of q, k, v takes each layout in turn."""
        s = Shapes(2, 4, 2, 19, 27, HEAD_DIMS[0])
        q, k, v = make_qkv(17, s, torch.float16)
        layouts = tuple(LAYOUTS[1 + (rot + i) % 3] for i in range(3))
        check(device, q, k, v, causal=True, seed=17, check_lse=True, layouts=layouts,
              what="flash_attention with non-contiguous q, k, v",
              extra_hint="if the tests with contiguous inputs pass, look at the strides: pass "
                         "each tensor's own t.stride(0..2) (batch, head, row) to the kernel and "
                         "use them for every offset, q's for q, k's for k, v's for v (out has its "
                         "own), never sizes like Sq * D; a last dim with stride != 1 needs "
                         ".contiguous() (or its stride) too")

    @pytest.mark.parametrize("dtype", HALF, ids=dname)
    def test_single_key_returns_its_value(self, device, dtype):
        """One key: its softmax weight is 1, so every query outputs exactly that value."""
        s = Shapes(1, 2, 2, 19, 1, HEAD_DIMS[-1])
        q, k, v = make_qkv(3, s, dtype)
        out, _ = run(device, q, k, v)
        assert_close(out, v.expand(1, 2, 19, s.D), what="out with a single key",
                     inputs=dict(q=q, k=k, v=v, seed=3),
                     hint="with one key every weight is 1: out = v for every query")

    def test_zero_queries_average_the_values(self, device):
        """q = 0: all scores are 0, the weights uniform, and out is the mean of v (any length)."""
        s = Shapes(1, 1, 1, 7, 37, HEAD_DIMS[0])
        q, k, v = make_qkv(4, s, torch.float16)
        q = torch.zeros_like(q)
        out, _ = run(device, q, k, v)
        expected = v.double().mean(dim=2, keepdim=True).expand(1, 1, 7, s.D).to(torch.float16)
        assert_close(out, expected, what="out with q = 0", inputs=dict(q=q, k=k, v=v, seed=4),
                     hint="q = 0 gives uniform weights 1 / Sk: out must be mean(v) over the keys; "
                          "check that every key tile is visited once and the sum l counts them all")

    @settings(max_examples=12, **NO_SHRINK)
    @given(case=cases())
    def test_matches_float64(self, device, case):
        s, dtype, seed = case
        q, k, v = make_qkv(seed, s, dtype)
        check(device, q, k, v, seed=seed)

    @pytest.mark.parametrize("dtype", HALF, ids=dname)
    def test_growing_max_needs_the_rescale(self, device, dtype):
        """Scores rise along the keys: every tile raises the running max, so acc and l must be
        rescaled by exp(m_old - m_new) each time; scores reach 120, where exp overflows fp32."""
        s = Shapes(1, 2, 2, 5, 300 if ON_GPU else 70, HEAD_DIMS[0])
        q, k, v = growing_scores(5, s, dtype, top=120.0)
        check(device, q, k, v, seed=5, check_lse=True, what="flash_attention, scores rising to 120")

    @pytest.mark.parametrize("dtype", HALF, ids=dname)
    def test_scores_far_below_zero(self, device, dtype):
        """All scores between about -270 and -150: exp(score) is 0 in float32, so the running
        max must start at -inf and follow the scores down (it is what makes softmax exact)."""
        s = Shapes(1, 2, 2, 7, 40, HEAD_DIMS[0])
        gen = torch.Generator().manual_seed(18)
        u = torch.randn(s.D, generator=gen, dtype=torch.float64)
        u = u / u.norm() * s.D**0.25  # scale * (u . u) = 1 with the default scale
        c = 1.0 + 0.5 * torch.rand(s.B, s.Hq, s.Sq, 1, generator=gen, dtype=torch.float64)
        steps = 150.0 + 30.0 * torch.rand(s.B, s.Hkv, s.Sk, 1, generator=gen, dtype=torch.float64)
        q = (-c * u).to(dtype)
        k = (steps * u + 0.1 * torch.randn(s.B, s.Hkv, s.Sk, s.D, generator=gen,
                                           dtype=torch.float64)).to(dtype)
        v = randn((s.B, s.Hkv, s.Sk, s.D), gen, dtype)
        check(device, q, k, v, seed=18, check_lse=True,
              what="flash_attention, every score below -150")

    @pytest.mark.parametrize("dtype", HALF, ids=dname)
    def test_large_values_keep_their_dtype(self, device, dtype):
        """v of size ~1e4 (fp16) or ~1e6 (bf16, whose range is float32's): out keeps them; it is
        computed in float32 and rounded once to q's dtype, not to float16."""
        s = Shapes(1, 2, 2, 9, 20, HEAD_DIMS[0])
        q, k, v = make_qkv(19, s, dtype)
        factor = 2.0**13 if dtype == torch.float16 else 2.0**20
        v = (v.double() * factor).to(dtype)
        out, _ = run(device, q, k, v)
        expected = expected_attention(q, k, v)[0].to(dtype)
        oa, orr = OUT_TOL[dtype]  # the usual tolerance, scaled with v
        assert_close(out, expected, what=f"out with |v| up to {float(v.abs().max()):.3g}",
                     inputs=dict(q=q, k=k, v=v, seed=19), atol=oa * factor, rtol=orr,
                     hint=f"out must be stored in q's dtype ({dname(dtype)}) straight from the "
                          "float32 accumulator: is it (or p, or acc) converted to float16 "
                          "somewhere (inf past 65504), or accumulated in a narrower type?")

    def test_default_arguments(self, device):
        """causal=False and scale=None (meaning D ** -0.5) are the defaults: leaving them out,
        passing them, and passing scale=D ** -0.5 all give the same float64-exact result."""
        s = Shapes(1, 2, 2, 13, 21, HEAD_DIMS[0])
        q, k, v = make_qkv(20, s, torch.float16)
        q = 2 * q  # scores that a wrong scale changes visibly
        e_out, e_lse = expected_attention(q, k, v)
        (oa, orr), (la, lr) = OUT_TOL[q.dtype], LSE_TOL[q.dtype]
        for kw in ({}, dict(causal=False, scale=None), dict(scale=s.D**-0.5)):
            out, lse = run(device, q, k, v, **kw)
            hint = ("defaults: causal=False (every query sees every key) and scale=None, which "
                    f"means D ** -0.5 = {s.D**-0.5:g}; check the signature's defaults and the "
                    "None test")
            assert_close(out, e_out.to(q.dtype), what=f"out of flash_attention(q, k, v, **{kw})",
                         inputs=dict(q=q, k=k, v=v, seed=20), atol=oa, rtol=orr, hint=hint)
            assert_close(lse, e_lse.float(), what=f"lse of flash_attention(q, k, v, **{kw})",
                         inputs=dict(q=q, k=k, v=v, seed=20), atol=la, rtol=lr, hint=hint)

    @pytest.mark.parametrize("scale", [0.3, 1.0, 0.0, -1.0])
    def test_explicit_scale(self, device, scale):
        s = Shapes(1, 2, 2, 11, 37, HEAD_DIMS[0])
        q, k, v = make_qkv(6, s, torch.float16)
        q = q * 0.5  # keep scale * score moderate for scale = 1
        check(device, q, k, v, scale=scale, seed=6, check_lse=True,
              what=f"flash_attention(scale={scale})")


# =============================================================================== Task 2
class TestTask2LogSumExp:
    """lse = log(sum_j exp(s_ij)) per query, natural log, float32."""

    @settings(max_examples=10, **NO_SHRINK)
    @given(case=cases())
    def test_lse_matches_float64(self, device, case):
        s, dtype, seed = case
        q, k, v = make_qkv(seed, s, dtype)
        check(device, q, k, v, seed=seed, check_out=False, check_lse=True)

    def test_equal_scores_give_log_of_the_key_count(self, device):
        """q = 0: every score is 0, so lse = ln(Sk) (not log2(Sk))."""
        s = Shapes(1, 1, 1, 3, 37, HEAD_DIMS[0])
        q, k, v = make_qkv(7, s, torch.float16)
        q = torch.zeros_like(q)
        _, lse = run(device, q, k, v)
        expected = torch.full((1, 1, 3), math.log(37), dtype=torch.float32)
        assert_close(lse, expected, what="lse with q = 0 and 37 keys",
                     inputs=dict(q=q, k=k, v=v, seed=7), atol=1e-3, rtol=1e-4,  # exact math
                     hint=diagnose(lse, expected, shapes=s, causal=False, kind="lse",
                                   atol=1e-3, rtol=1e-4, out_ok=True))

    def test_lse_with_large_scores(self, device):
        """Scores up to 120: lse = m + log(l) needs the running max added back."""
        s = Shapes(1, 1, 1, 6, 60, HEAD_DIMS[0])
        q, k, v = growing_scores(8, s, torch.float16, top=120.0)
        check(device, q, k, v, seed=8, check_out=True, check_lse=True,
              what="flash_attention, scores rising to 120")


# =============================================================================== Task 3
PROBE_D = 128 if ON_GPU else 64
PROBE_CASES = ([(72, 128, False), (72, 128, True), (128, 72, True), (100, 100, True)] if ON_GPU
               else [(24, 40, False), (24, 40, True), (40, 24, True), (37, 37, True)])


def weights_probe(device, sq, sk, causal, collect=False):
    """q = 0 and v = identity: out[i, j] must be the weight of key j for query i.
    collect: return (number of wrong weights, the AssertionError) instead of raising."""
    s = Shapes(1, 1, 1, sq, sk, PROBE_D)
    q = torch.zeros(1, 1, sq, PROBE_D, dtype=torch.float16)
    k = randn((1, 1, sk, PROBE_D), torch.Generator().manual_seed(9))
    v = torch.eye(sk, PROBE_D, dtype=torch.float16)[None, None]
    out, _ = run(device, q, k, v, causal=causal)
    vis = visible(sq, sk, causal).double()
    w = vis / vis.sum(dim=-1, keepdim=True).clamp_min(1)  # a row that sees nothing: 0
    expected = torch.zeros(1, 1, sq, PROBE_D, dtype=torch.float64)
    expected[..., :sk] = w
    expected = expected.to(torch.float16)
    atol, rtol = 1e-3, 1e-2  # weights >= 1/Sk, rounded once to fp16
    try:
        assert_close(out, expected, what=f"attention weights (q = 0, v = identity), causal={causal}",
                     inputs=dict(Sq=sq, Sk=sk, causal=causal), atol=atol, rtol=rtol,
                     hint=diagnose(out, expected, shapes=s, causal=causal, kind="weights",
                                   atol=atol, rtol=rtol))
    except AssertionError as e:
        if not collect:
            raise
        n_bad = int((~torch.isclose(out.double(), expected.double(), atol=atol, rtol=rtol)).sum()) \
            if out.shape == expected.shape else 1 << 30
        return n_bad, e
    return None


class TestTask3Causal:
    """Causal, aligned bottom-right: query i sees keys j <= i + (Sk - Sq); whole tiles above
    the diagonal are skipped; a query that sees no key outputs zeros and lse = -inf."""

    @settings(max_examples=12, **NO_SHRINK)
    @given(case=cases())
    def test_causal_matches_float64(self, device, case):
        s, dtype, seed = case
        q, k, v = make_qkv(seed, s, dtype)
        check(device, q, k, v, causal=True, seed=seed, check_lse=True,
              what="flash_attention(causal=True)")

    @pytest.mark.parametrize("sq,sk,causal", PROBE_CASES,
                             ids=[f"Sq{a}-Sk{b}-{'causal' if c else 'full'}" for a, b, c in PROBE_CASES])
    def test_weights_probe(self, device, sq, sk, causal):
        """q = 0 and v[j] = e_j (one-hot): then out[i, j] is the weight of key j for query i,
        1 / (number of keys query i sees) where it sees key j, else 0."""
        weights_probe(device, sq, sk, causal)

    def test_weights_probe_every_offset(self, device):
        """The probe for many (Sq, Sk): the diagonal offset Sk - Sq just below, at and just past
        multiples of 16 (tile sizes are powers of two), either sign, several query tiles."""
        pairs = [(sq, sq + d) for sq in (16, 23, 33) for d in (-17, -16, -15, -1, 1, 15, 16, 17, 31)
                 if 1 <= sq + d <= PROBE_D]
        fails = [(r, sq, sk) for sq, sk in pairs
                 if (r := weights_probe(device, sq, sk, True, collect=True)) is not None]
        if fails:  # show the pair with the most wrong weights: its pattern says the most
            (_, err), _, _ = max(fails, key=lambda f: f[0][0])
            raise AssertionError(
                f"the causal weights are wrong for {len(fails)} of {len(pairs)} (Sq, Sk) pairs: "
                + ", ".join(f"({sq}, {sk}): {r[0]} wrong" for r, sq, sk in fails)
                + "; the worst one:\n" + str(err)) from None

    @pytest.mark.parametrize("dtype", HALF, ids=dname)
    def test_queries_that_see_no_key(self, device, dtype):
        """Sq > Sk: the first Sq - Sk queries see no key: zeros and lse = -inf, never NaN.
        Sq - Sk = 26 is no multiple of a tile: some query tiles mix such rows with rows that
        see keys, and those rows go through the key loop while they have seen nothing."""
        s = Shapes(1, 2, 2, 45, 19, HEAD_DIMS[0])
        q, k, v = make_qkv(10, s, dtype)
        check(device, q, k, v, causal=True, seed=10, check_lse=True,
              what="flash_attention(causal=True) with Sq > Sk")

    def test_one_query_sees_every_key(self, device):
        """Sq = 1 (a decode step) sees every key when aligned bottom-right: causal == full."""
        s = Shapes(1, 2, 2, 1, 45, HEAD_DIMS[0])
        q, k, v = make_qkv(11, s, torch.float16)
        check(device, q, k, v, causal=True, seed=11, check_lse=True,
              what="flash_attention(causal=True), one query (it sees all 45 keys)")


# =============================================================================== Task 4
class TestTask4GroupedQuery:
    """GQA/MQA: query head h reads kv head h // (Hq // Hkv), without copying K/V."""

    def test_heads_not_divisible_raises(self, device):
        gen = torch.Generator().manual_seed(12)
        q = randn((1, 3, 4, 16), gen).to(device)
        k = randn((1, 2, 4, 16), gen).to(device)
        with pytest.raises(ValueError):
            m.flash_attention(q, k, k.clone())

    @pytest.mark.parametrize("hq,hkv", [(4, 2), (6, 2), (3, 1)])
    def test_gqa_fixed(self, device, hq, hkv):
        s = Shapes(2, hq, hkv, 21, 35, HEAD_DIMS[0])
        q, k, v = make_qkv(13, s, torch.float16)
        check(device, q, k, v, causal=hq % 2 == 0, seed=13, check_lse=True,
              what=f"flash_attention with Hq={hq}, Hkv={hkv}")

    @settings(max_examples=10, **NO_SHRINK)
    @given(case=cases(gqa=True), causal=st.booleans())
    def test_gqa_matches_float64(self, device, case, causal):
        s, dtype, seed = case
        q, k, v = make_qkv(seed, s, dtype)
        check(device, q, k, v, causal=causal, seed=seed, check_lse=True,
              what="flash_attention (GQA)")

    @pytest.mark.gpu
    def test_gqa_does_not_copy_kv(self, device):
        """Peak memory of one call stays below what repeating K and V per query head costs."""
        s = Shapes(1, 32, 4, 4096, 4096, 128)
        q, k, v = (t.to(device) for t in make_qkv(14, s, torch.bfloat16))
        m.flash_attention(q, k, v)  # compile / autotune outside the measurement
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        m.flash_attention(q, k, v)
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - base
        repeated = 2 * k.numel() * k.element_size() * (s.Hq // s.Hkv - 1)
        allowed = q.numel() * q.element_size() + 4 * s.Hq * s.Sq + repeated // 2
        assert extra < allowed, (
            f"one call allocated {extra / 2**20:.0f} MiB beyond its inputs; out and lse need "
            f"{(q.numel() * 2 + 4 * s.Hq * s.Sq) / 2**20:.0f} MiB, repeating K/V per query head "
            f"would cost {repeated / 2**20:.0f} MiB more: index kv head h // (Hq // Hkv) inside "
            "the kernel instead of expanding k and v")


# =============================================================================== GPU: large
LARGE = [(2, 8, 2, 1024, 1024, 128, True), (1, 4, 4, 1000, 3000, 64, True),
         (1, 8, 1, 2048 + 17, 2048 + 17, 128, False)]


@pytest.mark.gpu
@pytest.mark.parametrize("B,hq,hkv,sq,sk,d,causal", LARGE)
@pytest.mark.parametrize("dtype", HALF, ids=dname)
def test_large_shapes_on_gpu(device, B, hq, hkv, sq, sk, d, causal, dtype):
    s = Shapes(B, hq, hkv, sq, sk, d)
    q, k, v = make_qkv(15, s, dtype)
    check(device, q, k, v, causal=causal, seed=15, check_lse=True, what="flash_attention (large)")
