"""Kata 02: sampling. The checks, one class per README task.

Expected values come from `oracle_row`, a brute-force float64 transcription of the
contract (no sorting, no cumsum: for every token it counts the tokens, or sums the mass,
that is strictly more probable). Random logits come from a small grid of values, so that
ties are frequent and exact, with -inf for banned tokens and, now and then, a huge offset.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from harness import assert_close, load_kata_module, max_examples

m = load_kata_module("sampling")

INF = float("inf")
# A top-p or min-p decision this close to its threshold may go either way in float32;
# such rows are not compared (the oracle flags them; they are rare).
MARGIN = 2e-4
# logits / temperature rounds to float32 (relative 6e-8); exp() turns that into a relative
# error of |logit / temperature| * 6e-8 <= 1e-5 here, and renormalising adds a little.
PROB_TOL = dict(atol=1e-5, rtol=1e-4)
POW2_TEMPERATURES = [0.25, 0.5, 1.0, 2.0, 4.0]  # dividing by these is exact in float32


# -- The oracle: the contract, one row at a time, in float64 ----------------------------
def _renorm(q: list[float], keep: list[bool]) -> list[float]:
    q = [qi if k else 0.0 for qi, k in zip(q, keep)]
    s = sum(q)
    return [qi / s for qi in q]


def oracle_row(x: list[float], t: float, k: int, p: float, mp: float) -> tuple[list[float], bool]:
    """(probabilities, ambiguous): ambiguous when a top-p/min-p decision sits on its threshold."""
    V = len(x)
    if t == 0:
        top = max(x)
        q = _renorm([1.0] * V, [xi == top for xi in x])
    else:
        z = [xi / t for xi in x]
        top = max(z)
        q = _renorm([math.exp(zi - top) if zi != -INF else 0.0 for zi in z], [True] * V)
    ambiguous = False
    if 0 < k < V:  # fewer than k tokens strictly more probable
        q = _renorm(q, [sum(qj > qi for qj in q) < k for qi in q])
    if p < 1:  # the tokens strictly more probable hold less than p of the mass
        ahead = [sum(qj for qj in q if qj > qi) for qi in q]
        ambiguous |= any(qi > 0 and abs(a - p) < MARGIN for a, qi in zip(ahead, q))
        q = _renorm(q, [a < p for a in ahead])
    top = max(q)  # min-p: at least min_p times the largest
    ambiguous |= any(0 < qi < top and abs(qi - mp * top) < MARGIN * top for qi in q)
    q = _renorm(q, [qi >= mp * top for qi in q])
    return q, ambiguous


def _value(param: Any, b: int) -> Any:
    return param[b].item() if isinstance(param, torch.Tensor) else param


def oracle(logits: torch.Tensor, t: Any = 1.0, k: Any = 0, p: Any = 1.0, mp: Any = 0.0
           ) -> tuple[torch.Tensor, list[bool]]:
    """(B, V) float64 expected probabilities, and which rows are ambiguous."""
    rows, amb = [], []
    for b, x in enumerate(logits.double().tolist()):
        q, a = oracle_row(x, float(_value(t, b)), int(_value(k, b)), float(_value(p, b)),
                          float(_value(mp, b)))
        rows.append(q)
        amb.append(a)
    return torch.tensor(rows, dtype=torch.float64), amb


def check_probs(out: Any, logits: torch.Tensor, params: dict[str, Any], *, what: str,
                hint: str, tol: dict[str, float] | None = None, **inputs: Any) -> None:
    """out == the oracle on every unambiguous row: values, exact zeros, and the support."""
    t, k, p, mp = (params.get(n, d) for n, d in
                   (("temperature", 1.0), ("top_k", 0), ("top_p", 1.0), ("min_p", 0.0)))
    expected, amb = oracle(logits, t, k, p, mp)
    desc = dict(logits=logits, **{n: (v.tolist() if isinstance(v, torch.Tensor) else v)
                                  for n, v in params.items()}, **inputs)
    assert isinstance(out, torch.Tensor), f"{what}: expected a tensor, got {type(out).__name__}"
    assert out.shape == logits.shape, f"{what}: shape {tuple(out.shape)}, expected {tuple(logits.shape)}"
    assert out.dtype == torch.float32, f"{what}: dtype {out.dtype}, expected torch.float32"
    ok = torch.tensor([not a for a in amb])
    if not ok.any():
        return
    got, exp = out.detach().cpu()[ok], expected[ok]
    rows = [b for b in range(len(amb)) if not amb[b]]
    removed = exp == 0
    leaked = removed & (got != 0)
    if leaked.any():
        r, v = (int(i) for i in leaked.nonzero()[0])
        raise AssertionError(
            f"{what}: token {v} of row {rows[r]} should be removed (probability exactly 0) but got "
            f"{float(got[r, v]):.6g}; the row should keep tokens {exp[r].nonzero().flatten().tolist()}"
            f"\n  logits row: {logits[rows[r]].tolist()}\n  inputs: {desc}\n  hint: {hint}")
    lost = (exp > 1e-6) & (got <= 0)
    if lost.any():
        r, v = (int(i) for i in lost.nonzero()[0])
        raise AssertionError(
            f"{what}: token {v} of row {rows[r]} should be kept (expected probability "
            f"{float(exp[r, v]):.6g}) but got {float(got[r, v]):.6g}; the row should keep tokens "
            f"{exp[r].nonzero().flatten().tolist()}\n  logits row: {logits[rows[r]].tolist()}"
            f"\n  inputs: {desc}\n  hint: {hint}")
    assert_close(got, exp.float(), what=what, inputs=desc, hint=hint, **(tol or {}))
    sums = got.double().sum(-1)
    assert bool(((sums - 1).abs() <= 1e-5).all()), f"{what}: rows sum to {sums.tolist()}, not 1\n  inputs: {desc}"


# -- Inputs -----------------------------------------------------------------------------
def grid_logits(seed: int, B: int, V: int, *, distinct: int = 4, banned: float = 0.0,
                offset: float = 0.0, spread: int = 32) -> torch.Tensor:
    """(B, V) float32 logits drawn from `distinct` grid values (multiples of 1/4 in
    [-spread/4, spread/4]) per row, so ties are common and exact; a `banned` fraction is -inf
    (each row keeps a finite logit); every row is shifted by +offset or -offset."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.arange(-spread, spread + 1, dtype=torch.float32) / 4
    out = torch.empty(B, V)
    for b in range(B):
        palette = grid[torch.randperm(len(grid), generator=g)[:distinct]]
        out[b] = palette[torch.randint(0, len(palette), (V,), generator=g)]
    ban = torch.rand(B, V, generator=g) < banned
    ban[torch.arange(B), torch.randint(0, V, (B,), generator=g)] = False
    out[ban] = -INF
    if offset:
        sign = torch.where(torch.rand(B, 1, generator=g) < 0.5, -1.0, 1.0)
        out = out + sign * offset
    return out


