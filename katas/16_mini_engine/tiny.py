"""Kata 16's test model and its oracle.

`build_tiny_model(folder)` writes a tiny LLaMA (2 layers, hidden 64, 4 query and 2 KV
heads, a 256-token context) with seeded random weights, through transformers'
save_pretrained, and a tiny byte-level BPE tokenizer (vocabulary ~370, trained here on a few
sentences, SmolLM2's special tokens and ChatML template). The weights are drawn with a larger
spread than an untrained model's (std 0.2), so that greedy decoding has clear winners: over
400 greedy steps the smallest gap between the two best logits was 2e-4, against float32
errors near 1e-6.

`ensure_tiny_model()` builds it once into .kata_models/ (ignored by git) and reuses it: the
model's files are a pure function of this file's settings.

`TorchOracle(folder)` is the same LLaMA written out in float64 torch (about 40 lines, nothing
shared with any engine): the expected logits and greedy continuations of the fast checks,
without transformers' model import (seconds per run). `Oracle(folder)` is transformers'
LlamaForCausalLM in float64 (the SmolLM2 checks, and one check that the two oracles agree).
`check_greedy` accepts a different token only at a genuine near-tie (top-2 logit gap within
`tol` in float64).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! How are you today?",
    "A paged KV cache stores keys and values in blocks of sixteen tokens.",
    "Continuous batching keeps the GPU busy: a finished request leaves, a new one joins.",
    "Prefix caching reuses the blocks of a shared system prompt.",
    "Stop sequences end a completion; max_tokens bounds it.",
]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2 as in SmolLM2
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")
EOS_ID = 2
CONTEXT = 256
VERSION = "kata16-tiny-v1"  # change it with any setting above: the cached folder is rebuilt
CACHE = Path(__file__).resolve().parents[2] / ".kata_models"


def build_tokenizer(folder: str | Path) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=384, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>",
                                   eos_token="<|im_end|>", unk_token="<|endoftext|>",
                                   pad_token="<|im_end|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(folder))
    return fast


def build_tiny_model(folder: str | Path, seed: int = 0) -> Path:
    """A seeded random tiny LLaMA and its tokenizer in `folder` (created)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(folder)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=CONTEXT,
        rope_theta=10000.0, tie_word_embeddings=False, initializer_range=0.2, rms_norm_eps=1e-6,
        bos_token_id=1, eos_token_id=EOS_ID, pad_token_id=EOS_ID)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # RMSNorm weights start at 1: give them some spread too
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
    model.save_pretrained(str(folder))
    return folder


