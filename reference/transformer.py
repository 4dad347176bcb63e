"""Kata 06 reference: a LLaMA-style decoder (SmolLM2, Llama 2/3) from a Hugging Face folder.

Plain torch, written to be read: one function per idea (RMSNorm, RoPE, attention), a model
that walks the layers in a Python loop, a preallocated KV cache, and a greedy loop.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file


# ---------------------------------------------------------------------------------- Task 1
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * x / sqrt(mean(x^2) + eps) over the last dim, computed in float32 (as
    transformers' LlamaRMSNorm), rounded to x's dtype before the weight multiplies it."""
    x32 = x.to(torch.float32)
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


# ---------------------------------------------------------------------------------- Task 2
def _default_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    """theta^(-2i/D) for i = 0 .. D/2 - 1, in float64."""
    return theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)


def _llama3_inv_freq(inv_freq: torch.Tensor, factor: float, low_freq_factor: float,
                     high_freq_factor: float, old_context_len: float) -> torch.Tensor:
    """Llama 3.1's frequency scaling: waves longer than old_context_len / low_freq_factor are
    slowed down by `factor`, waves shorter than old_context_len / high_freq_factor are kept,
    and the band between blends the two linearly in old_context_len / wavelength."""
    wavelen = 2 * math.pi / inv_freq
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(medium, smoothed, scaled)


