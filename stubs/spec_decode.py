"""Kata 13: speculative decoding. A cheap draft model proposes k tokens, the target model
checks them all in one forward pass, and a rejection-sampling rule keeps the output
distributed exactly as if the target had sampled every token itself.

Read katas/13_spec_decode/README.md, then replace each `raise NotImplementedError` below.
Run `pytest katas/13` to see how far you got.

Shapes: B sequences, k drafted tokens each, vocabulary V.
- draft_tokens (B, k) integer: the draft's proposals x_0 .. x_{k-1}, sampled from draft_probs.
- draft_probs  (B, k, V): q_i, the draft's distribution that x_i was sampled from.
- target_probs (B, k + 1, V): p_i, the target's distribution at the same positions, plus
  p_k, the one after all k drafts (for the bonus token).
- Results: tokens (B, k + 1) long, the emitted tokens followed by -1 padding, and
  num_accepted (B,) long. Row b emits num_accepted[b] + 1 tokens.
Probabilities may be float32, float64, float16 or bfloat16 (compute in float32, float64 in
float64). Inputs are never modified.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

# model(tokens) -> (len(tokens), V): row i is the next-token distribution after tokens[: i + 1]
Model = Callable[[list[int]], Tensor]


def greedy_verify(draft_tokens: Tensor, target_probs: Tensor) -> tuple[Tensor, Tensor]:
    """Temperature 0. Accept x_i while it is a token of maximal p_i (a tie with the maximum
    counts as a match); at the first miss, or after all k, emit a token of maximal p at that
    position. Returns (tokens (B, k + 1) long, -1 after the last emitted token;
    num_accepted (B,) long). ValueError for shapes that do not fit (B, k) and (B, k + 1, V).
    """
    raise NotImplementedError("Task 1: greedy_verify, accept while the draft is the target's "
                              "argmax, then emit the target's argmax")


def rejection_sample(draft_tokens: Tensor, draft_probs: Tensor, target_probs: Tensor,
                     generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Accept draft token i with probability min(1, p_i(x_i) / q_i(x_i)); at the first
    rejection emit one token from normalize(max(0, p_i - q_i)) and stop; if all k are
    accepted emit a bonus token from p_k. Every random draw comes from `generator` (a
    torch.Generator on the probabilities' device; None: torch's default one).

    Returns (tokens (B, k + 1) long, padded with -1 after the last emitted token;
    num_accepted (B,) long, the number of accepted draft tokens). Every row's emitted tokens
    are distributed exactly as sampling them from the target would give.
    ValueError for shapes that do not fit (B, k), (B, k, V) and (B, k + 1, V). k may be 0.

    Task 5 (GPU): no Python loop over the batch, and read only what the math needs.
    """
    raise NotImplementedError("Task 2: rejection_sample, the acceptance rule (then Task 3: "
                              "the token from the residual, or the bonus token)")


def speculative_generate(target: Model, draft: Model, prompt: Sequence[int], *, k: int,
                         max_new_tokens: int, generator: torch.Generator | None = None) -> list[int]:
    """The draft/verify loop. `target` and `draft` are callables: model(tokens) takes a list of
    ints and returns a (len(tokens), V) tensor whose row i is the next-token distribution
    after tokens[: i + 1]. Each round: draft up to k tokens one by one (sampled from the
    draft with `generator`), call target once on everything so far plus the drafts, and
    keep what rejection_sample emits.

    Returns exactly max_new_tokens new tokens (the prompt not included), distributed exactly
    as sampling them from `target` alone. ValueError for an empty prompt, k < 1 or
    max_new_tokens < 0. The prompt is not modified.
    """
    raise NotImplementedError("Task 4: speculative_generate, the draft/verify loop")
