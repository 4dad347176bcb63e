"""Why do short kernels time slower under the perf harness than under a plain bench?

Two suspects, measured side by side on the same inputs (GPU only):
1. The L2 flush before each call zeroes a 256 MiB buffer: L2 is left full of *dirty* lines,
   and the timed kernel pays their write-back (up to the L2's size in extra writes).
   Flushing by *reading* the buffer leaves clean lines that are dropped for free.
2. A host-side launch slower than the GPU work queued before it (spin + flush) leaves the GPU
   idle between the start event and the kernel: the launch cost is timed.

    python3 scripts/perf_flush_experiment.py      # prints a markdown table per suspect
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from reference import flash_attention as fa  # noqa: E402
from reference import online_softmax as sm  # noqa: E402

FLUSH = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.int32, device="cuda")
SPIN = 200_000  # cycles, ~0.1 ms


def flush(mode: str) -> None:
    torch.cuda._sleep(SPIN * (10 if mode.endswith("long") else 1))
    if mode.startswith("zero"):
        FLUSH.zero_()
    else:
        FLUSH.sum()


def time_ms(fn, inputs, mode: str, reps: int = 60) -> tuple[float, float]:
    """(median event ms, median host enqueue us) over reps calls cycling through inputs."""
    for i in range(5):
        fn(*inputs[i % len(inputs)])
    torch.cuda.synchronize()
    ev, host = [], []
    for i in range(reps):
        a = inputs[i % len(inputs)]
        flush(mode)
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        t0 = time.perf_counter()
        fn(*a)
        host.append((time.perf_counter() - t0) * 1e6)
        e1.record()
        ev.append((e0, e1))
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in ev), statistics.median(host)


def copy_fn(x):
    return x.clone()


def main() -> None:
    torch.manual_seed(0)
    modes = ["zero", "read", "read_long"]
    print(f"GPU {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print("\n## softmax: fraction of copy bandwidth (bytes = read + write), and vs torch\n")
    print("| case | fn | " + " | ".join(f"{m} ms" for m in modes) + " | host us | " +
          " | ".join(f"{m} TB/s" for m in modes) + " |")
    print("|" + "---|" * (3 + 2 * len(modes)))
    cases = [(torch.bfloat16, n) for n in (1024, 4096, 8192, 16384, 32768)] + \
            [(torch.float32, 1024), (torch.float32, 32768)]
    for dtype, n in cases:
        rows = max(8192, 2**25 // n)
        inputs = [(torch.randn(rows, n, device="cuda").to(dtype),) for _ in range(4)]
        nbytes = 2 * rows * n * inputs[0][0].element_size()
        for name, fn in (("triton", sm.softmax_triton), ("torch", lambda x: torch.softmax(x, -1)),
                         ("clone", copy_fn)):
            res = [time_ms(fn, inputs, m) for m in modes]
            print(f"| {str(dtype)[6:]} {rows}x{n} | {name} | " + " | ".join(f"{r[0]:.4f}" for r in res)
                  + f" | {res[0][1]:.0f} | " + " | ".join(f"{nbytes / r[0] / 1e9:.2f}" for r in res) + " |")
        del inputs
    print("\n## flash attention, 16k tokens, 32 heads, bf16, S = 1024: TFLOP/s\n")
    print("| case | fn | " + " | ".join(f"{m} ms" for m in modes) + " | host us |")
    print("|" + "---|" * (3 + len(modes)))
    from torch.nn.attention import SDPBackend, sdpa_kernel
    for D in (64, 128):
        for causal in (False, True):
            S, B, H = 1024, 16, 32
            inputs = [tuple(torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16)
                            for _ in range(3)) for _ in range(4)]

            def sdpa(q, k, v, causal=causal):
                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
            for name, fn in (("ours", lambda q, k, v, c=causal: fa.flash_attention(q, k, v, causal=c)),
                             ("sdpa_flash", sdpa)):
                res = [time_ms(fn, inputs, m) for m in modes]
                print(f"| D{D} causal={causal} | {name} | " + " | ".join(f"{r[0]:.4f}" for r in res)
                      + f" | {res[0][1]:.0f} |")
            del inputs


if __name__ == "__main__":
    main()
