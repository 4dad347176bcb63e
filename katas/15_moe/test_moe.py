"""Kata 15: a Mixtral-style mixture-of-experts block. Tasks as in README.md.

Expected values come from float64 math written out here: routing by sorting each token's
logits (softmax is monotone, so the top-k by probability is the top-k by logit; equal logits
go lower id first), a brute-force queue for the capacity, the loss formula, and every expert
MLP applied to every token in float64. Where transformers is installed, `moe_forward` and
`load_balancing_loss` are also compared with transformers' own `MixtralSparseMoeBlock` and
`load_balancing_loss_func` (those checks skip, with a reason, without it).

Router logits are `x @ router_weight.T` in x's dtype (the contract), computed here by torch;
the float64 math starts from them. A token whose k-th and (k+1)-th logits differ by less than
a rounding of that dtype (but are not equal) could honestly be routed either way by another
rounding of the logits: such tokens are left out of the value comparisons (the message says
how many); with random inputs they are rare.

Under the Triton interpreter (no GPU) every kernel program costs milliseconds: the Triton
checks use at most 24 tokens and d, d_ff of 16 to 48, which with the reference's interpreter
tiles (BLOCK_M = 16, BLOCK_N = BLOCK_K = 32; README, "Running on CPU") still give several
row tiles per expert, partial tiles and experts with no tokens. On a GPU the Triton checks
run larger shapes.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import (assert_close, assert_raises, assert_triton_ran, count_triton_launches,
                     load_kata_module, max_examples)

m = load_kata_module("moe")

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Tolerances of the block's output against float64 math on the same inputs (README,
# "Tolerances"): three matrix products in a row, each summing d or d_ff terms; in bf16 an
# implementation may round the gate and up projections, silu and h (as transformers does)
# before the down projection, and the output once: a few bf16 roundings of values of order 1.
FORWARD_TOL = {torch.float32: (1e-4, 1e-4), torch.float16: (1e-2, 1e-2),
               torch.bfloat16: (4e-2, 4e-2)}
# A near tie at the top-k boundary: another rounding of the logits could route either way.
NEAR_TIE = {torch.float32: 1e-4, torch.float64: 1e-9, torch.float16: 1e-2, torch.bfloat16: 4e-2}


def dname(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# ------------------------------------------------------------------ independent float64 math
def expected_route(logits: torch.Tensor, top_k: int, renormalize: bool = True, ties_high: bool = False):
    """(weights float64, experts long) by sorting each row's logits, ties lower id first
    (ties_high: the higher id first, the wrong rule, for diagnosing a failure)."""
    l64 = logits.detach().cpu().double()
    # Sort by (-logit, id): a stable sort on -logit keeps ids ascending among equal logits.
    if ties_high:
        E = l64.shape[1]
        _, flipped = torch.sort(-l64.flip(-1), dim=-1, stable=True)
        experts = E - 1 - flipped
    else:
        _, experts = torch.sort(-l64, dim=-1, stable=True)
    experts = experts[:, :top_k]
    probs = torch.softmax(l64, dim=-1)
    weights = probs.gather(1, experts)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, experts


def boundary_gap(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Per token, k-th largest logit minus (k+1)-th (inf when top_k == E), in float64."""
    l64, _ = torch.sort(logits.detach().cpu().double(), dim=-1, descending=True)
    if top_k >= l64.shape[1]:
        return torch.full((l64.shape[0],), float("inf"), dtype=torch.float64)
    return l64[:, top_k - 1] - l64[:, top_k]


def clear_rows(logits: torch.Tensor, top_k: int, ties_ok: bool = True) -> torch.Tensor:
    """Tokens whose routing no honest rounding of the logits can change (bool, (T,)): the
    boundary gap is 0 (a tie, decided by the lower id; unless ties_ok is False) or larger
    than a rounding of the logits' dtype."""
    gap = boundary_gap(logits, top_k)
    scale = logits.detach().cpu().double().abs().amax(dim=-1).clamp_min(1.0)
    near = (gap > 0) & (gap < NEAR_TIE[logits.dtype] * scale)
    if not ties_ok:
        near |= gap == 0
    return ~near


def expert_outputs64(x, w_gate, w_up, w_down) -> torch.Tensor:
    """(E, T, d) float64 on the CPU: every expert's SwiGLU MLP applied to every token
    (computed on x's device: float64 on a GPU is fast enough for the GPU-sized checks)."""
    x64 = x.detach().double()
    g = torch.einsum("td,efd->etf", x64, w_gate.detach().double())
    u = torch.einsum("td,efd->etf", x64, w_up.detach().double())
    return torch.einsum("etf,edf->etd", F.silu(g) * u, w_down.detach().double()).cpu()


def expected_moe(x, router_weight, w_gate, w_up, w_down, top_k, ties_high: bool = False):
    """(out float64 (T, d), logits): the block in float64 from torch's logits in x's dtype."""
    logits = x @ router_weight.t()
    weights, experts = expected_route(logits, top_k, ties_high=ties_high)
    ys = expert_outputs64(x, w_gate, w_up, w_down)  # (E, T, d)
    T = x.shape[0]
    picked = ys[experts, torch.arange(T)[:, None]]  # (T, top_k, d)
    return (picked * weights[..., None]).sum(dim=1), logits