@dataclass
class Case:
    logits: torch.Tensor
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def __repr__(self) -> str:  # what hypothesis prints for a failing example
        ps = {n: (v.tolist() if isinstance(v, torch.Tensor) else v) for n, v in self.params.items()}
        return f"Case(seed={self.seed}, logits={self.logits.tolist()}, params={ps})"


def _param(draw: Any, values: st.SearchStrategy, B: int, dtype: torch.dtype) -> Any:
    if draw(st.booleans()):
        return draw(values)
    return torch.tensor(draw(st.lists(values, min_size=B, max_size=B)), dtype=dtype)


@st.composite
def cases(draw: Any, *, filters: tuple[str, ...] = ("temperature", "top_k", "top_p", "min_p"),
          max_B: int = 4, max_V: int = 20) -> Case:
    seed = draw(st.integers(0, 2**31 - 1))
    B, V = draw(st.integers(1, max_B)), draw(st.integers(1, max_V))
    big = draw(st.integers(0, 4)) == 0
    logits = grid_logits(seed, B, V, distinct=draw(st.integers(1, V)),
                         banned=draw(st.sampled_from([0.0, 0.0, 0.3])),
                         offset=1e4 if big else 0.0)
    params: dict[str, Any] = {}
    if "temperature" in filters:
        temps = st.sampled_from([0.0] + POW2_TEMPERATURES) if big else st.one_of(
            st.just(0.0), st.sampled_from(POW2_TEMPERATURES), st.floats(0.1, 5.0))
        params["temperature"] = _param(draw, temps, B, torch.float32)
    if "top_k" in filters:
        params["top_k"] = _param(draw, st.integers(0, V + 2), B, torch.long)
    if "top_p" in filters:
        params["top_p"] = _param(draw, st.one_of(st.just(1.0), st.floats(0.01, 1.0)), B, torch.float32)
    if "min_p" in filters:
        params["min_p"] = _param(draw, st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0)),
                                 B, torch.float32)
    return Case(logits, params, seed)


def logits_of(probs: list[list[float]]) -> torch.Tensor:
    """Logits whose softmax is the given rows (log of each probability)."""
    return torch.tensor(probs, dtype=torch.float64).log().float()


def probs_of(**kw: Any) -> torch.Tensor:
    return m.filtered_probs(**kw)


