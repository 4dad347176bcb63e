"""The README's prefix-caching table: a seeded synthetic chat trace (a few system prompts,
many users, multi-turn conversations) replayed against

  - no cache: every prompt token is prefilled;
  - RadixCache (this kata): token-granular longest-prefix reuse, LRU eviction of sequence ends;
  - block hashing (vLLM's automatic prefix caching): only full blocks of block_size tokens
    are cached, each keyed by the hash of its tokens and of every token before it; LRU
    eviction of blocks, the tail blocks of a sequence first.

    python katas/09_prefix_cache/trace.py                  # reference/prefix_cache.py
    python katas/09_prefix_cache/trace.py --impl stubs     # your module (or --impl PATH)

Requests run one at a time: match the prompt, prefill the rest, generate the answer, then
cache prompt + answer (as SGLang and vLLM do when a request finishes). One prompt token is
always computed, cache or not (the model needs its logits), for every policy.
"""
from __future__ import annotations

import argparse
import heapq
import os
import random
import sys
from collections import OrderedDict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

VOCAB = 32000


def make_trace(seed: int = 0, users: int = 400) -> list[tuple[list[int], list[int]]]:
    """(prompt, answer) token lists in arrival order. 4 system prompts (600-2000 tokens; the
    popular ones used by most users), chats of 1-8 turns: user message 20-200 tokens,
    answer 50-400 tokens; each turn's prompt is the system prompt + the whole history + the
    new message. Users' turns interleave (each user thinks a random time between turns)."""
    rng = random.Random(seed)
    toks = lambda n: [rng.randrange(VOCAB) for _ in range(n)]  # noqa: E731
    systems = [toks(n) for n in (1200, 600, 2000, 850)]
    weights = [0.5, 0.25, 0.15, 0.10]
    arrivals: list[tuple[float, int]] = [(rng.uniform(0, 600), u) for u in range(users)]
    heapq.heapify(arrivals)
    state = {u: (rng.choices(systems, weights)[0][:], rng.randint(1, 8)) for u in range(users)}
    trace = []
    while arrivals:
        now, u = heapq.heappop(arrivals)
        history, turns_left = state[u]
        prompt = history + toks(rng.randint(20, 200))
        answer = toks(rng.randint(50, 400))
        trace.append((prompt, answer))
        if turns_left > 1:
            state[u] = (prompt + answer, turns_left - 1)
            heapq.heappush(arrivals, (now + rng.expovariate(1 / 30), u))
    return trace


def replay_radix(module, trace, capacity: int) -> int:
    """Prompt tokens served from a RadixCache of `capacity` tokens."""
    cache, hits, nxt = module.RadixCache(), 0, 0
    for prompt, answer in trace:
        hit = min(len(cache.match(prompt)), len(prompt) - 1)
        cache.lock(prompt[:hit])  # in flight: its prefix must not be evicted under it
        hits += hit
        seq = prompt + answer
        n = cache.insert(seq, list(range(nxt, nxt + len(seq))))  # values[:n] would be freed
        nxt += len(seq)
        cache.unlock(prompt[:hit])
        if cache.num_tokens > capacity:
            cache.evict(cache.num_tokens - capacity)
        assert n >= hit
    return hits


def replay_blocks(trace, capacity: int, block_size: int) -> int:
    """Prompt tokens served by vLLM-style hashing of full blocks, capacity // block_size blocks."""
    cached: OrderedDict[int, None] = OrderedDict()  # block hash -> (LRU order)
    hits = 0
    for prompt, answer in trace:
        seq = prompt + answer
        hashes, h = [], 0
        for start in range(0, len(seq) - block_size + 1, block_size):  # full blocks only
            h = hash((h, tuple(seq[start:start + block_size])))
            hashes.append(h)
        prompt_blocks = len(prompt) // block_size
        hit_blocks = 0
        while hit_blocks < prompt_blocks and hashes[hit_blocks] in cached:
            hit_blocks += 1
        hits += min(hit_blocks * block_size, len(prompt) - 1)
        for h in reversed(hashes):  # the first block ends up most recent: tails go first
            cached[h] = None
            cached.move_to_end(h)
        while len(cached) > capacity // block_size:
            cached.popitem(last=False)
    return hits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl", default="reference", help="stubs, reference (default) or a folder")
    args = parser.parse_args()
    os.environ["KATA_IMPL"] = args.impl
    from harness import load_kata_module

    module = load_kata_module("prefix_cache")
    trace = make_trace()
    total = sum(len(p) for p, _ in trace)
    print(f"implementation: {args.impl}; {len(trace)} requests, {total:,} prompt tokens "
          f"(mean {total / len(trace):.0f}), {sum(len(a) for _, a in trace):,} answer tokens")
    print(f"{'cache (capacity in tokens)':<34}{'hit rate':>9}{'prefill tokens':>16}{'fewer':>8}")
    print(f"{'none':<34}{0:>9.1%}{total:>16,}{1:>7.1f}x")
    for capacity in (1_000_000, 200_000, 50_000):
        rows = [(f"RadixCache ({capacity:,})", replay_radix(module, trace, capacity))]
        rows += [(f"full blocks of {bs} ({capacity:,})", replay_blocks(trace, capacity, bs)) for bs in (16, 64)]
        for name, hits in rows:
            print(f"{name:<34}{hits / total:>9.1%}{total - hits:>16,}{total / (total - hits):>7.1f}x")


if __name__ == "__main__":
    main()