def make_block(seed: int, T: int, d: int, d_ff: int, E: int, dtype=torch.float32, device="cpu"):
    """x ~ N(0, 1); router ~ N(0, 1); expert weights ~ N(0, 1 / fan_in): outputs of order 1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, d, generator=g, dtype=torch.float64)
    rw = torch.randn(E, d, generator=g, dtype=torch.float64) / d**0.5 * 2
    wg = torch.randn(E, d_ff, d, generator=g, dtype=torch.float64) / d**0.5
    wu = torch.randn(E, d_ff, d, generator=g, dtype=torch.float64) / d**0.5
    wd = torch.randn(E, d, d_ff, generator=g, dtype=torch.float64) / d_ff**0.5
    return tuple(t.to(dtype).to(device) for t in (x, rw, wg, wu, wd))


def spread_block(seed: int, T: int, d: int, d_ff: int, E: int, dtype=torch.float32, device="cpu"):
    """make_block with token t pulled towards expert t % E, so that every expert gets tokens."""
    x, rw, wg, wu, wd = make_block(seed, T, d, d_ff, E, torch.float64)
    x = 0.3 * x
    for t in range(T):
        x[t] += 4 * rw[t % E] / rw[t % E].norm() ** 2
    return tuple(t.to(dtype).to(device) for t in (x, rw, wg, wu, wd))


def check_forward(fn, args, top_k, what: str, inputs: dict, hint: str = "") -> None:
    """fn(*args, top_k) against expected_moe on the tokens with a clear routing."""
    x = args[0]
    out = fn(*args, top_k)
    assert isinstance(out, torch.Tensor), f"{what} must return a tensor, got {type(out).__name__}"
    assert tuple(out.shape) == tuple(x.shape) and out.dtype == x.dtype, (
        f"{what}: expected a {tuple(x.shape)} {dname(x.dtype)} tensor, got "
        f"{tuple(out.shape)} {dname(out.dtype)}; inputs {inputs}")
    expected, logits = expected_moe(*args, top_k)
    keep = clear_rows(logits, top_k)
    left_out = int((~keep).sum())
    atol, rtol = FORWARD_TOL[x.dtype]
    assert_close(out.detach().cpu()[keep], expected[keep].to(x.dtype), what=what, inputs=inputs,
                 atol=atol, rtol=rtol,  # see FORWARD_TOL
                 hint=(hint + (f" ({left_out} token(s) with a near tie left out)" if left_out else "")))


def check_ties(fn, args, top_k, what: str, inputs: dict) -> None:
    """fn on tie_block's inputs: the lower id must win; the hint says whether the output is
    that of the higher id winning (a tie bug) or of neither (another bug: see the other checks)."""
    out = fn(*args, top_k)
    expected, _ = expected_moe(*args, top_k)
    wrong, _ = expected_moe(*args, top_k, ties_high=True)
    atol, rtol = FORWARD_TOL[args[0].dtype]
    got = out.detach().cpu().double() if isinstance(out, torch.Tensor) else None
    if got is not None and got.shape == wrong.shape and bool(
            ((got - wrong).abs() <= atol + rtol * wrong.abs()).all()):
        hint = ("your output is that of expert 2 winning the tie for the second place: among "
                "equal logits the lower expert id (1) comes first")
    else:
        hint = ("experts 1 and 2 tie for the second place and the lower id (1) must win; your "
                "output is not that of expert 2 winning either, so look for another bug first "
                "(the checks of random inputs below name it better)")
    check_forward(lambda *a: out, args, top_k, what, inputs, hint=hint)


def tie_block(T: int, d: int, d_ff: int, E: int, dtype=torch.float32, device="cpu", seed=5):
    """Router rows 1 and 2 identical, row 0 far above them, the rest far below: every token's
    logits are l0 > l1 == l2 > l3 ... With top_k = 2 the tie decides between experts 1 and 2."""
    x, rw, wg, wu, wd = make_block(seed, T, d, d_ff, E, torch.float64)
    x[:, 0] = 1.0
    base = rw[1].clone()
    base[0] = 0.0
    for e in range(E):
        rw[e] = base
    rw[0, 0] = 8.0
    for e in range(3, E):
        rw[e, 0] = -8.0
    return tuple(t.to(dtype).to(device) for t in (x, rw, wg, wu, wd))


# ============================================================================ Task 1: route
LOGIT_DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@st.composite
def routing_case(draw):
    T = draw(st.integers(1, 12))
    E = draw(st.integers(1, 9))
    k = draw(st.integers(1, E))
    on_grid = draw(st.booleans())  # small integers: many exact ties
    dtype = draw(st.sampled_from(LOGIT_DTYPES))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    if on_grid:
        logits = torch.randint(-2, 3, (T, E), generator=g).double() / 2
    else:
        logits = 3 * torch.randn(T, E, generator=g, dtype=torch.float64)
    return logits.to(dtype), k, seed


def call_route(logits, top_k, **kw):
    res = m.route(logits, top_k, **kw)
    assert isinstance(res, tuple) and len(res) == 2, (
        f"route must return a tuple (weights, experts), got {type(res).__name__}")
    return res


class TestTask1Route:
    def test_shapes_and_dtypes(self):
        for dtype in LOGIT_DTYPES:
            logits = torch.randn(5, 6, generator=torch.Generator().manual_seed(0)).to(dtype)
            weights, experts = call_route(logits, 2)
            assert tuple(weights.shape) == (5, 2) and weights.dtype == torch.float32, (
                f"route(logits (5, 6) {dname(dtype)}, top_k=2): weights must be (5, 2) float32, got "
                f"{tuple(weights.shape)} {dname(weights.dtype)}")
            assert tuple(experts.shape) == (5, 2) and experts.dtype == torch.long, (
                f"route(logits (5, 6) {dname(dtype)}, top_k=2): experts must be (5, 2) int64, got "
                f"{tuple(experts.shape)} {dname(experts.dtype)}")

    def test_input_not_modified(self):
        logits = torch.randn(4, 5, generator=torch.Generator().manual_seed(1))
        before = logits.clone()
        call_route(logits, 3, renormalize=False)
        call_route(logits, 3)
        assert torch.equal(logits, before), "route must not modify router_logits"

    def test_bad_top_k_raises(self):
        logits = torch.randn(3, 4)
        for k in (0, 5):
            with assert_raises(ValueError, f"route(logits (3, 4), top_k={k})"):
                m.route(logits, k)

    def test_weights_are_the_probabilities_without_renormalize(self):
        logits = torch.tensor([[2.0, 0.5, -1.0, 1.0], [0.0, 3.0, 1.0, 2.5]])
        weights, experts = call_route(logits, 2, renormalize=False)
        exp_w, exp_e = expected_route(logits, 2, renormalize=False)
        assert torch.equal(experts.cpu(), exp_e), (
            f"route(logits {logits.tolist()}, top_k=2): experts {experts.tolist()}, expected "
            f"{exp_e.tolist()} (each token's two most probable experts, most probable first)")
        assert_close(weights.cpu(), exp_w.float(), what="route(..., renormalize=False) weights",
                     inputs=dict(logits=logits, top_k=2),
                     hint="without renormalize the weights are the softmax probabilities over all E "
                          "experts: softmax first, then pick the top k (a softmax over only the k "
                          "picked logits makes them sum to 1, which is the renormalised weights)")

    def test_renormalized_weights_sum_to_one(self):
        logits = torch.tensor([[2.0, 0.5, -1.0, 1.0], [0.0, 3.0, 1.0, 2.5]])
        weights, _ = call_route(logits, 2)
        exp_w, _ = expected_route(logits, 2, renormalize=True)
        assert_close(weights.cpu(), exp_w.float(), what="route(..., renormalize=True) weights",
                     inputs=dict(logits=logits, top_k=2),
                     hint="renormalize: divide each token's k probabilities by their sum (they sum to 1)")

    def test_descending_probability(self):
        logits = torch.tensor([[-1.0, 0.0, 4.0, 2.0, 3.0]])
        weights, experts = call_route(logits, 4)
        assert experts.tolist() == [[2, 4, 3, 1]], (
            f"route(logits {logits.tolist()}, top_k=4): experts {experts.tolist()}, expected "
            "[[2, 4, 3, 1]]: most probable first")
        assert bool((weights[:, :-1] >= weights[:, 1:]).all()), (
            f"weights {weights.tolist()} must be in descending order, like the experts")

    @pytest.mark.parametrize("logits, top_k, want", [
        ([[0.0, 2.0, 2.0, 1.0]], 2, [1, 2]),
        ([[3.0, 1.0, 1.0, 0.0]], 2, [0, 1]),
        ([[1.0, 1.0, 1.0, 1.0]], 2, [0, 1]),
        ([[0.0, 0.0, 5.0, 0.0]], 3, [2, 0, 1]),
        ([[2.0, 2.0]], 1, [0]),
        ([[0.5, 1.0, 0.5, 1.0, 0.5]], 3, [1, 3, 0]),
    ])
    def test_ties_go_to_the_lower_expert_id(self, logits, top_k, want):
        x = torch.tensor(logits)
        _, experts = call_route(x, top_k)
        assert experts[0].tolist() == want, (
            f"route(logits {logits}, top_k={top_k}): experts {experts[0].tolist()}, expected {want}: "
            "among equal probabilities the lower expert id comes first (torch.topk does not "
            "promise any order for ties; a stable sort does)")

    @settings(max_examples=max_examples(30))
    @given(case=routing_case())
    def test_random_logits(self, case):
        logits, k, seed = case
        for renormalize in (True, False):
            weights, experts = call_route(logits, k, renormalize=renormalize)
            exp_w, exp_e = expected_route(logits, k, renormalize)
            inputs = dict(logits=logits, top_k=k, renormalize=renormalize, seed=seed)
            bad = (experts.cpu() != exp_e).any(dim=-1).nonzero().flatten().tolist()
            assert not bad, (
                f"route: experts of token {bad[0]} are {experts[bad[0]].tolist()}, expected "
                f"{exp_e[bad[0]].tolist()} for logits {logits[bad[0]].tolist()} (descending "
                f"probability, ties lower id first); inputs {inputs}")
            assert_close(weights.cpu(), exp_w.float(), what="route weights", inputs=inputs)


# ===================================================================== Task 2: permute
@st.composite
def assignment_case(draw):
    T = draw(st.integers(1, 24))
    E = draw(st.integers(1, 8))
    k = draw(st.integers(1, E))
    d = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    experts = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(T)])  # distinct per token
    return experts, E, d, seed


def expected_order(experts: torch.Tensor) -> list[int]:
    flat = experts.reshape(-1).tolist()
    return sorted(range(len(flat)), key=lambda i: flat[i])  # Python's sort is stable


def call_permute(x, experts, E):
    res = m.permute(x, experts, E)
    assert isinstance(res, tuple) and len(res) == 3, (
        f"permute must return (x_sorted, counts, order), got {type(res).__name__}")
    return res


def check_permute(x, experts, E, inputs) -> None:
    T, k = experts.shape
    x_sorted, counts, order = call_permute(x, experts, E)
    want = expected_order(experts)
    assert order.cpu().tolist() == want, (
        f"permute: order {order.cpu().tolist()}, expected {want} (flat index t * top_k + slot, "
        f"grouped by expert id ascending, token order kept inside an expert); experts "
        f"{experts.tolist()}; inputs {inputs}")
    want_counts = torch.bincount(experts.reshape(-1), minlength=E)
    assert counts.cpu().tolist() == want_counts.tolist(), (
        f"permute: counts {counts.cpu().tolist()}, expected {want_counts.tolist()} (one entry "
        f"per expert, unused ones 0); inputs {inputs}")
    want_x = x.cpu()[torch.tensor(want, dtype=torch.long) // k]
    assert torch.equal(x_sorted.cpu(), want_x), (
        f"permute: x_sorted row i must be x[order[i] // top_k] (the row's token); inputs {inputs}")


class TestTask2PermuteUnpermute:
    def test_shapes_and_dtypes(self):
        x = torch.randn(5, 3, dtype=torch.bfloat16)
        experts = torch.tensor([[0, 2], [1, 0], [2, 1], [0, 1], [3, 0]])
        x_sorted, counts, order = call_permute(x, experts, 5)
        for name, t, shape, dtype in (("x_sorted", x_sorted, (10, 3), torch.bfloat16),
                                      ("counts", counts, (5,), torch.long),
                                      ("order", order, (10,), torch.long)):
            assert tuple(t.shape) == shape and t.dtype == dtype, (
                f"permute(x (5, 3) bf16, experts (5, 2), 5): {name} must be {shape} {dname(dtype)}, "
                f"got {tuple(t.shape)} {dname(t.dtype)}")
        y = torch.randn(10, 3, dtype=torch.bfloat16)
        out = m.unpermute(y, order, torch.full((5, 2), 0.5))
        assert tuple(out.shape) == (5, 3) and out.dtype == torch.bfloat16, (
            f"unpermute(y (10, 3) bf16, order, weights (5, 2)): expected (5, 3) bfloat16, got "
            f"{tuple(out.shape)} {dname(out.dtype)}")

    def test_inputs_not_modified(self):
        g = torch.Generator().manual_seed(2)
        x = torch.randn(6, 4, generator=g)
        experts = torch.tensor([[1, 0], [0, 2], [2, 1], [1, 2], [0, 1], [2, 0]])
        y = torch.randn(12, 4, generator=g)
        weights = torch.rand(6, 2, generator=g)
        before = [t.clone() for t in (x, experts, y, weights)]
        _, _, order = call_permute(x, experts, 3)
        order_before = order.clone()
        m.unpermute(y, order, weights)
        for name, t, b in zip(("x", "experts", "y_sorted", "weights"), (x, experts, y, weights), before):
            assert torch.equal(t, b), f"permute/unpermute must not modify {name}"
        assert torch.equal(order, order_before), "unpermute must not modify order"

    def test_order_probe(self):
        x = torch.arange(3.0)[:, None].repeat(1, 2)  # row t holds t
        experts = torch.tensor([[2, 0], [0, 1], [2, 1]])
        check_permute(x, experts, 4, dict(experts=experts.tolist(), num_experts=4))

    def test_token_order_kept_on_many_tokens(self):
        """48 tokens x 2 slots over 3 experts: an unstable sort reorders equal ids here."""
        g = torch.Generator().manual_seed(3)
        experts = torch.stack([torch.randperm(3, generator=g)[:2] for _ in range(48)])
        x = torch.randn(48, 4, generator=g)
        check_permute(x, experts, 3, dict(T=48, top_k=2, num_experts=3, seed=3))

    @settings(max_examples=max_examples(30))
    @given(case=assignment_case())
    def test_random_assignments(self, case):
        experts, E, d, seed = case
        x = torch.randn(experts.shape[0], d, generator=torch.Generator().manual_seed(seed))
        check_permute(x, experts, E, dict(T=experts.shape[0], top_k=experts.shape[1], E=E, d=d, seed=seed))

    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dname)
    def test_permute_then_unpermute_with_unit_weights_is_top_k_times_x(self, dtype):
        g = torch.Generator().manual_seed(4)
        T, E, k, d = 20, 5, 3, 6
        experts = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(T)])
        x = torch.randn(T, d, generator=g).to(dtype)
        x_sorted, _, order = call_permute(x, experts, E)
        out = m.unpermute(x_sorted, order, torch.ones(T, k))
        assert_close(out.cpu(), (k * x.double()).to(dtype), what="unpermute(permute(x), ones)",
                     inputs=dict(x=x, top_k=k, E=E),
                     hint="each token comes back top_k times: out[t] sums the rows of (t, slot) "
                          "for every slot; a row taken from order[i] instead of the row where "
                          "order holds t * top_k + slot mixes tokens up")

    @settings(max_examples=max_examples(30))
    @given(T=st.integers(1, 12), k=st.integers(1, 4), d=st.integers(1, 6),
           dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
           seed=st.integers(0, 2**31 - 1))
    def test_unpermute_values(self, T, k, d, dtype, seed):
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(T * k, generator=g)  # any permutation of the flat indices
        y = torch.randn(T * k, d, generator=g).to(dtype)
        weights = torch.rand(T, k, generator=g)
        out = m.unpermute(y, order, weights)
        row_of = torch.empty_like(order)
        row_of[order] = torch.arange(T * k)
        expected = (y.double()[row_of].view(T, k, d) * weights.double()[..., None]).sum(1)
        assert_close(out.cpu(), expected.to(dtype), what="unpermute(y_sorted, order, weights)",
                     inputs=dict(y_sorted=y, order=order.tolist(), weights=weights, seed=seed),
                     hint="out[t] = sum over slots of weights[t, slot] * y_sorted[i] where "
                          "order[i] == t * top_k + slot (y_sorted row i belongs to flat index order[i])")

    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=dname)
    def test_unpermute_rounds_once(self, dtype):
        """Weighted sum in float32, rounded once to y's dtype: equal to the float64 sum rounded,
        bar a float32 error on a rounding boundary (chance ~1e-4 per element). Products or
        sums rounded to y's dtype on the way differ in many elements."""
        T, k, d = 16, 4, 32
        g = torch.Generator().manual_seed(3)
        order = torch.randperm(T * k, generator=g)
        y = torch.randn(T * k, d, generator=g).to(dtype)
        weights = torch.rand(T, k, generator=g)
        row_of = torch.empty_like(order)
        row_of[order] = torch.arange(T * k)
        expected = (y.double()[row_of].view(T, k, d) * weights.double()[..., None]).sum(1).to(dtype)
        out = m.unpermute(y, order, weights)
        wrong = int((out.cpu() != expected).sum())
        assert wrong <= 3, (
            f"unpermute(y_sorted ({T * k}, {d}) {dname(dtype)}, weights ({T}, {k}), seed 3): "
            f"{wrong} of {T * d} elements differ from the exact weighted sum rounded once to "
            f"{dname(dtype)} (at most 3 may): multiply and accumulate in float32 (y.float()), "
            "round only the result")


