"""Kata 05 benchmark: the README's table. Needs a CUDA GPU.

    python katas/05_flash_attention/bench.py [--impl reference|stubs|PATH] [--seq 1024 4096]
        [--dims 128 64] [--dtypes bf16 fp16]

Every case is 16k tokens (B * S = 16384) with 32 heads. TFLOP/s count 4 * B * H * S * S * D,
halved for causal. Peers: PyTorch SDPA restricted to its flash backend and to its cuDNN
backend ("-" when a backend is unavailable). Times: median of CUDA-event timings with the L2
flushed before each run (harness/perf.py). The last column is the autotune config the kernel
chose for the case (kernel.best_config), when the module has an autotuned kernel, or what the
module's own describe_kernel(q, k, v) says (the reference: its Gluon config on a Hopper GPU).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

TOKENS, HEADS = 16 * 1024, 32
DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def autotuned_kernels(module) -> list:
    """The module's @triton.autotune kernels (objects with a best_config after a run)."""
    import triton

    return [obj for obj in vars(module).values() if isinstance(obj, triton.runtime.Autotuner)]


def describe_config(cfg) -> str:
    if cfg is None:
        return "-"
    kw = " ".join(f"{k}={v}" for k, v in cfg.kwargs.items())
    return f"{kw} warps={cfg.num_warps} stages={cfg.num_stages}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl", default="reference")
    parser.add_argument("--seq", type=int, nargs="+", default=[1024, 4096, 8192, 16384])
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 64])
    parser.add_argument("--dtypes", nargs="+", default=["bf16", "fp16"], choices=list(DTYPES))
    args = parser.parse_args()

    from harness.impl import ENV_VAR, resolve_impl_dir

    os.environ[ENV_VAR] = str(resolve_impl_dir(args.impl))
    import torch

    if not torch.cuda.is_available():
        sys.exit("bench.py needs a CUDA GPU")
    from harness import load_kata_module
    from harness.perf import cuda_median_ms

    sys.path.insert(0, str(Path(__file__).parent))
    from test_flash_attention_perf import sdpa_peer

    m = load_kata_module("flash_attention")
    print(f"GPU: {torch.cuda.get_device_name()}   impl: {os.environ[ENV_VAR]}   "
          f"torch {torch.__version__}")
    head = (f"| {'dtype':5} | {'D':>3} | {'S':>5} | {'causal':6} | {'ours ms':>8} | {'TFLOP/s':>7} | "
            f"{'SDPA flash':>10} | {'cuDNN':>7} | {'vs flash':>8} | {'vs cuDNN':>8} | config |")
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    for dname in args.dtypes:
        dtype = getattr(torch, DTYPES[dname])
        for D in args.dims:
            for S in args.seq:
                for causal in (False, True):
                    B = TOKENS // S
                    gen = torch.Generator(device="cuda").manual_seed(0)
                    q, k, v = (torch.randn(B, HEADS, S, D, device="cuda", dtype=dtype,
                                           generator=gen) for _ in range(3))
                    flops = 4 * B * HEADS * S * S * D * (0.5 if causal else 1.0)
                    ours = cuda_median_ms(lambda: m.flash_attention(q, k, v, causal=causal))
                    peers = {}
                    for name, backend in (("flash", "FLASH_ATTENTION"), ("cudnn", "CUDNN_ATTENTION")):
                        fn = sdpa_peer(backend, q, k, v, causal)
                        peers[name] = cuda_median_ms(fn) if fn is not None else None

                    def tf(ms):
                        return f"{flops / (ms * 1e-3) / 1e12:.0f}" if ms else "-"

                    def ratio(ms):
                        return f"{ms / ours:.2f}x" if ms else "-"

                    if hasattr(m, "describe_kernel"):  # the reference says which kernel ran
                        cfg = m.describe_kernel(q, k, v)
                    else:
                        kernels = autotuned_kernels(m)
                        cfg = describe_config(getattr(kernels[0], "best_config", None)) if kernels else "-"
                    print(f"| {dname:5} | {D:>3} | {S:>5} | {str(causal):6} | {ours:8.3f} | "
                          f"{tf(ours):>7} | {tf(peers['flash']):>10} | {tf(peers['cudnn']):>7} | "
                          f"{ratio(peers['flash']):>8} | {ratio(peers['cudnn']):>8} | {cfg} |",
                          flush=True)
                    del q, k, v
                    torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
