"""Kata 06: a LLaMA-style decoder (SmolLM2, Llama 2/3) from a Hugging Face folder. Read
katas/06_transformer/README.md, then fill in the functions. Run `pytest katas/06` to see how
far you got.

Shapes: B batch, S new tokens, L tokens already in the cache, Hq query heads, Hkv key/value
heads, D head_dim, h hidden_size, I intermediate_size, V vocab_size.

Allowed imports: the standard library, torch, safetensors (no transformers: the tests use
it as the oracle). Write any helpers you like; the tests call only the names below.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


# ---------------------------------------------------------------------------------- Task 1
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim, as transformers' LlamaRMSNorm:

        x32 = x in float32
        weight * (x32 / sqrt(mean(x32^2) + eps)).to(x.dtype)

    x (..., h), weight (h,). Returns a new tensor; x and weight stay unchanged. Task 1.
    """
    raise NotImplementedError("Task 1: RMSNorm in float32, rounded to x's dtype, times weight")


# ---------------------------------------------------------------------------------- Task 2
def rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary position embedding in Hugging Face's layout: dim i is paired with dim i + D/2
    and the pair is rotated by the angle position * theta^(-2i/D), i = 0 .. D/2 - 1.

    x (B, H, S, D); positions (S,) (the same for every row) or (B, S) long. Returns a new
    tensor of x's dtype (computed in float32, or float64 for float64 x). Task 2.
    """
    raise NotImplementedError("Task 2: rotate the pairs (i, i + D/2) by position * theta^(-2i/D)")


# ---------------------------------------------------------------------------------- Task 3
@dataclass
class TransformerConfig:
    """config.json, resolved: head_dim filled in, the RoPE settings in one place.

    rope_scaling is None (no scaling) or a dict {"rope_type": "llama3", "factor": ...,
    "low_freq_factor": ..., "high_freq_factor": ..., "original_max_position_embeddings": ...}.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # None, or {"rope_type": "llama3", ...}
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TransformerConfig:
        """Read a config.json dict, as transformers 4.x writes it (rope_theta and rope_scaling,
        whose type is under "rope_type" or the legacy "type") or 5.x (one rope_parameters
        dict with rope_theta and rope_type). head_dim missing or null: hidden_size //
        num_attention_heads. RoPE type "default" (or none): rope_scaling None; "llama3": its
        four numbers, original_max_position_embeddings falling back to
        max_position_embeddings; anything else: NotImplementedError naming the type. Task 3.
        """
        raise NotImplementedError("Task 3: read config.json (4.x and 5.x RoPE styles)")


# ---------------------------------------------------------------------------------- Task 5
@dataclass
class KVCache:
    """Keys and values of every layer for `batch` sequences of up to `max_len` tokens.

    k[i], v[i]: layer i, (batch, Hkv, max_len, D), allocated once by Transformer.new_cache;
    the first `length` positions hold the tokens seen so far, the rest is free space.
    """

    k: list[torch.Tensor] = field(default_factory=list)
    v: list[torch.Tensor] = field(default_factory=list)
    length: int = 0

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2] if self.k else 0


# ------------------------------------------------------------------------------ Tasks 3-5
class Transformer:
    """A LLaMA-family decoder. Build it with `Transformer.from_pretrained(folder)`;
    `model(input_ids, cache=None)` returns float32 logits (B, S, V)."""

    def __init__(self, config: TransformerConfig, weights: dict[str, torch.Tensor]) -> None:
        """Keep the config (as self.config) and the weights (transformers' tensor names);
        pick the output head (lm_head.weight if present, else the embedding) and the RoPE
        frequencies (llama3 scaling applied). Task 3.
        """
        raise NotImplementedError("Task 3: keep the config and weights, pick the head and RoPE frequencies")

    @classmethod
    def from_pretrained(cls, folder: str | Path, *, dtype: torch.dtype = torch.float32,
                        device: torch.device | str | None = None) -> Transformer:
        """Read folder/config.json (TransformerConfig.from_dict) and folder/model.safetensors
        (safetensors.torch.load_file), cast every tensor to dtype and move it to device. Task 3.
        """
        raise NotImplementedError("Task 3: load config.json and model.safetensors")

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        """An empty cache (length 0) for `batch` sequences of up to `max_len` tokens, in the
        weights' dtype and device. Task 5.
        """
        raise NotImplementedError("Task 5: allocate the per-layer K and V tensors")

    def __call__(self, input_ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Logits (B, S, V) float32 for input_ids (B, S) long.

        Without a cache (Task 4): positions 0 .. S-1, causal attention.
        With a cache holding L tokens (Task 5): positions L .. L+S-1; each new token attends
        to the L cached tokens and to the new ones up to itself; the new K/V are written at
        L .. L+S-1 and cache.length becomes L + S. L + S > max_len: ValueError, and the cache
        is left as it was.
        """
        raise NotImplementedError("Task 4: embed, run every layer, final norm, output head")


# ---------------------------------------------------------------------------------- Task 6
def generate(model: Transformer, prompt_ids: list[int], max_new_tokens: int, *,
             eos_id: int | None = None) -> list[int]:
    """Greedy decoding with a KV cache: prefill the prompt once, then feed one token at a
    time. Returns the new tokens only (Python ints): at most max_new_tokens, stopping right
    after eos_id (which is included). max_new_tokens == 0 gives []. Task 6.
    """
    raise NotImplementedError("Task 6: prefill, then argmax one token at a time with the cache")