# ==================================================================== Task 3: capacity
def expected_capacity(experts: torch.Tensor, capacity: int) -> torch.Tensor:
    """Serve slot 0 of every token in token order, then slot 1, ...: keep while the expert
    has room."""
    T, k = experts.shape
    load: dict[int, int] = {}
    keep = torch.zeros(T, k, dtype=torch.bool)
    for slot in range(k):
        for t in range(T):
            e = int(experts[t, slot])
            if load.get(e, 0) < capacity:
                keep[t, slot] = True
                load[e] = load.get(e, 0) + 1
    return keep


def check_capacity(experts, E, capacity, hint="") -> None:
    mask = m.capacity_mask(experts, E, capacity)
    want = expected_capacity(experts, capacity)
    assert isinstance(mask, torch.Tensor) and mask.dtype == torch.bool and tuple(mask.shape) == tuple(want.shape), (
        f"capacity_mask must return a {tuple(want.shape)} bool tensor, got "
        f"{tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__} "
        f"{dname(mask.dtype) if isinstance(mask, torch.Tensor) else ''}")
    assert torch.equal(mask.cpu(), want), (
        f"capacity_mask(experts {experts.tolist()}, {E}, capacity={capacity}): got "
        f"{mask.int().tolist()}, expected {want.int().tolist()}. {hint}")


