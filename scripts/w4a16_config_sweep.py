"""Time kata 11's w4a16 kernel (reference/quantization.py) over launch configs, beside cuBLAS's
bf16 matmul on the unquantized weight, on a GPU. Prints, per case, the fastest configs.

    python3 scripts/w4a16_config_sweep.py [--quick]
"""
from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path

import torch
import triton

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from harness.perf import cuda_median_ms  # noqa: E402

spec = importlib.util.spec_from_file_location("ref_quant", ROOT / "reference" / "quantization.py")
ref = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ref)  # type: ignore[union-attr]
default_config = ref._config


def main() -> None:
    quick = "--quick" in sys.argv
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    shapes = [(8192, 8192), (28672, 8192), (8192, 28672)]
    grid = list(itertools.product((64, 128, 256), (4, 8), (2, 3, 4, 5), (2, 4, 8)))
    if quick:
        grid = grid[:6]
    print(f"GPU {torch.cuda.get_device_name()}, {sms} SMs")
    for (N, K), M in itertools.product(shapes, (1, 16)):
        gen = torch.Generator(device="cuda").manual_seed(0)
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16, generator=gen)
        w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16, generator=gen)
        codes, scales, zeros = ref.quantize(w, bits=4, group_size=128, sym=False)
        packed = ref.pack_int4(codes)
        t_cublas = cuda_median_ms(lambda: torch.nn.functional.linear(x, w), rep=30)
        ref._config = default_config
        t_default = cuda_median_ms(lambda: ref.w4a16_matmul(x, packed, scales, zeros, 128), rep=30)
        results = []
        for bn, warps, stages, per_sm in grid:
            def cfg(M_, N_, K_, gs, sms_, bn=bn, warps=warps, stages=stages, per_sm=per_sm):
                c = default_config(M_, N_, K_, gs, sms_)
                tiles = triton.cdiv(N_, bn) * triton.cdiv(M_, c["BLOCK_M"])
                k_blocks = triton.cdiv(K_, c["BLOCK_K"])
                split = max(1, min(triton.cdiv(per_sm * sms_, tiles), k_blocks, 32))
                per_split = triton.cdiv(k_blocks, split)
                c.update(BLOCK_N=bn, num_warps=warps, num_stages=stages,
                         split=triton.cdiv(k_blocks, per_split), per_split=per_split)
                return c
            ref._config = cfg
            try:
                t = cuda_median_ms(lambda: ref.w4a16_matmul(x, packed, scales, zeros, 128), warmup=3, rep=20)
            except Exception as e:  # out of shared memory / registers
                print(f"  skip BN{bn} w{warps} s{stages} per_sm{per_sm}: {type(e).__name__}")
                continue
            results.append((t, bn, warps, stages, per_sm))
        ref._config = default_config
        results.sort()
        wbytes = N * K / 2
        print(f"\nM={M} N={N} K={K}: cuBLAS {t_cublas:.4f} ms, default config {t_default:.4f} ms "
              f"({t_cublas / t_default:.2f}x)")
        for t, bn, warps, stages, per_sm in results[:6]:
            print(f"  {t:.4f} ms  {t_cublas / t:.2f}x cuBLAS  {wbytes / t / 1e9:.2f} TB/s int4  "
                  f"BN{bn} warps{warps} stages{stages} {per_sm}/SM")


if __name__ == "__main__":
    main()