def ensure_tiny_model(cache: Path = CACHE) -> Path:
    """The tiny model folder, built once (atomically: concurrent runs are safe)."""
    folder = cache / VERSION
    if (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file():
        return folder
    cache.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{VERSION}-", dir=cache))
    try:
        build_tiny_model(scratch)
        try:
            scratch.rename(folder)
        except OSError:  # another run finished first: keep theirs
            pass
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
    return folder


class _Checks:
    """Greedy-output checks shared by both oracles (they provide logits and greedy)."""

    def near_tie(self, prefix: list[int], token: int, tol: float) -> float:
        """How far below the best logit `token` is after prefix (0 for an argmax)."""
        lg = self.logits(prefix)  # type: ignore[attr-defined]
        return float(lg.max() - lg[token])

    def check_greedy(self, got: list[int], prompt: list[int], *, n: int | None = None,
                     what: str = "greedy output", tol: float = 1e-3) -> int | None:
        """Fail unless `got` is the greedy continuation of prompt, allowing a different token
        only where the two best float64 logits are within `tol` (a genuine near-tie, where
        float32 sums in another order may pick either); after such a step the outputs may
        differ. Returns the step of an accepted near-tie, or None."""
        __tracebackhide__ = True
        if n is not None:
            assert len(got) == n, (f"{what}: expected {n} tokens (max_tokens), got {len(got)}: {got}; "
                                   f"prompt of {len(prompt)} tokens")
        expected = self.greedy(prompt, len(got))  # type: ignore[attr-defined]
        for i, (a, b) in enumerate(zip(got, expected)):
            if a != b:
                gap = self.near_tie(prompt + got[:i], a, tol)
                assert gap <= tol, (
                    f"{what}: token {i} is {a} but greedy decoding gives {b}, and {a}'s logit is "
                    f"{gap:.3g} below the best one (float64), more than a float32 near-tie ({tol}). "
                    f"Prompt ({len(prompt)} tokens): {prompt}; got {got}; expected {expected}")
                return i
        return None

    def check_agree(self, a: list[int], b: list[int], prompt: list[int], *, what: str,
                    tol: float = 1e-3) -> None:
        """Two greedy outputs of the same prompt agree up to their first genuine near-tie."""
        __tracebackhide__ = True
        assert len(a) == len(b), f"{what}: {len(a)} tokens against {len(b)}: {a} vs {b}"
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                gaps = [self.near_tie(prompt + a[:i], t, tol) for t in (x, y)]
                assert max(gaps) <= tol, (
                    f"{what}: token {i} is {x} against {y}, and the logits (float64) are "
                    f"{gaps[0]:.3g} and {gaps[1]:.3g} below the best: not a near-tie (<= {tol}). "
                    f"Prompt ({len(prompt)} tokens): {prompt}; {a} vs {b}")
                return


class TorchOracle(_Checks):
    """The LLaMA forward pass in float64 torch, straight from the folder's files."""

    def __init__(self, folder: str | Path) -> None:
        from safetensors.torch import load_file

        cfg = json.loads((Path(folder) / "config.json").read_text())
        self.w = {k: v.to(torch.float64) for k, v in load_file(str(Path(folder) / "model.safetensors")).items()}
        self.w.setdefault("lm_head.weight", self.w["model.embed_tokens.weight"])
        self.layers, self.eps = cfg["num_hidden_layers"], cfg["rms_norm_eps"]
        self.hq, self.hkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        self.d = cfg.get("head_dim") or cfg["hidden_size"] // self.hq
        rope = cfg.get("rope_parameters") or {}
        self.theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
        self._greedy: dict[tuple[int, ...], list[int]] = {}

    def _norm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def _rope(self, x: torch.Tensor) -> torch.Tensor:  # x (H, S, D): positions 0..S-1
        S, D = x.shape[1], self.d
        inv = self.theta ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
        ang = torch.arange(S, dtype=torch.float64)[:, None] * inv
        cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
        rotated = torch.cat([-x[..., D // 2:], x[..., :D // 2]], -1)
        return x * cos + rotated * sin

    def logits_all(self, ids: list[int]) -> torch.Tensor:
        """(len(ids), V) float64: the logits after each token."""
        w, S, D = self.w, len(ids), self.d
        x = w["model.embed_tokens.weight"][torch.tensor(ids)]
        causal = torch.ones(S, S, dtype=torch.bool).tril()
        for i in range(self.layers):
            p = f"model.layers.{i}."
            h = self._norm(x, w[p + "input_layernorm.weight"])
            q = self._rope((h @ w[p + "self_attn.q_proj.weight"].T).view(S, self.hq, D).transpose(0, 1))
            k = self._rope((h @ w[p + "self_attn.k_proj.weight"].T).view(S, self.hkv, D).transpose(0, 1))
            v = (h @ w[p + "self_attn.v_proj.weight"].T).view(S, self.hkv, D).transpose(0, 1)
            k, v = (t.repeat_interleave(self.hq // self.hkv, dim=0) for t in (k, v))
            scores = (q @ k.transpose(1, 2)) / D ** 0.5
            attn = scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v  # (Hq, S, D)
            x = x + attn.transpose(0, 1).reshape(S, self.hq * D) @ w[p + "self_attn.o_proj.weight"].T
            h = self._norm(x, w[p + "post_attention_layernorm.weight"])
            gate, up = h @ w[p + "mlp.gate_proj.weight"].T, h @ w[p + "mlp.up_proj.weight"].T
            x = x + (torch.nn.functional.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T
        return self._norm(x, w["model.norm.weight"]) @ w["lm_head.weight"].T

    def logits(self, ids: list[int]) -> torch.Tensor:
        return self.logits_all(ids)[-1]

    def greedy(self, prompt: list[int], n: int) -> list[int]:
        """The first n greedy tokens after prompt (no stop at eos)."""
        have = self._greedy.get(tuple(prompt), [])
        while len(have) < n:
            have = have + [int(self.logits(prompt + have).argmax())]
        self._greedy[tuple(prompt)] = have
        return have[:n]


class Oracle(_Checks):
    """transformers' LlamaForCausalLM in float64: the expected values."""

    def __init__(self, folder: str | Path) -> None:
        from transformers import LlamaForCausalLM

        self.model = LlamaForCausalLM.from_pretrained(str(folder), dtype=torch.float64).eval()
        self._greedy: dict[tuple[int, ...], list[int]] = {}

    @torch.no_grad()
    def logits_all(self, ids: list[int]) -> torch.Tensor:
        """(len(ids), V) float64: the logits after each token."""
        return self.model(torch.tensor([ids])).logits[0]

    def logits(self, ids: list[int]) -> torch.Tensor:
        """(V,) float64: the logits after the last token of ids."""
        return self.logits_all(ids)[-1]

    @torch.no_grad()
    def greedy(self, prompt: list[int], n: int) -> list[int]:
        """The first n greedy tokens after prompt (no stop at eos)."""
        key = tuple(prompt)
        have = self._greedy.get(key, [])
        if len(have) < n:
            out = self.model(torch.tensor([prompt + have]), use_cache=True)
            tokens = list(have)
            while True:
                tokens.append(int(out.logits[0, -1].argmax()))
                if len(tokens) >= n:
                    break
                out = self.model(torch.tensor([[tokens[-1]]]), cache=out.cache, use_cache=True)
            self._greedy[key] = have = tokens
        return have[:n]