class TestTask3Capacity:
    def test_shape_dtype_and_input_not_modified(self):
        experts = torch.tensor([[0, 1], [1, 0], [0, 1]])
        before = experts.clone()
        check_capacity(experts, 2, 2)
        assert torch.equal(experts, before), "capacity_mask must not modify experts"

    def test_negative_capacity_raises(self):
        with assert_raises(ValueError, "capacity_mask(experts, 2, capacity=-1)"):
            m.capacity_mask(torch.tensor([[0, 1]]), 2, -1)

    def test_first_choices_before_second_choices(self):
        experts = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 1]])
        check_capacity(experts, 2, 2,
                       hint="GShard's priority: every token's first choice is served before any "
                            "token's second choice, so with capacity 2 the four first choices fill "
                            "both experts and every second choice is dropped (serving token by "
                            "token lets tokens 0 and 1 take both slots of each expert)")

    def test_token_order_within_a_slot(self):
        experts = torch.tensor([[0], [0], [0], [1], [0]])
        check_capacity(experts, 2, 2, hint="within one slot, earlier tokens are served first")

    def test_exactly_capacity_is_kept(self):
        experts = torch.tensor([[0, 1], [0, 1], [1, 0]])
        check_capacity(experts, 2, 1, hint="an expert keeps exactly `capacity` assignments, not one more or less")
        check_capacity(experts, 2, 3, hint="an expert keeps exactly `capacity` assignments, not one more or less")

    def test_zero_and_unlimited_capacity(self):
        experts = torch.tensor([[2, 0], [1, 2], [2, 1]])
        check_capacity(experts, 3, 0, hint="capacity 0 keeps nothing")
        check_capacity(experts, 3, 6, hint="a capacity of at least T keeps everything")

    @settings(max_examples=max_examples(30))
    @given(case=assignment_case(), capacity=st.integers(0, 10))
    def test_random_assignments(self, case, capacity):
        experts, E, _, seed = case
        check_capacity(experts, E, capacity, hint=f"(seed {seed})")


