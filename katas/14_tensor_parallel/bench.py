"""Kata 14 benchmark: ring_all_reduce beside NCCL's all_reduce, and ParallelMLP against one
GPU (the README's tables). Run it with one process per GPU:

    torchrun --nproc-per-node 2 katas/14_tensor_parallel/bench.py              # reference
    torchrun --nproc-per-node 2 katas/14_tensor_parallel/bench.py --impl stubs # your module
    torchrun --nproc-per-node 2 katas/14_tensor_parallel/bench.py --quick      # 3 sizes, 1 MLP

Timing (spawn.py's time_ring_and_nccl and time_mlp, the same as the perf tests): each rank
runs `iters` back-to-back calls between two CUDA events after a barrier; a round's time is
the slowest rank's; ring and NCCL alternate for `--rounds` rounds and the table shows the
medians. The all-reduce buffer (float32) starts as ones before each round and is checked
after it (every element world^iters), so a call that skipped work shows up as an error.
  algbw = bytes / time;  busbw = algbw * 2(n-1)/n  (nccl-tests' convention: comparable to a
  link's bandwidth whatever n is; for n = 2 the two are equal)
MLP: bf16, tokens x d_model input, w_up (d_ff, d_model), w_down (d_model, d_ff); "one GPU" is
the unsharded MLP on each rank's own GPU; "all-reduce" is NCCL's all_reduce of the MLP's
(tokens, d_model) bf16 output alone, the communication inside one ParallelMLP forward.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

MIB = 1 << 20
SIZES = [1 * MIB, 4 * MIB, 16 * MIB, 64 * MIB, 256 * MIB, 1024 * MIB]
QUICK_SIZES = [1 * MIB, 64 * MIB, 1024 * MIB]
# (tokens, d_model, d_ff): decode batches to a long prefill, Llama-3-8B and -70B MLP sizes
# (their SwiGLU MLPs have a third matrix; this kata's MLP has two).
MLPS = [(16, 4096, 14336), (256, 4096, 14336), (8192, 4096, 14336),
        (16, 8192, 28672), (256, 8192, 28672), (8192, 8192, 28672)]
QUICK_MLPS = [(8192, 8192, 28672)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl", default="reference", help="stubs, reference (default) or a folder")
    parser.add_argument("--quick", action="store_true", help="3 sizes and one MLP")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per case (median shown)")
    args = parser.parse_args()
    os.environ["KATA_IMPL"] = args.impl
    if "RANK" not in os.environ:
        print("run me under torchrun: torchrun --nproc-per-node 2 katas/14_tensor_parallel/bench.py")
        return 1

    import torch
    import torch.distributed as dist

    from harness import load_kata_file, load_kata_module

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", device_id=device)
    spawn = load_kata_file(Path(__file__).with_name("spawn.py"), "kata14_spawn")
    m = load_kata_module("tensor_parallel")

    def slowest(values: list[float]) -> list[float]:
        """Each round's time on the slowest rank."""
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.tolist()

    def say(text: str = "") -> None:
        if rank == 0:
            print(text, flush=True)

    say(f"GPUs: {world} x {torch.cuda.get_device_name(device)}; NCCL {torch.cuda.nccl.version()}; "
        f"NCCL_NVLS_ENABLE={os.environ.get('NCCL_NVLS_ENABLE', 'unset')}; implementation: {args.impl}\n")
    head = "| size | iters | ring ms | ring algbw GB/s | ring busbw GB/s | NCCL ms | NCCL busbw GB/s | ring / NCCL |"
    say(head)
    say("|" + "|".join("---:" for _ in head.split("|")[1:-1]) + "|")
    factor = 2 * (world - 1) / world
    for nbytes in QUICK_SIZES if args.quick else SIZES:
        r = spawn.time_ring_and_nccl(m, nbytes, device, rounds=args.rounds)
        ring = statistics.median(slowest(r["ms"]["ring"]))
        nccl = statistics.median(slowest(r["ms"]["nccl"]))
        algbw = nbytes / (ring * 1e-3) / 1e9
        note = f" (ring wrong: rel. error {r['rel_err']['ring']:.2g})" if r["rel_err"]["ring"] > 1e-3 else ""
        size = f"{nbytes // MIB} MiB" if nbytes < 1024 * MIB else f"{nbytes // (1024 * MIB)} GiB"
        say(f"| {size} | {r['iters']} | {ring:.3f} | {algbw:.1f} | {algbw * factor:.1f} | {nccl:.3f} | "
            f"{nbytes / (nccl * 1e-3) / 1e9 * factor:.1f} | {nccl / ring:.2f}x |{note}")
        torch.cuda.empty_cache()

    say()
    head = ("| tokens | d_model | d_ff | one GPU ms | ParallelMLP ms | speedup | all-reduce ms | "
            "all-reduce share | rel. error |")
    say(head)
    say("|" + "|".join("---:" for _ in head.split("|")[1:-1]) + "|")
    for tokens, d_model, d_ff in QUICK_MLPS if args.quick else MLPS:
        r = spawn.time_mlp(m, tokens, d_model, d_ff, device, rounds=args.rounds)
        tp = statistics.median(slowest(r["ms"]["tp"]))
        one = statistics.median(slowest(r["ms"]["one_gpu"]))
        out = torch.empty(tokens, d_model, dtype=torch.bfloat16, device=device)
        ar = statistics.median(slowest([spawn._timed_ms(lambda: dist.all_reduce(out), 20)
                                        for _ in range(args.rounds)]))
        say(f"| {tokens} | {d_model} | {d_ff} | {one:.3f} | {tp:.3f} | {one / tp:.2f}x | {ar:.3f} | "
            f"{ar / tp:.0%} | {r['rel_err']:.1e} |")
        del out
        torch.cuda.empty_cache()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
