"""Kata 02: sampling. Turn a batch of logits into next tokens, the way a serving engine does.

Read katas/02_sampling/README.md, then replace each `raise NotImplementedError` below.
Run `pytest katas/02` to see how far you got.

Conventions for the whole module:
- logits are (B, V) float tensors; a row may contain -inf (a banned token) but always has
  at least one finite logit.
- every parameter is either a Python number (the same for all rows) or a (B,) tensor
  (one value per row): `torch.as_tensor(value)` and a reshape to (B, 1) handle both.
- ties never depend on token order: two tokens with equal logits are always treated alike.
"""
from __future__ import annotations

import torch
from torch import Tensor

Param = float | int | Tensor  # a Python number (all rows) or a (B,) tensor (one per row)


def filtered_probs(
    logits: Tensor,
    *,
    temperature: Param = 1.0,
    top_k: Param = 0,
    top_p: Param = 1.0,
    min_p: Param = 0.0,
) -> Tensor:
    """(B, V) float32 probabilities, each row summing to 1, after four filters in this order,
    each acting on the renormalised result of the one before:

    1. temperature: softmax(logits / temperature). temperature == 0 is greedy: equal mass on
       every token of maximal logit (never divide by zero).
    2. top-k: keep a token when fewer than top_k tokens are strictly more probable
       (so all tokens tied with the k-th stay). 0, or top_k >= V: no limit.
    3. top-p: keep a token when the tokens strictly more probable than it hold less than
       top_p of the mass (the token that crosses top_p stays). 1.0: no limit.
    4. min-p: keep a token whose probability is at least min_p times the row's largest.

    Removed tokens get exactly 0. The input logits are never modified.
    Raises ValueError for temperature < 0, top_k < 0, top_p outside (0, 1] or min_p
    outside [0, 1], also when the bad value is one entry of a (B,) tensor.

    Tip: compute in float32 (`logits.float()`), and write one small helper per filter.
    """
    raise NotImplementedError("Task 1: filtered_probs, temperature first (then Tasks 2-5: top-k, "
                              "top-p, min-p, per-row parameters)")


def sample(
    logits: Tensor,
    *,
    temperature: Param = 1.0,
    top_k: Param = 0,
    top_p: Param = 1.0,
    min_p: Param = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """(B,) long: one token per row, drawn from filtered_probs(logits, ...) with the given
    torch.Generator (same seed, same tokens). A row with temperature 0 returns a token of
    maximal logit. Same ValueErrors as filtered_probs.
    """
    raise NotImplementedError("Task 6: sample one token per row from filtered_probs")


def apply_repetition_penalty(logits: Tensor, prev_tokens: Tensor, penalty: Param) -> Tensor:
    """A new (B, V) tensor of logits: every token that occurs in its row of prev_tokens
    (B, L) long, padded with -1, has its logit divided by penalty when positive and
    multiplied by it when negative (both make it less likely). penalty >= 1; 1 changes
    nothing. A token seen several times is penalised once. The input is not modified.
    """
    raise NotImplementedError("Task 7: apply_repetition_penalty")