# ==================================================================== Task 4: the loss
def expected_loss(logits: torch.Tensor, experts: torch.Tensor, E: int) -> torch.Tensor:
    T = logits.shape[0]
    p = torch.softmax(logits.double(), dim=-1).mean(dim=0)
    f = torch.bincount(experts.reshape(-1), minlength=E).double() / T
    return E * (f * p).sum()


def call_loss(logits, experts, E):
    loss = m.load_balancing_loss(logits, experts, E)
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0 and loss.dtype == torch.float32, (
        "load_balancing_loss must return a 0-dim float32 tensor, got "
        + (f"shape {tuple(loss.shape)} {dname(loss.dtype)}" if isinstance(loss, torch.Tensor)
           else type(loss).__name__))
    return loss


class TestTask4Loss:
    def test_scalar_and_inputs_not_modified(self):
        logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(5))
        experts = torch.tensor([[0, 1], [1, 2], [2, 3], [3, 0], [0, 2], [1, 3]])
        before = (logits.clone(), experts.clone())
        call_loss(logits, experts, 4)
        assert torch.equal(logits, before[0]) and torch.equal(experts, before[1]), (
            "load_balancing_loss must not modify its inputs")

    def test_perfect_balance_gives_top_k(self):
        """Uniform probabilities and every expert given T * top_k / E assignments:
        E * sum_e (top_k / E) * (1 / E) = top_k."""
        T, E, k = 8, 4, 2
        logits = torch.zeros(T, E)
        experts = torch.tensor([[(2 * t) % E, (2 * t + 1) % E] for t in range(T)])
        loss = call_loss(logits, experts, E)
        assert abs(float(loss) - k) < 1e-5, (
            f"load_balancing_loss at perfect balance (T={T}, E={E}, top_k={k}, uniform router): "
            f"{float(loss):.6g}, expected {k}: f_e counts every assignment (both slots) over T, and "
            "the sum is multiplied by E")

    def test_collapse_is_penalised(self):
        """Every token on experts 0 and 1 with probability ~1/2 each: E * (1 * 1/2 + 1 * 1/2) = E."""
        T, E = 6, 4
        logits = torch.tensor([[20.0, 20.0, 0.0, 0.0]]).repeat(T, 1)
        experts = torch.tensor([[0, 1]] * T)
        loss = call_loss(logits, experts, E)
        want = float(expected_loss(logits, experts, E))
        assert abs(float(loss) - want) < 1e-4, (
            f"load_balancing_loss with every token routed to experts 0 and 1: {float(loss):.6g}, "
            f"expected {want:.6g} (E * sum_e f_e P_e with f_e = assignments / T over both slots)")

    @settings(max_examples=max_examples(30))
    @given(T=st.integers(1, 16), E=st.integers(1, 8), data=st.data(), seed=st.integers(0, 2**31 - 1))
    def test_random_routing(self, T, E, data, seed):
        k = data.draw(st.integers(1, E))
        g = torch.Generator().manual_seed(seed)
        logits = 2 * torch.randn(T, E, generator=g)
        experts = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(T)])
        loss = call_loss(logits, experts, E)
        assert_close(loss.cpu(), expected_loss(logits, experts, E).float(),
                     what="load_balancing_loss", inputs=dict(logits=logits, experts=experts, E=E, seed=seed),
                     hint="E * sum_e f_e * P_e; f_e = (assignments to e, all slots) / T; P_e = the "
                          "mean over tokens of the softmax probability of e")

    @pytest.mark.parametrize("seed", [0, 1, 2])
    def test_matches_transformers(self, seed):
        T, E, k = 24, 8, 2
        logits = 2 * torch.randn(T, E, generator=torch.Generator().manual_seed(seed))
        _, experts = expected_route(logits, k)
        loss = call_loss(logits, experts, E)
        mixtral = pytest.importorskip("transformers.models.mixtral.modeling_mixtral",
                                      reason="transformers is not installed: this check compares "
                                             "with its load_balancing_loss_func")
        theirs = mixtral.load_balancing_loss_func((logits,), E, k)
        assert_close(loss.cpu(), theirs.float(), what="load_balancing_loss vs transformers' "
                     "load_balancing_loss_func (one layer)", inputs=dict(T=T, E=E, top_k=k, seed=seed))


