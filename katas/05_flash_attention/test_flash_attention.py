"""Kata 05: FlashAttention forward in Triton. Tasks as in README.md.

Expected values come from `diagnose_flash.expected_attention`: float64 torch math with an
explicit bottom-right causal mask and K/V expanded by repeat_interleave.

Each task's class runs its contract checks first (shapes, dtypes, errors, a Triton kernel ran),
then its probes: small inputs that isolate one bug each (q = 0 with v = identity shows the
weight of every key; scores that rise along the keys need the online rescale; ...), whose
failure hint names that bug; then random cases, whose hint only says where the error lies.
A check uses only the features of its own task and the tasks before it.

Under the Triton interpreter (no GPU) every call costs about 10 ms per (program, key tile):
the CPU shapes are the smallest that still show each bug with 16-wide tiles (the README's
interpreter tile size): lengths just over one or two tiles, one or two heads, D = 16 where
the head dim does not matter. On a GPU the random cases draw larger shapes.
"""
from __future__ import annotations

import math
import os
import sys

import pytest
import torch
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from harness import assert_triton_ran, count_triton_launches, load_kata_module, max_examples

sys.path.insert(0, os.path.dirname(__file__))
from diagnose_flash import (  # noqa: E402
    LSE_TOL, assert_close, NO_KEY, OUT_TOL, Shapes, describe_error, diagnose, expected_attention,
    looks_like_interpreter_garbage, visible, wrap,
)

m = load_kata_module("flash_attention")

HALF = [torch.float16, torch.bfloat16]
ON_GPU = torch.cuda.is_available()
HEAD_DIMS = [64, 128] if ON_GPU else [16, 32]
ALL_HEAD_DIMS = [16, 32, 64, 128]  # the contract's
MAX_LEN = 700 if ON_GPU else 40  # CPU: up to three 16-wide tiles, under the interpreter
D_CPU = 64 if ON_GPU else 16  # the head dim of checks where it does not matter


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
        "flash_attention must return two tensors (out, lse), got "
        f"({type(out).__name__}, {type(lse).__name__})")
    return out.cpu(), lse.cpu()


def check_no_key_rows(out, lse, s: Shapes, causal: bool, what: str, inputs: dict) -> None:
    """Causal with Sq > Sk: the first Sq - Sk queries see no key; their out rows must be exactly
    0 and (when lse is given) their lse exactly -inf. Checked on its own, before the values, so
    that its hint is the only one (a NaN there is not the interpreter's bf16 garbage)."""
    n = s.Sq - s.Sk
    if not causal or n <= 0 or tuple(out.shape) != (s.B, s.Hq, s.Sq, s.D):
        return
    rows = out[:, :, :n].double()
    bad_out = ~(rows == 0).all(dim=-1)  # NaN != 0: a NaN row is bad
    bad_lse = torch.zeros_like(bad_out)
    if lse is not None and tuple(lse.shape) == (s.B, s.Hq, s.Sq):
        bad_lse = ~(lse[:, :, :n] == -math.inf)
    if not bool((bad_out | bad_lse).any()):
        return
    which = "out" if bool(bad_out.any()) else "lse"
    idx = tuple(int(i) for i in (bad_out if which == "out" else bad_lse).nonzero()[0])
    got = (f"out row {rows[idx].flatten()[:4].tolist()}..." if which == "out"
           else f"lse {float(lse[idx]):g}")
    raise AssertionError(
        f"{what}: the first Sq - Sk = {n} queries see no key; {int(bad_out.sum())} of their out "
        f"rows are not all zeros"
        + (f" and {int(bad_lse.sum())} of their lse values are not -inf" if lse is not None else "")
        + f" (first: (b, h, i) = {idx}, {got})\n  inputs: {describe_inputs(inputs)}"
        f"\n  hint: {wrap(NO_KEY)}")


def describe_inputs(inputs: dict) -> str:
    return ", ".join(f"{k} {tuple(t.shape)} {dname(t.dtype)}" if isinstance(t, torch.Tensor)
                     else f"{k}={t!r}" for k, t in inputs.items())


def no_nan(actual, expected, *, what: str, inputs: dict, hint: str) -> None:
    """NaN or inf where the expected value is finite, reported with this check's own hint
    (assert_close would add the interpreter's bf16 hint, which does not apply to fp16)."""
    if actual.shape != expected.shape:
        return
    bad = ~torch.isfinite(actual) & torch.isfinite(expected)
    if bool(bad.any()):
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.numel()} values are NaN or inf where the expected "
            f"values are finite (first at index {idx}: {float(actual[idx]):g}, expected "
            f"{float(expected[idx]):g})\n  inputs: {describe_inputs(inputs)}"
            + (f"\n  hint: {wrap(hint)}" if hint else ""))


