"""Kata 03: online softmax. The checks, one class per README task.

Expected values never come from the module under test: softmax and log-sum-exp are plain
torch ops in float64 (with all -inf slices mapped to zeros, as the contract asks), and the
expected (max, sum) state of a row is its float64 max and sum of exp(x - max).

Inputs mix ordinary values with the cases that break naive code: values near +-1e30, rows
that are all -1e30, -inf entries and all -inf rows; block sizes of 1, sizes that do not
divide the row and sizes larger than the row; rows longer than any kernel block.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import assert_close, assert_triton_ran, count_triton_launches, load_kata_module, max_examples

m = load_kata_module("online_softmax")

INF = float("inf")
FLOATS = [torch.float32, torch.float64]
HALVES = [torch.float16, torch.bfloat16]
# softmax / online_softmax on fp16/bf16 inputs: an implementation may do its arithmetic in
# the input dtype (x - max rounds to the dtype, exp(d) then moves by |d| * 2**-11 (fp16)
# or 2**-8 (bf16) relative, d ~ -3 where the mass is), so allow a few roundings (README).
HALF_TOL = {torch.float16: (1e-3, 1e-2), torch.bfloat16: (8e-3, 4e-2)}
KINDS = ["randn", "wide", "near_plus_1e30", "near_minus_1e30", "mixed", "masked"]


# ---------------------------------------------------------------- inputs
def make_values(seed: int, shape: tuple[int, ...], kind: str, *, finite_per_row: bool = False,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A seeded tensor of one `kind`, rows along the last dim.

    randn: N(0, 9). wide: N(0, 1) times one scale in 1e-3 .. 1e30. near_plus_1e30 /
    near_minus_1e30: +-1e30 plus N(0, 1) (in fp32 a row of equal values). mixed: each entry
    one of N(0, 9), +-1e30 * U(0.5, 1), -1e30, -inf. masked: N(0, 9) with -inf entries and
    whole -inf rows. finite_per_row: give every row at least one finite entry.
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    if kind == "randn":
        x = 3 * x
    elif kind == "wide":
        x = x * 10.0 ** float(torch.randint(-3, 31, (), generator=gen))
    elif kind == "near_plus_1e30":
        x = 1e30 + x
    elif kind == "near_minus_1e30":
        x = -1e30 + x
    elif kind == "mixed":
        pick = torch.randint(0, 5, shape, generator=gen)
        big = 1e30 * (0.5 + 0.5 * torch.rand(shape, generator=gen, dtype=torch.float64))
        x = torch.where(pick == 0, 3 * x, x)
        x = torch.where(pick == 1, big, x)
        x = torch.where(pick == 2, -big, x)
        x = torch.where(pick == 3, torch.full_like(x, -1e30), x)
        x = torch.where(pick == 4, torch.full_like(x, -INF), x)
    elif kind == "masked":
        x = torch.where(torch.rand(shape, generator=gen) < 0.4, torch.full_like(x, -INF), 3 * x)
        if x.dim() and x.numel() and torch.rand((), generator=gen) < 0.5:
            x.reshape(-1, shape[-1])[0] = -INF  # a whole row masked out
    else:
        raise ValueError(kind)
    if finite_per_row and x.numel():
        rows = x.reshape(-1, shape[-1])
        j = torch.randint(0, shape[-1], (rows.shape[0],), generator=gen)
        rows[torch.arange(rows.shape[0]), j] = torch.randn(rows.shape[0], generator=gen, dtype=torch.float64)
    return x.to(dtype)


def expected_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """float64 softmax; a slice that is all -inf gives zeros (torch would give NaN)."""
    x64 = x.detach().cpu().double()
    p = torch.softmax(x64, dim=dim)
    empty = (x64 == -INF).all(dim=dim, keepdim=True)
    return torch.where(empty, torch.zeros((), dtype=torch.float64), p)


def expected_state(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(max, sum of exp(x - max)) over the last dim in float64; (-inf, 0) for empty/-inf rows."""
    x64 = x.detach().cpu().double()
    if x64.shape[-1] == 0:
        return torch.full(x64.shape[:-1], -INF, dtype=torch.float64), torch.zeros(x64.shape[:-1], dtype=torch.float64)
    mx = x64.amax(dim=-1)
    ref = torch.where(mx == -INF, torch.zeros_like(mx), mx)
    return mx, torch.exp(x64 - ref[..., None]).sum(dim=-1)


def on(device, x: torch.Tensor) -> torch.Tensor:
    return x.to(device)


def state_of(x: torch.Tensor, dtype: torch.dtype = torch.float32):
    """The module's state of the rows of x: one update from the empty state (or empty)."""
    state = m.init_state(tuple(x.shape[:-1]), dtype=dtype, device=x.device)
    return m.update(state, x) if x.shape[-1] > 0 else state


def check_state(state, exp_max: torch.Tensor, exp_sum: torch.Tensor, *, dtype: torch.dtype,
                what: str, inputs: dict, hint: str = "") -> None:
    """Both fields of a state against float64 values (the sum to the dtype's tolerance)."""
    assert isinstance(state, m.SoftmaxState), (
        f"{what}: expected a SoftmaxState, got {type(state).__name__}\n  inputs: {inputs}")
    assert_close(state.max.cpu(), exp_max.to(dtype), what=f"the .max of {what}", inputs=inputs,
                 hint=hint or "max is the running maximum of everything seen (-inf when nothing)")
    assert_close(state.sum.cpu(), exp_sum.to(dtype), what=f"the .sum of {what}", inputs=inputs,
                 hint=hint or "sum is sum(exp(x - max)) over everything seen, relative to the CURRENT max")


