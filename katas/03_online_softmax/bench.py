"""Kata 03 benchmark: softmax_triton vs torch.softmax on this GPU (the README's table).

    python katas/03_online_softmax/bench.py                 # reference/online_softmax.py
    python katas/03_online_softmax/bench.py --impl stubs    # your module (or --impl PATH)

Timing: harness/perf.py's cuda_median_ms (CUDA events, the L2 flushed before each run, the
same x every call, median of 50 after 10 warm-ups): the plain method, without the perf
tests' fresh inputs, batches and confirmation rounds, so its figures can be higher than
theirs. Bytes moved = x read once + output written once; the copy bandwidth is measured in
this run. Rows: max(8192, 2^25 / n) per case, as in test_perf.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

ROWS = 8192  # at least; narrow rows get more (rows_for), as in test_perf.py
COLS = [1024, 4096, 8192, 16384, 32768]


def rows_for(n_cols: int) -> int:
    return max(ROWS, 2**25 // n_cols)


def autotune_choice(module) -> str:
    """The config any autotuned kernel of the module picked for its last launch, if any."""
    picks = [f"{name}: {obj.best_config}" for name, obj in vars(module).items()
             if getattr(obj, "best_config", None) is not None]
    return "; ".join(picks) or "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl", default="reference", help="stubs, reference (default) or a folder")
    args = parser.parse_args()
    from harness.bench import open_bench

    opened = open_bench("online_softmax", args.impl)
    if opened is None:
        return 1
    m, peaks = opened
    import torch

    from harness.perf import cuda_median_ms

    copy = peaks.copy_bytes_per_s
    print(f"implementation: {args.impl}\n")
    head = (f"| {'case':<16} | {'ms':>8} | {'TB/s':>6} | {'of copy':>7} | {'torch ms':>8} | "
            f"{'torch TB/s':>10} | {'speedup':>7} | {'same-size copy':>14} | autotune choice")
    print(head)
    print("|" + "|".join("-" * len(c) for c in head.split("|")[1:]))
    for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        for n in COLS:
            gen = torch.Generator(device="cuda").manual_seed(n)
            x = (3 * torch.randn(rows_for(n), n, device="cuda", generator=gen)).to(dtype)
            err = (m.softmax_triton(x).double() - torch.softmax(x.double(), -1)).abs().max().item()
            ms = cuda_median_ms(lambda: m.softmax_triton(x))
            torch_ms = cuda_median_ms(lambda: torch.softmax(x, dim=-1))
            y = torch.empty_like(x)  # a copy of the same bytes: this size's ceiling under the flush
            copy_ms = cuda_median_ms(lambda: y.copy_(x))
            nbytes = 2 * x.numel() * x.element_size()
            tbps, torch_tbps = nbytes / ms / 1e9, nbytes / torch_ms / 1e9
            print(f"| {f'{dtype_name} {rows_for(n)}x{n}':<16} | {ms:8.4f} | {tbps:6.2f} | "
                  f"{tbps * 1e12 / copy:7.1%} | {torch_ms:8.4f} | {torch_tbps:10.2f} | "
                  f"{torch_ms / ms:6.2f}x | {nbytes / copy_ms / 1e9 * 1e12 / copy:14.1%} | {autotune_choice(m)}"
                  + (f"  (max error {err:.2g}!)" if err > 1e-2 else ""))
            del x, y
    return 0


if __name__ == "__main__":
    sys.exit(main())