# =============================================================== Task 5: the torch block
def mixtral_block(router_weight, w_gate, w_up, w_down, top_k):
    """transformers' MixtralSparseMoeBlock holding these weights (skips without transformers)."""
    mixtral = pytest.importorskip("transformers.models.mixtral.modeling_mixtral",
                                  reason="transformers is not installed: this check compares "
                                         "with its MixtralSparseMoeBlock")
    from transformers import MixtralConfig

    E, d_ff, d = w_gate.shape
    cfg = MixtralConfig(hidden_size=d, intermediate_size=d_ff, num_local_experts=E,
                        num_experts_per_tok=top_k, router_jitter_noise=0.0, hidden_act="silu")
    block = mixtral.MixtralSparseMoeBlock(cfg).eval().to(w_gate.dtype)
    with torch.no_grad():
        block.gate.weight.copy_(router_weight)
        experts = block.experts
        if hasattr(experts, "gate_up_proj"):  # transformers 5: fused (E, 2 d_ff, d), gate first
            experts.gate_up_proj.copy_(torch.cat([w_gate, w_up], dim=1))
            experts.down_proj.copy_(w_down)
        else:  # transformers 4: a ModuleList of w1 (gate), w3 (up), w2 (down)
            for e in range(E):
                experts[e].w1.weight.copy_(w_gate[e])
                experts[e].w3.weight.copy_(w_up[e])
                experts[e].w2.weight.copy_(w_down[e])

    def run(x):
        with torch.no_grad():
            out = block(x[None])
        return (out[0] if isinstance(out, tuple) else out)[0]
    return run


def call_forward(x, rw, wg, wu, wd, k):
    out = m.moe_forward(x, rw, wg, wu, wd, k)
    assert isinstance(out, torch.Tensor), f"moe_forward must return a tensor, got {type(out).__name__}"
    return out


