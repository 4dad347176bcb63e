"""Kata 15 benchmark: moe_forward_triton vs a Python loop over experts (the README's table).

    python katas/15_moe/bench.py                       # reference/moe.py, T = 16 .. 8192
    python katas/15_moe/bench.py --impl stubs          # your module (or --impl PATH)
    python katas/15_moe/bench.py --quick               # T = 16, 64, 1024, 8192 only
    python katas/15_moe/bench.py --tokens 32 4096      # chosen token counts

One Mixtral-8x7B layer (d 4096, d_ff 14336, E 8, top 2, bf16), as in test_moe_perf.py, with
every expert given tokens. Timing: harness/perf.py's cuda_median_ms (CUDA events, the L2
flushed before each run, the same x every call, median of 50 after 10 warm-ups): the plain
method, without the perf tests' fresh inputs and confirmation rounds, so its figures can be
a little higher than theirs. The copy bandwidth and the bf16 matmul rate (torch, 8192^3) are
measured in this run.
  TFLOP/s, of matmul: 2 * T * top_k * 3 * d * d_ff FLOP (the expert matmuls);
  TB/s, of copy:      every expert's weights + x + out, bytes per second;
  graph ms:           the same call captured once in a CUDA graph and replayed (no launch
                      overhead; "-" when the capture fails, e.g. a host sync);
  loop:               loop_moe of test_moe_perf.py (cuBLAS per expert, counts on the host).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository root
sys.path.insert(0, str(HERE))

TOKENS = [16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
QUICK = [16, 64, 1024, 8192]


def config_of(module, T: int, top_k: int, num_experts: int) -> str:
    """The tile config the reference picks for T (its private _config), if the module has one."""
    pick = getattr(module, "_config", None)
    if pick is None:
        return "-"
    try:
        block_m, gate_up, down = pick(T * top_k / num_experts)
    except Exception:  # noqa: BLE001 - another module's helper of the same name
        return "-"
    tma = getattr(module, "_TMA_CONFIG", None)
    if tma is not None and block_m == 128:  # the reference's prefill path on Hopper: TMA loads
        gate_up, down = tma
        return (f"TMA, BLOCK_M=128 gate/up (N, K, warps, stages, GROUP_M)={tuple(gate_up)} "
                f"down={tuple(down)}")
    return (f"BLOCK_M={block_m} gate/up (N, K, warps, stages)={tuple(gate_up)} "
            f"down={tuple(down)}")


def graph_ms(fn, args, cuda_median_ms) -> float | None:
    import torch

    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn(*args)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn(*args)
    except Exception:  # noqa: BLE001 - not capturable: reported as "-"
        torch.cuda.synchronize()
        return None
    return cuda_median_ms(graph.replay)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl", default="reference", help="stubs, reference (default) or a folder")
    parser.add_argument("--quick", action="store_true", help=f"only T in {QUICK}")
    parser.add_argument("--tokens", type=int, nargs="+", help="token counts to run")
    args = parser.parse_args()
    os.environ["KATA_IMPL"] = args.impl

    import torch

    if not torch.cuda.is_available():
        print("bench.py needs a CUDA GPU (none found).")
        return 1
    from harness import load_kata_module
    from harness.perf import cuda_median_ms, measure_device_peaks
    from test_moe_perf import D, D_FF, E, TOP_K, bytes_for, check_moe, flops_for, loop_moe, make_inputs_for

    m = load_kata_module("moe")
    peaks = measure_device_peaks()
    copy, mm = peaks.copy_bytes_per_s, peaks.matmul_flops_per_s
    print(f"GPU: {peaks.name}")
    print(f"copy bandwidth (measured now, read + write): {copy / 1e12:.2f} TB/s; "
          f"bf16 matmul (8192^3): {mm / 1e12:.0f} TFLOP/s")
    print(f"implementation: {args.impl}; layer d={D} d_ff={D_FF} E={E} top_k={TOP_K} bf16\n")
    head = (f"| {'T':>5} | {'ms':>8} | {'graph ms':>8} | {'TFLOP/s':>7} | {'of matmul':>9} | "
            f"{'TB/s':>5} | {'of copy':>7} | {'loop ms':>8} | {'loop TFLOP/s':>12} | "
            f"{'loop TB/s':>9} | {'vs loop':>7} | config")
    print(head)
    print("|" + "|".join("-" * len(c) for c in head.split("|")[1:]))
    tokens = args.tokens or (QUICK if args.quick else TOKENS)
    for T in tokens:
        inputs = make_inputs_for(T)(0)
        out = m.moe_forward_triton(*inputs)
        try:
            check_moe(inputs, out)
            note = ""
        except AssertionError as exc:
            note = f"  (WRONG: {exc})"
        del out
        ms = cuda_median_ms(lambda: m.moe_forward_triton(*inputs))
        g_ms = graph_ms(m.moe_forward_triton, inputs, cuda_median_ms)
        loop_ms = cuda_median_ms(lambda: loop_moe(*inputs))
        fl, by = flops_for(T), bytes_for(T)
        tf, tb = fl / ms / 1e9, by / ms / 1e9
        print(f"| {T:>5} | {ms:8.4f} | {('-' if g_ms is None else f'{g_ms:8.4f}'):>8} | {tf:7.0f} | "
              f"{tf * 1e12 / mm:9.1%} | {tb:5.2f} | {tb * 1e12 / copy:7.1%} | {loop_ms:8.4f} | "
              f"{fl / loop_ms / 1e9:12.0f} | {by / loop_ms / 1e9:9.2f} | {loop_ms / ms:6.2f}x | "
              f"{config_of(m, T, TOP_K, E)}{note}")
        del inputs
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
