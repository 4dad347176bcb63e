"""The README's fragmentation figures: how many sequences fit in one KV-cache budget when
each reserves a contiguous max-length region, its own prompt + max_new_tokens, or only
the blocks it fills (paged). Seeded; numpy only.

    python katas/07_paged_allocator/fragmentation.py
"""
from __future__ import annotations

import numpy as np

KV_BYTES_PER_TOKEN = 2 * 32 * 8 * 128 * 2  # LLaMA-3-8B, bf16: K and V, 32 layers, 8 KV heads, D 128
BUDGET_BYTES = 40 * 2**30  # KV memory left on an 80 GB GPU after 16 GB of weights and activations
MAX_LEN = 4096  # the context limit a contiguous cache reserves for every sequence
MAX_NEW = 1024  # the output limit a request declares


def lengths(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Chat-like prompt and output lengths: log-normal, median prompt ~400, output ~200."""
    rng = np.random.default_rng(seed)
    prompt = np.clip(rng.lognormal(np.log(400), 0.9, n), 8, MAX_LEN - MAX_NEW).astype(int)
    output = np.clip(rng.lognormal(np.log(200), 0.8, n), 1, MAX_NEW).astype(int)
    return prompt, output


def fits(cost: np.ndarray, budget_tokens: int) -> int:
    """How many sequences, taken in order, fit in the budget."""
    return int(np.searchsorted(np.cumsum(cost), budget_tokens, side="right"))


def main() -> None:
    budget = BUDGET_BYTES // KV_BYTES_PER_TOKEN
    prompt, output = lengths(100_000)
    used = prompt + output  # tokens a finished sequence actually holds
    print(f"KV budget: {BUDGET_BYTES / 2**30:.0f} GiB = {budget:,} tokens at "
          f"{KV_BYTES_PER_TOKEN // 1024} KiB/token; mean tokens held per sequence {used.mean():.0f}, "
          f"median {np.median(used):.0f}, p99 {np.percentile(used, 99):.0f}")
    print(f"{'policy':<40}{'sequences':>10}{'of the budget holding tokens':>32}")
    rows = [(f"contiguous, max length {MAX_LEN}", np.full_like(used, MAX_LEN)),
            (f"contiguous, prompt + max_new ({MAX_NEW})", prompt + MAX_NEW)]
    rows += [(f"paged, block_size {bs}", -(-used // bs) * bs) for bs in (16, 32, 128)]
    for name, cost in rows:
        n = fits(cost, budget)
        print(f"{name:<40}{n:>10,}{used[:n].sum() / cost[:n].sum():>31.1%}")


if __name__ == "__main__":
    main()