# ---------------------------------------------------------------- strategies
seeds = st.integers(0, 2**31 - 1)
kinds = st.sampled_from(KINDS)


@st.composite
def shapes(draw, max_lead: int = 2, max_len: int = 40) -> tuple[int, ...]:
    """0 to max_lead leading dims of 1..3, then a last dim of 1..max_len."""
    lead = draw(st.lists(st.integers(1, 3), max_size=max_lead))
    return (*lead, draw(st.integers(1, max_len)))


@st.composite
def block_sizes(draw, n: int) -> int:
    """1, a size that rarely divides n, exactly n, or larger than n."""
    return draw(st.one_of(st.just(1), st.integers(1, max(1, n)), st.just(n),
                          st.integers(n + 1, 2 * n + 5)))


@st.composite
def cut_points(draw, n: int, parts: int) -> list[int]:
    """parts - 1 sorted cut points in [0, n] (equal cuts give empty parts)."""
    return sorted(draw(st.lists(st.integers(0, n), min_size=parts - 1, max_size=parts - 1)))


# =============================================================================== Task 1
class TestTask1Softmax:
    """softmax(x, dim): stable at any magnitude, zeros for an all -inf slice."""

    @pytest.mark.parametrize("dtype", FLOATS + HALVES)
    def test_shape_and_dtype(self, device, dtype):
        x = make_values(0, (2, 3, 5), "randn", dtype=dtype)
        for dim in (-1, 0, 1, 2, -2):
            out = m.softmax(on(device, x), dim=dim)
            assert isinstance(out, torch.Tensor), f"softmax returned {type(out).__name__}, not a tensor"
            assert tuple(out.shape) == (2, 3, 5), (
                f"softmax(x (2, 3, 5), dim={dim}) returned shape {tuple(out.shape)}: keep x's shape")
            assert out.dtype == dtype, (
                f"softmax of a {dtype} tensor returned {out.dtype}: compute in float32 if you "
                "like, but cast the result back to x's dtype")

    def test_input_unmodified(self, device):
        x = on(device, make_values(1, (3, 7), "mixed"))
        before = x.clone()
        m.softmax(x)
        m.softmax(x, dim=0)
        assert torch.equal(x, before), "softmax modified its input x in place (x.sub_, x.exp_ ...?)"

    @pytest.mark.parametrize("dtype", FLOATS)
    @given(seed=seeds, shape=shapes(max_lead=3), dim_pick=st.integers(0, 3), kind=st.sampled_from(["randn", "wide"]))
    def test_matches_float64(self, device, dtype, seed, shape, dim_pick, kind):
        dim = dim_pick % len(shape) - (len(shape) if dim_pick % 2 else 0)  # positive and negative dims
        x = make_values(seed, shape, kind, dtype=dtype)
        assert_close(m.softmax(on(device, x), dim=dim).cpu(), expected_softmax(x, dim).to(dtype),
                     what=f"softmax(x, dim={dim})", inputs=dict(x=x, kind=kind, seed=seed),
                     hint="exp(x - max) / sum(exp(x - max)), max and sum taken along `dim`")

    @pytest.mark.parametrize("kind", ["near_plus_1e30", "near_minus_1e30", "mixed", "masked"])
    @given(seed=seeds, shape=shapes())
    def test_extreme_magnitudes(self, device, kind, seed, shape):
        x = make_values(seed, shape, kind)
        out = m.softmax(on(device, x)).cpu()
        assert_close(out, expected_softmax(x).float(), what="softmax(x) with huge or -inf values",
                     inputs=dict(x=x, kind=kind, seed=seed),
                     hint="exp(1e30) overflows to inf and inf/inf is NaN: subtract the row max first "
                     "(then every exponent is <= 0); and an all -inf row must give zeros")

    @pytest.mark.parametrize("dtype", FLOATS + HALVES)
    def test_all_neg_inf_slice_gives_zeros(self, device, dtype):
        x = torch.tensor([[-INF, -INF, -INF], [0.0, -INF, 1.0], [-INF, -INF, -INF]], dtype=dtype)
        tol = dict(zip(("atol", "rtol"), HALF_TOL[dtype])) if dtype in HALF_TOL else {}
        out = m.softmax(on(device, x)).cpu()
        assert_close(out, expected_softmax(x).to(dtype), what=f"softmax(x) in {dtype} with all -inf rows 0 and 2",
                     inputs=dict(x=x), **tol,
                     hint="for an all -inf row the max is -inf and x - max = -inf - -inf = NaN: "
                     "use 0 instead of a -inf max, and divide by 1 instead of a zero sum (in every dtype)")
        y = torch.full((2, 4), -INF, dtype=dtype)
        assert_close(m.softmax(on(device, y), dim=0).cpu(), torch.zeros(2, 4, dtype=dtype),
                     what=f"softmax(all -inf (2, 4) {dtype}, dim=0)", inputs=dict(x=y))

    @pytest.mark.parametrize("dtype", HALVES)
    @pytest.mark.parametrize("kind", ["wide", "near_plus_1e30", "near_minus_1e30", "mixed", "masked"])
    @given(seed=seeds, shape=shapes())
    @settings(max_examples=max_examples(10))
    def test_half_precision_extreme_magnitudes(self, device, dtype, kind, seed, shape):
        """Finite half inputs of any magnitude: bf16 holds values up to 3e38 (1e30 here),
        fp16 up to 65504 (these kinds are clamped to +-6e4 for fp16)."""
        x = make_values(seed, shape, kind, dtype=torch.float64)
        if dtype == torch.float16:
            x = torch.where(x.isinf(), x, x.clamp(-6e4, 6e4))
        x = x.to(dtype)
        atol, rtol = HALF_TOL[dtype]
        assert_close(m.softmax(on(device, x)).cpu(), expected_softmax(x).to(dtype),
                     what=f"softmax(x) in {dtype} with {kind} values", inputs=dict(x=x, kind=kind, seed=seed),
                     atol=atol, rtol=rtol,
                     hint="compute in float32 (x.float()), not in another half type: a bf16 value of 1e30 is "
                     "inf in fp16; subtract the max; an all -inf row gives zeros")

    @pytest.mark.parametrize("dtype", HALVES)
    @given(seed=seeds, shape=shapes())
    @settings(max_examples=max_examples(15))
    def test_half_precision(self, device, dtype, seed, shape):
        x = make_values(seed, shape, "randn", dtype=dtype)
        atol, rtol = HALF_TOL[dtype]  # README "Tolerances": arithmetic may be done in dtype
        assert_close(m.softmax(on(device, x)).cpu(), expected_softmax(x).to(dtype),
                     what=f"softmax(x) in {dtype}", inputs=dict(x=x, seed=seed), atol=atol, rtol=rtol,
                     hint="compute in float32 (x.float()) and cast the result back to x's dtype")


