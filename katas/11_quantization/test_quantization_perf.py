"""Kata 11, Task 5 on a GPU: how fast is w4a16_matmul? (Skipped without CUDA.)

Each case times w4a16_matmul(x, packed, scales, zeros, 128) beside cuBLAS in the same run:
torch's bf16 matmul `F.linear(x, W)` on a bf16 weight W of the same shape (N, K), which
reads 4x the bytes of the packed int4 weight. Judged against perf_targets/quantization.toml:
  vs_cublas      cuBLAS's time / yours,
  copy_fraction  bytes moved per second / this GPU's measured copy bandwidth (reported, the
                 "effective weight bandwidth"), with bytes moved = the packed weight + its
                 float32 scales and zeros + x + the output, each once.
Shapes: (N, K) = (8192, 8192), (28672, 8192), (8192, 28672) (LLaMA-3-70B-sized projections),
M = 1, 4, 16, 64 rows of x (decode batch sizes), group 128, bf16 activations.
A learner's run must reach bronze; `--impl reference` must reach its reference_required tier.

The harness (harness/perf.py) calls both functions only on inputs they have never seen
(make_inputs(i): new codes, scales, zeros, x and W for every i) and checks every timed
output against cuBLAS's result outside the timed region; a miss is re-measured before it fails.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness import load_kata_module

m = load_kata_module("quantization")

SHAPES = [(8192, 8192), (28672, 8192), (8192, 28672)]
MS = [1, 4, 16, 64]
GROUP = 128
# ||out - ref|| / ||ref|| against cuBLAS on W = W_hat rounded to bf16: the kernel may or may not
# round W_hat to bf16 (2^-9 relative per weight) and both outputs are rounded to bf16 (2^-9):
# a few 1e-3. A wrong kernel (a wrong nibble, group or split) is off by tens of percent.
REL_ERR = 1e-2


def target_for(M: int, N: int, K: int) -> str:
    """The perf_targets/quantization.toml target of a case."""
    square = N == K
    if M == 1:
        return "w4a16_m1_square" if square else "w4a16_m1"
    if M <= 16:
        return "w4a16_m16_square" if square else "w4a16_m16"
    return "w4a16_m64"


def pack(codes: torch.Tensor) -> torch.Tensor:
    """The contract's layout: column 2j in the low nibble, 2j + 1 in the high one."""
    return codes[:, 0::2] | (codes[:, 1::2] << 4)


def make_inputs_for(M: int, N: int, K: int):
    def make_inputs(i: int):
        gen = torch.Generator(device="cuda").manual_seed(1_000_003 * N + 7919 * K + 101 * M + i)
        codes = torch.randint(0, 16, (N, K), device="cuda", dtype=torch.uint8, generator=gen)
        scales = torch.rand(N, K // GROUP, device="cuda", generator=gen) * 0.02 + 0.001
        zeros = torch.randint(0, 16, (N, K // GROUP), device="cuda", generator=gen).float()
        w = ((codes.view(N, K // GROUP, GROUP).float() - zeros[..., None]) * scales[..., None])
        w = w.view(N, K).to(torch.bfloat16)  # W_hat in bf16: cuBLAS's weight, and the check's
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16, generator=gen)
        return x, pack(codes), scales, zeros, GROUP, w
    return make_inputs


def ours(x, packed, scales, zeros, group_size, w):
    return m.w4a16_matmul(x, packed, scales, zeros, group_size)


def cublas(x, packed, scales, zeros, group_size, w):
    return F.linear(x, w)


def check(args, out) -> None:
    x, packed, scales, zeros, group_size, w = args
    assert isinstance(out, torch.Tensor) and out.shape == (x.shape[0], w.shape[0]) and out.dtype == x.dtype, (
        f"expected a {(x.shape[0], w.shape[0])} {x.dtype} tensor, got "
        f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
    ref = F.linear(x, w).float()
    err = (torch.linalg.vector_norm(out.float() - ref) / torch.linalg.vector_norm(ref)).item()
    assert err <= REL_ERR, f"relative error {err:.3g} > {REL_ERR:g} against cuBLAS on W_hat in bf16"


@pytest.mark.gpu
@pytest.mark.perf
@pytest.mark.parametrize("M", MS)
@pytest.mark.parametrize("N,K", SHAPES, ids=[f"{n}x{k}" for n, k in SHAPES])
class TestTask5W4A16Speed:
    def test_speed(self, perf, N, K, M):
        make_inputs = make_inputs_for(M, N, K)
        args = make_inputs(0)
        check(args, ours(*args))  # a fast wrong kernel earns nothing
        del args
        n_groups = K // GROUP
        bytes_moved = N * K // 2 + 2 * N * n_groups * 4 + M * K * 2 + M * N * 2
        r = perf.measure(ours, make_inputs=make_inputs, check=check, label=f"M={M} N={N} K={K} g{GROUP}",
                         bytes_moved=bytes_moved, peers={"cublas": cublas})
        perf.check("quantization", target_for(M, N, K), r)
