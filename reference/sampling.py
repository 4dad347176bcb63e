"""Kata 02, reference solution: temperature, top-k, top-p, min-p, repetition penalty.

Every filter is written as "find the smallest probability that survives, then keep every
token at least that probable". Keeping by value (never by position in a sorted list) is
what makes tied tokens share one fate, whatever order the vocabulary lists them in.
"""
from __future__ import annotations

import torch
from torch import Tensor

Param = float | int | Tensor  # a Python number (all rows) or a (B,) tensor (one per row)


def _per_row(value: Param, name: str, batch: int, like: Tensor) -> Tensor:
    """A parameter as a (B, 1) column in like's dtype and device, ready to broadcast."""
    col = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if col.dim() == 0:
        col = col.expand(batch)
    if col.shape != (batch,):
        raise ValueError(f"{name} must be a number or a ({batch},) tensor, got shape {tuple(col.shape)}")
    return col.reshape(batch, 1)


def _check(ok: Tensor, name: str, value: Param, rule: str) -> None:
    if not bool(ok.all()):
        raise ValueError(f"{name} must be {rule}, got {value}")


def _keep_and_renormalise(probs: Tensor, keep: Tensor) -> Tensor:
    """Zero the removed tokens exactly and rescale the survivors to sum to 1."""
    probs = torch.where(keep, probs, torch.zeros_like(probs))
    return probs / probs.sum(dim=-1, keepdim=True)


def _temperature(logits: Tensor, t: Tensor) -> Tensor:
    """softmax(logits / t) per row; t == 0 puts equal mass on the tokens of maximal logit."""
    greedy = t == 0  # (B, 1)
    z = logits / torch.where(greedy, torch.ones_like(t), t)  # (B, V)
    is_max = logits == logits.amax(dim=-1, keepdim=True)
    z = torch.where(greedy, torch.where(is_max, 0.0, float("-inf")), z)
    return torch.softmax(z, dim=-1)  # subtracts the row max: no overflow


def _top_k(probs: Tensor, k: Tensor) -> Tensor:
    """Keep p_i >= (k-th largest p): then fewer than k tokens are strictly more probable."""
    V = probs.shape[-1]
    k = torch.where((k <= 0) | (k > V), V, k).long()  # 0 or k >= V: no limit
    ordered = probs.sort(dim=-1, descending=True).values  # (B, V)
    kth = ordered.gather(-1, k - 1)  # (B, 1)
    return _keep_and_renormalise(probs, probs >= kth)


def _top_p(probs: Tensor, p: Tensor) -> Tensor:
    """Keep a token when the tokens strictly more probable hold less than p of the mass."""
    ordered = probs.sort(dim=-1, descending=True).values  # (B, V)
    cum = ordered.cumsum(dim=-1)
    before = torch.cat([torch.zeros_like(cum[:, :1]), cum[:, :-1]], dim=-1)  # mass ahead of each slot
    # The kept slots form a prefix (`before` never decreases); slot 0 is always in it.
    n_keep = (before < p).sum(dim=-1, keepdim=True)  # (B, 1), >= 1 since p > 0
    smallest_kept = ordered.gather(-1, n_keep - 1)
    # Keeping by value, not by slot, keeps the whole tie group of the crossing token.
    keep = (probs >= smallest_kept) | (p >= 1.0)  # p == 1: no limit, even if the sum rounds up
    return _keep_and_renormalise(probs, keep)


def _min_p(probs: Tensor, min_p: Tensor) -> Tensor:
    """Keep p_i >= min_p * max_j p_j."""
    return _keep_and_renormalise(probs, probs >= min_p * probs.amax(dim=-1, keepdim=True))


def filtered_probs(
    logits: Tensor,
    *,
    temperature: Param = 1.0,
    top_k: Param = 0,
    top_p: Param = 1.0,
    min_p: Param = 0.0,
) -> Tensor:
    """(B, V) float32 probabilities after temperature, top-k, top-p, min-p, in that order."""
    logits = logits.float()  # (B, V); a new tensor unless it already was float32: never written
    B = logits.shape[0]
    t = _per_row(temperature, "temperature", B, logits)
    k = _per_row(top_k, "top_k", B, torch.empty(0, dtype=torch.long, device=logits.device))
    p = _per_row(top_p, "top_p", B, logits)
    mp = _per_row(min_p, "min_p", B, logits)
    _check(t >= 0, "temperature", temperature, ">= 0")
    _check(k >= 0, "top_k", top_k, ">= 0")
    _check((p > 0) & (p <= 1), "top_p", top_p, "in (0, 1]")
    _check((mp >= 0) & (mp <= 1), "min_p", min_p, "in [0, 1]")

    probs = _temperature(logits, t)
    probs = _top_k(probs, k)
    probs = _top_p(probs, p)
    probs = _min_p(probs, mp)
    return probs


def sample(
    logits: Tensor,
    *,
    temperature: Param = 1.0,
    top_k: Param = 0,
    top_p: Param = 1.0,
    min_p: Param = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """(B,) long: one token per row drawn from filtered_probs."""
    probs = filtered_probs(logits, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    # A greedy row has all its mass on the maximal logits, so the draw is greedy too.
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def apply_repetition_penalty(logits: Tensor, prev_tokens: Tensor, penalty: Param) -> Tensor:
    """Penalise every token seen in its row's prev_tokens (B, L), padded with -1."""
    B, V = logits.shape
    pen = _per_row(penalty, "penalty", B, logits)  # (B, 1)
    _check(pen >= 1, "penalty", penalty, ">= 1")
    # Padding (-1) is sent to a spare column V that is cut off again: it never names a token.
    slots = torch.where(prev_tokens < 0, V, prev_tokens)  # (B, L)
    seen = torch.zeros(B, V + 1, dtype=torch.bool, device=logits.device)
    seen = seen.scatter(1, slots, True)[:, :V]  # (B, V); a repeat is still just "seen"
    # Dividing a positive logit and multiplying a negative one both move it toward -inf.
    penalised = torch.where(logits > 0, logits / pen, logits * pen)
    return torch.where(seen, penalised, logits)
