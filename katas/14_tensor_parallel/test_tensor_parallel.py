"""Kata 14: tensor parallelism on real process groups (gloo, CPU). Tasks as in README.md.

The module under test runs in worker processes (spawn.py): one pool of 4 processes per test
module, grouped into a default process group of 1, 2, 3 or 4 ranks (the `world` fixture; the
checks run world by world). Each rank builds its inputs from a seed, runs your code, and
sends back its tensors and what it did (bytes sent, collectives called). The checks here
compare them with float64 math done in this process: the sum of the seeded inputs,
x @ W.T + b, gelu. Nothing depends on how you split the work inside a rank, on the order of
your messages, or on which point-to-point calls you use.

A rank that hangs (a deadlock) is stopped after a time limit and named, with your line it
was waiting at; a rank that raises is named with its exception.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import assert_close, load_kata_file, load_kata_module, max_examples

spawn = load_kata_file(Path(__file__).with_name("spawn.py"), "kata14_spawn")
m = load_kata_module("tensor_parallel")

WORLDS = (1, 2, 3, 4)
DTYPES = ("float32", "float64", "int64")


@pytest.fixture(scope="module")
def pool():
    p = spawn.Pool(max(WORLDS), "gloo")
    yield p
    p.close()


@pytest.fixture(scope="module", params=WORLDS, ids=[f"world{n}" for n in WORLDS])
def world(request: pytest.FixtureRequest) -> int:
    """The number of ranks (module-scoped, so that pytest runs the checks world by world and
    the workers regroup only three times)."""
    return request.param


# ------------------------------------------------------------------------------ helpers
def expected_sum(seed: int, ranks, shape, dtype: str) -> torch.Tensor:
    total = sum(spawn.rank_tensor(seed, r, tuple(shape), dtype).double() for r in ranks)
    if not isinstance(total, torch.Tensor):  # no ranks
        total = torch.zeros(shape, dtype=torch.float64)
    return total.to(spawn.dtype_of(dtype))


def bad_ranges(actual: torch.Tensor, expected: torch.Tensor) -> str:
    """'flat elements 4..6, 9 of 10 are wrong': where a ring went wrong."""
    a, e = actual.reshape(-1).double(), expected.reshape(-1).double()
    tol = 1e-5 * (1 + e.abs()) if expected.is_floating_point() else 0
    bad = ((a - e).abs() > tol).nonzero().flatten().tolist()
    if not bad:
        return ""
    spans, start = [], bad[0]
    for prev, cur in zip(bad, bad[1:] + [None]):
        if cur != prev + 1:
            spans.append(f"{start}..{prev}" if prev > start else f"{start}")
            start = cur
    return f"flat elements {', '.join(spans[:6])}{' ...' if len(spans) > 6 else ''} of {a.numel()} are wrong"


def run_ring(pool, world: int, cases: list[dict]) -> list[list[dict]]:
    m.ring_all_reduce  # noqa: B018 - an import error of your module shows here, in one line
    what = f"ring_all_reduce on {world} rank(s)"
    return pool.run(world, "ring", cases, what=what)


def check_ring(results: list[list[dict]], cases: list[dict], world: int) -> None:
    """Every rank: in place, same shape and dtype, the sum over its group's ranks, and the
    very same bits on every rank of a group."""
    for i, case in enumerate(cases):
        groups = case.get("groups") or [tuple(range(world))]
        shape, dtype = tuple(case["shape"]), case["dtype"]
        for group in groups:
            expected = expected_sum(case["seed"], group, shape, dtype)
            first = None
            for rank in group:
                r = results[rank][i]
                inputs = dict(rank=rank, ranks=list(group), world=world, seed=case["seed"],
                              shape=shape, dtype=dtype)
                assert r["returned"] is None, (
                    f"ring_all_reduce must return None (it reduces in place), returned a "
                    f"{r['returned']}; {inputs}")
                assert_close(r["value"], expected,
                             what=f"the tensor after ring_all_reduce on rank {rank} (in place)",
                             inputs=inputs, hint=bad_ranges(r["value"], expected) +
                             " (the sum of every rank's tensor, on every rank)")
                if first is None:
                    first = r["value"]
                else:
                    assert torch.equal(r["value"], first), (
                        f"ranks {group[0]} and {rank} ended with different bits "
                        f"({bad_ranges(r['value'], first)} against rank {group[0]}): each chunk's "
                        f"sum is made once, by the rank that owns it, and copied to the others by "
                        f"the all-gather, so every rank must hold exactly the same tensor; {inputs}")


def shapes_with(numel: int) -> list[tuple[int, ...]]:
    shapes = [(numel,)]
    if numel % 3 == 0 and numel:
        shapes.append((3, numel // 3))
    return shapes


# ------------------------------------------------------------------------------ Task 1
class TestTask1RingAllReduce:
    def test_in_place_same_everywhere(self, pool, world):
        """A (5, 7) float32 tensor: summed in place, same shape and dtype, identical on every rank."""
        cases = [dict(seed=1, shape=(5, 7), dtype="float32"),
                 dict(seed=2, shape=(2, 3, 4), dtype="float64")]
        check_ring(run_ring(pool, world, cases), cases, world)

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_any_numel(self, pool, world, dtype):
        """numel 0, 1, fewer than the ranks, divisible by them or not, a prime, a large one."""
        numels = sorted({0, 1, max(world - 1, 0), world, world + 1, 2 * world - 1,
                         3 * world + 2, 97, 1000, 4099})
        cases = [dict(seed=10 + i, shape=shape, dtype=dtype)
                 for i, n in enumerate(numels) for shape in shapes_with(n)]
        check_ring(run_ring(pool, world, cases), cases, world)

    def test_large_tensor(self, pool, world):
        """A large tensor (1.1 M int64 elements, 8.8 MB, on 2 ranks): an implementation that
        sends each chunk in several pieces (to overlap the adds with the transfers) must add
        every piece at its own offset. Two ranks are enough; other worlds skip it to stay fast."""
        if world != 2:
            pytest.skip("run on 2 ranks only (8.8 MB per rank)")
        cases = [dict(seed=9, shape=(1_100_001,), dtype="int64")]
        check_ring(run_ring(pool, world, cases), cases, world)

    @settings(max_examples=max_examples(8))
    @given(data=st.data())
    def test_random_tensors(self, pool, world, data):
        """Random shapes (1 to 3 dims, up to 600 elements), dtypes and values."""
        dims = data.draw(st.lists(st.integers(0, 9), min_size=1, max_size=3), label="shape")
        if data.draw(st.booleans(), label="long 1-d"):
            dims = [data.draw(st.integers(0, 600), label="numel")]
        case = dict(seed=data.draw(st.integers(0, 2**20), label="seed"), shape=tuple(dims),
                    dtype=data.draw(st.sampled_from(DTYPES), label="dtype"))
        check_ring(run_ring(pool, world, [case]), [case], world)

    def test_uses_no_collective(self, pool, world):
        """Only send/recv/isend/irecv (or batch_isend_irecv): the collectives of
        torch.distributed raise while ring_all_reduce runs, and each call is counted."""
        cases = [dict(seed=3, shape=(1000,), dtype="float32"), dict(seed=4, shape=(5,), dtype="int64")]
        results = run_ring(pool, world, cases)
        for rank in range(world):
            for case, r in zip(cases, results[rank]):
                assert not r["collectives"], (
                    f"ring_all_reduce called torch.distributed collectives {r['collectives']} on "
                    f"rank {rank} of {world} (shape {case['shape']}): build it from point-to-point "
                    "messages only")
        check_ring(results, cases, world)

    def test_bytes_sent_per_rank(self, pool, world):
        """Each rank sends 2(n-1)/n of the tensor's bytes: n-1 chunks of about numel/n in the
        reduce-scatter, n-1 in the all-gather. Allowed: 2(n-1) elements more or less (chunks
        that differ by one element when n does not divide numel) and 1 %.
        Counted by hooks on dist.send and dist.isend (batch_isend_irecv goes through isend)."""
        cases = [dict(seed=5, shape=(1200,), dtype="float32"), dict(seed=6, shape=(1201,), dtype="float64"),
                 dict(seed=7, shape=(40, 103), dtype="int64"), dict(seed=8, shape=(4097,), dtype="float32")]
        results = run_ring(pool, world, cases)
        check_ring(results, cases, world)
        for case in cases:
            numel = 1
            for d in case["shape"]:
                numel *= d
            size = torch.empty(0, dtype=spawn.dtype_of(case["dtype"])).element_size()
            ideal = 2 * (world - 1) / world * numel * size
            limit = ideal * 1.01 + 2 * (world - 1) * size
            floor = ideal * 0.99 - 2 * (world - 1) * size
            for rank in range(world):
                sent = results[rank][cases.index(case)]["sent_bytes"]
                assert sent >= floor, (
                    f"rank {rank} of {world} sent only {sent} bytes through dist.send / dist.isend "
                    f"for a {numel}-element {case['dtype']} tensor, but the values are right: a ring "
                    f"sends about {ideal:.0f}. The test counts bytes at dist.send and dist.isend "
                    "(dist.batch_isend_irecv goes through isend): send through those")
                assert sent <= limit, (
                    f"rank {rank} of {world} sent {sent} bytes for a {numel}-element {case['dtype']} "
                    f"tensor ({numel * size} bytes): the ring sends 2(n-1)/n of it, {ideal:.0f} "
                    f"bytes (allowed up to {limit:.0f}). Sending whole tensors, or everything to "
                    "one rank, costs (n-1)x the bytes; send one chunk of numel/n per step")
                if world == 1:
                    assert sent == 0, f"with one rank there is nothing to send, but {sent} bytes were sent"

    def test_process_subgroups(self, pool):
        """group=...: the sum runs over the group's ranks only; its ranks are numbered inside
        the group (dist.get_rank(group)), while dist.send's `dst` is a global rank (use
        group_dst= / group_peer=, or dist.get_global_rank). 4 ranks as {0, 2} and {1, 3},
        then {1, 2, 3} with rank 0 sitting out."""
        cases = [dict(seed=20, shape=(11,), dtype="float32", groups=[(0, 2), (1, 3)]),
                 dict(seed=21, shape=(3, 5), dtype="int64", groups=[(0, 2), (1, 3)]),
                 dict(seed=22, shape=(10,), dtype="float64", groups=[(1, 2, 3)])]
        check_ring(run_ring(pool, 4, cases), cases, 4)


# ------------------------------------------------------------------------------ layers
def linear_case(seed: int, in_f: int, out_f: int, bias: bool, x_shape: tuple, **extra) -> dict:
    return dict(seed=seed, in_f=in_f, out_f=out_f, bias=bias, x_shape=x_shape, dtype="float64", **extra)


def full_output(case: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """x @ W.T + b in float64, and the full W and b."""
    w, b = spawn.full_linear(case["seed"], case["in_f"], case["out_f"], case["bias"], case["dtype"])
    x = spawn.activations(case["seed"], tuple(case["x_shape"]), case["dtype"])
    return F.linear(x, w, b), w, b


def run_layers(pool, world: int, kind: str, cases: list[dict]) -> list[list[dict]]:
    cls = m.ColumnParallelLinear if kind == "column" else m.RowParallelLinear
    what = f"{cls.__name__} on {world} rank(s)"
    return pool.run(world, "linear", kind, cases, what=what)


def check_unmodified(r: dict, what: str) -> None:
    assert r["x_same"], f"{what} changed its input x in place"
    assert r["w_same"], f"{what}: load_full_weight changed the full weight or bias it was given"


def check_shards(results, cases, world: int, kind: str) -> None:
    """Shapes and contents of each rank's weight and bias: the contiguous slice `rank` of an
    equal split, in rank order (Megatron's layout)."""
    name = "ColumnParallelLinear" if kind == "column" else "RowParallelLinear"
    for i, case in enumerate(cases):
        _, w, b = full_output(case)
        for rank in range(world):
            r = results[rank][i]
            inputs = dict(rank=rank, world=world, in_features=case["in_f"],
                          out_features=case["out_f"], bias=case["bias"])
            if kind == "column":
                rows = spawn.chunk_slice(case["out_f"], world, rank)
                want_w, want_b = w[rows], None if b is None else b[rows]
                how = f"rows {rows.start}..{rows.stop - 1} of W (output features), and the same slice of b"
            else:
                cols = spawn.chunk_slice(case["in_f"], world, rank)
                want_w, want_b = w[:, cols], b
                how = f"columns {cols.start}..{cols.stop - 1} of W (input features), and all of b"
            assert isinstance(r["weight"], torch.Tensor), (
                f"{name}.weight must be a tensor (an nn.Parameter), got {r['weight']}; {inputs}")
            assert tuple(r["weight"].shape) == tuple(want_w.shape), (
                f"{name}.weight on rank {rank} has shape {tuple(r['weight'].shape)}, expected "
                f"{tuple(want_w.shape)}: {how}; {inputs}")
            assert_close(r["weight"], want_w, what=f"{name}.weight on rank {rank} after load_full_weight",
                         inputs=inputs, hint=f"rank r holds {how}: one contiguous block per rank, "
                         "in rank order (not every n-th row or column)")
            if not case["bias"]:
                assert not r["has_bias"], f"{name}(bias=False).bias must be None, got {r['bias']}"
            elif kind == "column" or r["bias"] is not None:
                assert isinstance(r["bias"], torch.Tensor), f"{name}.bias must be a tensor, got {r['bias']}"
                assert_close(r["bias"], want_b, what=f"{name}.bias on rank {rank} after load_full_weight",
                             inputs=inputs, hint=how)


def check_outputs(results, cases, world: int, kind: str, sliced: bool) -> None:
    name = "ColumnParallelLinear" if kind == "column" else "RowParallelLinear"
    for i, case in enumerate(cases):
        full, w, b = full_output(case)
        for rank in range(world):
            r = results[rank][i]
            inputs = dict(rank=rank, world=world, in_features=case["in_f"], out_features=case["out_f"],
                          bias=case["bias"], x_shape=case["x_shape"], seed=case["seed"])
            check_unmodified(r, name)
            want = full[..., spawn.chunk_slice(case["out_f"], world, rank)] if sliced else full
            hint = ("this rank's slice of x @ W.T + b: its output features "
                    f"{spawn.chunk_slice(case['out_f'], world, rank)}" if sliced else
                    "the full x @ W.T + b, the same on every rank")
            if kind == "row" and b is not None and world > 1 and isinstance(r["y"], torch.Tensor) \
                    and r["y"].shape == full.shape and torch.allclose(r["y"], full + (world - 1) * b):
                hint = (f"the result is x @ W.T + {world} * b: every rank added the bias before the "
                        "all-reduce summed them. Add it once, after the reduction")
            assert_close(r["y"], want, what=f"{name} forward on rank {rank}", inputs=inputs, hint=hint)


# ------------------------------------------------------------------------------ Task 2
class TestTask2ColumnParallelLinear:
    def test_shard_shapes_and_rows(self, pool, world):
        """weight (out/n, in): rows [rank * out/n, (rank + 1) * out/n) of W; bias the same slice."""
        cases = [linear_case(30, 6, 12, True, (4, 6)), linear_case(31, 5, 24, False, (4, 5))]
        results = run_layers(pool, world, "column", cases)
        check_shards(results, cases, world, "column")

    def test_forward_is_this_ranks_slice(self, pool, world):
        """gather_output=False: rank r returns output features [r * out/n, (r + 1) * out/n),
        with no communication at all."""
        cases = [linear_case(32, 6, 12, True, (4, 6)), linear_case(33, 8, 12, False, (2, 3, 8)),
                 linear_case(34, 3, 24, True, (3,))]
        results = run_layers(pool, world, "column", cases)
        check_outputs(results, cases, world, "column", sliced=True)
        for rank in range(world):
            for r in results[rank]:
                assert not r["collectives"] and not r["sends"], (
                    f"ColumnParallelLinear.forward(gather_output=False) communicated on rank {rank} "
                    f"(collectives {r['collectives']}, {r['sends']} sends): every rank has the full x "
                    "and its own rows of W, so its slice of the output needs nothing from the others")

    def test_gather_output(self, pool, world):
        """gather_output=True: every rank returns the full (..., out_features), slices in rank order."""
        cases = [linear_case(35, 6, 12, True, (4, 6), gather=True),
                 linear_case(36, 4, 24, False, (2, 3, 4), gather=True)]
        results = run_layers(pool, world, "column", cases)
        check_outputs(results, cases, world, "column", sliced=False)

    def test_bad_shapes_raise(self, pool, world):
        """ValueError: out_features not divisible by the world size; load_full_weight of a
        weight that is not (out_features, in_features)."""
        m.ColumnParallelLinear  # noqa: B018 - an import error shows here
        cases = [dict(call="load", kind="column", in_f=4, out_f=12, bias=False, dtype="float64",
                      w_shape=(4, 12))]
        if world > 1:
            cases.insert(0, dict(call="build", kind="column", in_f=4, out_f=4 * world + 1,
                                 bias=True, dtype="float64"))
        results = pool.run(world, "errors", cases, what=f"ColumnParallelLinear on {world} rank(s)")
        for rank in range(world):
            for case, got in zip(cases, results[rank]):
                call = (f"ColumnParallelLinear({case['in_f']}, {case['out_f']})" if case["call"] == "build"
                        else f"ColumnParallelLinear(4, 12).load_full_weight(weight {case['w_shape']})")
                assert got == "ValueError", f"{call} on {world} ranks must raise ValueError, got: {got}"


# ------------------------------------------------------------------------------ Task 3
class TestTask3RowParallelLinear:
    def test_shard_shapes_and_columns(self, pool, world):
        """weight (out, in/n): columns [rank * in/n, (rank + 1) * in/n) of W."""
        cases = [linear_case(40, 12, 5, True, (4, 12)), linear_case(41, 24, 6, False, (4, 24))]
        results = run_layers(pool, world, "row", cases)
        check_shards(results, cases, world, "row")

    def test_forward_parallel_input(self, pool, world):
        """input_is_parallel=True: rank r gets x[..., r * in/n:(r + 1) * in/n] and returns the full
        x @ W.T + b on every rank (the bias counted once)."""
        cases = [linear_case(42, 12, 5, True, (4, 12)), linear_case(43, 24, 6, False, (2, 3, 24)),
                 linear_case(44, 12, 7, True, (12,))]
        results = run_layers(pool, world, "row", cases)
        check_outputs(results, cases, world, "row", sliced=False)
        self.check_one_all_reduce(results, world)

    def test_forward_full_input(self, pool, world):
        """input_is_parallel=False: every rank gets the full x and takes its own slice of it."""
        cases = [linear_case(45, 12, 5, True, (4, 12), parallel_input=False),
                 linear_case(46, 24, 3, False, (2, 2, 24), parallel_input=False)]
        results = run_layers(pool, world, "row", cases)
        check_outputs(results, cases, world, "row", sliced=False)

    def test_bad_shapes_raise(self, pool, world):
        """ValueError: in_features not divisible by the world size; load_full_weight of a
        weight that is not (out_features, in_features)."""
        m.RowParallelLinear  # noqa: B018 - an import error shows here
        cases = [dict(call="load", kind="row", in_f=12, out_f=4, bias=False, dtype="float64",
                      w_shape=(12, 4))]
        if world > 1:
            cases.insert(0, dict(call="build", kind="row", in_f=4 * world + 1, out_f=4,
                                 bias=True, dtype="float64"))
        results = pool.run(world, "errors", cases, what=f"RowParallelLinear on {world} rank(s)")
        for rank in range(world):
            for case, got in zip(cases, results[rank]):
                call = (f"RowParallelLinear({case['in_f']}, {case['out_f']})" if case["call"] == "build"
                        else f"RowParallelLinear(12, 4).load_full_weight(weight {case['w_shape']})")
                assert got == "ValueError", f"{call} on {world} ranks must raise ValueError, got: {got}"

    @staticmethod
    def check_one_all_reduce(results, world: int) -> None:
        for rank in range(world):
            for r in results[rank]:
                c = dict(r["collectives"])
                reduces = c.pop("all_reduce", 0) + r["ring_calls"]
                if world > 1:
                    assert reduces == 1 and not c, (
                        f"RowParallelLinear.forward on rank {rank} of {world} should do exactly one "
                        f"all-reduce and no other collective; it called {dict(r['collectives'])} "
                        f"and ring_all_reduce {r['ring_calls']} time(s)")


# ------------------------------------------------------------------------------ Task 4
def mlp_expected(case: dict) -> torch.Tensor:
    w_up, _ = spawn.full_linear(case["seed"], case["d_model"], case["d_ff"], False, case["dtype"])
    w_down, _ = spawn.full_linear(case["seed"] + 1, case["d_ff"], case["d_model"], False, case["dtype"])
    x = spawn.activations(case["seed"], tuple(case["x_shape"]), case["dtype"])
    return F.linear(F.gelu(F.linear(x, w_up)), w_down)


def run_mlp(pool, world: int, cases: list[dict]) -> list[list[dict]]:
    m.ParallelMLP  # noqa: B018 - an import error shows here
    return pool.run(world, "mlp", cases, what=f"ParallelMLP on {world} rank(s)")


class TestTask4ParallelMLP:
    def test_equals_unsharded_mlp(self, pool, world):
        """gelu(x @ w_up.T) @ w_down.T (erf gelu, float64) on every rank."""
        cases = [dict(seed=50, d_model=8, d_ff=24, x_shape=(5, 8), dtype="float64"),
                 dict(seed=51, d_model=6, d_ff=36, x_shape=(2, 3, 6), dtype="float64"),
                 dict(seed=52, d_model=4, d_ff=12, x_shape=(4,), dtype="float64")]
        results = run_mlp(pool, world, cases)
        for i, case in enumerate(cases):
            expected = mlp_expected(case)
            for rank in range(world):
                r = results[rank][i]
                assert r["x_same"], "ParallelMLP.forward changed its input x in place"
                assert_close(r["y"], expected, what=f"ParallelMLP forward on rank {rank}",
                             inputs=dict(rank=rank, world=world, **{k: case[k] for k in
                                                                    ("d_model", "d_ff", "x_shape", "seed")}),
                             hint="the full MLP output on every rank: up is column-parallel (no "
                             "gather), gelu on the local slice, down is row-parallel (one all-reduce)")

    def test_one_all_reduce_per_forward(self, pool, world):
        """Three forwards, three all-reduces (dist.all_reduce or your ring_all_reduce) and no
        other collective: the hidden activation stays sharded between the two layers."""
        cases = [dict(seed=53, d_model=8, d_ff=24, x_shape=(3, 8), dtype="float64", forwards=3)]
        results = run_mlp(pool, world, cases)
        for rank in range(world):
            for k, c in enumerate(results[rank][0]["counts"]):
                others = dict(c["collectives"])
                reduces = others.pop("all_reduce", 0) + c["ring_calls"]
                ok = reduces == 1 and not others if world > 1 else reduces <= 1 and not others
                assert ok, (
                    f"forward {k + 1} of ParallelMLP on rank {rank} of {world} called collectives "
                    f"{dict(c['collectives'])} and ring_all_reduce {c['ring_calls']} time(s): a "
                    "column-parallel up (gather_output=False) feeding a row-parallel down "
                    "(input_is_parallel=True) needs exactly one all-reduce")

    def test_bad_shapes_raise(self, pool, world):
        """ValueError: d_ff not divisible by the world size; load_full_weights of the wrong shapes."""
        m.ParallelMLP  # noqa: B018 - an import error shows here
        cases = [dict(call="load", kind="mlp", d_model=4, d_ff=12, dtype="float64",
                      w_shape=(4, 12), w2_shape=(12, 4))]
        if world > 1:
            cases.insert(0, dict(call="build", kind="mlp", d_model=4, d_ff=4 * world + 1, dtype="float64"))
        results = pool.run(world, "errors", cases, what=f"ParallelMLP on {world} rank(s)")
        for rank in range(world):
            for case, got in zip(cases, results[rank]):
                call = (f"ParallelMLP({case['d_model']}, {case['d_ff']})" if case["call"] == "build"
                        else "ParallelMLP(4, 12).load_full_weights(w_up (4, 12), w_down (12, 4)) "
                        "(transposed)")
                assert got == "ValueError", f"{call} on {world} ranks must raise ValueError, got: {got}"
