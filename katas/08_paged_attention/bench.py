"""Kata 08 benchmark: paged_attention_triton vs SDPA on contiguous K/V on this GPU (the README's table).

    python katas/08_paged_attention/bench.py                  # reference, the whole table
    python katas/08_paged_attention/bench.py --quick          # B 1, 8, 64 x L 4k, 32k
    python katas/08_paged_attention/bench.py --impl stubs     # your module (or --impl PATH)

Every case: bf16, Hq 32, Hkv 8, D 128, block_size 16, B sequences of L tokens, block tables a
random permutation of the pool (as in test_paged_attention_perf.py). Columns: the splits your
launcher chose (when it exposes `_choose_num_splits`, as the reference does), your time, its
bandwidth (K and V of every sequence read once + q + out) and its fraction of the copy
bandwidth measured now, SDPA (enable_gqa=True) on the same K/V made contiguous, and SDPA's
time over yours. Cases whose paged plus contiguous K/V do not fit in 80% of free memory are
left out (marked "no memory").

Timing: harness/perf.py's cuda_median_ms (CUDA events, the L2 flushed before each run, the
same inputs every call, median of 50 after 10 warm-ups): the plain method, without the perf
tests' fresh inputs, batches and confirmation rounds, so its figures can be higher than theirs.
Prints a markdown table.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

HQ, HKV, D, BLOCK = 32, 8, 128, 16
BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256]
LENGTHS = [1024, 2048, 4096, 8192, 16384, 32768]
QUICK_BATCHES, QUICK_LENGTHS = [1, 8, 64], [4096, 32768]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl", default="reference", help="stubs, reference (default) or a folder")
    parser.add_argument("--quick", action="store_true", help="B 1, 8, 64 x L 4k, 32k only")
    parser.add_argument("--batches", type=int, nargs="*", help="batch sizes (default: 1 .. 256)")
    parser.add_argument("--lengths", type=int, nargs="*", help="sequence lengths (default: 1k .. 32k)")
    args = parser.parse_args()
    os.environ["KATA_IMPL"] = args.impl

    import torch

    if not torch.cuda.is_available():
        print("bench.py needs a CUDA GPU (none found).")
        return 1
    from harness import load_kata_module
    from harness.perf import cuda_median_ms, measure_device_peaks

    m = load_kata_module("paged_attention")
    peaks = measure_device_peaks()
    copy = peaks.copy_bytes_per_s
    batches = args.batches or (QUICK_BATCHES if args.quick else BATCHES)
    lengths = args.lengths or (QUICK_LENGTHS if args.quick else LENGTHS)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"GPU: {peaks.name} ({sms} SMs)")
    print(f"copy bandwidth (measured now, read + write): {copy / 1e12:.2f} TB/s")
    print(f"implementation: {args.impl}; bf16, Hq {HQ}, Hkv {HKV}, D {D}, block_size {BLOCK}, shuffled tables\n")
    head = ("| B | L | splits | ms | TB/s | of copy | SDPA ms | SDPA of copy | SDPA / ours |")
    print(head)
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    choose = getattr(m, "_choose_num_splits", None)
    for L in lengths:
        for B in batches:
            kv_bytes = 2 * B * L * HKV * D * 2
            free, _ = torch.cuda.mem_get_info()
            if 2 * kv_bytes + 2 * 1024**3 > 0.8 * free:  # paged + contiguous, plus room to work
                print(f"| {B} | {L} | | no memory | | | | | |")
                continue
            gen = torch.Generator(device="cuda").manual_seed(B * 100_003 + L)
            nb = L // BLOCK
            q = torch.randn(B, HQ, D, device="cuda", dtype=torch.bfloat16, generator=gen)
            k = torch.randn(B, HKV, L, D, device="cuda", dtype=torch.bfloat16, generator=gen)
            v = torch.randn(B, HKV, L, D, device="cuda", dtype=torch.bfloat16, generator=gen)
            tables = torch.randperm(B * nb, device="cuda", generator=gen).view(B, nb).to(torch.int32)
            k_cache = torch.empty(B * nb, BLOCK, HKV, D, device="cuda", dtype=torch.bfloat16)
            v_cache = torch.empty_like(k_cache)
            for b in range(B):
                k_cache[tables[b].long()] = k[b].transpose(0, 1).reshape(nb, BLOCK, HKV, D)
                v_cache[tables[b].long()] = v[b].transpose(0, 1).reshape(nb, BLOCK, HKV, D)
            lens = torch.full((B,), L, device="cuda", dtype=torch.int32)

            def ours():
                return m.paged_attention_triton(q, k_cache, v_cache, tables, lens)

            def sdpa():
                return torch.nn.functional.scaled_dot_product_attention(q[:, :, None], k, v, enable_gqa=True)

            ref = sdpa()[:, :, 0].float()
            err = ((ours().float() - ref).norm() / ref.norm()).item()
            ms, sdpa_ms = cuda_median_ms(ours), cuda_median_ms(sdpa)
            nbytes = kv_bytes + 2 * B * HQ * D * 2
            splits = choose(B, HKV, nb * BLOCK, q.device) if choose is not None else "-"
            tbps, sdpa_tbps = nbytes / ms / 1e9, nbytes / sdpa_ms / 1e9
            print(f"| {B} | {L} | {splits} | {ms:.4f} | {tbps:.2f} | {tbps * 1e12 / copy:.1%} | "
                  f"{sdpa_ms:.4f} | {sdpa_tbps * 1e12 / copy:.1%} | {sdpa_ms / ms:.2f}x |"
                  + (f"  (relative error {err:.2g} against SDPA!)" if err > 2e-2 else ""), flush=True)
            del q, k, v, k_cache, v_cache, tables, lens, ref
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