# =============================================================================== Task 2
class TestTask2InitState:
    """init_state(shape, dtype, device): the empty state (max = -inf, sum = 0)."""

    # Shapes are tuples or torch.Size (the contract does not promise a bare int).
    @pytest.mark.parametrize("shape", [(), (5,), (2, 3), torch.Size([4, 1, 2])],
                             ids=["shape()", "shape(5,)", "shape(2,3)", "Size([4,1,2])"])
    @pytest.mark.parametrize("dtype", FLOATS)
    def test_empty_state(self, device, shape, dtype):
        state = m.init_state(shape, dtype=dtype, device=device)
        want = tuple(shape)
        assert isinstance(state, m.SoftmaxState), f"init_state returned {type(state).__name__}, not a SoftmaxState"
        for field in ("max", "sum"):
            t = getattr(state, field)
            assert isinstance(t, torch.Tensor), f"init_state(...).{field} is {type(t).__name__}, not a tensor"
            assert tuple(t.shape) == want, f"init_state({shape!r}).{field} has shape {tuple(t.shape)}, expected {want}"
            assert t.dtype == dtype, f"init_state(..., dtype={dtype}).{field} has dtype {t.dtype}"
            assert t.device.type == device.type, f"init_state(..., device={device}).{field} is on {t.device}"
        assert bool((state.max == -INF).all()), (
            f"init_state: max must be -inf (nothing seen yet), got {state.max}. With 0, a row of "
            "negative values would report a max of 0")
        assert bool((state.sum == 0).all()), f"init_state: sum must be 0, got {state.sum}"

    def test_default_dtype_is_float32(self):
        state = m.init_state((3,))
        assert state.max.dtype == torch.float32 and state.sum.dtype == torch.float32, (
            f"init_state's default dtype must be float32, got {state.max.dtype}/{state.sum.dtype}")