# -- Task 1 -----------------------------------------------------------------------------
class TestTask1Temperature:
    def test_shape_dtype_and_rows_sum_to_one(self) -> None:
        logits = grid_logits(1, 3, 11, distinct=5, banned=0.2)
        out = m.filtered_probs(logits, temperature=0.7)
        assert isinstance(out, torch.Tensor) and out.shape == (3, 11), \
            f"filtered_probs of (3, 11) logits: expected a (3, 11) tensor, got {getattr(out, 'shape', out)}"
        assert out.dtype == torch.float32, f"filtered_probs must return float32, got {out.dtype}"
        sums = out.double().sum(-1)
        assert bool(((sums - 1).abs() <= 1e-5).all()), f"rows must sum to 1, got {sums.tolist()}"
        assert bool((out >= 0).all()), "probabilities must be >= 0"

    def test_logits_not_modified(self) -> None:
        logits = grid_logits(2, 2, 9, distinct=4, banned=0.2)
        before = logits.clone()
        m.filtered_probs(logits, temperature=0.5, top_k=3, top_p=0.8, min_p=0.1)
        m.filtered_probs(logits, temperature=0.0)
        assert torch.equal(logits, before), \
            "filtered_probs changed its input logits: work on a copy (x / t, not x.div_(t))"

    @given(case=cases(filters=("temperature",)))
    def test_equals_softmax_of_logits_over_temperature(self, case: Case) -> None:
        out = m.filtered_probs(case.logits, **case.params)
        check_probs(out, case.logits, case.params, what="filtered_probs(logits, temperature=t)",
                    hint="softmax(logits / t) per row, with t a number or a (B,) tensor (one per row); "
                    "t == 0: equal mass on the tokens of maximal logit", tol=PROB_TOL, seed=case.seed)

    def test_temperature_scales_the_logits(self) -> None:
        logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
        for t in (0.5, 1.0, 3.0):
            expected = torch.softmax(logits.double() / t, -1).float()
            assert_close(m.filtered_probs(logits, temperature=t), expected,
                         what=f"filtered_probs(logits, temperature={t})", inputs=dict(logits=logits),
                         hint="divide the logits by t before the softmax: t < 1 sharpens, t > 1 flattens")

    def test_huge_logits_do_not_overflow(self) -> None:
        logits = torch.tensor([[1e4, 1e4 - 1, 1e4 - 3, -INF], [-1e4, -1e4 - 2, -1e4 - 0.5, -1e4],
                               [80.0, 79.0, 60.0, 0.0]])
        for t in (1.0, 0.25):
            expected = torch.softmax(logits.double() / t, -1).float()
            assert_close(m.filtered_probs(logits, temperature=t), expected,
                         what=f"filtered_probs of logits near +-1e4, temperature={t}",
                         inputs=dict(logits=logits),
                         hint="exp(1e4) overflows: subtract each row's max before exp (torch.softmax does)")

    def test_temperature_zero_is_greedy_with_ties_sharing_the_mass(self) -> None:
        logits = torch.tensor([[1.0, 3.0, 3.0, -2.0, 3.0], [5.0, -INF, 0.0, 4.0, 4.5],
                               [-1.0, -1.0, -1.0, -1.0, -1.0]])
        expected = torch.tensor([[0, 1 / 3, 1 / 3, 0, 1 / 3], [1.0, 0, 0, 0, 0], [0.2] * 5])
        for t in (0.0, 0):
            assert_close(m.filtered_probs(logits, temperature=t), expected,
                         what=f"filtered_probs(logits, temperature={t!r})", inputs=dict(logits=logits),
                         hint="temperature 0 is greedy: equal mass on EVERY token of maximal logit "
                         "(not only the first argmax); never divide by 0")

    def test_temperature_zero_is_exact_for_near_ties(self) -> None:
        # Maxima that differ from the runner-up by one float32 step (or by 1e-30): greedy
        # means exactly 0 for every token below the max, however close it is.
        below_one = 1.0 - 2.0 ** -24  # the float32 just below 1
        logits = torch.tensor([[0.0, 1e-30, -1e-30, 1e-30], [1.0, below_one, 1.0, 0.5],
                               [3e4, 3e4 - 2.0 ** -9, -3e4, 3e4]])
        expected = torch.tensor([[0.0, 0.5, 0.0, 0.5], [0.5, 0.0, 0.5, 0.0], [0.5, 0.0, 0.0, 0.5]])
        out = m.filtered_probs(logits, temperature=0.0)
        assert isinstance(out, torch.Tensor) and bool((out[expected == 0] == 0).all()), (
            f"temperature 0 must give exactly 0 to every token below the row's max logit, even one "
            f"float32 step below; got {out.tolist() if isinstance(out, torch.Tensor) else out}\n"
            f"  logits: {logits.tolist()}\n  hint: greedy is not softmax(logits / tiny): compare "
            "with the row max (logits == max), do not clamp the temperature to a small epsilon")
        assert_close(out, expected, what="filtered_probs(near-tied logits, temperature=0)",
                     inputs=dict(logits=logits))

    def test_small_positive_temperature_is_not_greedy(self) -> None:
        # Only temperature 0 is greedy: a tiny positive t is softmax(logits / t) like any other.
        cases = [(1e-6, [[0.0, -1e-6, -2e-6, -INF]]), (1e-3, [[5.0, 5.0 - 2.0 ** -10, 4.999, 0.0]])]
        for t, rows in cases:
            logits = torch.tensor(rows)
            expected = torch.softmax(logits.double() / t, -1).float()
            assert_close(m.filtered_probs(logits, temperature=t), expected,
                         what=f"filtered_probs(logits, temperature={t})", inputs=dict(logits=logits),
                         hint="a small positive temperature is not 0: divide by it (only t == 0 is "
                         "greedy; do not treat t below some epsilon as greedy)", **PROB_TOL)

    def test_high_temperature_keeps_far_tokens(self) -> None:
        # softmax(x / 10) of gaps 120 and 200 is e^-12 and e^-20: small, but not 0. Computing
        # softmax(x) first (e^-120 underflows float32) and then raising it to 1/t loses them.
        logits = torch.tensor([[0.0, -120.0, -200.0, -INF], [50.0, -70.0, 50.0, -150.0]])
        expected = torch.softmax(logits.double() / 10.0, -1).float()
        out = m.filtered_probs(logits, temperature=10.0)
        assert isinstance(out, torch.Tensor) and bool((out[logits > -INF] > 0).all()), (
            f"temperature 10: every finite logit keeps a positive probability (e^-12, e^-20 here); "
            f"got {out.tolist() if isinstance(out, torch.Tensor) else out}\n  hint: divide the "
            "logits by t, then softmax; do not take the softmax first and raise it to 1/t")
        assert_close(out, expected, what="filtered_probs(logits, temperature=10)",
                     inputs=dict(logits=logits), atol=0.0, rtol=1e-4)

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_half_precision_logits_are_divided_in_float32(self, dtype: torch.dtype) -> None:
        # Grid logits are exact in both dtypes; x / 0.3 is not, and neither is 6e4 / 0.5 in fp16.
        logits = grid_logits(13, 3, 10, distinct=6, banned=0.2, spread=30).to(dtype)
        logits[0, :4] = torch.tensor([60000.0, 59968.0, 0.0, -60000.0]).to(dtype)
        logits[0, 4:] = -INF
        for t in (0.3, 0.5):
            expected = torch.softmax(logits.double() / t, -1).float()
            out = m.filtered_probs(logits, temperature=t)
            assert_close(out, expected, what=f"filtered_probs({dtype} logits, temperature={t})",
                         inputs=dict(logits=logits.float()), **PROB_TOL,
                         hint="convert the logits to float32 BEFORE dividing by the temperature: "
                         "x / t rounded to half precision is off by up to 1/16 of a logit, and "
                         "60000 / 0.5 overflows float16 to inf")

    def test_banned_tokens_get_exactly_zero(self) -> None:
        logits = torch.tensor([[0.0, -INF, 1.0, -INF], [-INF, -INF, -INF, 7.0]])
        out = m.filtered_probs(logits, temperature=0.8)
        assert bool((out[logits == -INF] == 0).all()) and not out.isnan().any(), \
            f"-inf logits must get probability exactly 0 (and no NaN): got {out.tolist()}"
        assert float(out[1, 3]) == 1.0, f"a row with one finite logit puts all mass on it, got {out[1].tolist()}"

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
    def test_other_logit_dtypes_give_float32(self, dtype: torch.dtype) -> None:
        logits = grid_logits(3, 3, 12, distinct=6, banned=0.2).to(dtype)
        out = m.filtered_probs(logits, top_k=4)
        assert isinstance(out, torch.Tensor) and out.dtype == torch.float32, \
            f"{dtype} logits: filtered_probs must return float32, got {getattr(out, 'dtype', out)}"
        # The expected values use float64 math; a half-precision softmax is allowed its rounding.
        check_probs(out, logits.float(), dict(top_k=4), what=f"filtered_probs({dtype} logits, top_k=4)",
                    hint="compute in float32 (logits.float()) and return float32",
                    tol=dict(atol=8e-3, rtol=1.6e-2), dtype=str(dtype))

    def test_negative_temperature_raises(self) -> None:
        logits = torch.zeros(2, 5)
        for bad in (-0.5, -1, torch.tensor([1.0, -0.1])):
            with pytest.raises(ValueError):
                m.filtered_probs(logits, temperature=bad)
                pytest.fail(f"temperature={bad!r} must raise ValueError (temperature < 0)")


