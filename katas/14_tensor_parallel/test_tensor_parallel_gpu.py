"""Kata 14 on two GPUs over NCCL (skipped with fewer than two CUDA GPUs).

Correctness on NCCL (Tasks 1 and 4), then Task 5, the speed checks, judged against
perf_targets/tensor_parallel.toml:
  [ring_all_reduce]  vs_nccl    = NCCL's dist.all_reduce time / ring_all_reduce's time on the
                                  same 1 GiB float32 buffer (= your bus bandwidth / NCCL's);
  [parallel_mlp]     vs_one_gpu = the unsharded MLP's time on one GPU / ParallelMLP's time
                                  on two (the speedup; the all-reduce included).

How it is timed (spawn.time_ring_and_nccl / time_mlp, the same functions bench.py prints
the README's table with): each rank runs `iters` back-to-back calls between two CUDA events
after a barrier; a round's time is the slowest rank's; ours and the peer alternate for 3
rounds, and the medians are compared. The all-reduce's buffer starts as ones before each
round, so after k calls every element must be 2^k: a call that skipped work fails. When the
first 3 rounds miss the required tier, 3 more are measured and judged instead (a transient
slowdown has to hit both sets to fail a check).
"""
from __future__ import annotations

import statistics
from pathlib import Path

import pytest
import torch

from harness import assert_close, load_kata_file, load_kata_module
from harness.impl import impl_dir
from harness.katas import ROOT
from harness.perf import explain_shortfall, load_target, tiers_met

spawn = load_kata_file(Path(__file__).with_name("spawn.py"), "kata14_spawn")
m = load_kata_module("tensor_parallel")

pytestmark = pytest.mark.gpu
WORLD = 2  # the perf targets are written for two GPUs of one host (NVLink)
GIB = 1 << 30


@pytest.fixture(scope="module")
def nccl_pool():
    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if found < WORLD:
        pytest.skip(f"needs {WORLD} CUDA GPUs in one host for NCCL (found {found})")
    p = spawn.Pool(WORLD, "nccl", timeout_s=300)
    yield p
    p.close()


def judge(target: str, metrics: dict[str, float], line: str, remeasure) -> None:
    """Fail below the required tier (reference: reference_required), once confirmed."""
    name = torch.cuda.get_device_name()
    spec = load_target("tensor_parallel", target, name)
    tiers = spec["tiers"]
    is_reference = impl_dir().resolve() == (ROOT / "reference").resolve()
    required = spec["reference_required" if is_reference else "required"]
    met = tiers_met(tiers, metrics)
    if required not in met:
        metrics, line2 = remeasure()
        line += f"\n  first round missed {required}; judged on a second measurement: {line2}"
        met = tiers_met(tiers, metrics)
    best = met[-1] if met else "none"
    print(f"tensor_parallel.{target} on {name}: {line}; tier {best}")
    assert required in met, (
        f"too slow: tensor_parallel.{target} on {name}: {line}; tier {best}\n"
        f"  {explain_shortfall(required, tiers[required], metrics)}\n"
        f"  targets: perf_targets/tensor_parallel.toml [{target}]")


# ------------------------------------------------------------------------------ correctness
class TestTask1RingAllReduceNccl:
    def test_values_on_gpus(self, nccl_pool):
        """Odd sizes and dtypes on NCCL, including 10M + 3 elements (several pieces per step
        for a pipelined ring); no collectives; identical on both ranks."""
        m.ring_all_reduce  # noqa: B018 - an import error shows here
        cases = [dict(seed=s, shape=shape, dtype=dt) for s, (shape, dt) in enumerate([
            ((0,), "float32"), ((1,), "float32"), ((7,), "float32"), ((1001,), "int64"),
            ((3, 333), "bfloat16"), ((10_000_003,), "float32"), ((1 << 20,), "float64")])]
        results = nccl_pool.run(WORLD, "ring", cases, what="ring_all_reduce on 2 GPUs (NCCL)")
        for i, case in enumerate(cases):
            expected = sum(spawn.rank_tensor(case["seed"], r, case["shape"], case["dtype"]).double()
                           for r in range(WORLD)).to(spawn.dtype_of(case["dtype"]))
            for rank in range(WORLD):
                r = results[rank][i]
                assert not r["collectives"], f"ring_all_reduce called collectives {r['collectives']}"
                assert_close(r["value"], expected, what=f"ring_all_reduce on GPU {rank}",
                             inputs=dict(shape=case["shape"], dtype=case["dtype"], seed=case["seed"]))
            assert torch.equal(results[0][i]["value"], results[1][i]["value"]), (
                f"the two ranks ended with different bits (shape {case['shape']}, {case['dtype']})")


