"""Kata 13 benchmark: rejection_sample at serving size on this GPU (the README's table).

    python katas/13_spec_decode/bench.py                   # reference/spec_decode.py, k = 4 and 8
    python katas/13_spec_decode/bench.py --impl stubs      # your module (or --impl PATH)
    python katas/13_spec_decode/bench.py --k 4             # quick: one case
    python katas/13_spec_decode/bench.py --batch 64 --vocab 32000

Timing: harness/perf.py's cuda_median_ms (CUDA events, the L2 flushed before each call, the
same inputs every call, median of 50 after 10 warm-ups): the plain method, without the perf
tests' fresh inputs, batches and confirmation rounds. Minimal bytes = the drafted tokens'
probabilities p_i(x_i), q_i(x_i) (2 B k fp32) + one row of p and one of q per sequence
(2 B V fp32); the copy bandwidth is measured in this run. The last two columns put the call
beside one decode step of an 8B model: its 16 GB of bf16 weights read once at that copy
bandwidth (the step's floor; KV-cache reads only make the step longer).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository root

WEIGHT_BYTES_8B = 16e9  # 8e9 parameters in bf16


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl", default="reference", help="stubs, reference (default) or a folder")
    parser.add_argument("--k", type=int, nargs="+", default=[4, 8], help="draft lengths (default 4 8)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=131072)
    args = parser.parse_args()
    from harness.bench import open_bench

    opened = open_bench("spec_decode", args.impl)
    if opened is None:
        return 1
    m, peaks = opened
    from harness import load_kata_file
    from harness.perf import cuda_median_ms

    perf_tests = load_kata_file(HERE / "test_spec_decode_perf.py", "_kata13_perf")
    perf_tests.B, perf_tests.V = args.batch, args.vocab  # make_inputs_for reads these
    copy = peaks.copy_bytes_per_s
    step_ms = WEIGHT_BYTES_8B / copy * 1e3
    print(f"one 8B decode step (16 GB of bf16 weights at that bandwidth): {step_ms:.2f} ms")
    print(f"implementation: {args.impl}\n")
    head = (f"| {'case':<22} | {'ms':>8} | {'TB/s':>6} | {'of copy':>7} | {'plain torch ms':>14} | "
            f"{'speedup':>7} | {'8B step ms':>10} | {'of the step':>11} |")
    print(head)
    print("|" + "|".join("-" * len(c) for c in head.split("|")[1:-1]) + "|")
    for k in args.k:
        inputs = perf_tests.make_inputs_for(k)(0)
        out = m.rejection_sample(*inputs)
        perf_tests.check_rejection(inputs, out)
        ms = cuda_median_ms(lambda: m.rejection_sample(*inputs))
        plain_ms = cuda_median_ms(lambda: perf_tests.plain_rejection_sample(*inputs))
        nbytes = perf_tests.minimal_bytes(args.batch, k, args.vocab)
        tbps = nbytes / ms / 1e9
        print(f"| {f'B{args.batch} k{k} V{args.vocab} fp32':<22} | {ms:8.4f} | {tbps:6.2f} | "
              f"{tbps * 1e12 / copy:7.1%} | {plain_ms:14.4f} | {plain_ms / ms:6.2f}x | "
              f"{step_ms:10.2f} | {ms / step_ms:11.2%} |")
        del inputs, out
    return 0


if __name__ == "__main__":
    sys.exit(main())