# -- Task 2 -----------------------------------------------------------------------------
class TestTask2TopK:
    @given(case=cases(filters=("temperature", "top_k")))
    def test_matches_definition(self, case: Case) -> None:
        out = m.filtered_probs(case.logits, **case.params)
        check_probs(out, case.logits, case.params, what="filtered_probs(logits, temperature, top_k)",
                    hint="keep a token when FEWER THAN k tokens are strictly more probable (all ties at "
                    "the boundary stay); k == 0 or k >= V: keep all; renormalise", tol=PROB_TOL,
                    seed=case.seed)

    def test_ties_at_the_boundary_all_stay(self) -> None:
        logits = torch.tensor([[3.0, 2.0, 1.0, 2.0, 2.0, 0.0], [1.0, 1.0, 1.0, 0.0, 1.0, -1.0]])
        for k, keep in ((1, [[0], [0, 1, 2, 4]]), (2, [[0, 1, 3, 4], [0, 1, 2, 4]]),
                        (4, [[0, 1, 3, 4], [0, 1, 2, 4]]), (5, [[0, 1, 2, 3, 4], [0, 1, 2, 3, 4]])):
            out = m.filtered_probs(logits, top_k=k)
            for b in range(2):
                got = out[b].nonzero().flatten().tolist()
                assert got == keep[b], (
                    f"top_k={k}, logits row {logits[b].tolist()}: kept tokens {got}, expected {keep[b]}."
                    " A token stays when fewer than k tokens are STRICTLY more probable, so every token "
                    "tied with the k-th stays too (compare with the k-th largest value; do not cut a "
                    "sorted list at position k)")

    def test_zero_and_large_k_mean_no_limit(self) -> None:
        logits = grid_logits(4, 2, 7, distinct=7)
        expected = torch.softmax(logits.double(), -1).float()
        for k in (0, 7, 8, 100):
            assert_close(m.filtered_probs(logits, top_k=k), expected, what=f"filtered_probs(top_k={k})",
                         inputs=dict(logits=logits), hint="top_k == 0 or top_k >= V: no limit")

    def test_negative_top_k_raises(self) -> None:
        for bad in (-1, torch.tensor([2, -3])):
            with pytest.raises(ValueError):
                m.filtered_probs(torch.zeros(2, 5), top_k=bad)
                pytest.fail(f"top_k={bad!r} must raise ValueError (top_k < 0)")


# -- Task 3 -----------------------------------------------------------------------------
class TestTask3TopP:
    @given(case=cases(filters=("temperature", "top_p")))
    def test_matches_definition(self, case: Case) -> None:
        out = m.filtered_probs(case.logits, **case.params)
        check_probs(out, case.logits, case.params, what="filtered_probs(logits, temperature, top_p)",
                    hint="keep a token when the tokens STRICTLY more probable hold less than top_p of "
                    "the mass: the token that crosses top_p stays, and tied tokens share one fate",
                    tol=PROB_TOL, seed=case.seed)

    def test_the_crossing_token_stays(self) -> None:
        logits = logits_of([[0.5, 0.3, 0.15, 0.05]])
        for p, keep in ((0.3, [0]), (0.55, [0, 1]), (0.81, [0, 1, 2]), (0.97, [0, 1, 2, 3])):
            got = m.filtered_probs(logits, top_p=p)[0].nonzero().flatten().tolist()
            assert got == keep, (
                f"probabilities [0.5, 0.3, 0.15, 0.05], top_p={p}: kept {got}, expected {keep}. The "
                "smallest set whose mass reaches top_p includes the token that crosses it: test the "
                "mass strictly AHEAD of a token (exclusive cumsum) with <, not the mass including it")

    def test_tied_tokens_are_treated_alike(self) -> None:
        # probabilities 0.4, 0.2, 0.2, 0.2: the crossing happens inside the tie group
        logits = logits_of([[0.2, 0.2, 0.4, 0.2], [0.2, 0.4, 0.2, 0.2]])
        for p in (0.5, 0.7, 0.9):
            out = m.filtered_probs(logits, top_p=p)
            assert bool((out > 0).all()), (
                f"probabilities {[[0.2, 0.2, 0.4, 0.2], [0.2, 0.4, 0.2, 0.2]]}, top_p={p}: every 0.2 "
                f"token has 0.4 < top_p ahead of it, so all stay; got {out.tolist()}. Ties must not "
                "depend on where a token sits in the vocabulary")
        out = m.filtered_probs(logits, top_p=0.3)
        expected = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
        assert_close(out, expected, what="filtered_probs(top_p=0.3)", inputs=dict(logits=logits))

    def test_after_renormalising_top_k(self) -> None:
        # top_k=2 leaves 4/7 and 3/7; 4/7 >= 0.5 is ahead of the second, so top_p=0.5 keeps one.
        logits = logits_of([[0.4, 0.3, 0.2, 0.1]])
        out = m.filtered_probs(logits, top_k=2, top_p=0.5)
        assert_close(out, torch.tensor([[1.0, 0.0, 0.0, 0.0]]), what="filtered_probs(top_k=2, top_p=0.5)",
                     inputs=dict(probabilities=[0.4, 0.3, 0.2, 0.1]),
                     hint="top-p measures mass in the distribution top-k left, renormalised to sum 1 "
                     "(4/7, 3/7), not in the original one (0.4, 0.3)")

    def test_top_p_one_keeps_every_token(self) -> None:
        logits = torch.tensor([[0.0, -20.0, -40.0, -60.0, -INF]])
        out = m.filtered_probs(logits, top_p=1.0)
        assert bool((out[0, :4] > 0).all()) and float(out[0, 4]) == 0.0, (
            f"top_p=1.0 means no limit: every finite logit keeps a positive probability, even when "
            f"the mass ahead of it rounds to 1.0 in float32; got {out.tolist()}")

    def test_bad_top_p_raises(self) -> None:
        for bad in (0.0, -0.2, 1.01, 2, torch.tensor([0.5, 0.0]), torch.tensor([1.5, 0.5])):
            with pytest.raises(ValueError):
                m.filtered_probs(torch.zeros(2, 5), top_p=bad)
                pytest.fail(f"top_p={bad!r} must raise ValueError (top_p outside (0, 1])")


# -- Task 4 -----------------------------------------------------------------------------
class TestTask4MinP:
    @given(case=cases(filters=("temperature", "min_p")))
    def test_matches_definition(self, case: Case) -> None:
        out = m.filtered_probs(case.logits, **case.params)
        check_probs(out, case.logits, case.params, what="filtered_probs(logits, temperature, min_p)",
                    hint="keep p_i >= min_p * max_j p_j (relative to the row's LARGEST probability)",
                    tol=PROB_TOL, seed=case.seed)

    def test_threshold_is_relative_to_the_largest(self) -> None:
        logits = logits_of([[0.4, 0.3, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25]])
        out = m.filtered_probs(logits, min_p=0.3)
        keep = [out[b].nonzero().flatten().tolist() for b in range(2)]
        assert keep == [[0, 1, 2], [0, 1, 2, 3]], (
            f"probabilities [0.4, 0.3, 0.2, 0.1] and [0.25]*4, min_p=0.3: kept {keep}, expected "
            "[[0, 1, 2], [0, 1, 2, 3]]: the threshold is 0.3 * 0.4 = 0.12 (and 0.3 * 0.25), "
            "min_p times the row's largest probability, not min_p itself")

    def test_min_p_one_keeps_the_tied_maxima(self) -> None:
        logits = torch.tensor([[2.0, 0.0, 2.0, 1.0, 2.0]])
        out = m.filtered_probs(logits, temperature=1.5, min_p=1.0)
        assert_close(out, torch.tensor([[1 / 3, 0.0, 1 / 3, 0.0, 1 / 3]]), what="filtered_probs(min_p=1.0)",
                     inputs=dict(logits=logits), hint="p >= 1.0 * max keeps exactly the tokens tied with the max")

    def test_bad_min_p_raises(self) -> None:
        for bad in (-0.01, 1.5, torch.tensor([0.5, -1.0]), torch.tensor([0.0, 1.2])):
            with pytest.raises(ValueError):
                m.filtered_probs(torch.zeros(2, 5), min_p=bad)
                pytest.fail(f"min_p={bad!r} must raise ValueError (min_p outside [0, 1])")