def check(device, q, k, v, *, causal=False, scale=None, seed=None, check_out=True,
          check_lse=False, what="flash_attention", layouts=None, extra_hint="", probe=None):
    """Run, compare out and/or lse with float64 math.

    probe: the diagnoses this input isolates (diagnose's `allow` tags); its failure hint names
    the bug. None: a random case, whose hint says only where the error lies (describe_error).
    extra_hint, when given, comes first: what this test's inputs single out."""
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
    check_no_key_rows(out, lse if check_lse else None, s, causal, what, inputs)
    pre = extra_hint + "; " if extra_hint else ""
    out_ok = out.shape == e_out.shape and torch.allclose(
        out.double(), e_out.double(), atol=oa, rtol=orr, equal_nan=False)
    lse_close = ((lse.double() - e_lse.double()).abs() <= la + lr * e_lse.double().abs()) \
        & torch.isfinite(e_lse) if lse.shape == e_lse.shape else None
    lse_ok = lse_close is not None and bool(
        (lse_close | (torch.isinf(e_lse) & (lse == e_lse))).all())

    def hint_for(actual, expected, kind, atol, rtol):
        if q.dtype == torch.bfloat16 and looks_like_interpreter_garbage(actual, expected):
            return ""  # assert_close prints the interpreter's hint: cast to float32 after tl.load
        if probe is None:
            return pre + describe_error(actual, expected, shapes=s, causal=causal, kind=kind,
                                        atol=atol, rtol=rtol)
        return pre + diagnose(actual, expected, shapes=s, causal=causal, kind=kind, atol=atol,
                              rtol=rtol, expected_lse=e_lse if kind == "out" else None,
                              lse_ok=(lse_ok if check_lse or lse_ok else None),
                              out_ok=out_ok, allow=probe)

    if check_out:
        hint = hint_for(out, e_out, "out", oa, orr)
        if q.dtype == torch.float16:  # fp16 is computed right under the interpreter: NaN is ours
            no_nan(out, e_out, what=f"{what}: out", inputs=inputs, hint=hint)
        assert_close(out, e_out, what=f"{what}: out", inputs=inputs, atol=oa, rtol=orr, hint=hint)
    if check_lse:
        if lse.shape == e_lse.shape:  # assert_close would let a finite value pass for -inf
            wrong = torch.isinf(e_lse) & (lse != e_lse)
            assert not bool(wrong.any()), (
                f"{what}: lse is {float(lse[wrong][0]):g} for {int(wrong.sum())} queries that see "
                f"no key (first at index {tuple(int(i) for i in wrong.nonzero()[0])}); it must be "
                f"-inf there\n  inputs: {dict(causal=causal, seed=seed, shape=tuple(q.shape))}"
                f"\n  hint: {wrap(NO_KEY)}")
        hint = hint_for(lse, e_lse, "lse", la, lr)
        if q.dtype == torch.float16:
            no_nan(lse, e_lse, what=f"{what}: lse", inputs=inputs, hint=hint)
        assert_close(lse, e_lse, what=f"{what}: lse", inputs=inputs, atol=la, rtol=lr, hint=hint)
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
    # Under the interpreter a call costs ~10 ms per (program, key tile): at most 4 (batch, head)
    # pairs there, so that one example stays under ~0.5 s.
    b = draw(st.integers(1, 2 if ON_GPU or hq <= 2 else 1))
    s = Shapes(B=b, Hq=hq, Hkv=hkv, Sq=draw(st.integers(1, MAX_LEN)),
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


PROBE_D = 128 if ON_GPU else 64  # v = identity needs D >= Sk


def weights_probe(device, sq, sk, causal, collect=False):
    """q = 0 and v = identity: out[i, j] must be the weight of key j for query i.
    collect: return (number of wrong weights, the AssertionError) instead of raising."""
    s = Shapes(1, 1, 1, sq, sk, PROBE_D)
    q = torch.zeros(1, 1, sq, PROBE_D, dtype=torch.float16)
    k = randn((1, 1, sk, PROBE_D), torch.Generator().manual_seed(9))
    v = torch.eye(sk, PROBE_D, dtype=torch.float16)[None, None]
    inputs = dict(Sq=sq, Sk=sk, causal=causal)
    what = f"attention weights (q = 0, v = identity), causal={causal}"
    vis = visible(sq, sk, causal).double()
    w = vis / vis.sum(dim=-1, keepdim=True).clamp_min(1)  # a row that sees nothing: 0
    expected = torch.zeros(1, 1, sq, PROBE_D, dtype=torch.float64)
    expected[..., :sk] = w
    expected = expected.to(torch.float16)
    atol, rtol = 1e-3, 1e-2  # weights >= 1/Sk, rounded once to fp16
    out = None
    try:
        out, _ = run(device, q, k, v, causal=True) if causal else run(device, q, k, v)
        check_no_key_rows(out, None, s, causal, what, inputs)
        hint = diagnose(out, expected, shapes=s, causal=causal, kind="weights", atol=atol,
                        rtol=rtol, allow={"nokey", "weights"})
        no_nan(out, expected, what=what, inputs=inputs, hint=hint)  # fp16: NaN is not garbage
        assert_close(out, expected, what=what, inputs=inputs, atol=atol, rtol=rtol, hint=hint)
    except AssertionError as e:
        if not collect:
            raise
        n_bad = int((~torch.isclose(out.double(), expected.double(), atol=atol, rtol=rtol)).sum()) \
            if out is not None and out.shape == expected.shape else 1 << 30
        return n_bad, e
    return None


def head_probe(device, B: int, hq: int, hkv: int, hint: str) -> None:
    """q = 0 (uniform weights) and v of kv head g in batch b all equal to 10 b + g + 1: the
    output of query head h says which (batch, kv head) it read."""
    sq, sk = 3, 5
    q = torch.zeros(B, hq, sq, D_CPU, dtype=torch.float16)
    k = randn((B, hkv, sk, D_CPU), torch.Generator().manual_seed(23))
    tag = 10 * torch.arange(B)[:, None] + torch.arange(hkv)[None, :] + 1  # (B, Hkv)
    v = tag[:, :, None, None].expand(B, hkv, sk, D_CPU).to(torch.float16)
    out, _ = run(device, q, k, v)
    read = out[:, :, :, 0].double().mean(dim=-1)  # (B, Hq)
    wrong = []
    for b in range(B):
        for h in range(hq):
            want = 10 * b + h // (hq // hkv) + 1
            got = float(read[b, h])
            if abs(got - want) > 0.05:
                src = (f"kv head {round(got) % 10 - 1} of batch {round(got) // 10}"
                       if abs(got - round(got)) < 0.05 and 1 <= round(got) % 10 <= hkv
                       else f"no single kv head (value {got:.3g})")
                wrong.append(f"query head {h} of batch {b} read {src}, not kv head "
                             f"{h // (hq // hkv)} of batch {b}")
    assert not wrong, (
        f"head offsets with B = {B}, Hq = {hq}, Hkv = {hkv} (q = 0, v of kv head g in batch b = "
        f"10 b + g + 1; q {tuple(q.shape)}, k, v {tuple(k.shape)} float16, seed 23): "
        f"{len(wrong)} of {B * hq} query heads read the wrong k, v\n  " + "\n  ".join(wrong[:4])
        + f"\n  hint: {wrap(hint)}")


def scale_used(out, q, k, v, dtype, candidates: dict) -> str | None:
    """The name of the candidate scale whose float64 output `out` equals, if any."""
    oa, orr = OUT_TOL[dtype]
    for name, sc in candidates.items():
        e = expected_attention(q, k, v, scale=sc)[0].to(dtype)
        if out.shape == e.shape and torch.allclose(out.double(), e.double(), atol=oa, rtol=orr):
            return name
    return None


# =============================================================================== Task 1
class TestTask1Forward:
    """Non-causal multi-head forward (Hq == Hkv): tiles, the online softmax, out only."""

    @pytest.mark.parametrize("dtype", HALF, ids=dname)
    def test_returns_out_and_lse_shapes_and_dtypes(self, device, dtype):
        s = Shapes(2, 3, 3, 5, 7, D_CPU)
        q, k, v = make_qkv(0, s, dtype)
        res = m.flash_attention(q.to(device), k.to(device), v.to(device))
        assert isinstance(res, tuple) and len(res) == 2, (
            f"flash_attention must return a tuple (out, lse), got {type(res).__name__}")
        out, lse = res
        assert tuple(out.shape) == (2, 3, 5, s.D) and out.dtype == dtype, (
            f"out: got {tuple(out.shape)} {out.dtype}, expected (B, Hq, Sq, D) = (2, 3, 5, {s.D}) "
            f"{dtype} (same dtype as q)")
        assert tuple(lse.shape) == (2, 3, 5) and lse.dtype == torch.float32, (
            f"lse: got {tuple(lse.shape)} {lse.dtype}, expected (B, Hq, Sq) = (2, 3, 5) float32")
        assert out.device.type == device.type and lse.device.type == device.type, (
            f"out and lse must live on the device of the inputs ({device.type}), got "
            f"{out.device.type} and {lse.device.type}")

    def test_a_triton_kernel_runs(self, device):
        """The task is a Triton kernel: a torch version (SDPA, or the math in torch ops) gives
        the right numbers but is not the kata."""
        q, k, v = (t.to(device) for t in make_qkv(21, Shapes(1, 1, 1, 5, 7, D_CPU), torch.float16))
        with count_triton_launches() as launches:
            m.flash_attention(q, k, v)
        assert_triton_ran(launches, "flash_attention(q, k, v)")

    @pytest.mark.parametrize("dtype", HALF, ids=dname)
    def test_inputs_unmodified(self, device, dtype):
        q, k, v = (t.to(device) for t in make_qkv(1, Shapes(1, 1, 1, 9, 21, D_CPU), dtype))
        before = [t.clone() for t in (q, k, v)]
        for kw in ({}, dict(scale=0.5)):
            m.flash_attention(q, k, v, **kw)
            for name, t, b in zip("qkv", (q, k, v), before):
                assert torch.equal(t, b), (
                    f"flash_attention(q, k, v, **{kw}) modified its input {name} in place "
                    f"({dname(dtype)}, q {tuple(q.shape)}): "
                    "scale a copy (or the scores in the kernel), never q itself")

    def test_head_dim_mismatch_raises(self, device):
        gen = torch.Generator().manual_seed(2)
        q = randn((1, 1, 4, 32), gen).to(device)
        k = randn((1, 1, 4, 16), gen).to(device)
        with pytest.raises(ValueError):
            m.flash_attention(q, k, k.clone())
            pytest.fail("no ValueError for q with head dim 32 and k, v with 16: compare "
                        "q.shape[-1] with k's and v's")

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

    @pytest.mark.parametrize("d", ALL_HEAD_DIMS, ids=lambda d: f"D{d}")
    def test_every_head_dim_is_accepted(self, device, d):
        """Every head dim of the contract (16, 32, 64, 128) runs and gives (B, Hq, Sq, D)."""
        q, k, v = (t.to(device) for t in make_qkv(16, Shapes(1, 1, 1, 5, 7, d), torch.float16))
        try:
            out, _ = m.flash_attention(q, k, v)
        except ValueError as e:
            pytest.fail(f"flash_attention raised ValueError({e}) for head dim D = {d}, one of the "
                        "contract's head dims (16, 32, 64, 128): accept it and size the kernel's "
                        "D tiles from it")
        assert tuple(out.shape) == (1, 1, 5, d), (
            f"out has shape {tuple(out.shape)} for head dim {d}, expected (1, 1, 5, {d})")

    # ---- probes: each input isolates one bug, and its hint names that bug
    def test_weights_probe(self, device):
        """q = 0 and v[j] = e_j (one-hot): out[i, j] is the weight of key j for query i, 1 / Sk
        for every key. 40 keys: two whole 16-wide tiles and a partial one; 20 queries: a whole
        and a partial query tile. Shows which keys each query sees, whatever the scale."""
        weights_probe(device, 20, 40, False)

    @pytest.mark.parametrize("dtype", HALF, ids=dname)
    def test_default_arguments(self, device, dtype):
        """causal=False and scale=None (meaning D ** -0.5) are the defaults: leaving them out,
        passing them, and passing scale=D ** -0.5 all give the float64 result. One 16 x 16
        tile: no rescale, no partial tile, only the scale can be wrong."""
        s = Shapes(1, 1, 1, 16, 16, D_CPU)
        q, k, v = make_qkv(20, s, dtype)
        q = (2 * q.double()).to(dtype)  # scores that a wrong scale changes visibly
        e_out = expected_attention(q, k, v)[0].to(dtype)
        oa, orr = OUT_TOL[dtype]
        for kw in ({}, dict(causal=False, scale=None), dict(scale=s.D**-0.5)):
            out, _ = run(device, q, k, v, **kw)
            if dtype == torch.bfloat16 and looks_like_interpreter_garbage(out, e_out):
                hint = ""  # assert_close names the interpreter's bf16 problem
            elif scale_used(out, q, k, v, dtype, {"1": 1.0}) == "1":
                explicit, _ = run(device, q, k, v, scale=s.D**-0.5)
                if scale_used(explicit, q, k, v, dtype, {"1": 1.0}) == "1":
                    hint = ("out equals attention with scale = 1 whatever scale is passed: the "
                            "softmax scale is never applied. Multiply the scores by it (times "
                            "log2(e) with exp2; log2(e) alone is no scale)")
                else:
                    hint = (f"out equals attention with scale = 1 when scale is left out; "
                            f"scale=None means D ** -0.5 = {s.D**-0.5:g}: check the signature's "
                            "defaults and the None test")
            else:
                hint = ("one whole tile of 16 keys with the default arguments: causal=False (every "
                        f"query sees every key) and scale=None, meaning D ** -0.5 = {s.D**-0.5:g}; "
                        "out matches neither that scale nor scale = 1: if test_weights_probe "
                        "passes, compare the scores (q . k * scale, times log2(e) with exp2) with "
                        "a torch version")
            assert_close(out, e_out, what=f"out of flash_attention(q, k, v, **{kw})",
                         inputs=dict(q=q, k=k, v=v, seed=20), atol=oa, rtol=orr, hint=hint)

    @pytest.mark.parametrize("scale", [0.3, 1.0, 0.0, -1.0])
    def test_explicit_scale(self, device, scale):
        """A given scale is used as is, 0 and negative ones too. One 16 x 16 tile."""
        s = Shapes(1, 1, 1, 16, 16, D_CPU)
        q, k, v = make_qkv(6, s, torch.float16)
        q = q * 0.5  # keep scale * score moderate for scale = 1
        out, _ = run(device, q, k, v, scale=scale)
        e_out = expected_attention(q, k, v, scale=scale)[0].to(torch.float16)
        used = scale_used(out, q, k, v, torch.float16, {"the default D ** -0.5": s.D**-0.5,
                                                         "1": 1.0, "-scale": -scale})
        if used == "the default D ** -0.5":
            hint = (f"scale={scale} gave the default scale D ** -0.5: test `scale is None`, not "
                    "`not scale` or `scale or ...`; a given scale is used as is, even 0 or "
                    "negative")
        elif used == "1":
            hint = ("out equals attention with scale = 1: the given scale is not applied to the "
                    "scores (times log2(e) with exp2)")
        else:
            hint = (f"scale={scale}: the scores are q . k * scale, with the scale used as is, even "
                    "0 or negative (with exp2, multiply by log2(e) as well, once)")
        assert_close(out, e_out, what=f"out of flash_attention(q, k, v, scale={scale})",
                     inputs=dict(q=q, k=k, v=v, scale=scale, seed=6), hint=hint,
                     atol=OUT_TOL[torch.float16][0], rtol=OUT_TOL[torch.float16][1])

    def test_growing_max_needs_the_rescale(self, device):
        """Scores rise along the keys: every tile raises the running max, so acc and l must be
        rescaled by exp(m_old - m_new) each time; scores reach 120, where exp overflows fp32."""
        s = Shapes(1, 1, 1, 5, 300 if ON_GPU else 48, D_CPU)
        q, k, v = growing_scores(5, s, torch.float16, top=120.0)
        out, _ = run(device, q, k, v)
        e_out = expected_attention(q, k, v)[0].to(torch.float16)
        oa, orr = OUT_TOL[torch.float16]
        hint = diagnose(out, e_out, shapes=s, causal=False, atol=oa, rtol=orr, allow={"factor"})
        if "running sum l" not in hint:
            hint = ("the scores rise along the keys, so the running max grows in every tile: "
                    "the terms summed under the old max must shrink by alpha = exp(m_old - "
                    "m_new) each time: rescale acc by alpha before adding the new tile's p @ v "
                    "(and l by the same alpha): kata 03's merge rule")
        assert_close(out, e_out, what="out, scores rising along the keys to 120",
                     inputs=dict(q=q, k=k, v=v, seed=5), atol=oa, rtol=orr, hint=hint)

    def test_scores_far_below_zero(self, device):
        """All scores between about -270 and -150: exp(score) is 0 in float32, so the running
        max must start at -inf and follow the scores down (it is what makes softmax exact)."""
        s = Shapes(1, 1, 1, 7, 20, D_CPU)
        gen = torch.Generator().manual_seed(18)
        u = torch.randn(s.D, generator=gen, dtype=torch.float64)
        u = u / u.norm() * s.D**0.25  # scale * (u . u) = 1 with the default scale
        c = 1.0 + 0.5 * torch.rand(s.B, s.Hq, s.Sq, 1, generator=gen, dtype=torch.float64)
        steps = 150.0 + 30.0 * torch.rand(s.B, s.Hkv, s.Sk, 1, generator=gen, dtype=torch.float64)
        q = (-c * u).to(torch.float16)
        k = (steps * u + 0.1 * torch.randn(s.B, s.Hkv, s.Sk, s.D, generator=gen,
                                           dtype=torch.float64)).to(torch.float16)
        v = randn((s.B, s.Hkv, s.Sk, s.D), gen, torch.float16)
        check(device, q, k, v, seed=18, what="flash_attention, every score below -150",
              probe={"underflow"})

    def test_large_values_keep_their_dtype(self, device):
        """v of size ~1e6 in bf16 (whose range is float32's): out keeps them; it is computed in
        float32 and rounded once to q's dtype, not to float16."""
        dtype = torch.bfloat16
        s = Shapes(1, 1, 1, 9, 20, D_CPU)
        q, k, v = make_qkv(19, s, dtype)
        factor = 2.0**20
        v = (v.double() * factor).to(dtype)
        out, _ = run(device, q, k, v)
        expected = expected_attention(q, k, v)[0].to(dtype)
        oa, orr = OUT_TOL[dtype]  # the usual tolerance, scaled with v
        what = f"out with |v| up to {float(v.abs().max()):.3g}"
        inputs = dict(q=q, k=k, v=v, seed=19)
        hint = (f"out must be stored in q's dtype ({dname(dtype)}) straight from the float32 "
                "accumulator: is it (or p, or acc) converted to float16 somewhere (inf past "
                "65504), or accumulated in a narrower type?")
        # inf here is a float16 on the way, not the interpreter's bf16 garbage: that would have
        # failed test_default_arguments[bfloat16] first
        no_nan(out, expected, what=what, inputs=inputs, hint=hint)
        assert_close(out, expected, what=what, inputs=inputs, atol=oa * factor, rtol=orr, hint=hint)

    def test_negative_scale_with_a_partial_tile(self, device):
        """scale = -0.5 and 20 keys (a partial last tile): the padded keys' scores must end up
        -inf after scaling; -inf * a negative scale is +inf, and exp(+inf - +inf) is NaN."""
        s = Shapes(1, 1, 1, 7, 20, D_CPU)
        q, k, v = make_qkv(22, s, torch.float16)
        out, _ = run(device, q, k, v, scale=-0.5)
        e_out = expected_attention(q, k, v, scale=-0.5)[0].to(torch.float16)
        nan = int(torch.isnan(out).sum())
        assert nan == 0, (
            f"flash_attention(q, k, v, scale=-0.5): {nan} NaN in out (q {tuple(q.shape)}, k "
            f"{tuple(k.shape)} float16, seed 22)\n  hint: with scale <= 0 a masked score of -inf "
            "turns into +inf (or NaN for 0) when the scale is applied after the mask: scale "
            "first, then set the masked scores to -inf")
        check(device, q, k, v, scale=-0.5, seed=22, what="flash_attention(scale=-0.5), 20 keys",
              probe=set(), extra_hint="the mask must come after the scale: scores of keys past "
                                      "Sk are -inf whatever the scale")

    def test_batch_and_head_probe(self, device):
        """q = 0 (uniform weights) and v of head h in batch b all equal to 10 b + h + 1: the
        output of each (batch, head) says whose k, v it read."""
        head_probe(device, 2, 2, 2, hint=(
            "each (batch b, head h) program reads its own q, k, v and writes its own out: offsets "
            "b * t.stride(0) + h * t.stride(1) for each tensor t, with pid_bh = b * H + h split "
            "by // and % H (a batch offset left out reads batch 0 for every batch)"))

    @pytest.mark.parametrize("rot", range(3), ids=lambda r: "qkv:" + "-".join(
        LAYOUTS[1 + (r + i) % 3] for i in range(3)))
    def test_non_contiguous_inputs(self, device, rot):
        """Views are valid inputs: a transposed (B, S, H, D) storage, a window of a wider and
        longer cache, a last dim with stride 2. Each of q, k, v takes each layout in turn."""
        s = Shapes(2, 2, 2, 9, 20, D_CPU)
        q, k, v = make_qkv(17, s, torch.float16)
        layouts = tuple(LAYOUTS[1 + (rot + i) % 3] for i in range(3))
        check(device, q, k, v, seed=17, layouts=layouts,
              what="flash_attention with non-contiguous q, k, v", probe=set(),
              extra_hint=STRIDES_HINT)

    @pytest.mark.parametrize("d", ALL_HEAD_DIMS, ids=lambda d: f"D{d}")
    def test_every_head_dim(self, device, d):
        """The values for every head dim of the contract, 20 keys (a partial second tile)."""
        s = Shapes(1, 1, 1, 5, 20, d)
        q, k, v = make_qkv(16, s, torch.float16)
        check(device, q, k, v, seed=16, what=f"flash_attention with head dim {d}", probe=set(),
              extra_hint=f"if other head dims pass, look at what depends on D = {d}: the "
                         "offsets along D (tl.arange(0, D)) and the default scale D ** -0.5")

    def test_single_key_returns_its_value(self, device):
        """One key: its softmax weight is 1, so every query outputs exactly that value."""
        s = Shapes(1, 2, 2, 5, 1, D_CPU)
        q, k, v = make_qkv(3, s, torch.float16)
        out, _ = run(device, q, k, v)
        assert_close(out, v.expand(1, 2, 5, s.D), what="out with a single key",
                     inputs=dict(q=q, k=k, v=v, seed=3),
                     hint="with one key every weight is 1: out = v for every query; the other "
                          "15 keys of its tile are padding and must get score -inf")

    # ---- random cases
    @settings(max_examples=max_examples(5), **NO_SHRINK)
    @given(case=cases())
    def test_matches_float64(self, device, case):
        s, dtype, seed = case
        q, k, v = make_qkv(seed, s, dtype)
        check(device, q, k, v, seed=seed)


STRIDES_HINT = ("if the tests with contiguous inputs pass, look at the strides: pass "
                "each tensor's own t.stride(0..2) (batch, head, row) to the kernel and "
                "use them for every offset, q's for q, k's for k, v's for v (out has its "
                "own), never sizes like Sq * D; a last dim with stride != 1 needs "
                ".contiguous() (or its stride) too")


# =============================================================================== Task 2
class TestTask2LogSumExp:
    """lse = log(sum_j exp(s_ij)) per query, natural log, float32."""

    def test_equal_scores_give_log_of_the_key_count(self, device):
        """q = 0: every score is 0, so lse = ln(Sk) (not log2(Sk)), whatever the running max."""
        s = Shapes(1, 1, 1, 5, 37, D_CPU)
        q, k, v = make_qkv(7, s, torch.float16)
        q = torch.zeros_like(q)
        _, lse = run(device, q, k, v)
        expected = torch.full((1, 1, 5), math.log(37), dtype=torch.float32)
        hint = diagnose(lse, expected, shapes=s, causal=False, kind="lse", atol=1e-3,
                        rtol=1e-4, allow={"lse"})
        if "base 2" not in hint and "ln 2" not in hint:
            hint = ("every score is 0, so lse = ln(37) = 3.611: lse = m + log(l) with m = 0 and "
                    "l = 37 here; is l the sum over every key tile, and the log a natural one?")
        assert_close(lse, expected, what="lse with q = 0 and 37 keys",
                     inputs=dict(q=q, k=k, v=v, seed=7), atol=1e-3, rtol=1e-4,  # exact math
                     hint=hint)

    def test_lse_with_large_scores(self, device):
        """Scores up to 120: lse = m + log(l) needs the running max added back."""
        s = Shapes(1, 1, 1, 6, 40, D_CPU)
        q, k, v = growing_scores(8, s, torch.float16, top=120.0)
        check(device, q, k, v, seed=8, check_out=True, check_lse=True, probe={"lse"},
              what="flash_attention, scores rising to 120")

    @settings(max_examples=max_examples(3), **NO_SHRINK)
    @given(case=cases())
    def test_lse_matches_float64(self, device, case):
        s, dtype, seed = case
        q, k, v = make_qkv(seed, s, dtype)
        check(device, q, k, v, seed=seed, check_out=False, check_lse=True)


# =============================================================================== Task 3
# Sk > Sq; Sq > Sk with a query tile that mixes rows seeing nothing and rows seeing keys
# (Sq - Sk = 19); Sk - Sq = 17, so a tile's last visible key opens a new key tile; Sq == Sk.
PROBE_CASES = ([(72, 128), (128, 109), (71, 128), (100, 100)] if ON_GPU
               else [(24, 40), (40, 21), (23, 40), (37, 37)])


class TestTask3Causal:
    """Causal, aligned bottom-right: query i sees keys j <= i + (Sk - Sq); whole tiles above
    the diagonal are skipped; a query that sees no key outputs zeros and lse = -inf."""

    @pytest.mark.parametrize("sq,sk", PROBE_CASES, ids=[f"Sq{a}-Sk{b}" for a, b in PROBE_CASES])
    def test_weights_probe(self, device, sq, sk):
        """q = 0 and v[j] = e_j (one-hot): then out[i, j] is the weight of key j for query i,
        1 / (number of keys query i sees) where it sees key j, else 0."""
        weights_probe(device, sq, sk, True)

    def test_weights_probe_every_offset(self, device):
        """The probe for many (Sq, Sk): the diagonal offset Sk - Sq just below, at and just past
        multiples of 16 (tile sizes are powers of two), either sign, one or two query tiles."""
        pairs = [(sq, sq + d) for sq in (16, 23) for d in (-16, -15, -1, 1, 15)
                 if 1 <= sq + d <= PROBE_D]  # test_weights_probe has -19, 0, 16 and 17
        fails = [(r, sq, sk) for sq, sk in pairs
                 if (r := weights_probe(device, sq, sk, True, collect=True)) is not None]
        if fails:  # show the pair with the most wrong weights: its pattern says the most
            (_, err), _, _ = max(fails, key=lambda f: f[0][0])
            raise AssertionError(
                f"the causal weights are wrong for {len(fails)} of {len(pairs)} (Sq, Sk) pairs: "
                + ", ".join(f"({sq}, {sk}): {r[0]} wrong" for r, sq, sk in fails[:6])
                + (", ..." if len(fails) > 6 else "")
                + "; the worst one:\n" + str(err)) from None

    @pytest.mark.parametrize("dtype", HALF, ids=dname)
    def test_queries_that_see_no_key(self, device, dtype):
        """Sq > Sk: the first Sq - Sk queries see no key: zeros and lse = -inf, never NaN.
        Sq - Sk = 24 is no multiple of a tile: the second query tile mixes such rows with rows
        that see keys, and those rows go through the key loop while they have seen nothing."""
        s = Shapes(1, 1, 1, 37, 13, D_CPU)
        q, k, v = make_qkv(10, s, dtype)
        check(device, q, k, v, causal=True, seed=10, check_lse=True, probe={"nokey"},
              what="flash_attention(causal=True) with Sq > Sk")

    def test_one_query_sees_every_key(self, device):
        """Sq = 1 (a decode step) sees every key when aligned bottom-right: causal == full."""
        s = Shapes(1, 1, 1, 1, 37, D_CPU)
        q, k, v = make_qkv(11, s, torch.float16)
        check(device, q, k, v, causal=True, seed=11, check_lse=True, probe=set(),
              what="flash_attention(causal=True), one query (it sees all 37 keys)",
              extra_hint="bottom-right alignment: the last query sees every key, and with "
                         "Sq = 1 that is the only query")

    @pytest.mark.parametrize("d", ALL_HEAD_DIMS, ids=lambda d: f"D{d}")
    def test_causal_every_head_dim(self, device, d):
        s = Shapes(1, 1, 1, 17, 30, d)
        q, k, v = make_qkv(16, s, torch.float16)
        check(device, q, k, v, causal=True, seed=16, check_lse=True, probe=set(),
              what=f"flash_attention(causal=True) with head dim {d}")

    @settings(max_examples=max_examples(5), **NO_SHRINK)
    @given(case=cases())
    def test_causal_matches_float64(self, device, case):
        s, dtype, seed = case
        q, k, v = make_qkv(seed, s, dtype)
        check(device, q, k, v, causal=True, seed=seed, check_lse=True,
              what="flash_attention(causal=True)")


# =============================================================================== Task 4
class TestTask4GroupedQuery:
    """GQA/MQA: query head h reads kv head h // (Hq // Hkv), without copying K/V."""

    def test_heads_not_divisible_raises(self, device):
        gen = torch.Generator().manual_seed(12)
        q = randn((1, 3, 4, 16), gen).to(device)
        k = randn((1, 2, 4, 16), gen).to(device)
        with pytest.raises(ValueError):
            m.flash_attention(q, k, k.clone())
            pytest.fail("no ValueError for Hq = 3 query heads and Hkv = 2 kv heads: Hq must be a "
                        "multiple of Hkv")

    def test_head_mapping_probe(self, device):
        """q = 0 (uniform weights) and v of kv head g in batch b all equal to 10 b + g + 1: the
        output of query head h says which (batch, kv head) it read."""
        head_probe(device, 2, 4, 2, hint=(
            "query head h reads kv head h // (Hq // Hkv) = h // 2: consecutive query heads share "
            "a kv head (h % Hkv interleaves them instead); its offset is b * k.stride(0) + "
            "(h // (Hq // Hkv)) * k.stride(1)"))

    @pytest.mark.parametrize("hq,hkv", [(4, 2), (6, 2), (3, 1)],
                             ids=["Hq4-Hkv2", "Hq6-Hkv2", "Hq3-Hkv1"])
    def test_gqa_fixed(self, device, hq, hkv):
        s = Shapes(1, hq, hkv, 9, 20, D_CPU)
        q, k, v = make_qkv(13, s, torch.float16)
        check(device, q, k, v, seed=13, check_lse=True, probe={"heads"},
              what=f"flash_attention with Hq={hq}, Hkv={hkv}")

    @pytest.mark.parametrize("rot", range(3), ids=lambda r: "qkv:" + "-".join(
        LAYOUTS[1 + (r + i) % 3] for i in range(3)))
    def test_gqa_causal_non_contiguous(self, device, rot):
        """GQA, causal and views together: the kv head offset uses k's and v's own strides."""
        s = Shapes(2, 2, 1, 9, 20, D_CPU)
        q, k, v = make_qkv(17, s, torch.float16)
        layouts = tuple(LAYOUTS[1 + (rot + i) % 3] for i in range(3))
        check(device, q, k, v, causal=True, seed=17, check_lse=True, layouts=layouts,
              what="flash_attention(causal=True), GQA, non-contiguous q, k, v", probe=set(),
              extra_hint=STRIDES_HINT)

    @settings(max_examples=max_examples(4), **NO_SHRINK)
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
@pytest.mark.parametrize("B,hq,hkv,sq,sk,d,causal", LARGE, ids=[
    f"B{b}-Hq{hq}-Hkv{hkv}-Sq{sq}-Sk{sk}-D{d}-{'causal' if c else 'full'}"
    for b, hq, hkv, sq, sk, d, c in LARGE])
@pytest.mark.parametrize("dtype", HALF, ids=dname)
def test_large_shapes_on_gpu(device, B, hq, hkv, sq, sk, d, causal, dtype):
    s = Shapes(B, hq, hkv, sq, sk, d)
    q, k, v = make_qkv(15, s, dtype)
    check(device, q, k, v, causal=causal, seed=15, check_lse=True, what="flash_attention (large)")
