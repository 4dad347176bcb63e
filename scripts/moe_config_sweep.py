"""Time kata 15's moe_forward_triton (reference/moe.py) over prefill tile configs on a GPU,
beside the dense bf16 matmul rate. Mixtral layer: d 4096, d_ff 14336, E 8, top 2, bf16.

    python3 scripts/moe_config_sweep.py [T ...]         # pointer kernels; default T = 4096 8192
    python3 scripts/moe_config_sweep.py --tma [T ...]   # the TMA prefill path (Hopper)
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from harness.perf import cuda_median_ms, measure_device_peaks  # noqa: E402

spec = importlib.util.spec_from_file_location("ref_moe", ROOT / "reference" / "moe.py")
ref = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ref)  # type: ignore[union-attr]

# (BLOCK_M, gate/up (BLOCK_N, BLOCK_K, warps, stages), down (same))
CANDIDATES = [
    (128, (128, 64, 8, 3), (256, 64, 8, 3)),  # the reference's
    (128, (128, 64, 8, 4), (128, 64, 8, 4)),
    (128, (256, 64, 8, 3), (256, 64, 8, 3)),
    (128, (128, 128, 8, 3), (128, 128, 8, 3)),
    (128, (64, 64, 4, 4), (128, 64, 4, 4)),
    (64, (256, 64, 8, 3), (256, 64, 8, 3)),
    (128, (128, 64, 4, 4), (256, 64, 8, 4)),
    (128, (256, 32, 8, 4), (256, 32, 8, 4)),
]


# The TMA path's (gate/up, down) configs: (BLOCK_N, BLOCK_K, warps, stages, GROUP_M)
# Two CTAs an SM (gate/up (64, 64, 4, 3): 98 KB of shared memory and 194 registers a thread,
# from an offline sm_90 compile) would let one CTA's epilogue overlap the other's main loop.
# Measured 2026-11-30 on an H200 (dense 789 TFLOP/s): the reference's pair stays best, 0.805x
# at T = 4096; gate/up (64, 64, 4, 3, *) 0.76-0.77x, (128, 128, 8, 2) 0.62x; down (128, 64, 4, 3)
# costs 3-5% wherever it goes.
TMA_CANDIDATES = [(gu, dn)
                  for gu in ((128, 64, 8, 3, 16), (64, 64, 4, 3, 16), (64, 64, 4, 3, 8), (64, 64, 4, 4, 16),
                             (128, 128, 8, 2, 16))
                  for dn in ((256, 64, 8, 3, 16), (128, 64, 4, 3, 16))]


def sweep(tokens: list[int], attr: str, candidates: list, as_value) -> None:
    """Time moe_forward_triton with ref.<attr> set to as_value(candidate), for each candidate
    in turn, on one Mixtral layer (restored afterwards)."""
    peaks = measure_device_peaks()
    d, d_ff, E, k = 4096, 14336, 8, 2
    g = torch.Generator(device="cuda").manual_seed(0)
    mk = lambda *s: (torch.randn(*s, device="cuda", generator=g) * 0.02).to(torch.bfloat16)  # noqa: E731
    wr, wg, wu, wd = mk(E, d), mk(E, d_ff, d), mk(E, d_ff, d), mk(E, d, d_ff)
    print(f"GPU {peaks.name}: matmul {peaks.matmul_flops_per_s / 1e12:.0f} TFLOP/s")
    original = getattr(ref, attr)
    try:
        for T in tokens:
            x = mk(T, d)
            flops = 2 * T * k * 3 * d * d_ff
            for cand in candidates:
                setattr(ref, attr, as_value(cand))
                try:
                    ms = cuda_median_ms(lambda: ref.moe_forward_triton(x, wr, wg, wu, wd, k), warmup=3, rep=10)
                except Exception as e:  # noqa: BLE001 - out of shared memory etc.
                    print(f"T={T} {cand}: {type(e).__name__} {str(e)[:80]}")
                    continue
                tf = flops / ms / 1e9
                print(f"T={T} {cand}: {ms:.3f} ms {tf:.0f} TFLOP/s "
                      f"{tf * 1e12 / peaks.matmul_flops_per_s:.3f}x matmul", flush=True)
    finally:
        setattr(ref, attr, original)


def main() -> None:
    tokens = [int(a) for a in sys.argv[1:] if a != "--tma"] or [4096, 8192]
    if "--tma" in sys.argv:  # the TMA prefill path's configs
        sweep(tokens, "_TMA_CONFIG", TMA_CANDIDATES, lambda c: c)
    else:  # the pointer kernels' tile configs
        sweep(tokens, "_config", CANDIDATES, lambda c: (lambda rows: c))


if __name__ == "__main__":
    main()