# -- Task 5 -----------------------------------------------------------------------------
class TestTask5Pipeline:
    def test_boundary_values_are_accepted(self) -> None:
        logits = grid_logits(5, 2, 6, distinct=3)
        for kw in (dict(temperature=0.0), dict(top_k=0), dict(top_p=1.0), dict(min_p=0.0),
                   dict(min_p=1.0), dict(top_k=torch.tensor([0, 6]), top_p=torch.tensor([1.0, 1e-3]),
                                          min_p=torch.tensor([0.0, 1.0]), temperature=torch.tensor([0.0, 2.0]))):
            out = m.filtered_probs(logits, **kw)
            assert bool(torch.isfinite(out).all()), f"filtered_probs(**{kw}) gave {out.tolist()}"

    def test_inputs_not_modified(self) -> None:
        logits = grid_logits(6, 3, 8, distinct=4, banned=0.2)
        params = dict(temperature=torch.tensor([0.0, 0.5, 2.0]), top_k=torch.tensor([0, 2, 5]),
                      top_p=torch.tensor([0.9, 0.5, 1.0]), min_p=torch.tensor([0.0, 0.1, 0.3]))
        before = {n: v.clone() for n, v in params.items()} | {"logits": logits.clone()}
        m.filtered_probs(logits, **params)
        for n, v in params.items():
            assert torch.equal(v, before[n]), f"filtered_probs changed its {n} tensor"
        assert torch.equal(logits, before["logits"]), "filtered_probs changed its input logits"

    @settings(max_examples=max_examples(60))
    @given(case=cases())
    def test_matches_definition_with_every_filter_and_per_row_parameters(self, case: Case) -> None:
        out = m.filtered_probs(case.logits, **case.params)
        check_probs(out, case.logits, case.params,
                    what="filtered_probs(logits, temperature, top_k, top_p, min_p)",
                    hint="order: temperature, top-k, top-p, min-p, each on the RENORMALISED result of "
                    "the one before; a (B,) tensor parameter gives each row its own value",
                    tol=PROB_TOL, seed=case.seed)

    def test_filters_run_in_the_contract_order(self) -> None:
        logits = logits_of([[0.4, 0.3, 0.2, 0.1]])
        # (kwargs, expected): each distinguishes the contract's order from another order
        checks = [
            (dict(top_k=2, top_p=0.5), [1.0, 0, 0, 0], "top-k before top-p (top-p on 4/7, 3/7)"),
            (dict(top_p=0.75, min_p=0.3), [4 / 9, 3 / 9, 2 / 9, 0], "top-p before min-p"),
            (dict(temperature=0.5, top_p=0.45), [1.0, 0, 0, 0],
             "temperature first: top-p sees softmax(logits / t) = [16, 9, 4, 1] / 30"),
            (dict(temperature=2.0, min_p=0.8),
             [0.4 ** 0.5 / (0.4 ** 0.5 + 0.3 ** 0.5), 0.3 ** 0.5 / (0.4 ** 0.5 + 0.3 ** 0.5), 0, 0],
             "temperature before min-p"),
        ]
        for kw, exp, why in checks:
            assert_close(m.filtered_probs(logits, **kw), torch.tensor([exp], dtype=torch.float32),
                         what=f"filtered_probs(probabilities [0.4, 0.3, 0.2, 0.1], **{kw})",
                         hint=f"{why}; each filter renormalises before the next one")

    @given(case=cases())
    def test_per_row_tensors_equal_row_by_row_calls(self, case: Case) -> None:
        out = m.filtered_probs(case.logits, **case.params)
        for b in range(case.logits.shape[0]):
            row_params = {n: _value(v, b) for n, v in case.params.items()}
            alone = m.filtered_probs(case.logits[b:b + 1], **row_params)
            assert_close(out[b:b + 1], alone, what=f"row {b} of a batched call vs the row alone",
                         inputs=dict(logits=case.logits, seed=case.seed, row_params=row_params),
                         hint="a (B,) tensor parameter gives row b the value param[b]; rows never mix")

    def test_non_contiguous_logits(self) -> None:
        base = grid_logits(14, 12, 10, distinct=5, banned=0.2)  # (12, 10)
        kw = dict(temperature=torch.tensor([0.0, 0.7, 1.3, 1.0, 0.5, 2.0]), top_k=3, top_p=0.9,
                  min_p=0.05)
        for name, logits in (("a transposed (10, 12) tensor, first 6 rows", base.t()[:6]),
                             ("every other row", base[::2]),
                             ("every other column", base[:6, ::2])):
            assert not logits.is_contiguous(), f"test setup: {name} should not be contiguous"
            out = m.filtered_probs(logits, **kw)
            assert_close(out, m.filtered_probs(logits.contiguous(), **kw),
                         what=f"filtered_probs of {name} (non-contiguous) vs a contiguous copy",
                         inputs=dict(logits=logits),
                         hint="any (B, V) tensor is valid input, whatever its strides: use reshape, "
                         "not view, and index with (b, v), not into a flattened copy")

    def test_float64_parameter_tensors(self) -> None:
        logits = grid_logits(15, 3, 9, distinct=5, banned=0.1)
        f32 = dict(temperature=torch.tensor([0.0, 0.7, 1.5]), top_k=torch.tensor([0, 3, 5]),
                   top_p=torch.tensor([1.0, 0.8, 0.6]), min_p=torch.tensor([0.0, 0.05, 0.1]))
        f64 = {n: (v.double() if v.is_floating_point() else v) for n, v in f32.items()}
        out = m.filtered_probs(logits, **f64)
        assert isinstance(out, torch.Tensor) and out.dtype == torch.float32, (
            f"float64 parameter tensors: filtered_probs must still return float32, got "
            f"{getattr(out, 'dtype', out)} (type promotion: cast the parameters to float32)")
        assert_close(out, m.filtered_probs(logits, **f32), what="float64 vs float32 parameter tensors",
                     inputs=dict(logits=logits), **PROB_TOL)

    def test_number_equals_filled_tensor(self) -> None:
        logits = grid_logits(7, 3, 10, distinct=5, banned=0.1)
        kw = dict(temperature=0.7, top_k=4, top_p=0.8, min_p=0.05)
        as_tensors = dict(temperature=torch.full((3,), 0.7), top_k=torch.full((3,), 4),
                          top_p=torch.full((3,), 0.8), min_p=torch.full((3,), 0.05))
        assert_close(m.filtered_probs(logits, **as_tensors), m.filtered_probs(logits, **kw),
                     what="parameters as filled (B,) tensors vs as numbers", inputs=dict(logits=logits))

    @given(case=cases(), perm_seed=st.integers(0, 2**31 - 1))
    def test_permuting_the_vocabulary_permutes_the_output(self, case: Case, perm_seed: int) -> None:
        """Ties never depend on token order: shuffle each row's tokens, the output shuffles alike."""
        _, amb = oracle(case.logits, *(case.params.get(n, d) for n, d in (
            ("temperature", 1.0), ("top_k", 0), ("top_p", 1.0), ("min_p", 0.0))))
        assume(not any(amb))
        B, V = case.logits.shape
        g = torch.Generator().manual_seed(perm_seed)
        perm = torch.stack([torch.randperm(V, generator=g) for _ in range(B)])  # (B, V)
        out = m.filtered_probs(case.logits, **case.params)
        shuffled = m.filtered_probs(case.logits.gather(1, perm), **case.params)
        expected = out.gather(1, perm)
        moved = (shuffled == 0) != (expected == 0)
        assert not moved.any(), (
            f"after shuffling the vocabulary the kept set changed: row {int(moved.nonzero()[0, 0])} "
            f"keeps {(shuffled[int(moved.nonzero()[0, 0])] > 0).nonzero().flatten().tolist()} (shuffled) vs "
            f"{(expected[int(moved.nonzero()[0, 0])] > 0).nonzero().flatten().tolist()} (original, shuffled)"
            f"\n  {case!r}, perm_seed={perm_seed}\n  hint: a tie is broken by token position somewhere "
            "(cutting a sorted list at a position, argmax, scattering a sorted mask)")
        assert_close(shuffled, expected, what="filtered_probs(shuffled logits) vs shuffled output",
                     inputs=dict(logits=case.logits, seed=case.seed, perm_seed=perm_seed))