class TestTask5Forward:
    @pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
    def test_shape_dtype_and_inputs_not_modified(self, dtype):
        args = make_block(6, 7, 8, 12, 4, dtype, DEVICE)
        before = [a.clone() for a in args]
        out = call_forward(*args, 2)
        assert tuple(out.shape) == (7, 8) and out.dtype == dtype, (
            f"moe_forward(x (7, 8) {dname(dtype)}, E=4, top_k=2): expected (7, 8) {dname(dtype)}, "
            f"got {tuple(out.shape)} {dname(out.dtype)}")
        for name, a, b in zip(("x", "router_weight", "w_gate", "w_up", "w_down"), args, before):
            assert torch.equal(a, b), f"moe_forward must not modify {name}"

    def test_bad_shapes_raise(self):
        x, rw, wg, wu, wd = make_block(7, 3, 8, 12, 4)
        with assert_raises(ValueError, "moe_forward with w_up (4, 12, 7) for d = 8"):
            m.moe_forward(x, rw, wg, wu[..., :7], wd, 2)
        with assert_raises(ValueError, "moe_forward with top_k=5 > E=4"):
            m.moe_forward(x, rw, wg, wu, wd, 5)

    @pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
    @pytest.mark.parametrize("shape", [(9, 8, 12, 4, 2), (16, 16, 8, 8, 2), (5, 8, 8, 3, 1),
                                       (6, 4, 6, 3, 3), (4, 8, 8, 1, 1), (2, 8, 8, 8, 2)],
                             ids=lambda s: "T{}-d{}-dff{}-E{}-k{}".format(*s))
    def test_matches_float64_math(self, dtype, shape):
        T, d, d_ff, E, k = shape
        args = make_block(11 * T + E, T, d, d_ff, E, dtype, DEVICE)
        check_forward(m.moe_forward, args, k, f"moe_forward {dname(dtype)}",
                      dict(T=T, d=d, d_ff=d_ff, E=E, top_k=k, seed=11 * T + E),
                      hint="expert_e(x) = (silu(x @ w_gate[e].T) * (x @ w_up[e].T)) @ w_down[e].T, "
                           "weighted by the renormalised router probabilities of the top_k experts")

    def test_gate_and_up_are_not_interchangeable(self):
        """One expert, x and weights >= 0 except a negative gate: silu(gate) * up differs
        from gate * silu(up) by far more than any rounding."""
        x, rw, wg, wu, wd = make_block(8, 4, 8, 8, 1)
        wg = -wg.abs()
        wu = wu.abs()
        x = x.abs()
        check_forward(m.moe_forward, (x, rw, wg, wu, wd), 1, "moe_forward, one expert",
                      dict(T=4, d=8, d_ff=8, E=1, seed=8),
                      hint="silu goes on the gate projection (w_gate), not on the up projection")

    def test_ties_go_to_the_lower_expert(self):
        x, rw, wg, wu, wd = tie_block(6, 8, 8, 4)
        logits = x @ rw.t()
        check_ties(m.moe_forward, (x, rw, wg, wu, wd), 2, "moe_forward with tied logits",
                   dict(T=6, E=4, top_k=2, logits_of_token_0=logits[0].tolist()))

    @pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
    @pytest.mark.parametrize("seed", [0, 1])
    def test_matches_transformers_mixtral_block(self, dtype, seed):
        T, d, d_ff, E, k = 12, 16, 24, 4, 2
        x, rw, wg, wu, wd = make_block(seed, T, d, d_ff, E, dtype)
        ours = call_forward(x, rw, wg, wu, wd, k)
        theirs = mixtral_block(rw, wg, wu, wd, k)(x)
        # Only tokens without a tie or near tie at the top-k boundary (the contract's "where
        # no two router logits of a token tie"): transformers' torch.topk may order ties either way.
        keep = clear_rows(x @ rw.t(), k, ties_ok=False)
        atol, rtol = FORWARD_TOL[dtype]
        assert_close(ours.cpu()[keep], theirs[keep], what=f"moe_forward vs transformers' "
                     f"MixtralSparseMoeBlock ({dname(dtype)})",
                     inputs=dict(T=T, d=d, d_ff=d_ff, E=E, top_k=k, seed=seed), atol=atol, rtol=rtol)


# ================================================================ Task 6: Triton kernels
def call_triton(x, rw, wg, wu, wd, k):
    out = m.moe_forward_triton(x, rw, wg, wu, wd, k)
    assert isinstance(out, torch.Tensor), (
        f"moe_forward_triton must return a tensor, got {type(out).__name__}")
    return out


# (T, d, d_ff, E, top_k): on the CPU, 16-wide tiles: partial tiles in every dimension, an
# expert with several row tiles, experts without tokens, top_k 1 and 3, E not a power of two.
# (shape, dtype); the interpreter's time goes to the number of programs, so few cases on CPU.
TRITON_CASES_CPU = [((9, 32, 48, 4, 2), torch.float32), ((20, 24, 40, 3, 2), torch.bfloat16),
                    ((5, 16, 16, 6, 1), torch.float32),
                    ((7, 16, 24, 5, 3), torch.float32)]
TRITON_CASES_GPU = [(s, dt) for s in [(1, 256, 512, 8, 2), (37, 512, 1024, 8, 2), (300, 256, 640, 8, 2),
                                      (1500, 512, 1024, 8, 2), (700, 384, 768, 16, 4),
                                      (5000, 256, 512, 8, 2), (20, 24, 40, 3, 2), (7, 16, 24, 5, 3)]
                    for dt in (torch.float32, torch.bfloat16)]
TRITON_CASES = TRITON_CASES_GPU if ON_GPU else TRITON_CASES_CPU


def triton_case_id(case) -> str:
    (T, d, d_ff, E, k), dtype = case
    return f"T{T}-d{d}-dff{d_ff}-E{E}-k{k}-{dname(dtype)}"


