"""Kata 08, Task 5: decode speed on a GPU (skipped on CPU).

Every case is one decode step of a LLaMA-3-8B-like layer: bf16, Hq = 32, Hkv = 8, D = 128,
block_size 16, B sequences of L tokens each, every block table a random permutation of the
pool (so no two consecutive blocks of a sequence are neighbours in memory). Each case times
paged_attention_triton (num_splits=None: your launcher chooses) beside torch SDPA
(`enable_gqa=True`) on the same K/V made contiguous, (B, Hkv, L, D), in the same run, and
judges it against perf_targets/paged_attention.toml:
  copy_fraction  bytes moved per second / this GPU's measured copy bandwidth, where the bytes
                 are the minimum any decode attention moves: K and V of every sequence read
                 once, q read and the output written once;
  vs_sdpa        SDPA's time on contiguous K/V / yours (1.0: paging costs nothing).

Targets: B * L >= 64 x 4k ([decode]): gold at 0.85x copy and 0.9x SDPA; B = 1..4 at 32k
([decode_long], where one program per (sequence, kv head) would leave most SMs idle): gold at
0.6x copy. A learner's run must reach bronze; `--impl reference` must reach gold.

The harness (harness/perf.py) calls paged_attention_triton only on inputs it has never seen
(make_inputs(i): a new cache, new tables, new q for every i) and checks every timed output on
a sample of sequences and heads against float32 math over the contiguous K/V; a miss is
re-measured before it fails.
"""
from __future__ import annotations

import random

import pytest
import torch

from harness import assert_close, load_kata_module

m = load_kata_module("paged_attention")

HQ, HKV, D, BLOCK = 32, 8, 128, 16
DTYPE = torch.bfloat16
DECODE = [(64, 4096), (128, 4096), (32, 8192), (16, 16384), (8, 32768)]  # B * L >= 64 x 4k
DECODE_LONG = [(1, 32768), (2, 32768), (4, 32768)]
CASES = [("decode", b, n) for b, n in DECODE] + [("decode_long", b, n) for b, n in DECODE_LONG]
# ||out - ref|| / ||ref|| over the sampled (sequence, head) rows: an honest bf16 kernel is at
# ~0.5 % (P rounded to bf16 before P @ V, the output rounded once); another input's output, an
# unset one or a split left out is off by tens of %.
REL_ERR = 2e-2
CHECK_SEQS = 2
_rng = random.SystemRandom()


def make_inputs_for(B: int, L: int):
    """(q, k_cache, v_cache, block_tables, seq_lens, k, v): a shuffled paged cache and the same
    K/V contiguous, (B, Hkv, L, D), for SDPA."""
    nb = L // BLOCK

    def make_inputs(i: int):
        gen = torch.Generator(device="cuda").manual_seed(1_000_003 * B + L + 7919 * i)
        q = torch.randn(B, HQ, D, device="cuda", dtype=DTYPE, generator=gen)
        k = torch.randn(B, HKV, L, D, device="cuda", dtype=DTYPE, generator=gen)
        v = torch.randn(B, HKV, L, D, device="cuda", dtype=DTYPE, generator=gen)
        tables = torch.randperm(B * nb, device="cuda", generator=gen).view(B, nb).to(torch.int32)
        k_cache = torch.empty(B * nb, BLOCK, HKV, D, device="cuda", dtype=DTYPE)
        v_cache = torch.empty_like(k_cache)
        for b in range(B):  # block j of sequence b holds its tokens 16j .. 16j + 15
            rows = tables[b].long()
            k_cache[rows] = k[b].transpose(0, 1).reshape(nb, BLOCK, HKV, D)
            v_cache[rows] = v[b].transpose(0, 1).reshape(nb, BLOCK, HKV, D)
        lens = torch.full((B,), L, device="cuda", dtype=torch.int32)
        return q, k_cache, v_cache, tables, lens, k, v
    return make_inputs


def ours(q, k_cache, v_cache, tables, lens, k, v):
    return m.paged_attention_triton(q, k_cache, v_cache, tables, lens)


def sdpa(q, k_cache, v_cache, tables, lens, k, v):
    return torch.nn.functional.scaled_dot_product_attention(q[:, :, None], k, v, enable_gqa=True)[:, :, 0]


def check_output(args, out) -> None:
    """A few sequences, every head, against float32 attention over the contiguous K/V."""
    q, _, _, _, _, k, v = args
    B = q.shape[0]
    assert isinstance(out, torch.Tensor) and tuple(out.shape) == tuple(q.shape) and out.dtype == q.dtype, (
        f"expected a {tuple(q.shape)} {q.dtype} tensor, got "
        f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
    for b in _rng.sample(range(B), min(CHECK_SEQS, B)):
        kk = k[b].float().repeat_interleave(HQ // HKV, dim=0)  # (Hq, L, D)
        vv = v[b].float().repeat_interleave(HQ // HKV, dim=0)
        p = torch.softmax(torch.einsum("hd,hnd->hn", q[b].float(), kk) * D ** -0.5, dim=-1)
        ref = torch.einsum("hn,hnd->hd", p, vv)
        err = (torch.linalg.vector_norm(out[b].float() - ref) / torch.linalg.vector_norm(ref)).item()
        assert err <= REL_ERR, f"sequence {b}: relative error {err:.3g} > {REL_ERR:g} against float32 attention"


@pytest.mark.gpu
@pytest.mark.perf
@pytest.mark.parametrize("target,B,L", CASES, ids=[f"B{b}-L{n // 1024}k" for _, b, n in CASES])
class TestTask5DecodeSpeed:
    def test_speed(self, perf, target, B, L):
        make_inputs = make_inputs_for(B, L)
        args = make_inputs(0)
        # A fast wrong kernel earns nothing: the first sequence in full first (the message
        # names the worst element); the timed calls are then checked on samples.
        out = ours(*args)
        q, _, _, _, _, k, v = args
        kk, vv = (t[0].double().repeat_interleave(HQ // HKV, dim=0) for t in (k, v))
        p = torch.softmax(torch.einsum("hd,hnd->hn", q[0].double(), kk) * D ** -0.5, dim=-1)
        assert_close(out[0].cpu(), torch.einsum("hn,hnd->hd", p, vv).cpu().to(DTYPE),
                     what=f"paged_attention_triton, sequence 0 of B={B}, L={L}", inputs=dict(q=q, k=k),
                     atol=3e-2, rtol=3e-2)  # the CPU tests' bf16 tolerance (README, "Tolerances")
        del out, args, q, k, v, kk, vv, p
        kv_bytes = 2 * B * L * HKV * D * 2  # K and V, bf16
        r = perf.measure(ours, make_inputs=make_inputs, check=check_output,
                         label=f"B{B} L{L} Hq{HQ} Hkv{HKV} D{D} bs{BLOCK} bf16",
                         bytes_moved=kv_bytes + 2 * B * HQ * D * 2, peers={"sdpa": sdpa})
        perf.check("paged_attention", target, r)