def _rope_angles(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of positions x inv_freq, float64: (S, D/2) or (B, 1, S, D/2)."""
    angles = positions.to(torch.float64)[..., None] * inv_freq.to(positions.device)
    if angles.dim() == 3:  # (B, S, D/2): one position row per batch row, broadcast over heads
        angles = angles[:, None]
    return angles.cos(), angles.sin()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the pairs (x_i, x_{i + D/2}) by the angles whose cos/sin are given."""
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(compute)
    cos, sin = cos.to(compute), sin.to(compute)
    half = x.shape[-1] // 2
    x1, x2 = xf[..., :half], xf[..., half:]
    out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    return out.to(x.dtype)


def rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary position embedding, Hugging Face's half-split layout: x (B, H, S, D),
    positions (S,) or (B, S) long. Returns a new tensor of x's dtype."""
    if x.dim() != 4 or x.shape[-1] % 2:
        raise ValueError(f"x must be (B, H, S, D) with an even D, got {tuple(x.shape)}")
    if positions.shape[-1] != x.shape[2] or positions.dim() not in (1, 2):
        raise ValueError(f"positions {tuple(positions.shape)} do not fit x {tuple(x.shape)}")
    cos, sin = _rope_angles(positions, _default_inv_freq(x.shape[-1], theta))
    return _rotate(x, cos, sin)


# ---------------------------------------------------------------------------------- Task 3
@dataclass
class TransformerConfig:
    """config.json, resolved: head_dim filled in, RoPE settings in one place."""

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
        """Read a config.json dict, as transformers 4.x or 5.x writes it."""
        hidden, heads = int(raw["hidden_size"]), int(raw["num_attention_heads"])
        max_pos = int(raw.get("max_position_embeddings", 2048))
        params = raw.get("rope_parameters")  # 5.x: one dict
        if params is None:  # 4.x: rope_theta at the top, rope_scaling beside it (or null)
            params = dict(raw.get("rope_scaling") or {})
            params.setdefault("rope_theta", raw.get("rope_theta", 10000.0))
        rope_theta = float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))
        rope_type = params.get("rope_type", params.get("type", "default"))
        if rope_type == "default":
            scaling = None
        elif rope_type == "llama3":
            scaling = {
                "rope_type": "llama3",
                "factor": float(params["factor"]),
                "low_freq_factor": float(params["low_freq_factor"]),
                "high_freq_factor": float(params["high_freq_factor"]),
                "original_max_position_embeddings": float(
                    params.get("original_max_position_embeddings", max_pos)),
            }
        else:
            raise NotImplementedError(
                f"RoPE type {rope_type!r} is not supported (only 'default' and 'llama3')")
        for key in ("attention_bias", "mlp_bias"):
            if raw.get(key):
                raise NotImplementedError(f"{key}=true: this LLaMA has no biases")
        return cls(
            vocab_size=int(raw["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(raw["intermediate_size"]),
            num_hidden_layers=int(raw["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(raw.get("num_key_value_heads") or heads),
            head_dim=int(raw.get("head_dim") or hidden // heads),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=scaling,
            max_position_embeddings=max_pos,
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        )


def _inv_freq(config: TransformerConfig) -> torch.Tensor:
    inv_freq = _default_inv_freq(config.head_dim, config.rope_theta)
    s = config.rope_scaling
    if s is not None:  # from_dict let only llama3 through
        inv_freq = _llama3_inv_freq(inv_freq, s["factor"], s["low_freq_factor"],
                                    s["high_freq_factor"], s["original_max_position_embeddings"])
    return inv_freq


def _load_weights(folder: Path) -> dict[str, torch.Tensor]:
    single = folder / "model.safetensors"
    if single.is_file():
        return load_file(str(single))
    index = folder / "model.safetensors.index.json"
    if index.is_file():  # a sharded checkpoint: name -> shard file
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        weights: dict[str, torch.Tensor] = {}
        for shard in shards:
            weights.update(load_file(str(folder / shard)))
        return weights
    raise FileNotFoundError(f"{folder} holds no model.safetensors")


# ---------------------------------------------------------------------------------- Task 5
@dataclass
class KVCache:
    """Keys and values of every layer for `batch` sequences of up to `max_len` tokens.

    k[i], v[i]: layer i, (batch, num_key_value_heads, max_len, head_dim); the first
    `length` positions hold tokens, the rest is free space.
    """

    k: list[torch.Tensor] = field(default_factory=list)
    v: list[torch.Tensor] = field(default_factory=list)
    length: int = 0

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2] if self.k else 0


# ---------------------------------------------------------------------------------- Task 4
def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal (bottom-right) GQA attention, as kata 04: q (B, Hq, Sq, D), k/v (B, Hkv, Sk, D)."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    scores = q.to(compute) @ k.to(compute).transpose(-1, -2) * q.shape[-1] ** -0.5
    Sq, Sk = q.shape[2], k.shape[2]
    i = torch.arange(Sq, device=q.device)[:, None]
    j = torch.arange(Sk, device=q.device)[None, :]
    scores = scores.masked_fill(j > i + (Sk - Sq), float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return (probs @ v.to(compute)).to(q.dtype)


class Transformer:
    """A LLaMA-family decoder. Build it with `Transformer.from_pretrained(folder)`;
    `model(input_ids, cache=None)` returns float32 logits (B, S, vocab_size)."""

    def __init__(self, config: TransformerConfig, weights: dict[str, torch.Tensor]) -> None:
        self.config = config
        self.weights = weights
        embed = weights["model.embed_tokens.weight"]
        head = weights.get("lm_head.weight", embed)
        self.lm_head = head
        self.inv_freq = _inv_freq(config).to(embed.device)
        self.dtype, self.device = embed.dtype, embed.device

    @classmethod
    def from_pretrained(cls, folder: str | Path, *, dtype: torch.dtype = torch.float32,
                        device: torch.device | str | None = None) -> Transformer:
        """Read config.json and model.safetensors (transformers' names) from `folder`."""
        folder = Path(folder)
        config = TransformerConfig.from_dict(json.loads((folder / "config.json").read_text()))
        weights = {name: t.to(device=device, dtype=dtype)
                   for name, t in _load_weights(folder).items()}
        return cls(config, weights)

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        """An empty cache for `batch` sequences of up to `max_len` tokens each."""
        c = self.config
        shape = (batch, c.num_key_value_heads, max_len, c.head_dim)
        return KVCache(k=[torch.zeros(shape, dtype=self.dtype, device=self.device)
                          for _ in range(c.num_hidden_layers)],
                       v=[torch.zeros(shape, dtype=self.dtype, device=self.device)
                          for _ in range(c.num_hidden_layers)])

    def __call__(self, input_ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Logits (B, S, vocab_size) float32 for input_ids (B, S). With a cache holding L
        tokens the new tokens sit at positions L .. L + S - 1 and the cache grows by S."""
        c, w = self.config, self.weights
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (B, S), got {tuple(input_ids.shape)}")
        B, S = input_ids.shape
        start = 0 if cache is None else cache.length
        if cache is not None:
            if start + S > cache.max_len:
                raise ValueError(f"the cache holds {start} of {cache.max_len} tokens: "
                                 f"{S} more do not fit")
            if cache.k[0].shape[0] != B:
                raise ValueError(f"the cache is for batch {cache.k[0].shape[0]}, input_ids for {B}")
        end = start + S
        positions = torch.arange(start, start + S, device=input_ids.device)
        cos, sin = _rope_angles(positions, self.inv_freq)
        Hq, Hkv, D, eps = c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.rms_norm_eps

        h = w["model.embed_tokens.weight"][input_ids]  # (B, S, hidden)
        for i in range(c.num_hidden_layers):
            p = f"model.layers.{i}."
            x = rms_norm(h, w[p + "input_layernorm.weight"], eps)
            q = (x @ w[p + "self_attn.q_proj.weight"].T).view(B, S, Hq, D).transpose(1, 2)
            k = (x @ w[p + "self_attn.k_proj.weight"].T).view(B, S, Hkv, D).transpose(1, 2)
            v = (x @ w[p + "self_attn.v_proj.weight"].T).view(B, S, Hkv, D).transpose(1, 2)
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            if cache is not None:
                cache.k[i][:, :, start:end] = k
                cache.v[i][:, :, start:end] = v
                k, v = cache.k[i][:, :, :end], cache.v[i][:, :, :end]
            attn = _attention(q, k, v).transpose(1, 2).reshape(B, S, Hq * D)
            h = h + attn @ w[p + "self_attn.o_proj.weight"].T
            x = rms_norm(h, w[p + "post_attention_layernorm.weight"], eps)
            gate = x @ w[p + "mlp.gate_proj.weight"].T
            up = x @ w[p + "mlp.up_proj.weight"].T
            h = h + (F.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T
        if cache is not None:
            cache.length = end
        h = rms_norm(h, w["model.norm.weight"], eps)
        return (h @ self.lm_head.T).to(torch.float32)


# ---------------------------------------------------------------------------------- Task 6
def generate(model: Transformer, prompt_ids: list[int], max_new_tokens: int, *,
             eos_id: int | None = None) -> list[int]:
    """Greedy decoding with a KV cache: the new tokens only, at most max_new_tokens, ending
    with eos_id (included) if the model produces it."""
    if max_new_tokens <= 0:
        return []
    if not prompt_ids:
        raise ValueError("the prompt must hold at least one token")
    device = model.weights["model.embed_tokens.weight"].device
    cache = model.new_cache(1, len(prompt_ids) + max_new_tokens)
    logits = model(torch.tensor([prompt_ids], dtype=torch.long, device=device), cache)
    out: list[int] = []
    while True:
        token = int(logits[0, -1].argmax())
        out.append(token)
        if token == eos_id or len(out) == max_new_tokens:
            return out
        logits = model(torch.tensor([[token]], dtype=torch.long, device=device), cache)
