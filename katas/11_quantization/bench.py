"""Kata 11 benchmark: w4a16_matmul vs cuBLAS's bf16 matmul on this GPU (the README's table).

    python katas/11_quantization/bench.py                 # reference/quantization.py, all cases
    python katas/11_quantization/bench.py --quick         # 8192 x 8192 only, M = 1 and 16
    python katas/11_quantization/bench.py --impl stubs    # your module (or --impl PATH)

Timing: harness/perf.py's cuda_median_ms (CUDA events, the L2 flushed before each run, the
same inputs every call, median of 50 after 10 warm-ups): the plain method, without the perf
tests' fresh inputs, batches and confirmation rounds, so its figures can be higher than theirs.
cuBLAS = torch.nn.functional.linear(x, W) with W (N, K) bf16. Bytes: ours = packed weight
(N K / 2) + float32 scales and zeros (8 N K / group) + x + output; cuBLAS = W (2 N K) + x +
output. "of copy" = those bytes per second over the copy bandwidth measured in this run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

SHAPES = [(8192, 8192), (28672, 8192), (8192, 28672)]
MS = [1, 4, 16, 64]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl", default="reference", help="stubs, reference (default) or a folder")
    parser.add_argument("--quick", action="store_true", help="8192 x 8192 only, M = 1 and 16")
    parser.add_argument("--group", type=int, default=128, help="group size (default 128)")
    args = parser.parse_args()
    from harness.bench import open_bench

    opened = open_bench("quantization", args.impl)
    if opened is None:
        return 1
    m, peaks = opened
    import torch
    import torch.nn.functional as F

    from harness.perf import cuda_median_ms

    copy = peaks.copy_bytes_per_s
    g = args.group
    print(f"implementation: {args.impl}, group {g}, bf16 activations\n")
    head = (f"| {'N x K':<12} | {'M':>3} | {'w4a16 ms':>8} | {'TB/s':>5} | {'of copy':>7} | "
            f"{'cuBLAS ms':>9} | {'TB/s':>5} | {'of copy':>7} | {'speedup':>7}")
    print(head)
    print("|" + "|".join("-" * len(c) for c in head.split("|")[1:]))
    shapes = [(8192, 8192)] if args.quick else SHAPES
    ms_list = [1, 16] if args.quick else MS
    for N, K in shapes:
        gen = torch.Generator(device="cuda").manual_seed(N + K)
        codes = torch.randint(0, 16, (N, K), device="cuda", dtype=torch.uint8, generator=gen)
        scales = torch.rand(N, K // g, device="cuda", generator=gen) * 0.02 + 0.001
        zeros = torch.randint(0, 16, (N, K // g), device="cuda", generator=gen).float()
        w = ((codes.view(N, K // g, g).float() - zeros[..., None]) * scales[..., None]).view(N, K).to(torch.bfloat16)
        packed = codes[:, 0::2] | (codes[:, 1::2] << 4)
        del codes
        for M in ms_list:
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16, generator=gen)
            ref = F.linear(x, w).float()
            out = m.w4a16_matmul(x, packed, scales, zeros, g)
            err = (torch.linalg.vector_norm(out.float() - ref) / torch.linalg.vector_norm(ref)).item()
            ours_ms = cuda_median_ms(lambda: m.w4a16_matmul(x, packed, scales, zeros, g))
            cublas_ms = cuda_median_ms(lambda: F.linear(x, w))
            io = M * K * 2 + M * N * 2
            ours_bytes = N * K // 2 + 8 * N * (K // g) + io
            cublas_bytes = 2 * N * K + io
            ours_tbps, cublas_tbps = ours_bytes / ours_ms / 1e9, cublas_bytes / cublas_ms / 1e9
            print(f"| {f'{N} x {K}':<12} | {M:>3} | {ours_ms:8.4f} | {ours_tbps:5.2f} | "
                  f"{ours_tbps * 1e12 / copy:7.1%} | {cublas_ms:9.4f} | {cublas_tbps:5.2f} | "
                  f"{cublas_tbps * 1e12 / copy:7.1%} | {cublas_ms / ours_ms:6.2f}x"
                  + (f"  (relative error {err:.2g}!)" if err > 1e-2 else ""))
        del w, packed, scales, zeros
    return 0


if __name__ == "__main__":
    sys.exit(main())