# -- Task 6 -----------------------------------------------------------------------------
def bernstein_halfwidth(n: int, p: float, delta: float) -> float:
    """t with P(|Binomial(n, p) - n p| >= t) <= delta, from Bernstein's inequality
    P(|S - np| >= t) <= 2 exp(-t^2 / (2 (n p (1 - p) + t / 3)))."""
    L = math.log(2 / delta)
    return L / 3 + math.sqrt(L * L / 9 + 2 * L * n * p * (1 - p))


class TestTask6Sample:
    def test_shape_dtype_and_range(self) -> None:
        logits = grid_logits(8, 5, 13, distinct=6, banned=0.3)
        tokens = m.sample(logits, generator=torch.Generator().manual_seed(0))
        assert isinstance(tokens, torch.Tensor) and tokens.shape == (5,), \
            f"sample of (5, 13) logits must return shape (5,), got {getattr(tokens, 'shape', tokens)}" \
            " (torch.multinomial returns (B, 1): squeeze it)"
        assert tokens.dtype == torch.long, f"sample must return torch.long, got {tokens.dtype}"
        assert bool(((tokens >= 0) & (tokens < 13)).all()), f"token ids out of range: {tokens.tolist()}"
        one = m.sample(logits[2:3], generator=torch.Generator().manual_seed(0))
        assert isinstance(one, torch.Tensor) and one.shape == (1,) and one.dtype == torch.long, (
            f"sample of (1, 13) logits must return a (1,) long tensor, got "
            f"{getattr(one, 'shape', one)!r}: squeeze(-1), not squeeze() (a batch of one stays a batch)")

    def test_logits_not_modified(self) -> None:
        logits = grid_logits(9, 3, 8, distinct=4, banned=0.2)
        before = logits.clone()
        m.sample(logits, temperature=0.5, top_k=3, top_p=0.9, min_p=0.1,
                 generator=torch.Generator().manual_seed(1))
        assert torch.equal(logits, before), "sample changed its input logits"

    @given(case=cases(max_V=16))
    def test_never_samples_a_removed_token(self, case: Case) -> None:
        reps = 64
        expected, amb = oracle(case.logits, *(case.params.get(n, d) for n, d in (
            ("temperature", 1.0), ("top_k", 0), ("top_p", 1.0), ("min_p", 0.0))))
        B, V = case.logits.shape
        rep = {n: (v.repeat_interleave(reps) if isinstance(v, torch.Tensor) else v)
               for n, v in case.params.items()}
        tokens = m.sample(case.logits.repeat_interleave(reps, 0), **rep,
                          generator=torch.Generator().manual_seed(case.seed))
        assert tokens.shape == (B * reps,), f"sample must return ({B * reps},), got {tuple(tokens.shape)}"
        for i, tok in enumerate(tokens.tolist()):
            b = i // reps
            if not amb[b]:
                assert expected[b, tok] > 0, (
                    f"row {b} sampled token {tok}, which the filters remove (its probability is 0); "
                    f"allowed: {expected[b].nonzero().flatten().tolist()}\n  {case!r}\n  hint: draw "
                    "from filtered_probs (same parameters, per row), e.g. torch.multinomial")

    def test_frequencies_match_filtered_probs(self) -> None:
        """50 000 draws for each of four rows (one batched call, per-row parameters). Every
        token's count must lie within a Bernstein bound of n * p, at a per-token false-alarm
        rate of 1e-7 / 32 (union over 4 rows x 8 tokens): a correct sampler fails this test,
        for any seed, with probability below 1e-7. A token of probability 0 must never appear."""
        base = [2.0, 1.0, 1.0, 0.5, 0.0, -0.5, -INF, -1.0]
        configs = [dict(temperature=0.7, top_k=0, top_p=1.0, min_p=0.0),
                   dict(temperature=1.0, top_k=2, top_p=1.0, min_p=0.0),  # the tie at k stays
                   dict(temperature=1.3, top_k=0, top_p=0.8, min_p=0.0),
                   dict(temperature=0.9, top_k=6, top_p=0.95, min_p=0.2)]
        n, V, delta = 50_000, len(base), 1e-7
        logits = torch.tensor([base] * len(configs))
        params = {name: torch.tensor([c[name] for c in configs]) for name in configs[0]}
        expected, amb = oracle(logits, **dict(zip(("t", "k", "p", "mp"), params.values())))
        assert not any(amb), "test setup: a row of this fixed case sits on a top-p/min-p threshold"
        rep = {name: v.repeat_interleave(n) for name, v in params.items()}
        tokens = m.sample(logits.repeat_interleave(n, 0), **rep,
                          generator=torch.Generator().manual_seed(2024))
        counts = torch.zeros(len(configs), V, dtype=torch.float64)
        counts.index_put_((torch.arange(len(configs)).repeat_interleave(n), tokens.long()),
                          torch.ones(len(tokens), dtype=torch.float64), accumulate=True)
        for b, c in enumerate(configs):
            for v in range(V):
                p = float(expected[b, v])
                got = float(counts[b, v])
                if p == 0:
                    assert got == 0, f"row {c}: token {v} has probability 0 but was drawn {got:.0f} times"
                    continue
                t = bernstein_halfwidth(n, p, delta / (len(configs) * V))
                assert abs(got - n * p) <= t, (
                    f"row {c}: token {v} drawn {got:.0f} of {n} times, expected {n * p:.0f} +- {t:.0f} "
                    f"(probability {p:.4f}; a correct sampler misses this with probability < 1e-7). "
                    f"Frequencies {(counts[b] / n).tolist()} vs {expected[b].tolist()}. hint: draw from "
                    "filtered_probs with each row's own parameters")

    def test_same_generator_seed_gives_same_tokens(self) -> None:
        logits = grid_logits(10, 64, 16, distinct=16, spread=4)
        kw = dict(temperature=1.5, top_p=0.95)
        torch.manual_seed(1)
        a = m.sample(logits, **kw, generator=torch.Generator().manual_seed(123))
        torch.manual_seed(2)
        b = m.sample(logits, **kw, generator=torch.Generator().manual_seed(123))
        c = m.sample(logits, **kw, generator=torch.Generator().manual_seed(124))
        assert torch.equal(a, b), (
            "two calls with generators seeded alike (and different global seeds) drew different "
            "tokens: pass generator= to every random call (torch.multinomial(..., generator=g))")
        assert not torch.equal(a, c), "generators with different seeds drew the same 64 tokens"

    def test_generator_advances_between_calls(self) -> None:
        """A server calls sample once per decode step with the request's one generator, so
        consecutive calls must draw fresh numbers from it (not restart from its seed). 64 rows
        uniform over 16 tokens: a correct sampler repeats all 64 tokens with probability
        16^-64."""
        logits = torch.zeros(64, 16)
        g = torch.Generator().manual_seed(5)
        a = m.sample(logits, generator=g)
        b = m.sample(logits, generator=g)
        assert not torch.equal(a, b), (
            "two consecutive sample() calls with the same generator drew the same 64 tokens (rows "
            "uniform over 16 tokens): the generator's state must advance, so draw from it directly "
            "(torch.multinomial(probs, 1, generator=generator)); do not copy it or re-seed a new "
            "one from generator.initial_seed()")
        g2 = torch.Generator().manual_seed(5)
        a2, b2 = m.sample(logits, generator=g2), m.sample(logits, generator=g2)
        assert torch.equal(a, a2) and torch.equal(b, b2), (
            "the same seed must reproduce the same sequence of calls: generators seeded with 5 "
            "gave different tokens on the first or second call")

    def test_temperature_zero_rows_are_greedy(self) -> None:
        logits = grid_logits(11, 6, 12, distinct=5, banned=0.2)
        logits[0] = torch.tensor([0.0, 3.0, 1.0, 3.0] * 3)  # tied maxima
        t = torch.tensor([0.0, 1.0, 0.0, 2.0, 0.0, 0.0])
        for seed in range(20):
            tokens = m.sample(logits, temperature=t, top_k=3, top_p=0.9,
                              generator=torch.Generator().manual_seed(seed))
            for b in (0, 2, 4, 5):
                tok = int(tokens[b])
                assert logits[b, tok] == logits[b].max(), (
                    f"row {b} has temperature 0 but sampled token {tok} (logit {float(logits[b, tok])}) "
                    f"instead of a token of maximal logit {float(logits[b].max())}; seed={seed}")

    def test_greedy_rows_leave_other_rows_random(self) -> None:
        """Row 0 is greedy; rows 1-3 are uniform over 8 tokens, 200 draws each. A correct
        sampler gives one of those rows a single repeated token with probability 8^-199."""
        reps = 200
        logits = torch.zeros(4, 8)
        logits[0] = torch.tensor([0.0, 1.0, 3.0, 2.0, 3.0, -1.0, 0.5, 1.5])
        t = torch.tensor([0.0, 1.0, 1.0, 1.0])
        tokens = m.sample(logits.repeat_interleave(reps, 0), temperature=t.repeat_interleave(reps),
                          generator=torch.Generator().manual_seed(7)).view(4, reps)
        assert set(tokens[0].tolist()) <= {2, 4}, \
            f"row 0 has temperature 0: only tokens 2 and 4 (logit 3) may be drawn, got {set(tokens[0].tolist())}"
        for b in (1, 2, 3):
            drawn = set(tokens[b].tolist())
            assert len(drawn) > 1, (
                f"row {b} has temperature 1 and 8 equally likely tokens, yet all {reps} draws gave "
                f"{drawn}: it was treated as greedy. A greedy row (temperature 0) must not make the "
                "other rows greedy: decide per row, from that row's own temperature")

    def test_bad_parameters_raise(self) -> None:
        logits = torch.zeros(2, 5)
        for kw in (dict(temperature=-1.0), dict(top_k=-2), dict(top_p=0.0), dict(min_p=1.5),
                   dict(top_p=torch.tensor([0.5, 1.5]))):
            with pytest.raises(ValueError):
                m.sample(logits, **kw)
                pytest.fail(f"sample(**{kw}) must raise ValueError like filtered_probs")