class TestTask4ParallelMlpNccl:
    def test_equals_unsharded_on_gpus(self, nccl_pool):
        """ParallelMLP on two GPUs against float64 math on the CPU (float32: small sizes, so
        that the GPU's summation order stays within float32's tolerance)."""
        m.ParallelMLP  # noqa: B018
        cases = [dict(seed=60, d_model=64, d_ff=256, x_shape=(5, 64), dtype="float32"),
                 dict(seed=61, d_model=32, d_ff=128, x_shape=(2, 3, 32), dtype="float32")]
        results = nccl_pool.run(WORLD, "mlp", cases, what="ParallelMLP on 2 GPUs (NCCL)")
        for i, case in enumerate(cases):
            w_up, _ = spawn.full_linear(case["seed"], case["d_model"], case["d_ff"], False, "float64")
            w_down, _ = spawn.full_linear(case["seed"] + 1, case["d_ff"], case["d_model"], False, "float64")
            x = spawn.activations(case["seed"], case["x_shape"], "float64")
            expected = torch.nn.functional.linear(torch.nn.functional.gelu(x @ w_up.T), w_down)
            for rank in range(WORLD):
                # float32 inputs rounded once, then a d_ff-long product: 1e-4 relative is ~100 ulp
                assert_close(results[rank][i]["y"], expected.float(), atol=1e-4, rtol=1e-4,
                             what=f"ParallelMLP on GPU {rank}", inputs=dict(case))


# ------------------------------------------------------------------------------ Task 5
def ring_metrics(pool, nbytes: int) -> tuple[dict[str, float], str]:
    per_rank = pool.run(WORLD, "bench_ring", [nbytes], 3, timeout=300,
                        what=f"timing ring_all_reduce on {nbytes >> 20} MiB")
    rounds = {k: [max(r[0]["ms"][k][i] for r in per_rank) for i in range(3)] for k in ("ring", "nccl")}
    err = max(r[0]["rel_err"]["ring"] for r in per_rank)
    assert err < 1e-3, (f"ring_all_reduce's timed calls went wrong: after k calls on a buffer of "
                        f"ones every element must be 2^k; relative error {err:.3g}")
    ring, nccl = statistics.median(rounds["ring"]), statistics.median(rounds["nccl"])
    bus = lambda ms: nbytes * 2 * (WORLD - 1) / WORLD / (ms * 1e-3) / 1e9  # noqa: E731
    line = (f"{nbytes >> 20} MiB float32: ring {ring:.3f} ms ({bus(ring):.0f} GB/s bus), NCCL "
            f"{nccl:.3f} ms ({bus(nccl):.0f} GB/s bus), vs_nccl {nccl / ring:.2f}; rounds (ms) "
            f"ring {[round(x, 3) for x in rounds['ring']]} NCCL {[round(x, 3) for x in rounds['nccl']]}")
    return {"vs_nccl": nccl / ring}, line


MLP_CASE = dict(tokens=8192, d_model=8192, d_ff=28672)  # one Llama-70B-sized MLP, a prefill's tokens


def mlp_metrics(pool) -> tuple[dict[str, float], str]:
    per_rank = pool.run(WORLD, "bench_mlp", [MLP_CASE], timeout=300, what="timing ParallelMLP")
    err = max(r[0]["rel_err"] for r in per_rank)
    assert err < 2e-2, f"ParallelMLP's output is off by {err:.3g} (relative, bf16) from the one-GPU MLP"
    tp = statistics.median(max(r[0]["ms"]["tp"][i] for r in per_rank) for i in range(3))
    one = statistics.median(per_rank[0][0]["ms"]["one_gpu"])
    line = (f"tokens {MLP_CASE['tokens']}, d_model {MLP_CASE['d_model']}, d_ff {MLP_CASE['d_ff']} "
            f"bf16: one GPU {one:.3f} ms, ParallelMLP on {WORLD} {tp:.3f} ms, vs_one_gpu {one / tp:.2f}")
    return {"vs_one_gpu": one / tp}, line


@pytest.mark.perf
class TestTask5Speed:
    def test_ring_bus_bandwidth_1gib(self, nccl_pool):
        """Bus bandwidth of ring_all_reduce on 1 GiB against NCCL's all_reduce (same buffer,
        same run): bronze 0.3x, silver 0.6x, gold 0.8x."""
        m.ring_all_reduce  # noqa: B018
        metrics, line = ring_metrics(nccl_pool, GIB)
        judge("ring_all_reduce", metrics, line, lambda: ring_metrics(nccl_pool, GIB))

    def test_parallel_mlp_vs_one_gpu(self, nccl_pool):
        """ParallelMLP on two GPUs against the same MLP on one (bf16, a prefill-sized batch)."""
        m.ParallelMLP  # noqa: B018
        metrics, line = mlp_metrics(nccl_pool)
        judge("parallel_mlp", metrics, line, lambda: mlp_metrics(nccl_pool))