class TestTask2Update:
    """update(state, chunk): fold a chunk into the running (max, sum)."""

    def test_returns_new_state_and_leaves_arguments_alone(self, device):
        x = on(device, make_values(2, (3, 6), "randn"))
        state = m.update(m.init_state((3,), device=device), x[:, :2])
        before = (state.max.clone(), state.sum.clone(), x.clone())
        new = m.update(state, x[:, 2:])
        assert isinstance(new, m.SoftmaxState), f"update returned {type(new).__name__}, not a SoftmaxState"
        assert tuple(new.max.shape) == (3,) and tuple(new.sum.shape) == (3,), (
            f"update(state (3,), chunk (3, 4)) gave fields of shape {tuple(new.max.shape)}, "
            f"{tuple(new.sum.shape)}: reduce over the chunk's last dim only")
        assert torch.equal(state.max, before[0]) and torch.equal(state.sum, before[1]), (
            "update modified the state it was given (in-place mul_/copy_?); return a new state: "
            "merge() and the tests reuse old states")
        assert torch.equal(x, before[2]), "update modified the chunk in place"

    @pytest.mark.parametrize("dtype", FLOATS)
    @given(seed=seeds, shape=shapes(), kind=kinds)
    def test_update_of_empty_state_is_the_chunk_state(self, device, dtype, seed, shape, kind):
        x = make_values(seed, shape, kind, dtype=dtype)
        state = m.update(m.init_state(shape[:-1], dtype=dtype, device=device), on(device, x))
        check_state(state, *expected_state(x), dtype=dtype, what="update(init_state, x)",
                    inputs=dict(x=x, kind=kind, seed=seed))

    @given(seed=seeds, shape=shapes(max_len=30), kind=kinds, data=st.data())
    def test_chunk_by_chunk_equals_whole(self, device, seed, shape, kind, data):
        x = make_values(seed, shape, kind)
        cuts = [0, *data.draw(cut_points(shape[-1], data.draw(st.integers(2, 6)))), shape[-1]]
        state = m.init_state(shape[:-1], device=device)
        for lo, hi in zip(cuts, cuts[1:]):
            if hi > lo:
                state = m.update(state, on(device, x[..., lo:hi]))
        chunks = ", ".join(f"[{lo}:{hi}]" for lo, hi in zip(cuts, cuts[1:]) if hi > lo)
        check_state(state, *expected_state(x), dtype=torch.float32,
                    what=f"update(...) chunk by chunk over the columns {chunks}",
                    inputs=dict(x=x, kind=kind, seed=seed),
                    hint="when the max grows, the sum so far was taken relative to the old max: "
                    "multiply it by exp(old_max - new_max) before adding the chunk's terms")

    def test_rescales_the_old_sum(self, device):
        state = m.update(m.init_state((1,), dtype=torch.float64, device=device),
                         torch.tensor([[0.0]], dtype=torch.float64, device=device))
        state = m.update(state, torch.tensor([[10.0]], dtype=torch.float64, device=device))
        check_state(state, torch.tensor([10.0], dtype=torch.float64),
                    torch.tensor([1 + math.exp(-10)], dtype=torch.float64), dtype=torch.float64,
                    what="update(state of [0], [10])", inputs=dict(first=[0.0], then=[10.0]),
                    hint="the old sum exp(0 - 0) = 1 becomes exp(0 - 10) relative to the new max 10: "
                    "s_new = s_old * exp(m_old - m_new) + sum(exp(chunk - m_new))")

    def test_all_neg_inf_chunk_changes_nothing(self, device):
        empty = m.init_state((2,), device=device)
        state = m.update(empty, torch.full((2, 3), -INF, device=device))
        check_state(state, torch.full((2,), -INF, dtype=torch.float64), torch.zeros(2, dtype=torch.float64),
                    dtype=torch.float32, what="update(empty state, all -inf chunk)", inputs=dict(chunk="-inf (2, 3)"),
                    hint="max stays -inf, and exp(-inf - -inf) is NaN: use 0 in place of a -inf max "
                    "when rescaling, so every term is exp(-inf) = 0")
        full = m.update(empty, torch.tensor([[1.0, 2.0], [-3.0, -INF]], device=device))
        again = m.update(full, torch.full((2, 4), -INF, device=device))
        check_state(again, full.max.cpu().double(), full.sum.cpu().double(), dtype=torch.float32,
                    what="update(state, all -inf chunk)", inputs=dict(chunk="-inf (2, 4)"),
                    hint="-inf entries add exp(-inf) = 0 and cannot raise the max")

    @pytest.mark.parametrize("chunk_dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
    def test_state_keeps_its_dtype(self, device, chunk_dtype):
        x = make_values(3, (2, 9), "randn", dtype=chunk_dtype)
        state = m.update(m.init_state((2,), dtype=torch.float32, device=device), on(device, x))
        assert state.max.dtype == torch.float32 and state.sum.dtype == torch.float32, (
            f"update(float32 state, {chunk_dtype} chunk) gave a {state.max.dtype}/{state.sum.dtype} "
            "state: keep the state's dtype (cast the chunk to it)")
        check_state(state, *expected_state(x), dtype=torch.float32, what=f"update(state, {chunk_dtype} chunk)",
                    inputs=dict(x=x, seed=3))


# =============================================================================== Task 3
class TestTask3Merge:
    """merge(a, b): associative, commutative, the empty state as identity."""

    def test_returns_new_state_and_leaves_arguments_alone(self, device):
        x = on(device, make_values(4, (2, 8), "randn"))
        a, b = state_of(x[:, :3]), state_of(x[:, 3:])
        before = [t.clone() for t in (*a, *b)]
        c = m.merge(a, b)
        assert isinstance(c, m.SoftmaxState), f"merge returned {type(c).__name__}, not a SoftmaxState"
        assert tuple(c.max.shape) == (2,) and tuple(c.sum.shape) == (2,), (
            f"merge of (2,) states gave shapes {tuple(c.max.shape)}, {tuple(c.sum.shape)}")
        for t, was in zip((*a, *b), before):
            assert torch.equal(t, was), "merge modified one of its arguments in place"

    def test_rescales_both_sums(self, device):
        f64 = dict(dtype=torch.float64, device=device)
        a = m.update(m.init_state((1,), **f64), torch.tensor([[2.0, 0.0]], **f64))
        b = m.update(m.init_state((1,), **f64), torch.tensor([[5.0]], **f64))
        want_sum = torch.tensor([math.exp(-3) + math.exp(-5) + 1], dtype=torch.float64)
        for name, got in (("merge(a, b)", m.merge(a, b)), ("merge(b, a)", m.merge(b, a))):
            check_state(got, torch.tensor([5.0], dtype=torch.float64), want_sum, dtype=torch.float64,
                        what=name, inputs=dict(a="state of [2, 0]", b="state of [5]"),
                        hint="m = max(m_a, m_b) (not their sum); s = s_a exp(m_a - m) + s_b exp(m_b - m): "
                        "both sums are relative to their own max and must be moved to the new one")

    @given(seed=seeds, shape=shapes(max_len=30), kind=kinds, data=st.data())
    def test_merge_of_two_parts_is_state_of_concatenation(self, device, seed, shape, kind, data):
        x = on(device, make_values(seed, shape, kind))
        (cut,) = data.draw(cut_points(shape[-1], 2))
        got = m.merge(state_of(x[..., :cut]), state_of(x[..., cut:]))
        check_state(got, *expected_state(x), dtype=torch.float32, what=f"merge(state(x[..., :{cut}]), state(x[..., {cut}:]))",
                    inputs=dict(x=x, kind=kind, seed=seed),
                    hint="s = s_a exp(m_a - m) + s_b exp(m_b - m) with m = max(m_a, m_b); an empty part "
                    "(max -inf) must contribute exactly 0")

    @given(seed=seeds, shape=shapes(max_len=30), kind=kinds, data=st.data())
    def test_associative(self, device, seed, shape, kind, data):
        """Three parts chosen by hypothesis (possibly empty): both bracketings equal the whole."""
        x = on(device, make_values(seed, shape, kind))
        i, j = data.draw(cut_points(shape[-1], 3))
        a, b, c = state_of(x[..., :i]), state_of(x[..., i:j]), state_of(x[..., j:])
        expected = expected_state(x)
        for name, got in (("merge(merge(a, b), c)", m.merge(m.merge(a, b), c)),
                          ("merge(a, merge(b, c))", m.merge(a, m.merge(b, c)))):
            check_state(got, *expected, dtype=torch.float32,
                        what=f"{name} with a, b, c the states of x[..., :{i}], x[..., {i}:{j}], x[..., {j}:]",
                        inputs=dict(x=x, kind=kind, seed=seed),
                        hint="both bracketings must give the state of the whole row: m = max(m_a, m_b), "
                        "each sum moved to m by its own factor exp(m_x - m)")

    @given(seed=seeds, shape=shapes(max_len=30), kind=kinds, data=st.data())
    def test_commutative(self, device, seed, shape, kind, data):
        x = on(device, make_values(seed, shape, kind))
        (cut,) = data.draw(cut_points(shape[-1], 2))
        a, b = state_of(x[..., :cut]), state_of(x[..., cut:])
        ab, ba = m.merge(a, b), m.merge(b, a)
        assert_close(ba.max, ab.max, what="merge(b, a).max vs merge(a, b).max", inputs=dict(x=x, cut=cut, seed=seed))
        assert_close(ba.sum, ab.sum, what="merge(b, a).sum vs merge(a, b).sum", inputs=dict(x=x, cut=cut, seed=seed),
                     hint="merge must treat a and b alike")

    @given(seed=seeds, shape=shapes(), kind=kinds)
    def test_empty_state_is_identity(self, device, seed, shape, kind):
        x = on(device, make_values(seed, shape, kind))
        a = state_of(x)
        e = m.init_state(shape[:-1], device=device)
        for name, got in (("merge(a, empty)", m.merge(a, e)), ("merge(empty, a)", m.merge(e, a))):
            check_state(got, *expected_state(x), dtype=torch.float32, what=name,
                        inputs=dict(x=x, kind=kind, seed=seed),
                        hint="the empty state has max -inf and sum 0: it must change nothing")

    def test_two_empty_states_give_empty_not_nan(self, device):
        e = m.init_state((3, 2), device=device)
        check_state(m.merge(e, e), torch.full((3, 2), -INF, dtype=torch.float64),
                    torch.zeros(3, 2, dtype=torch.float64), dtype=torch.float32,
                    what="merge(empty, empty)", inputs=dict(a="init_state((3, 2))", b="init_state((3, 2))"),
                    hint="m = max(-inf, -inf) = -inf, and exp(m_a - m) = exp(-inf - -inf) = exp(NaN): "
                    "when m is -inf use 0 in its place, so each term is 0 * exp(-inf) = 0")
        # Mixed rows: one empty, one not.
        x = on(device, torch.tensor([[1.0, 2.0], [-INF, -INF]]))
        got = m.merge(state_of(x), m.init_state((2,), device=device))
        check_state(got, *expected_state(x), dtype=torch.float32, what="merge(state with an empty row, empty)",
                    inputs=dict(x=x))


# =============================================================================== Task 4
class TestTask4LogSumExp:
    """logsumexp(state) = m + log(s)."""

    @pytest.mark.parametrize("dtype", FLOATS)
    @given(seed=seeds, shape=shapes(), kind=kinds)
    def test_matches_torch_logsumexp(self, device, dtype, seed, shape, kind):
        x = make_values(seed, shape, kind, dtype=dtype)
        got = m.logsumexp(state_of(on(device, x), dtype=dtype))
        assert isinstance(got, torch.Tensor), f"logsumexp returned {type(got).__name__}"
        assert_close(got.cpu(), torch.logsumexp(x.double(), dim=-1).to(dtype), what="logsumexp(state of x)",
                     inputs=dict(x=x, kind=kind, seed=seed),
                     hint="log(sum exp(x)) = m + log(sum exp(x - m)) = max + log(sum): do not forget the max")

    def test_empty_state_gives_minus_inf(self, device):
        got = m.logsumexp(m.init_state((2, 3), device=device)).cpu()
        assert_close(got, torch.full((2, 3), -INF), what="logsumexp(init_state((2, 3)))",
                     hint="log(0) = -inf, and -inf + -inf = -inf; no NaN")


class TestTask4OnlineSoftmax:
    """online_softmax(x, block_size) == softmax(x) for every block size."""

    def test_bad_block_size_raises(self, device):
        x = on(device, make_values(5, (2, 6), "randn"))
        for bad in (0, -1, -8):
            with pytest.raises(ValueError):
                m.online_softmax(x, bad)

    @pytest.mark.parametrize("dtype", FLOATS + HALVES)
    def test_shape_dtype_and_input_unmodified(self, device, dtype):
        x = on(device, make_values(6, (2, 3, 10), "randn", dtype=dtype))
        before = x.clone()
        out = m.online_softmax(x, 4)
        assert isinstance(out, torch.Tensor) and tuple(out.shape) == (2, 3, 10), (
            f"online_softmax(x (2, 3, 10), 4) returned {getattr(out, 'shape', out)}: keep x's shape")
        assert out.dtype == dtype, f"online_softmax of {dtype} returned {out.dtype}"
        assert torch.equal(x, before), "online_softmax modified its input in place"

    @pytest.mark.parametrize("dtype", FLOATS)
    @given(seed=seeds, shape=shapes(max_lead=3, max_len=64), kind=kinds, data=st.data())
    def test_matches_softmax_for_every_block_size(self, device, dtype, seed, shape, kind, data):
        n = shape[-1]
        block = data.draw(block_sizes(n), label="block_size")
        x = make_values(seed, shape, kind, dtype=dtype)
        tail = n % block
        assert_close(m.online_softmax(on(device, x), block).cpu(), expected_softmax(x).to(dtype),
                     what=f"online_softmax(x, block_size={block})",
                     inputs=dict(x=x, kind=kind, block_size=block, seed=seed),
                     hint=(f"{n} columns = {n // block} full blocks + a last block of {tail}: is the last, "
                           "partial block folded in? " if tail else "") +
                     "after streaming, every element is exp(x - m) / s with the FINAL m and s; "
                     "an all -inf row gives zeros")

    def test_streams_blocks_through_update(self, device, monkeypatch):
        """The contract: online_softmax feeds update() blocks of block_size columns (the last
        one shorter), then makes its second pass; a softmax over the whole row does not stream."""
        x = on(device, make_values(8, (2, 10), "randn"))
        widths: list[int] = []
        real_update = m.update

        def counting_update(state, chunk):
            widths.append(int(chunk.shape[-1]))
            return real_update(state, chunk)

        monkeypatch.setattr(m, "update", counting_update)
        out = m.online_softmax(x, 4)
        assert widths == [4, 4, 2], (
            f"online_softmax(x (2, 10), block_size=4) passed update() chunks of widths {widths}, "
            "expected [4, 4, 2]: stream the row through update() one block of block_size columns at "
            "a time (the last block holds the 2 columns left), not softmax over the whole row at once")
        assert_close(out.cpu(), expected_softmax(x.cpu()).float(), what="online_softmax(x (2, 10), 4)",
                     inputs=dict(x=x.cpu(), seed=8))

    def test_block_larger_than_row(self, device):
        x = make_values(7, (3, 5), "randn")
        assert_close(m.online_softmax(on(device, x), 64).cpu(), expected_softmax(x).float(),
                     what="online_softmax(x (3, 5), block_size=64)", inputs=dict(x=x, seed=7),
                     hint="one block shorter than block_size: the loop must still run once")

    @pytest.mark.parametrize("dtype", FLOATS + HALVES)
    def test_all_neg_inf_rows_give_zeros(self, device, dtype):
        x = torch.tensor([[-INF, -INF, -INF, -INF, -INF], [1.0, -INF, 0.5, -INF, 2.0]], dtype=dtype)
        tol = dict(zip(("atol", "rtol"), HALF_TOL[dtype])) if dtype in HALF_TOL else {}
        for block in (1, 2, 5):
            assert_close(m.online_softmax(on(device, x), block).cpu(), expected_softmax(x).to(dtype), **tol,
                         what=f"online_softmax(x, block_size={block}) in {dtype}, row 0 all -inf", inputs=dict(x=x),
                         hint="the final state of an all -inf row is (-inf, 0): exp(x - m) / s is "
                         "NaN unless you use 0 for a -inf max and 1 for a zero sum")

    @pytest.mark.parametrize("dtype", HALVES)
    @given(seed=seeds, shape=shapes(), data=st.data())
    @settings(max_examples=max_examples(15))
    def test_half_precision(self, device, dtype, seed, shape, data):
        block = data.draw(block_sizes(shape[-1]), label="block_size")
        x = make_values(seed, shape, "randn", dtype=dtype)
        atol, rtol = HALF_TOL[dtype]  # README "Tolerances"
        assert_close(m.online_softmax(on(device, x), block).cpu(), expected_softmax(x).to(dtype),
                     what=f"online_softmax(x, {block}) in {dtype}", inputs=dict(x=x, seed=seed),
                     atol=atol, rtol=rtol, hint="keep the state in float32; cast the result back to x's dtype")

    @pytest.mark.parametrize("dtype", HALVES)
    @pytest.mark.parametrize("kind", ["wide", "near_plus_1e30", "mixed", "masked"])
    @given(seed=seeds, shape=shapes(), data=st.data())
    @settings(max_examples=max_examples(10))
    def test_half_precision_extreme_magnitudes(self, device, dtype, kind, seed, shape, data):
        """As for softmax: finite half inputs of any magnitude (bf16 up to 1e30 here, fp16 clamped to +-6e4)."""
        block = data.draw(block_sizes(shape[-1]), label="block_size")
        x = make_values(seed, shape, kind, dtype=torch.float64)
        if dtype == torch.float16:
            x = torch.where(x.isinf(), x, x.clamp(-6e4, 6e4))
        x = x.to(dtype)
        atol, rtol = HALF_TOL[dtype]
        assert_close(m.online_softmax(on(device, x), block).cpu(), expected_softmax(x).to(dtype),
                     what=f"online_softmax(x, {block}) in {dtype} with {kind} values",
                     inputs=dict(x=x, kind=kind, block_size=block, seed=seed), atol=atol, rtol=rtol,
                     hint="stream in float32 (x.float()), not in another half type: a bf16 value of 1e30 is "
                     "inf in fp16; an all -inf row gives zeros")


# =============================================================================== Task 5
TRITON_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Row lengths that defeat a kernel handling one block: odd, just past powers of two, and
# past 32768 (more than any single block held in registers), up to 65537.
LONG_ROWS = [1025, 4097, 5003, 33001, 65537]
# Triton refuses a block of more than 2^20 elements (tl.arange / a tensor's numel): a row
# longer than that cannot be one block, whatever the registers.
TRITON_MAX_BLOCK = 2**20
ONE_BLOCK_HINT = ("one block per row (BLOCK = next_power_of_2(n_cols), no loop) does not scale (registers, and "
                  f"Triton's cap of {TRITON_MAX_BLOCK} elements a block). Loop over the row in fixed-size "
                  "blocks: (max, sum) in pass 1, exp(x - m) / s in pass 2")


def run_triton(device, x: torch.Tensor, call: str = "") -> torch.Tensor:
    """softmax_triton(x) on the device, checked to be a tensor computed by a Triton kernel."""
    x = x.to(device)
    call = call or f"softmax_triton(x {tuple(x.shape)} {str(x.dtype).replace('torch.', '')})"
    with count_triton_launches() as launches:
        out = m.softmax_triton(x)
    assert isinstance(out, torch.Tensor), f"{call} returned {type(out).__name__}, not a tensor"
    assert_triton_ran(launches, call)
    return out.cpu()


class TestTask5SoftmaxTriton:
    """softmax_triton(x): a Triton kernel; rows of any length; fp32/fp16/bf16 in and out.

    On CPU it runs under the Triton interpreter, so the shapes here stay small; the GPU
    adds the large shapes below (marked gpu) and the timed checks in test_perf.py.
    """

    @pytest.mark.parametrize("dtype", TRITON_DTYPES)
    def test_shape_dtype_and_input_unmodified(self, device, dtype):
        x = make_values(10, (3, 37), "randn", dtype=dtype).to(device)
        before = x.clone()
        with count_triton_launches() as launches:
            out = m.softmax_triton(x)
        assert isinstance(out, torch.Tensor), f"softmax_triton returned {type(out).__name__}"
        assert_triton_ran(launches, f"softmax_triton(x (3, 37) {dtype})")
        assert tuple(out.shape) == (3, 37), f"softmax_triton(x (3, 37)) returned shape {tuple(out.shape)}"
        assert out.dtype == dtype, (
            f"softmax_triton of {dtype} returned {out.dtype}: allocate the output in x's dtype and "
            "cast in tl.store (y.to(out_ptr.dtype.element_ty))")
        assert out.device == x.device, f"softmax_triton returned a tensor on {out.device}, input was on {x.device}"
        assert torch.equal(x, before), "softmax_triton modified its input"

    def test_reads_nothing_past_the_row_end(self, device):
        """Rows are views into a wider buffer whose extra column holds 100: a kernel whose
        column mask lets one element too many through (offs <= n_cols) picks it up."""
        for n in (1, 5, 37, 301):
            buf = torch.full((4, n + 1), 100.0)
            buf[:, :n] = make_values(n, (4, n), "randn")
            x = buf.to(device)[:, :n]  # (4, n), row stride n + 1
            assert_close(run_triton(device, x), expected_softmax(x.cpu()).float(),
                         what=f"softmax_triton(x (4, {n})) with x a view into a (4, {n + 1}) buffer",
                         inputs=dict(x=x.cpu(), seed=n),
                         hint="the last valid column is n_cols - 1: mask with offs < n_cols (not <=), "
                         "and step between rows by x.stride(0) (or call .contiguous() first)")

    @pytest.mark.parametrize("dtype", TRITON_DTYPES)
    @given(seed=seeds, rows=st.integers(1, 9), n=st.integers(1, 300))
    @settings(max_examples=max_examples(8))
    def test_matches_float64(self, device, dtype, seed, rows, n):
        x = make_values(seed, (rows, n), "randn", dtype=dtype)
        assert_close(run_triton(device, x), expected_softmax(x).to(dtype), what=f"softmax_triton(x ({rows}, {n})) in {dtype}",
                     inputs=dict(x=x, seed=seed),
                     hint="one program per row (or per group of rows): grid = number of rows; "
                     "mask the tail (offs < n_cols) and load it as -inf so it adds exp(-inf) = 0")

    def test_many_rows(self, device):
        x = make_values(11, (300, 7), "randn")
        assert_close(run_triton(device, x), expected_softmax(x).float(), what="softmax_triton(x (300, 7))",
                     inputs=dict(x=x, seed=11),
                     hint="every row needs a program: is the grid (n_rows,) (or cdiv(n_rows, rows per program))?")

    def test_fresh_result_for_new_values(self, device):
        """The same shape (and the same tensor, rewritten in place) with new values: a result
        kept from an earlier call (keyed on shape, dtype or data_ptr) is caught."""
        x = make_values(20, (5, 77), "randn").to(device)
        first = run_triton(device, x)
        assert_close(first, expected_softmax(x.cpu()).float(), what="softmax_triton(x (5, 77)), first call",
                     inputs=dict(x=x.cpu(), seed=20))
        y = make_values(21, (5, 77), "randn").to(device)
        assert_close(run_triton(device, y), expected_softmax(y.cpu()).float(),
                     what="softmax_triton(y) after softmax_triton(x), same shape, new values",
                     inputs=dict(y=y.cpu(), seed=21),
                     hint="compute every call from its own input: no result kept from an earlier call")
        x.copy_(make_values(22, (5, 77), "randn").to(device))  # same tensor, same memory, new values
        assert_close(run_triton(device, x), expected_softmax(x.cpu()).float(),
                     what="softmax_triton(x) again after x was overwritten in place",
                     inputs=dict(x=x.cpu(), seed=22),
                     hint="the same tensor (same data_ptr, shape and dtype) can hold new values: "
                     "read them on every call")

    @pytest.mark.parametrize("n", LONG_ROWS)
    def test_rows_longer_than_a_block(self, device, n):
        x = make_values(n, (2, n), "randn")
        assert_close(run_triton(device, x), expected_softmax(x).float(),
                     what=f"softmax_triton(x (2, {n}))", inputs=dict(x=x, seed=n),
                     hint="a row longer than your BLOCK needs a loop over blocks: online (max, sum) in a "
                     "first pass, then a second pass that writes exp(x - m) / s; the last block is "
                     "partial and needs the mask")

    @pytest.mark.kata_timeout(60)
    def test_row_longer_than_any_block(self, device):
        """One row of 2^20 + 3 columns, more than Triton allows in one block (fp32, one row:
        under a second with a looped kernel in the interpreter)."""
        n = TRITON_MAX_BLOCK + 3
        x = make_values(n, (1, n), "randn")
        try:
            got = run_triton(device, x, call=f"softmax_triton(x (1, {n}))")
        except Exception as exc:  # Triton's numel limit, raised when the kernel is compiled / interpreted
            if "numel" not in str(exc):
                raise
            raise AssertionError(f"softmax_triton(x (1, {n})) raised {type(exc).__name__}: {exc}\n"
                                 f"  hint: {ONE_BLOCK_HINT}") from None
        assert_close(got, expected_softmax(x).float(), what=f"softmax_triton(x (1, {n}))",
                     inputs=dict(x=x, seed=n), hint=ONE_BLOCK_HINT)

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    @pytest.mark.parametrize("n", [19, 1000, 40961])
    def test_half_precision(self, device, dtype, n):
        x = make_values(n + 1, (2, n), "randn", dtype=dtype)
        # Default fp16/bf16 tolerances: the kernel computes in float32, so the result is
        # one rounding of the exact value (README "Tolerances").
        assert_close(run_triton(device, x), expected_softmax(x).to(dtype), what=f"softmax_triton(x (2, {n})) in {dtype}",
                     inputs=dict(x=x, seed=n + 1),
                     hint="load, then .to(tl.float32); compute in float32; store with .to(y_ptr.dtype.element_ty)")

    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
    @pytest.mark.parametrize("kind", ["near_plus_1e30", "near_minus_1e30", "mixed", "wide"])
    def test_extreme_magnitudes(self, device, dtype, kind):
        for seed, n in ((1, 5), (2, 130), (3, 4500)):
            x = make_values(seed, (3, n), kind, finite_per_row=True, dtype=dtype)
            assert_close(run_triton(device, x), expected_softmax(x).to(dtype),
                         what=f"softmax_triton(x (3, {n})) in {dtype} with {kind} values",
                         inputs=dict(x=x, kind=kind, seed=seed),
                         hint="subtract the row max before exp: exp(1e30) is inf, and inf / inf is NaN")

    @pytest.mark.parametrize("n", [6, 300, 40000])
    def test_neg_inf_entries(self, device, n):
        """Masked logits: -inf entries (every row keeps a finite one) get probability 0.

        Row 0's first half is all -inf, so a kernel that streams blocks sees whole blocks
        of -inf before the first finite value."""
        x = make_values(n, (3, n), "masked", finite_per_row=True)
        x[0, : n // 2] = -INF
        x[0, -1] = 0.5
        assert_close(run_triton(device, x), expected_softmax(x).float(), what=f"softmax_triton(x (3, {n})) with -inf entries",
                     inputs=dict(x=x, seed=n),
                     hint="a block that is all -inf leaves the running max at -inf: exp(m_old - m_new) "
                     "is then exp(-inf - -inf) = NaN; use 0 in place of a -inf max")

    def test_leading_dims_and_1d(self, device):
        for shape in [(7,), (2, 3, 33), (2, 1, 2, 5)]:
            x = make_values(12, shape, "randn")
            assert_close(run_triton(device, x), expected_softmax(x).float(), what=f"softmax_triton(x {shape})",
                         inputs=dict(x=x, seed=12), hint="flatten every leading dim into rows: x.reshape(-1, n_cols), "
                         "and return the result in x's shape")

    def test_non_contiguous_input(self, device):
        base = make_values(13, (40, 24), "randn")
        for name, x in (("x.t()", base.to(device).t()), ("x[:, ::3]", base.to(device)[:, ::3]),
                        ("x[::2, 5:17]", base.to(device)[::2, 5:17])):
            expected = expected_softmax(x.cpu()).float()
            assert_close(run_triton(device, x), expected, what=f"softmax_triton({name})",
                         inputs=dict(x=x.cpu(), seed=13),
                         hint="the kernel assumes a row stride and unit column stride: pass x.stride(0) "
                         "or call .contiguous() first")

    @pytest.mark.gpu
    @pytest.mark.parametrize("dtype", TRITON_DTYPES)
    @pytest.mark.parametrize("n", [1024, 4096, 8192, 16384, 32768, 100_003, 1_000_003])
    def test_large_shapes_on_gpu(self, dtype, n):
        # An odd number of rows: a kernel that handles several rows per program must mask the last tile.
        rows = max(3, (min(1024, 2**24 // n) - 1) | 1)  # 1023, 511, 167, 15
        x = make_values(n, (rows, n), "randn", dtype=dtype).cuda()
        assert_close(run_triton("cuda", x), expected_softmax(x.cpu()).to(dtype),
                     what=f"softmax_triton(x ({rows}, {n})) in {dtype}", inputs=dict(x=x, seed=n),
                     hint="rows per program that do not divide the row count leave a partial last tile: "
                     "mask rows too (rows < n_rows)")
