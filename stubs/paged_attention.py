"""Kata 08: paged attention. Read katas/08_paged_attention/README.md, then fill in the functions.

The KV cache is a pool of blocks, k_cache and v_cache (num_blocks, block_size, Hkv, D). Token t
of sequence b lives in block block_tables[b, t // block_size] at offset t % block_size (its
slot is block * block_size + offset, as kata 07's `slot`). Decode attention reads each
sequence's K/V through its block table. Run `pytest katas/08` to see how far you got.

On a machine without a GPU, your Triton kernels (Tasks 3 and 4) run under the Triton
interpreter: cast every value to float32 right after `tl.load` (the interpreter computes
garbage with bf16/fp16 arithmetic), and cast back only in `tl.store`.
"""
from __future__ import annotations

import torch
import triton  # noqa: F401  (Tasks 3 and 4)
import triton.language as tl  # noqa: F401  (Tasks 3 and 4)


def write_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Store the K/V of N new tokens in the cache, in place.

    Args:
        k_cache, v_cache: (num_blocks, block_size, Hkv, D), any float dtype.
        k, v: (N, Hkv, D): token i's keys and values, cast to the cache's dtype when stored.
        slot_mapping: (N,) long. Token i goes to slot slot_mapping[i], i.e. block
            slot // block_size, offset slot % block_size. Slots are distinct, except -1,
            which means "no token" (padding): skip it.

    Every slot not written keeps its value; k, v and slot_mapping are left unmodified.

    Task 1.
    """
    raise NotImplementedError("Task 1: write each token's k/v at its slot (skip slot -1), in place")


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    block_tables: torch.Tensor, seq_lens: torch.Tensor, *,
                    scale: float | None = None) -> torch.Tensor:
    """One decode query per sequence, attending to all of its cached tokens. Plain torch.

    Args:
        q: (B, Hq, D): the new token's query of every sequence.
        k_cache, v_cache: (num_blocks, block_size, Hkv, D), Hq % Hkv == 0.
        block_tables: (B, max_blocks) int32. Entries past sequence b's
            ceil(seq_lens[b] / block_size) blocks are arbitrary: never read them.
        seq_lens: (B,) int32: how many cached tokens sequence b has (0 allowed).
        scale: multiplies q . k; None means D ** -0.5.

    Returns:
        (B, Hq, D) in q's dtype: softmax(q k^T * scale) v over the seq_lens[b] tokens of
        sequence b, query head h reading kv head h // (Hq // Hkv). Length 0 gives zeros.
        Half precision is computed in float32, float64 in float64.

    Task 2.
    """
    raise NotImplementedError("Task 2: gather each sequence's K/V through its block table and attend")


def paged_attention_triton(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, seq_lens: torch.Tensor, *,
                           scale: float | None = None,
                           num_splits: int | None = None) -> torch.Tensor:
    """`paged_attention` as a Triton kernel with split-KV (flash decoding).

    Each sequence's keys are split into num_splits parts, each handled by its own program,
    which leaves a partial (out, lse); a second step merges the partials with kata 03's rule.
    num_splits=None: your launcher chooses (from B, Hkv, the length, the GPU's SM count).
    Any positive num_splits gives the same result (within the dtype's tolerance);
    num_splits < 1 raises ValueError. fp16, bf16 and fp32 caches, fp32 accumulation.

    Task 3: one split (num_splits=1): one program per (sequence, kv head), all query heads of
    that kv head at once. Task 4: several splits and the merge.
    """
    raise NotImplementedError("Task 3: a Triton kernel reading K/V through the block table "
                              "(Task 4: split-KV and the merge)")
