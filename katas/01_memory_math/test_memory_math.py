"""Kata 01: memory math. One class per README task.

Expected values never come from a formula copied from the solution: parameter counts and
KV-cache bytes are read off a real LLaMA-style torch model built on the 'meta' device
(shapes and dtypes, no memory), intensities off meta tensors of the matmul's operands,
and published parameter counts of real checkpoints are fixed examples.

The shapes drawn for the general properties are ones transformers' LlamaForCausalLM builds
(even head_dim, hidden_size a multiple of num_heads), so a solution that counts that model's
parameters passes them; the shapes transformers refuses are checked on their own
(test_structural_count_*), where the contract asks for the same structural count.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import assume, example, given
from hypothesis import strategies as st
from torch import nn

from harness import load_kata_module

mm = load_kata_module("memory_math")

# H100 SXM figures: bytes/s a copy kernel reaches, dense bf16 tensor-core FLOP/s.
H100_BYTES_PER_S = 3.0e12
H100_BF16_FLOPS = 790e12

# Exactly representable dtype sizes (int4 = 0.5, 4.5-bit = 0.5625, ...), so that every
# correct implementation, float or Fraction, computes the same rounded-up byte count.
WEIGHT_DTYPES = [0.25, 0.5, 0.5625, 1, 1.5, 2, 4]
# For the KV cache, sizes whose per-token bytes are whole (K and V give a factor 2).
KV_DTYPES = [0.5, 1, 2, 4]
# Sizes whose per-token bytes can be fractional (2-, 3- and 4.5-bit), still exact in binary.
FRACTIONAL_KV_DTYPES = [0.25, 0.375, 0.5625]


# -- An independent LLaMA-style model on the meta device ----------------------------------
class _RMSNorm(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden))


class _DecoderLayer(nn.Module):
    def __init__(self, h: int, inter: int, hq: int, hkv: int, d: int) -> None:
        super().__init__()
        self.q_proj = nn.Linear(h, hq * d, bias=False)
        self.k_proj = nn.Linear(h, hkv * d, bias=False)
        self.v_proj = nn.Linear(h, hkv * d, bias=False)
        self.o_proj = nn.Linear(hq * d, h, bias=False)
        self.gate_proj = nn.Linear(h, inter, bias=False)
        self.up_proj = nn.Linear(h, inter, bias=False)
        self.down_proj = nn.Linear(inter, h, bias=False)
        self.input_layernorm = _RMSNorm(h)
        self.post_attention_layernorm = _RMSNorm(h)


class _Llama(nn.Module):
    def __init__(self, V: int, h: int, inter: int, L: int, hq: int, hkv: int, d: int | None,
                 tie: bool) -> None:
        super().__init__()
        self.head_dim = d if d is not None else h // hq
        self.num_kv_heads = hkv
        self.embed_tokens = nn.Embedding(V, h)
        self.layers = nn.ModuleList(
            _DecoderLayer(h, inter, hq, hkv, self.head_dim) for _ in range(L))
        self.norm = _RMSNorm(h)
        self.lm_head = nn.Linear(h, V, bias=False)
        if tie:
            self.lm_head.weight = self.embed_tokens.weight  # one tensor, two uses

    def kv_cache(self, batch: int, seq_len: int) -> list[torch.Tensor]:
        """The K and V tensors every layer caches for (batch, seq_len) tokens."""
        x = torch.empty(batch, seq_len, self.embed_tokens.embedding_dim, device="meta")
        cache = []
        for layer in self.layers:
            for proj in (layer.k_proj, layer.v_proj):
                t = proj(x).view(batch, seq_len, self.num_kv_heads, self.head_dim)
                cache.append(t.transpose(1, 2))  # (B, Hkv, S, D)
        return cache


def meta_model(s: dict) -> _Llama:
    with torch.device("meta"):
        return _Llama(s["vocab_size"], s["hidden_size"], s["intermediate_size"],
                      s["num_layers"], s["num_heads"], s["num_kv_heads"], s.get("head_dim"),
                      s.get("tie_embeddings", False))


def meta_params(s: dict) -> int:
    return sum(p.numel() for p in meta_model(s).parameters())  # shared tensors once


def meta_kv_elements(s: dict, batch: int, seq_len: int) -> int:
    return sum(t.numel() for t in meta_model(s).kv_cache(batch, seq_len))


def ceil_bytes(elements: int, dtype_bytes: float) -> int:
    return math.ceil(Fraction(elements) * Fraction(dtype_bytes))


def shape(s: dict):
    return mm.ModelShape(**s)


@st.composite
def shapes(draw, max_layers: int = 3, head_dim: str = "any") -> dict:
    """LLaMA-style shapes: MHA, GQA, MQA; head_dim default or overridden; tied or not.

    Only shapes that transformers' LlamaForCausalLM builds (transformers 5 refuses a
    hidden_size that num_heads does not divide, and an odd head_dim), so that a solution
    which counts the parameters of that model passes every check drawn from here. The
    shapes it refuses have their own checks (TestTask1Params::test_structural_count_*).
    head_dim: "any", "default" (None) or "explicit"."""
    hkv = draw(st.integers(1, 8))
    hq = hkv * draw(st.sampled_from([1, 1, 2, 3, 4, 8]))
    s = dict(vocab_size=draw(st.integers(1, 130_000)),
             intermediate_size=draw(st.integers(1, 4096)),
             num_layers=draw(st.integers(1, max_layers)),
             num_heads=hq, num_kv_heads=draw(st.sampled_from([hkv, hkv, 1, hq])))
    explicit = draw(st.booleans()) if head_dim == "any" else head_dim == "explicit"
    if explicit:  # head_dim overridden (even), unrelated to hidden / heads
        s["head_dim"] = 2 * draw(st.integers(1, 96))
        s["hidden_size"] = hq * draw(st.integers(1, 1024 // hq))
    else:  # hidden_size // num_heads, even
        s["hidden_size"] = hq * 2 * draw(st.integers(1, 64))
    s["tie_embeddings"] = draw(st.booleans())
    return s


@st.composite
def shapes_any(draw) -> dict:
    """Any valid shape, also those transformers refuses: an odd head_dim, a hidden_size that
    num_heads does not divide (with or without an explicit head_dim)."""
    hkv = draw(st.integers(1, 8))
    hq = hkv * draw(st.sampled_from([1, 2, 3, 4, 8]))
    s = dict(vocab_size=draw(st.integers(1, 130_000)), intermediate_size=draw(st.integers(1, 4096)),
             num_layers=draw(st.integers(1, 3)), num_heads=hq,
             num_kv_heads=draw(st.sampled_from([hkv, 1, hq])),
             hidden_size=draw(st.integers(hq, 1024)), tie_embeddings=draw(st.booleans()))
    if draw(st.booleans()):
        s["head_dim"] = draw(st.integers(1, 192))
    return s


# Shapes transformers 5 refuses to build, and why; the structural count applies.
_SMALL = dict(vocab_size=100, intermediate_size=96, num_layers=2, num_heads=8, num_kv_heads=2)
STRUCTURAL = [
    pytest.param(dict(_SMALL, hidden_size=64, head_dim=5), "an odd head_dim (RoPE needs an even one)",
                 id="odd-head_dim=5"),
    pytest.param(dict(_SMALL, hidden_size=66, head_dim=24),
                 "hidden_size 66 is not a multiple of num_heads 8 (head_dim 24 given)",
                 id="hidden=66-heads=8-head_dim=24"),
    pytest.param(dict(_SMALL, hidden_size=70),
                 "hidden_size 70 is not a multiple of num_heads 8, so head_dim = 70 // 8 = 8 "
                 "(floor, not round(8.75) = 9)",
                 id="hidden=70-heads=8-default-head_dim"),
]


# Published configs (Hugging Face config.json) and parameter counts of real checkpoints.
LLAMA2_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_layers=32,
                 num_heads=32, num_kv_heads=32)
LLAMA3_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32,
                 num_heads=32, num_kv_heads=8)
LLAMA32_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16,
                  num_heads=32, num_kv_heads=8, head_dim=64, tie_embeddings=True)
PUBLISHED = [
    pytest.param(LLAMA2_7B, 6_738_415_616, id="llama-2-7b-MHA"),
    pytest.param(LLAMA3_8B, 8_030_261_248, id="llama-3-8b-GQA"),
    pytest.param(LLAMA32_1B, 1_235_814_400, id="llama-3.2-1b-GQA-tied"),
]

BAD_SHAPES = [
    pytest.param(dict(LLAMA3_8B, num_kv_heads=5), id="heads-not-multiple-of-kv-heads"),
    pytest.param(dict(LLAMA3_8B, num_heads=4, num_kv_heads=8), id="more-kv-heads-than-heads"),
    pytest.param(dict(LLAMA3_8B, num_kv_heads=0), id="num_kv_heads=0"),
    pytest.param(dict(LLAMA3_8B, num_kv_heads=-8), id="num_kv_heads<0"),
    pytest.param(dict(LLAMA3_8B, num_heads=0), id="num_heads=0"),
    pytest.param(dict(LLAMA3_8B, num_heads=-8), id="num_heads<0"),
    pytest.param(dict(LLAMA3_8B, vocab_size=0), id="vocab_size=0"),
    pytest.param(dict(LLAMA3_8B, vocab_size=-1), id="vocab_size<0"),
    pytest.param(dict(LLAMA3_8B, hidden_size=0), id="hidden_size=0"),
    pytest.param(dict(LLAMA3_8B, hidden_size=-4096), id="hidden_size<0"),
    pytest.param(dict(LLAMA3_8B, intermediate_size=0), id="intermediate_size=0"),
    pytest.param(dict(LLAMA3_8B, intermediate_size=-14336), id="intermediate_size<0"),
    pytest.param(dict(LLAMA3_8B, num_layers=0), id="num_layers=0"),
    pytest.param(dict(LLAMA3_8B, num_layers=-1), id="num_layers<0"),
    pytest.param(dict(LLAMA3_8B, head_dim=0), id="head_dim=0"),
    pytest.param(dict(LLAMA3_8B, head_dim=-128), id="head_dim<0"),
]
# The sizes a KV cache depends on: kv_cache_bytes must reject these shapes too.
KV_BAD_SHAPES = [p for p in BAD_SHAPES if p.id in (
    "heads-not-multiple-of-kv-heads", "more-kv-heads-than-heads", "num_kv_heads=0",
    "num_kv_heads<0", "num_heads=0", "num_layers=0", "num_layers<0", "head_dim=0", "head_dim<0")]


def _expect_value_error(fn, s: dict, *args) -> None:
    """The ValueError may come from ModelShape(...) itself or from the function."""
    with pytest.raises(ValueError):
        fn(mm.ModelShape(**s), *args)
        pytest.fail(f"{fn.__name__}: no ValueError for the impossible shape {s}")


class TestTask1Params:
    def test_param_count_is_int(self):
        n = mm.param_count(mm.ModelShape(32000, 4096, 11008, 32, 32, 32))
        assert isinstance(n, int) and not isinstance(n, bool), \
            f"param_count must return a Python int, got {type(n).__name__} {n!r}"

    @pytest.mark.parametrize("bad", BAD_SHAPES)
    def test_impossible_shape_raises(self, bad):
        _expect_value_error(mm.param_count, bad)

    @pytest.mark.parametrize("config, published", PUBLISHED)
    def test_published_models(self, config, published):
        assert meta_params(config) == published, "the test's own meta model disagrees with the published count"
        positional = [config[k] for k in ("vocab_size", "hidden_size", "intermediate_size",
                                          "num_layers", "num_heads", "num_kv_heads")]
        got = mm.param_count(mm.ModelShape(*positional, config.get("head_dim"),
                                           config.get("tie_embeddings", False)))
        assert got == published, (
            f"param_count({config}) = {got:,}, the published count is {published:,} "
            f"(off by {got - published:+,}). Check each tensor: embedding, q/k/v/o (k and v "
            f"have num_kv_heads * head_dim outputs), gate/up/down, two RMSNorm weights per "
            f"layer, the final norm, lm_head (once when tied)")

    @given(s=shapes())
    @example(s=dict(vocab_size=100, hidden_size=64, intermediate_size=96, num_layers=2,
                    num_heads=8, num_kv_heads=1, head_dim=24, tie_embeddings=False))
    @example(s=dict(vocab_size=100, hidden_size=64, intermediate_size=96, num_layers=2,
                    num_heads=8, num_kv_heads=2, head_dim=None, tie_embeddings=True))
    def test_matches_meta_model(self, s):
        expected = meta_params(s)
        got = mm.param_count(shape(s))
        assert got == expected, (
            f"param_count = {got:,}, but a LLaMA model of this shape has {expected:,} "
            f"parameters (off by {got - expected:+,}); shape {s}")

    @pytest.mark.parametrize("config, why", STRUCTURAL, ids=[p.id for p in STRUCTURAL])
    def test_structural_count_where_transformers_refuses(self, config, why):
        """transformers 5 refuses to build these shapes (an odd head_dim; a hidden_size that
        num_heads does not divide). The contract: param_count is then the same structural
        count, tensor by tensor as in the README's table, with head_dim = hidden_size //
        num_heads (floor) when it is not given."""
        expected = meta_params(config)
        got = mm.param_count(shape(config))
        assert got == expected, (
            f"param_count = {got:,}, but the structural count (README table: embedding, q/k/v/o, "
            f"gate/up/down, norms, lm_head) is {expected:,} (off by {got - expected:+,}) for "
            f"{config}: {why}. transformers refuses to build this shape; the contract says the "
            f"count is then the same structural count (docs/CONTRACT.md, memory_math)")

    @given(s=shapes_any())
    def test_structural_count_any_shape(self, s):
        """Shapes of every kind, including those transformers refuses (odd head_dim, hidden_size
        not a multiple of num_heads): the structural count applies to all of them."""
        expected = meta_params(s)
        got = mm.param_count(shape(s))
        assert got == expected, (
            f"param_count = {got:,}, but the structural count (README table) is {expected:,} "
            f"(off by {got - expected:+,}); shape {s}. transformers refuses some of these shapes "
            f"(odd head_dim, hidden_size not a multiple of num_heads); the count is then the "
            f"same structural count, with head_dim = hidden_size // num_heads when not given")

    @given(s=shapes())
    def test_tied_saves_exactly_lm_head(self, s):
        untied = mm.param_count(shape(dict(s, tie_embeddings=False)))
        tied = mm.param_count(shape(dict(s, tie_embeddings=True)))
        assert untied - tied == s["vocab_size"] * s["hidden_size"], (
            f"tying the embeddings must save exactly one vocab x hidden matrix "
            f"({s['vocab_size'] * s['hidden_size']:,}); it saved {untied - tied:,}; shape {s}")

    @given(s=shapes(head_dim="default"))
    def test_default_head_dim_equals_explicit(self, s):
        explicit = dict(s, head_dim=s["hidden_size"] // s["num_heads"])
        default, given_ = mm.param_count(shape(s)), mm.param_count(shape(explicit))
        assert default == given_, (
            f"head_dim=None must mean hidden_size // num_heads = {explicit['head_dim']}: "
            f"param_count gave {default:,} with head_dim=None and {given_:,} with head_dim="
            f"{explicit['head_dim']}; shape {s}")

    @given(s=shapes(), field=st.sampled_from(
        ["vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_kv_heads"]))
    def test_monotone_in_every_size(self, s, field):
        if field == "num_kv_heads":  # head_dim fixed; num_heads stays a multiple
            assume(s["num_heads"] > 1)
            s = dict(s, head_dim=s.get("head_dim") or s["hidden_size"] // s["num_heads"])
            if s["num_kv_heads"] < s["num_heads"]:
                bigger = dict(s, num_kv_heads=s["num_heads"])  # GQA/MQA -> MHA
            else:
                bigger, s = s, dict(s, num_kv_heads=1)  # MQA -> MHA
        elif field == "hidden_size":  # still a multiple of num_heads, head_dim still even
            bigger = dict(s, hidden_size=s["hidden_size"] + 2 * s["num_heads"])
        else:
            bigger = dict(s, **{field: s[field] + 1})
        small, large = mm.param_count(shape(s)), mm.param_count(shape(bigger))
        assert large > small, (
            f"growing {field} must add parameters: {small:,} -> {large:,}; from {s} to {bigger}")

    def test_weight_bytes_default_bf16(self):
        got = mm.weight_bytes(mm.ModelShape(**LLAMA3_8B))
        assert isinstance(got, int) and not isinstance(got, bool), \
            f"weight_bytes must return a Python int, got {type(got).__name__} {got!r}"
        assert got == 2 * 8_030_261_248, \
            f"Llama-3-8B in bf16 (the default, 2 bytes) is {2 * 8_030_261_248:,} bytes, got {got:,}"

    @given(s=shapes(), dtype_bytes=st.sampled_from(WEIGHT_DTYPES))
    @example(s=dict(vocab_size=3, hidden_size=3, intermediate_size=3, num_layers=1,
                    num_heads=1, num_kv_heads=1, head_dim=None, tie_embeddings=True),
             dtype_bytes=0.5)  # 81 parameters: int4 needs a half byte more
    def test_weight_bytes_rounds_up(self, s, dtype_bytes):
        params = meta_params(s)
        expected = ceil_bytes(params, dtype_bytes)
        got = mm.weight_bytes(shape(s), dtype_bytes)
        assert isinstance(got, int) and not isinstance(got, bool), \
            f"weight_bytes must return a Python int, got {type(got).__name__} {got!r}"
        assert got == expected, (
            f"weight_bytes(dtype_bytes={dtype_bytes}) = {got:,}, expected "
            f"ceil({params:,} x {dtype_bytes}) = {expected:,}: a partly used byte is still "
            f"a byte, round up; shape {s}")

    def test_weight_bytes_int4_odd_count(self):
        s = dict(vocab_size=7, hidden_size=3, intermediate_size=5, num_layers=1, num_heads=1,
                 num_kv_heads=1, tie_embeddings=True)
        params = meta_params(s)
        assert params % 2 == 1, f"test setup: expected an odd parameter count, got {params}"
        got = mm.weight_bytes(shape(s), 0.5)
        assert got == (params + 1) // 2, (
            f"{params} int4 weights take {(params + 1) // 2} bytes (round up), got {got}")


class TestTask2KVCache:
    def test_returns_int(self):
        got = mm.kv_cache_bytes(mm.ModelShape(**LLAMA3_8B), 1, 1)
        assert isinstance(got, int) and not isinstance(got, bool), \
            f"kv_cache_bytes must return a Python int, got {type(got).__name__} {got!r}"

    @pytest.mark.parametrize("bad", KV_BAD_SHAPES)
    def test_impossible_shape_raises(self, bad):
        _expect_value_error(mm.kv_cache_bytes, bad, 1, 16)

    @pytest.mark.parametrize("config, per_token", [
        pytest.param(LLAMA2_7B, 524_288, id="llama-2-7b-MHA-512KiB"),
        pytest.param(LLAMA3_8B, 131_072, id="llama-3-8b-GQA-128KiB"),
        pytest.param(LLAMA32_1B, 32_768, id="llama-3.2-1b-GQA-32KiB"),
    ])
    def test_published_models_per_token(self, config, per_token):
        assert 2 * meta_kv_elements(config, 1, 1) == per_token, "test setup: the meta model's KV size disagrees"
        got = mm.kv_cache_bytes(mm.ModelShape(**config), 1, 1)
        assert got == per_token, (
            f"one bf16 token of KV cache for {config} is 2 (K,V) x layers x kv_heads x "
            f"head_dim x 2 bytes = {per_token:,}, got {got:,}")
        got = mm.kv_cache_bytes(mm.ModelShape(**config), 8, 4096)
        assert got == per_token * 8 * 4096, (
            f"8 sequences x 4096 tokens: expected {per_token * 8 * 4096:,} bytes, got {got:,}")

    @given(s=shapes(), batch=st.integers(1, 64), seq_len=st.integers(1, 4096),
           dtype_bytes=st.sampled_from(KV_DTYPES))
    @example(s=dict(vocab_size=10, hidden_size=64, intermediate_size=8, num_layers=3,
                    num_heads=8, num_kv_heads=2, head_dim=40, tie_embeddings=False),
             batch=3, seq_len=5, dtype_bytes=2)
    @example(s=dict(vocab_size=10, hidden_size=64, intermediate_size=8, num_layers=2,
                    num_heads=8, num_kv_heads=1, head_dim=None, tie_embeddings=False),
             batch=2, seq_len=7, dtype_bytes=0.5)
    def test_matches_meta_cache(self, s, batch, seq_len, dtype_bytes):
        elements = meta_kv_elements(s, batch, seq_len)
        expected = ceil_bytes(elements, dtype_bytes)
        got = mm.kv_cache_bytes(shape(s), batch, seq_len, dtype_bytes)
        assert isinstance(got, int) and not isinstance(got, bool), (
            f"kv_cache_bytes(dtype_bytes={dtype_bytes}) must return a Python int (bytes), got "
            f"{type(got).__name__} {got!r}: round up with math.ceil")
        assert got == expected, (
            f"kv_cache_bytes(batch={batch}, seq_len={seq_len}, dtype_bytes={dtype_bytes}) = "
            f"{got:,}; the model's K and V tensors hold {elements:,} values = {expected:,} "
            f"bytes (ratio {got / expected:.4g}); shape {s}. Per token and layer: K and V, "
            f"each num_kv_heads x head_dim")

    @given(s=shapes(), batch=st.integers(1, 16), seq_len=st.integers(1, 2048),
           dtype_bytes=st.sampled_from(FRACTIONAL_KV_DTYPES))
    @example(s=dict(vocab_size=3, hidden_size=3, intermediate_size=3, num_layers=1,
                    num_heads=1, num_kv_heads=1, head_dim=None, tie_embeddings=True),
             batch=1, seq_len=3, dtype_bytes=0.25)  # 1.5 bytes a token: 3 tokens take 5 bytes
    def test_fractional_bytes_per_token_round_once(self, s, batch, seq_len, dtype_bytes):
        elements = meta_kv_elements(s, batch, seq_len)
        expected = ceil_bytes(elements, dtype_bytes)
        got = mm.kv_cache_bytes(shape(s), batch, seq_len, dtype_bytes)
        assert isinstance(got, int) and not isinstance(got, bool), \
            f"kv_cache_bytes must return a Python int, got {type(got).__name__} {got!r}"
        assert got == expected, (
            f"kv_cache_bytes(batch={batch}, seq_len={seq_len}, dtype_bytes={dtype_bytes}) = "
            f"{got:,}, expected ceil({elements:,} values x {dtype_bytes}) = {expected:,}: a token "
            f"may take a fractional number of bytes; round up the total once, not each token's "
            f"bytes; shape {s}")

    @given(s=shapes(), batch=st.integers(1, 16), seq_len=st.integers(1, 2048))
    def test_default_dtype_is_2_bytes_and_linear(self, s, batch, seq_len):
        m = shape(s)
        one = mm.kv_cache_bytes(m, 1, 1)
        assert mm.kv_cache_bytes(m, 1, 1, 2) == one, "the default dtype_bytes is 2"
        got = mm.kv_cache_bytes(m, batch, seq_len)
        assert got == one * batch * seq_len, (
            f"KV bytes must grow linearly in batch and seq_len: one token {one:,}, "
            f"batch={batch} x seq_len={seq_len} gave {got:,}, expected {one * batch * seq_len:,}")

    @given(s=shapes(), group=st.sampled_from([2, 4, 8]))
    def test_gqa_shrinks_by_group_size(self, s, group):
        d = s.get("head_dim") or s["hidden_size"] // s["num_heads"]
        heads = s["num_kv_heads"] * group
        mha = dict(s, num_heads=heads, num_kv_heads=heads, head_dim=d, hidden_size=heads * d)
        gqa = dict(mha, num_kv_heads=s["num_kv_heads"])
        a, b = mm.kv_cache_bytes(shape(mha), 2, 10), mm.kv_cache_bytes(shape(gqa), 2, 10)
        assert a == group * b, (
            f"{group} query heads sharing each KV head must cut the cache {group}x: MHA "
            f"{a:,} bytes, GQA {b:,}; shapes {mha} / {gqa}")


class TestTask2MaxTokens:
    def test_returns_int(self):
        got = mm.max_kv_tokens(mm.ModelShape(**LLAMA3_8B), 80 * 2**30)
        assert isinstance(got, int) and not isinstance(got, bool), \
            f"max_kv_tokens must return a Python int, got {type(got).__name__} {got!r}"

    def test_llama3_8b_on_80_gib(self):
        free = 80 * 2**30 - 2 * 8_030_261_248
        expected = free // 131_072  # 532,827 tokens: 130 sequences of 4096
        got = mm.max_kv_tokens(mm.ModelShape(**LLAMA3_8B), 80 * 2**30)
        assert got == expected, (
            f"Llama-3-8B bf16 on 80 GiB: {free:,} bytes are left beside the weights, "
            f"128 KiB per token -> {expected:,} tokens, got {got:,}")

    @given(s=shapes(), wdt=st.sampled_from(WEIGHT_DTYPES), kdt=st.sampled_from(KV_DTYPES),
           tokens=st.integers(0, 100_000), slack=st.floats(0, 0.999))
    def test_largest_that_fits(self, s, wdt, kdt, tokens, slack):
        weights = ceil_bytes(meta_params(s), wdt)
        per_token = ceil_bytes(meta_kv_elements(s, 1, 1), kdt)
        memory = weights + tokens * per_token + int(slack * per_token)  # slack < one token
        got = mm.max_kv_tokens(shape(s), memory, wdt, kdt)
        assert isinstance(got, int) and not isinstance(got, bool), (
            f"max_kv_tokens(weight_dtype_bytes={wdt}, kv_dtype_bytes={kdt}) must return a Python "
            f"int, got {type(got).__name__} {got!r}")
        assert got == tokens, (
            f"max_kv_tokens(memory_bytes={memory:,}, weight_dtype_bytes={wdt}, "
            f"kv_dtype_bytes={kdt}) = {got:,}, expected {tokens:,}: weights take {weights:,} "
            f"bytes, a token {per_token:,}; {tokens} tokens fit and {tokens + 1} do not "
            f"(n fits when weights + n tokens <= memory, equality included); shape {s}")

    @given(s=shapes(), wdt=st.sampled_from(WEIGHT_DTYPES),
           kdt=st.sampled_from(FRACTIONAL_KV_DTYPES), tokens=st.integers(0, 20_000),
           extra=st.integers(0, 3))
    @example(s=dict(vocab_size=3, hidden_size=3, intermediate_size=3, num_layers=1,
                    num_heads=1, num_kv_heads=1, head_dim=None, tie_embeddings=True),
             wdt=0.5, kdt=0.25, tokens=0, extra=1)  # 40.5 -> 41 weight bytes, 1.5 B a token
    @example(s=dict(vocab_size=3, hidden_size=3, intermediate_size=3, num_layers=1,
                    num_heads=1, num_kv_heads=1, head_dim=None, tie_embeddings=True),
             wdt=2, kdt=0.25, tokens=2, extra=0)  # 2 tokens take 3 bytes: 1.5 B each
    def test_fractional_bytes_per_token(self, s, wdt, kdt, tokens, extra):
        weights = ceil_bytes(meta_params(s), wdt)
        per_token = meta_kv_elements(s, 1, 1)  # values a token caches
        memory = weights + ceil_bytes(per_token * tokens, kdt) + extra

        def fits(n: int) -> bool:
            return weights + ceil_bytes(per_token * n, kdt) <= memory

        largest = tokens  # fits by construction; the extra bytes may hold a few more
        while fits(largest + 1):
            largest += 1
        got = mm.max_kv_tokens(shape(s), memory, wdt, kdt)
        assert isinstance(got, int) and not isinstance(got, bool), \
            f"max_kv_tokens must return a Python int, got {type(got).__name__} {got!r}"
        assert got == largest, (
            f"max_kv_tokens(memory_bytes={memory:,}, weight_dtype_bytes={wdt}, kv_dtype_bytes="
            f"{kdt}) = {got:,}: weights take {weights:,} bytes (rounded up) and n tokens take "
            f"ceil(n x {per_token} x {kdt}) bytes ({per_token * kdt} a token, fractional), so "
            f"the largest n that fits is {largest:,}. Do not round a token's bytes up on its own, "
            f"nor forget to round the weights up; divide exactly (fractions.Fraction); shape {s}")

    @given(s=shapes(), kdt=st.sampled_from(KV_DTYPES), tokens=st.integers(1, 5000))
    def test_exact_fit_and_one_byte_short(self, s, kdt, tokens):
        m = shape(s)
        weights = ceil_bytes(meta_params(s), 2)
        per_token = ceil_bytes(meta_kv_elements(s, 1, 1), kdt)
        memory = weights + tokens * per_token
        got = mm.max_kv_tokens(m, memory, 2, kdt)
        assert got == tokens, (
            f"weights + {tokens} tokens take exactly {memory:,} bytes = memory_bytes, so "
            f"{tokens} tokens fit (<=, not <); got {got:,}; shape {s}")
        got = mm.max_kv_tokens(m, memory - 1, 2, kdt)
        assert got == tokens - 1, (
            f"one byte less than weights + {tokens} tokens: {tokens - 1} fit, got {got:,}")

    @given(s=shapes(), short=st.integers(0, 10**6))
    def test_zero_when_weights_do_not_fit(self, s, short):
        weights = ceil_bytes(meta_params(s), 2)
        memory = max(0, weights - short)
        got = mm.max_kv_tokens(shape(s), memory)
        assert got == 0, (
            f"memory_bytes={memory:,} <= weights {weights:,} bytes: no KV token fits, "
            f"max_kv_tokens must be 0 (never negative), got {got:,}; shape {s}")

    def test_weight_and_kv_dtypes_are_separate(self):
        m = mm.ModelShape(**LLAMA3_8B)
        memory = 24 * 2**30
        weights_int4 = 8_030_261_248 // 2
        expected = (memory - weights_int4) // (131_072 // 2)  # int4 weights, fp8 KV
        got = mm.max_kv_tokens(m, memory, weight_dtype_bytes=0.5, kv_dtype_bytes=1)
        assert got == expected, (
            f"Llama-3-8B, int4 weights (0.5 B) and fp8 KV (1 B) in 24 GiB: {expected:,} tokens, "
            f"got {got:,}. weight_dtype_bytes sizes the weights, kv_dtype_bytes the cache")


class TestTask3Roofline:
    @given(M=st.integers(1, 8192), N=st.integers(1, 8192), K=st.integers(1, 8192),
           dtype_bytes=st.sampled_from([0.5, 1, 2, 4]))
    @example(M=1, N=4096, K=4096, dtype_bytes=2)
    @example(M=4096, N=4096, K=4096, dtype_bytes=2)
    def test_matmul_intensity(self, M, N, K, dtype_bytes):
        a = torch.empty(M, K, device="meta")
        b = torch.empty(K, N, device="meta")
        c = a @ b  # (M, N)
        flops = 2 * M * N * K
        moved = (a.numel() + b.numel() + c.numel()) * dtype_bytes  # read A, B; write C
        expected = flops / moved
        got = mm.matmul_intensity(M, N, K, dtype_bytes)
        assert isinstance(got, float), \
            f"matmul_intensity must return a float, got {type(got).__name__} {got!r}"
        assert math.isclose(got, expected, rel_tol=1e-12), (
            f"matmul_intensity(M={M}, N={N}, K={K}, dtype_bytes={dtype_bytes}) = {got:.6g}, "
            f"expected {expected:.6g} = 2MNK / ((MK + KN + MN) x dtype_bytes); ratio "
            f"{got / expected:.4g}")

    def test_default_dtype_and_square(self):
        got = mm.matmul_intensity(3000, 3000, 3000)
        assert math.isclose(got, 1000.0, rel_tol=1e-12), (
            f"square n=3000 matmul in 2-byte dtype (the default): 2n^3 / (3n^2 x 2) = n/3 = "
            f"1000 FLOP/B, got {got:.6g}")

    @given(ridge=st.floats(1.0, 1000.0), factor=st.floats(1.001, 100.0),
           bw=st.floats(1e9, 1e13))
    def test_memory_bound_below_ridge(self, ridge, factor, bw):
        flops = ridge * bw
        below = mm.is_memory_bound(ridge / factor, flops, bw)
        above = mm.is_memory_bound(ridge * factor, flops, bw)
        assert isinstance(below, (bool, np.bool_)) and isinstance(above, (bool, np.bool_)), \
            f"is_memory_bound must return a bool, got {type(below).__name__}"
        assert below, (
            f"intensity {ridge / factor:.4g} < ridge {ridge:.4g} (= {flops:.3g} FLOP/s / "
            f"{bw:.3g} B/s) must be memory bound, got {below!r}")
        assert not above, (
            f"intensity {ridge * factor:.4g} > ridge {ridge:.4g} must be compute bound "
            f"(not memory bound), got {above!r}")

    def test_at_the_ridge_is_not_memory_bound(self):
        got = mm.is_memory_bound(100.0, 1000.0, 10.0)
        assert not got, ("intensity 100 = ridge 1000 FLOP/s / 10 B/s is not *below* the ridge: "
                         f"is_memory_bound must be False, got {got!r}")

    @pytest.mark.parametrize("batch", [1, 8, 64])
    def test_h100_decode_is_memory_bound(self, batch):
        # One decode step of a 4096x4096 projection: M = batch tokens.
        intensity = mm.matmul_intensity(batch, 4096, 4096)
        assert mm.is_memory_bound(intensity, H100_BF16_FLOPS, H100_BYTES_PER_S), (
            f"decode with batch {batch}: intensity {intensity:.3g} FLOP/B is far below the "
            f"H100 ridge {H100_BF16_FLOPS / H100_BYTES_PER_S:.0f}: memory bound")

    def test_h100_prefill_is_compute_bound(self):
        intensity = mm.matmul_intensity(4096, 4096, 4096)
        assert not mm.is_memory_bound(intensity, H100_BF16_FLOPS, H100_BYTES_PER_S), (
            f"prefill of 4096 tokens: intensity {intensity:.4g} FLOP/B is above the H100 "
            f"ridge {H100_BF16_FLOPS / H100_BYTES_PER_S:.0f}: compute bound")


class TestTask3DecodeTime:
    def test_llama3_8b_on_h100(self):
        m = mm.ModelShape(**LLAMA3_8B)
        moved = 2 * 8_030_261_248 + 131_072 * 8 * 4096
        expected = moved / H100_BYTES_PER_S  # 6.79 ms
        got = mm.decode_step_seconds(m, 8, 4096, H100_BYTES_PER_S)
        assert math.isclose(got, expected, rel_tol=1e-9), (
            f"Llama-3-8B bf16, batch 8 x 4096 context on 3.0e12 B/s: read {moved:,} bytes "
            f"(weights once + 8 KV caches) = {expected * 1e3:.4g} ms, got {got * 1e3:.4g} ms")

    @given(s=shapes(), batch=st.integers(1, 128), context_len=st.integers(1, 32768),
           bw=st.floats(1e9, 1e13), dtype_bytes=st.sampled_from([0.5, 1, 2, 4]))
    @example(s=LLAMA2_7B, batch=16, context_len=2048, bw=H100_BYTES_PER_S, dtype_bytes=2)
    @example(s=dict(vocab_size=3, hidden_size=3, intermediate_size=3, num_layers=1,
                    num_heads=1, num_kv_heads=1, head_dim=None, tie_embeddings=True),
             batch=1, context_len=3, bw=1e10, dtype_bytes=0.5)  # 40.5 + 9 bytes: 49.5 or 50
    def test_bytes_over_bandwidth(self, s, batch, context_len, bw, dtype_bytes):
        """The byte count may be exact (fractional for int4) or rounded up to whole bytes
        (weight_bytes + kv_cache_bytes): both are right, and differ by under 2 bytes."""
        weights = Fraction(meta_params(s)) * Fraction(dtype_bytes)
        kv = Fraction(meta_kv_elements(s, 1, 1) * batch * context_len) * Fraction(dtype_bytes)
        exact, rounded = weights + kv, math.ceil(weights) + math.ceil(kv)
        low, high = float(exact) / bw, rounded / bw
        got = mm.decode_step_seconds(shape(s), batch, context_len, bw, dtype_bytes)
        assert isinstance(got, float), \
            f"decode_step_seconds must return a float, got {type(got).__name__} {got!r}"
        assert low * (1 - 1e-9) <= got <= high * (1 + 1e-9), (
            f"decode_step_seconds(batch={batch}, context_len={context_len}, bytes_per_s="
            f"{bw:.4g}, dtype_bytes={dtype_bytes}) = {got:.6g} s, expected (weights + KV of all "
            f"{batch} sequences) / bandwidth: {float(exact):,.1f} bytes exactly ({low:.6g} s), or "
            f"{rounded:,} with weight_bytes and kv_cache_bytes rounded up ({high:.6g} s); "
            f"got {got * bw:,.1f} bytes' worth; shape {s}")

    @given(s=shapes(), batch=st.integers(1, 64), context_len=st.integers(1, 8192))
    def test_monotone_and_default_dtype(self, s, batch, context_len):
        m = shape(s)
        t = mm.decode_step_seconds(m, batch, context_len, 1e12)
        where = f"batch={batch}, context_len={context_len}, bytes_per_s=1e12; shape {s}"
        t2 = mm.decode_step_seconds(m, batch, context_len, 1e12, 2)
        assert t == t2, f"the default dtype_bytes is 2: {t:.6g} s by default, {t2:.6g} s with 2; {where}"
        more = mm.decode_step_seconds(m, batch + 1, context_len, 1e12)
        assert more > t, (f"one more sequence reads one more KV cache: the step must take longer, "
                          f"got {t:.6g} s -> {more:.6g} s for batch + 1; {where}")
        longer = mm.decode_step_seconds(m, batch, context_len + 1, 1e12)
        assert longer > t, (f"a longer context reads more KV: the step must take longer, got "
                            f"{t:.6g} s -> {longer:.6g} s for context_len + 1; {where}")
        fast = mm.decode_step_seconds(m, batch, context_len, 2e12)
        assert math.isclose(fast, t / 2, rel_tol=1e-12), (
            f"twice the bandwidth must halve the time: {t:.6g} s at 1e12 B/s, {fast:.6g} s at 2e12; {where}")
