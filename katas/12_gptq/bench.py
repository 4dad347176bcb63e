"""Kata 12 benchmark: how long GPTQ takes for one layer on this GPU (the README's table).

    python katas/12_gptq/bench.py                  # reference/gptq.py, 4096 x 4096 only
    python katas/12_gptq/bench.py --full           # also 11008 x 4096 and 4096 x 11008
    python katas/12_gptq/bench.py --impl stubs     # your module (or --impl PATH)

Each row times gptq_quantize(w, h, group_size=128) with CUDA events (median of 3 after a
warm-up) beside `eager_gptq` below: the same algorithm without lazy blocks, one rank-1
update of every later column per column (the paper's "direct" version). Output errors
||(W - W_hat) X^T|| / ||W X^T|| are shown for GPTQ and round-to-nearest, so a fast wrong
answer shows. test_gptq_gpu.py uses the same problem and loop.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root


def make_problem(out: int, n_in: int, n_tokens: int = 8192, seed: int = 0, device: str = "cuda"):
    """w (out, n_in) float32, x (n_tokens, n_in), h = 2 X^T X / n: LLM-like correlated inputs."""
    gen = torch.Generator(device=device).manual_seed(seed)
    rank = n_in // 4
    z = torch.randn(n_tokens, rank, generator=gen, device=device)
    mix = torch.randn(rank, n_in, generator=gen, device=device) / rank**0.5
    x = z @ mix + 0.1 * torch.randn(n_tokens, n_in, generator=gen, device=device)
    x = x * torch.exp(0.5 * torch.randn(n_in, generator=gen, device=device))
    w = 0.02 * torch.randn(out, n_in, generator=gen, device=device)
    return w, x, 2 * (x.T @ x) / n_tokens


def eager_gptq(w: torch.Tensor, h: torch.Tensor, bits: int = 4, group_size: int = 128,
               damp: float = 0.01) -> torch.Tensor:
    """GPTQ without lazy blocks (asym min-max grids): returns W_hat. One column at a time,
    every later column updated right away (a memory-bound rank-1 update per column)."""
    maxq = 2**bits - 1
    W = w.float().clone()
    H = h.float().clone()
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H.diagonal().add_(damp * torch.diagonal(H).mean())
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    n = W.shape[1]
    gs = n if group_size == -1 else group_size
    W_hat = torch.empty_like(W)
    for j in range(n):
        if j % gs == 0:
            g = W[:, j:j + gs]
            hi, lo = g.amax(1).clamp(min=0), g.amin(1).clamp(max=0)
            s = (hi - lo) / maxq
            s = torch.where(s > 0, s, torch.ones_like(s))
            z = torch.round(-lo / s)
        col = W[:, j]
        q = (torch.clamp(torch.round(col / s) + z, 0, maxq) - z) * s
        W_hat[:, j] = q
        W[:, j + 1:].addr_((col - q) / U[j, j], U[j, j + 1:], alpha=-1)
    return W_hat


def cuda_seconds(fn, repeats: int = 3) -> float:
    """Median wall time of fn() between CUDA events, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


def rel_err(w: torch.Tensor, w_hat: torch.Tensor, x: torch.Tensor) -> float:
    return (torch.linalg.norm((w - w_hat.float()) @ x.T) / torch.linalg.norm(w @ x.T)).item()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl", default="reference", help="stubs, reference (default) or a folder")
    parser.add_argument("--full", action="store_true", help="also the LLaMA-7B MLP shapes")
    args = parser.parse_args()
    os.environ["KATA_IMPL"] = args.impl
    if not torch.cuda.is_available():
        print("bench.py needs a CUDA GPU (none found).")
        return 1
    from harness import load_kata_module

    m = load_kata_module("gptq")
    shapes = [(4096, 4096)] + ([(11008, 4096), (4096, 11008)] if args.full else [])
    print(f"GPU: {torch.cuda.get_device_name()}, implementation: {args.impl}, 4 bits, group_size=128\n")
    print("| layer (out x in) | gptq_quantize s | act_order s | eager loop s | speed-up | err GPTQ | err RTN |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for out, n_in in shapes:
        w, x, h = make_problem(out, n_in)
        t_gptq = cuda_seconds(lambda: m.gptq_quantize(w, h, bits=4, group_size=128))
        t_act = cuda_seconds(lambda: m.gptq_quantize(w, h, bits=4, group_size=128, act_order=True))
        t_eager = cuda_seconds(lambda: eager_gptq(w, h), repeats=1)
        e_q = rel_err(w, m.dequantize(m.gptq_quantize(w, h, bits=4, group_size=128)), x)
        e_r = rel_err(w, m.dequantize(m.quantize_rtn(w, bits=4, group_size=128)), x)
        print(f"| {out} x {n_in} | {t_gptq:.3f} | {t_act:.3f} | {t_eager:.3f} | {t_eager / t_gptq:.1f}x "
              f"| {e_q:.4f} | {e_r:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