# -- Task 7 -----------------------------------------------------------------------------
def penalty_oracle(logits: torch.Tensor, prev: torch.Tensor, penalty: Any) -> torch.Tensor:
    out = logits.double().clone()
    for b in range(logits.shape[0]):
        pen = float(_value(penalty, b))
        for tok in set(prev[b].tolist()) - {-1}:
            x = float(out[b, tok])
            out[b, tok] = x / pen if x > 0 else x * pen
    return out.to(logits.dtype)


@st.composite
def penalty_cases(draw: Any) -> tuple[torch.Tensor, torch.Tensor, Any, int]:
    seed = draw(st.integers(0, 2**31 - 1))
    B, V, L = draw(st.integers(1, 4)), draw(st.integers(1, 12)), draw(st.integers(0, 10))
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, V, generator=g) * 3
    logits[torch.rand(B, V, generator=g) < 0.1] = 0.0
    logits[torch.rand(B, V, generator=g) < 0.1] = -INF
    prev = torch.randint(0, V, (B, L), generator=g)
    pad = torch.rand(B, L, generator=g) < draw(st.sampled_from([0.0, 0.3, 0.8]))
    prev[pad] = -1
    pens = st.one_of(st.just(1.0), st.floats(1.0, 3.0))
    penalty = _param(draw, pens, B, torch.float32)
    return logits, prev, penalty, seed


