"""Dev tool: check and time the Gluon Hopper path of reference/flash_attention.py on an H100.

    python scripts/flash_hopper_check.py [--correct] [--time] [--seq 4096 ...] [--dims 128 64]
        [--cfg128 128,128,2,8 64,64,2,4 --cfg64 ...] [--portable]

--correct: the Gluon kernel against the float64 oracle on edge cases (ragged lengths,
Sq > Sk under causal, one query, GQA and MQA, fp16 and bf16), output poisoned first.
--time: TFLOP/s on the README's grid (B*S = 16k tokens, 32 heads) beside SDPA's flash and
cuDNN backends, for each config given; --portable adds the portable Triton kernel.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "katas" / "05_flash_attention"))


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ref = load("flash_attention", ROOT / "reference" / "flash_attention.py")
fast = ref._hopper_kernel()

EDGE_CASES = [  # B, Hq, Hkv, Sq, Sk, D
    (1, 1, 1, 1, 1, 64), (1, 2, 1, 1, 300, 128), (2, 4, 4, 129, 129, 64), (1, 4, 2, 257, 100, 128),
    (1, 2, 2, 100, 257, 128), (1, 8, 1, 384, 384, 64), (2, 4, 1, 1000, 1000, 128),
    (1, 2, 2, 513, 2000, 128), (1, 2, 2, 2000, 513, 64), (3, 6, 2, 1024, 1024, 128),
]


def check_correct() -> int:
    from diagnose_flash import expected_attention

    failures = 0
    for dtype in (torch.bfloat16, torch.float16):
        for B, Hq, Hkv, Sq, Sk, D in EDGE_CASES:
            for causal in (False, True):
                gen = torch.Generator(device="cuda").manual_seed(Sq * 7 + Sk)
                q = torch.randn(B, Hq, Sq, D, device="cuda", dtype=dtype, generator=gen)
                k = torch.randn(B, Hkv, Sk, D, device="cuda", dtype=dtype, generator=gen)
                v = torch.randn(B, Hkv, Sk, D, device="cuda", dtype=dtype, generator=gen)
                assert fast.supports(q, k, v, D**-0.5 * ref.LOG2E)
                out = torch.full_like(q, float("nan"))  # poisoned: every element must be written
                lse = torch.full((B, Hq, Sq), float("nan"), device="cuda")
                fast.flash_attention_hopper(q, k, v, causal, D**-0.5 * ref.LOG2E, out, lse)
                e_out, e_lse = expected_attention(q, k, v, causal=causal)
                err = (out.double() - e_out).abs().max().item()
                fin = torch.isfinite(e_lse)
                lse_err = (lse.double() - e_lse)[fin].abs().max().item() if fin.any() else 0.0
                lse_inf_ok = bool((lse[~fin] == float("-inf")).all())
                ok = err < 2e-2 and lse_err < 1e-3 and lse_inf_ok and not out.isnan().any()
                failures += not ok
                print(f"{'ok  ' if ok else 'FAIL'} {str(dtype)[6:]:8} B={B} Hq={Hq} Hkv={Hkv} Sq={Sq} "
                      f"Sk={Sk} D={D} causal={causal}: max|out err|={err:.2e} "
                      f"max|lse err|={lse_err:.2e} lse=-inf where no key: {lse_inf_ok}", flush=True)
    return failures


def time_grid(seqs, dims, cfgs, portable: bool, dtypes) -> None:
    from harness.perf import cuda_median_ms
    from test_flash_attention_perf import sdpa_peer

    print("| dtype | D | S | causal | " + " | ".join("cfg" + str(i) for i in range(len(cfgs[dims[0]])))
          + (" | portable" if portable else "") + " | flash | cuDNN | best/flash | best/cuDNN |")
    for dname in dtypes:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[dname]
        for D in dims:
            for S in seqs:
                for causal in (False, True):
                    B = 16384 // S
                    gen = torch.Generator(device="cuda").manual_seed(0)
                    q, k, v = (torch.randn(B, 32, S, D, device="cuda", dtype=dtype, generator=gen)
                               for _ in range(3))
                    flops = 4 * B * 32 * S * S * D * (0.5 if causal else 1.0)
                    tf = lambda ms: flops / (ms * 1e-3) / 1e12  # noqa: E731
                    ours = []
                    for cfg in cfgs[D]:
                        fast.CONFIG[D] = cfg
                        ours.append(tf(cuda_median_ms(
                            lambda: ref.flash_attention(q, k, v, causal=causal))))
                    if portable:
                        ref.USE_HOPPER_KERNEL = False
                        ours_p = tf(cuda_median_ms(lambda: ref.flash_attention(q, k, v, causal=causal)))
                        ref.USE_HOPPER_KERNEL = True
                    peers = [tf(cuda_median_ms(fn)) if fn else float("nan") for fn in
                             (sdpa_peer(b, q, k, v, causal) for b in ("FLASH_ATTENTION", "CUDNN_ATTENTION"))]
                    best = max(ours)
                    cells = [f"{x:.0f}" for x in ours] + ([f"{ours_p:.0f}"] if portable else [])
                    print(f"| {dname} | {D} | {S} | {causal} | " + " | ".join(cells)
                          + f" | {peers[0]:.0f} | {peers[1]:.0f} | {best / peers[0]:.2f}x | "
                          f"{best / peers[1]:.2f}x |", flush=True)
                    del q, k, v


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--correct", action="store_true")
    p.add_argument("--time", action="store_true")
    p.add_argument("--portable", action="store_true")
    p.add_argument("--seq", type=int, nargs="+", default=[1024, 4096, 8192, 16384])
    p.add_argument("--dtypes", nargs="+", default=["bf16", "fp16"])
    p.add_argument("--dims", type=int, nargs="+", default=[128, 64])
    p.add_argument("--cfg128", nargs="+", default=None, help="BLOCK_M,BLOCK_N,STAGES,warps")
    p.add_argument("--cfg64", nargs="+", default=None)
    args = p.parse_args()
    print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    assert fast is not None, "no Gluon on this Triton"
    bad = check_correct() if args.correct else 0
    if args.time:
        cfgs = {d: [tuple(map(int, c.split(","))) for c in given] if given else [fast.CONFIG[d]]
                for d, given in ((128, args.cfg128), (64, args.cfg64))}
        for d in args.dims:
            print(f"D={d} configs:", {f"cfg{i}": c for i, c in enumerate(cfgs[d])})
        time_grid(args.seq, args.dims, cfgs, args.portable, args.dtypes)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