class TestTask6Triton:
    def test_shape_dtype_inputs_not_modified_and_a_triton_kernel_ran(self):
        dtype = torch.bfloat16
        args = make_block(22, 9, 16, 24, 4, dtype, DEVICE)
        before = [a.clone() for a in args]
        with count_triton_launches() as launches:
            out = call_triton(*args, 2)
        assert_triton_ran(launches, "moe_forward_triton(x (9, 16) bf16, E=4, top_k=2)")
        assert tuple(out.shape) == (9, 16) and out.dtype == dtype, (
            f"moe_forward_triton(x (9, 16) {dname(dtype)}): expected (9, 16) {dname(dtype)}, got "
            f"{tuple(out.shape)} {dname(out.dtype)}")
        for name, a, b in zip(("x", "router_weight", "w_gate", "w_up", "w_down"), args, before):
            assert torch.equal(a, b), f"moe_forward_triton must not modify {name}"

    def test_launches_do_not_grow_with_experts_or_tokens(self):
        counts = {}
        for T, E in ((8, 2), (16, 8)):
            args = spread_block(21, T, 16, 16, E, torch.float32, DEVICE)
            _, experts = expected_route(args[0] @ args[1].t(), 2)
            assert len(set(experts.flatten().tolist())) == E, "test setup: every expert must get tokens"
            with count_triton_launches() as launches:
                call_triton(*args, 2)
            counts[(T, E)] = launches.count
        assert counts[(8, 2)] >= 1, "moe_forward_triton launched no Triton kernel"
        assert len(set(counts.values())) == 1, (
            f"moe_forward_triton: Triton launches per call {counts} (by (T, E), every expert "
            "used): the count must not depend on the number of experts or tokens. Launch one "
            "grouped kernel per matrix product for all experts (a grid over (row tile, column "
            "block) whose programs look up their expert), not a kernel per expert")

    def test_ties_go_to_the_lower_expert(self):
        x, rw, wg, wu, wd = tie_block(6, 16, 16, 4, device=DEVICE)
        check_ties(m.moe_forward_triton, (x, rw, wg, wu, wd), 2,
                   "moe_forward_triton with tied logits", dict(T=6, E=4, top_k=2))

    def test_one_expert_takes_most_tokens(self):
        """Every token's first choice is expert 0: its rows span several row tiles."""
        T, d, d_ff, E, k = (24, 16, 16, 4, 2) if not ON_GPU else (600, 128, 256, 4, 2)
        x, rw, wg, wu, wd = make_block(23, T, d, d_ff, E)
        x[:, 0] = 1.0
        rw[0, 0] = 10.0
        check_forward(m.moe_forward_triton, (x.to(DEVICE), rw.to(DEVICE), wg.to(DEVICE),
                                             wu.to(DEVICE), wd.to(DEVICE)), k,
                      "moe_forward_triton, expert 0 chosen by every token",
                      dict(T=T, d=d, d_ff=d_ff, E=E, top_k=k, seed=23),
                      hint="an expert with more rows than one tile needs several tiles: size the "
                           "tile table by an upper bound (ceil(T * top_k / BLOCK_M) + E tiles), "
                           "not one tile per expert")

    def test_strided_x(self):
        x, rw, wg, wu, wd = make_block(24, 7, 16, 16, 4, torch.float32, DEVICE)
        wide = torch.zeros(7, 48, device=DEVICE)
        wide[:, 16:32] = x
        view = wide[:, 16:32]  # a window: stride(0) = 48
        check_forward(m.moe_forward_triton, (view, rw, wg, wu, wd), 2,
                      "moe_forward_triton(x a (7, 16) window of a (7, 48) tensor)",
                      dict(T=7, d=16, E=4, top_k=2, x_stride=view.stride()),
                      hint="x may be a view: use x.stride(0) (or make it contiguous)")

    def test_more_than_eight_experts(self):
        """E = 10: more than 8 and not a power of two (the CPU cases above have E <= 6)."""
        T, d, d_ff, E, k = 8, 16, 16, 10, 2
        args = make_block(26, T, d, d_ff, E, torch.float32, DEVICE)
        check_forward(m.moe_forward_triton, args, k, "moe_forward_triton with 10 experts",
                      dict(T=T, d=d, d_ff=d_ff, E=E, top_k=k, seed=26),
                      hint="size the routing kernel's expert axis from E (its next power of "
                           "two), not a fixed width")

    @pytest.mark.parametrize("case", TRITON_CASES, ids=triton_case_id)
    def test_matches_float64_math(self, case):
        (T, d, d_ff, E, k), dtype = case
        seed = 31 * T + E
        args = make_block(seed, T, d, d_ff, E, dtype, DEVICE)
        check_forward(m.moe_forward_triton, args, k, f"moe_forward_triton {dname(dtype)}",
                      dict(T=T, d=d, d_ff=d_ff, E=E, top_k=k, seed=seed),
                      hint="rows are wrong where the tile table, the gather of x rows or the "
                           "routing weight in the epilogue is; compare with moe_forward on the "
                           "same inputs and print which tokens differ")

    @pytest.mark.gpu
    @pytest.mark.parametrize("T", [1, 16, 64, 200, 1024, 4096])
    def test_every_tile_regime_on_gpu(self, T):
        """bf16, d 512, d_ff 1024, E 8: the token counts that select each tile config."""
        args = make_block(25 + T, T, 512, 1024, 8, torch.bfloat16, "cuda")
        check_forward(m.moe_forward_triton, args, 2, f"moe_forward_triton bf16 T={T}",
                      dict(T=T, d=512, d_ff=1024, E=8, top_k=2, seed=25 + T))