class TestTask7RepetitionPenalty:
    def test_returns_a_new_tensor_and_leaves_inputs_alone(self) -> None:
        logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
        prev = torch.tensor([[0, 1, -1]])
        before, prev_before = logits.clone(), prev.clone()
        for penalty in (1.0, 1.5):
            out = m.apply_repetition_penalty(logits, prev, penalty)
            assert isinstance(out, torch.Tensor) and out.shape == logits.shape and out.dtype == logits.dtype, \
                f"apply_repetition_penalty must return a {tuple(logits.shape)} {logits.dtype} tensor, got {out!r}"
            assert torch.equal(logits, before) and torch.equal(prev, prev_before), \
                f"apply_repetition_penalty(penalty={penalty}) changed its inputs: work on a copy"
            assert out.data_ptr() != logits.data_ptr(), \
                f"apply_repetition_penalty(penalty={penalty}) must return a new tensor, not its input"

    @given(case=penalty_cases())
    def test_matches_brute_force(self, case: tuple[torch.Tensor, torch.Tensor, Any, int]) -> None:
        logits, prev, penalty, seed = case
        out = m.apply_repetition_penalty(logits, prev, penalty)
        assert_close(out, penalty_oracle(logits, prev, penalty), what="apply_repetition_penalty",
                     inputs=dict(logits=logits, prev_tokens=prev.tolist(), seed=seed,
                                 penalty=penalty.tolist() if isinstance(penalty, torch.Tensor) else penalty),
                     hint="each token seen in its row (ignore -1): logit / penalty if > 0, logit * penalty "
                     "if < 0, once however often it occurs; a (B,) penalty gives each row its own")

    def test_positive_divided_negative_multiplied(self) -> None:
        logits = torch.tensor([[4.0, -4.0, 0.0, 1.0]])
        out = m.apply_repetition_penalty(logits, torch.tensor([[0, 1, 2]]), 2.0)
        assert_close(out, torch.tensor([[2.0, -8.0, 0.0, 1.0]]), what="apply_repetition_penalty(penalty=2)",
                     inputs=dict(logits=logits, prev_tokens=[[0, 1, 2]]),
                     hint="a penalty makes a seen token LESS likely: 4 -> 2, but -4 -> -8 (dividing -4 "
                     "would give -2, more likely)")

    def test_padding_is_not_a_token(self) -> None:
        logits = torch.tensor([[1.0, 2.0, 3.0, 4.0], [-1.0, -2.0, -3.0, -4.0]])
        prev = torch.tensor([[1, -1, -1], [-1, -1, -1]])
        out = m.apply_repetition_penalty(logits, prev, 2.0)
        assert_close(out, torch.tensor([[1.0, 1.0, 3.0, 4.0], [-1.0, -2.0, -3.0, -4.0]]),
                     what="apply_repetition_penalty with -1 padding", inputs=dict(prev_tokens=prev.tolist()),
                     hint="-1 is padding, not a token: logits[b, -1] in Python is the LAST token (V - 1)")

    def test_repeated_token_is_penalised_once(self) -> None:
        logits = torch.tensor([[3.0, -1.0, 2.0]])
        out = m.apply_repetition_penalty(logits, torch.tensor([[0, 0, 0, 1, 1]]), 1.5)
        assert_close(out, torch.tensor([[2.0, -1.5, 2.0]]), what="apply_repetition_penalty, token 0 seen 3x",
                     inputs=dict(prev_tokens=[[0, 0, 0, 1, 1]]),
                     hint="the penalty applies once per seen token, not once per occurrence")

    def test_penalty_one_and_empty_history_change_nothing(self) -> None:
        logits = grid_logits(12, 3, 7, distinct=5, banned=0.2)
        prev = torch.tensor([[0, 1, 2], [6, -1, -1], [3, 3, 5]])
        assert_close(m.apply_repetition_penalty(logits, prev, 1.0), logits, what="penalty=1.0")
        assert_close(m.apply_repetition_penalty(logits, torch.zeros(3, 0, dtype=torch.long), 1.7), logits,
                     what="empty prev_tokens (B, 0)")

    def test_non_contiguous_logits(self) -> None:
        base = torch.tensor([[2.0, -2.0, 1.0], [0.5, 3.0, -1.0], [-4.0, 1.0, 2.0], [1.0, 1.0, 1.0]])
        logits = base.t()  # (3, 4), not contiguous
        prev = torch.tensor([[0, 1, -1], [3, 3, 2], [-1, -1, 1]])
        out = m.apply_repetition_penalty(logits, prev, 2.0)
        assert_close(out, penalty_oracle(logits, prev, 2.0),
                     what="apply_repetition_penalty of a transposed (non-contiguous) logits tensor",
                     inputs=dict(logits=logits, prev_tokens=prev.tolist()),
                     hint="writes into logits.reshape(-1) of a non-contiguous tensor go to a copy and "
                     "are lost: index (b, token) pairs, or build a (B, V) mask and use torch.where")

    def test_per_row_penalty(self) -> None:
        logits = torch.tensor([[2.0, -2.0], [2.0, -2.0], [2.0, -2.0]])
        prev = torch.tensor([[0, 1], [0, 1], [0, 1]])
        out = m.apply_repetition_penalty(logits, prev, torch.tensor([1.0, 2.0, 4.0]))
        assert_close(out, torch.tensor([[2.0, -2.0], [1.0, -4.0], [0.5, -8.0]]),
                     what="apply_repetition_penalty(penalty=tensor([1, 2, 4]))",
                     hint="a (B,) penalty tensor gives each row its own penalty")
