"""Kata 05, Task 5: speed on a GPU (skipped on CPU). Every case is 16k tokens (B * S = 16384),
32 heads, against PyTorch SDPA's flash backend and its cuDNN backend timed in the same run.
TFLOP/s count 4 * B * H * Sq * Sk * D, halved for causal (the work above the diagonal is not
done). Targets: perf_targets/flash_attention.toml (bars and the H100 figures measured against them).
"""
from __future__ import annotations

import pytest
import torch

from harness import load_kata_module

m = load_kata_module("flash_attention")

TOKENS, HEADS = 16 * 1024, 32
SEQ_LENS = [1024, 4096, 8192, 16384]
CASES = [(s, d, c, dt) for s in SEQ_LENS for d in (128, 64) for c in (False, True)
         for dt in (torch.bfloat16, torch.float16)]


def case_id(case) -> str:
    s, d, c, dt = case
    return f"S{s // 1024}k-D{d}-{'causal' if c else 'full'}-{str(dt).replace('torch.', '')}"


def sdpa_peer(backend_name: str, q, k, v, causal: bool):
    """A callable running SDPA restricted to one backend, or None when that backend is unavailable."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, backend_name, None)
    if backend is None:
        return None

    def call():
        with sdpa_kernel(backend):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)

    try:
        call()
        torch.cuda.synchronize()
    except RuntimeError:  # no kernel of this backend for these inputs / this build
        return None
    return call


def target_name(causal: bool, seq_len: int, have_cudnn: bool) -> str:
    """cuDNN bars apply from 4k tokens on; without cuDNN only the SDPA-flash bar is checked."""
    name = "forward_causal" if causal else "forward"
    return name + "_long" if seq_len >= 4096 and have_cudnn else name


class TestTask5Speed:
    @pytest.mark.perf
    @pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
    def test_speed(self, perf, case):
        S, D, causal, dtype = case
        B = TOKENS // S
        gen = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(B, HEADS, S, D, device="cuda", dtype=dtype, generator=gen)
                   for _ in range(3))
        peers = {}
        for name, backend in (("sdpa_flash", "FLASH_ATTENTION"), ("cudnn", "CUDNN_ATTENTION")):
            fn = sdpa_peer(backend, q, k, v, causal)
            if fn is not None:
                peers[name] = fn
            else:
                print(f"peer {name} ({backend}) unavailable for {case_id(case)}: not compared")
        if "sdpa_flash" not in peers:
            pytest.skip("SDPA's flash backend is unavailable on this GPU/build")
        flops = 4 * B * HEADS * S * S * D * (0.5 if causal else 1.0)
        r = perf.measure(lambda: m.flash_attention(q, k, v, causal=causal), label=case_id(case),
                         flops=flops, peers=peers)
        perf.check("flash_attention", target_name(causal, S, "cudnn" in peers), r)
