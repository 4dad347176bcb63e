"""Kata 04: attention and one decode step. Tasks as in README.md.

Expected values never come from the module under test: they are float64
`torch.nn.functional.scaled_dot_product_attention` with an explicit boolean mask built
here (and K/V expanded with repeat_interleave for GQA), or a brute-force loop.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import assert_close, load_kata_module

m = load_kata_module("attention")

FLOATS = [torch.float32, torch.float64]
# fp16/bf16 results are compared with float64 math on the same (rounded) inputs. Beyond the
# final rounding of the output, an implementation may round the scores q k^T and the
# probabilities to the input dtype (as fp16 tensor-core matmuls do): a score of size ~4
# then moves by 4 * 2**-11 (fp16) or 4 * 2**-8 (bf16), which moves the output by about as
# much times the spread of v (~3). Hence (see README, "Tolerances"):
HALF_TOL = {torch.float16: (1e-2, 1e-2), torch.bfloat16: (6e-2, 4e-2)}


# ---------------------------------------------------------------- independent expected values
def randn(shape, gen: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)


def bottom_right_causal(sq: int, sk: int) -> torch.Tensor:
    """(Sq, Sk) bool: query i may see key j iff j <= i + (Sk - Sq). Built with tril."""
    return torch.ones(sq, sk, dtype=torch.bool).tril(diagonal=sk - sq)


def expected_attention(q, k, v, *, causal=False, scale=None, key_padding_mask=None):
    """float64 SDPA with an explicit mask; queries that see no key give zeros."""
    q, k, v = (t.detach().cpu().double() for t in (q, k, v))
    B, Hq, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    k = k.repeat_interleave(Hq // Hkv, dim=1)  # head h -> kv head h // (Hq // Hkv)
    v = v.repeat_interleave(Hq // Hkv, dim=1)
    allowed = torch.ones(B, 1, Sq, Sk, dtype=torch.bool)
    if causal:
        allowed = allowed & bottom_right_causal(Sq, Sk)
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask.cpu().bool()[:, None, None, :]
    sees_some = allowed.any(dim=-1, keepdim=True)  # (B, 1, Sq, 1)
    # Rows that see nothing: let SDPA attend everywhere (no NaN either way), then zero them.
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed | ~sees_some, scale=scale)
    return torch.where(sees_some, out, torch.zeros((), dtype=out.dtype))


def make_qkv(gen, B, Hq, Hkv, Sq, Sk, D, dtype=torch.float64):
    q = randn((B, Hq, Sq, D), gen, dtype)
    return q, randn((B, Hkv, Sk, D), gen, dtype), randn((B, Hkv, Sk, D), gen, dtype)


def call(device, q, k, v, **kw):
    """Run the module's attention on `device`; the result comes back to the CPU."""
    kw = {n: (t.to(device) if isinstance(t, torch.Tensor) else t) for n, t in kw.items()}
    out = m.attention(q.to(device), k.to(device), v.to(device), **kw)
    assert isinstance(out, torch.Tensor), f"attention must return a tensor, got {type(out).__name__}"
    return out.cpu()


# ---------------------------------------------------------------- hypothesis strategies
seeds = st.integers(0, 2**31 - 1)
lengths = st.integers(1, 13)  # not multiples of anything in particular
head_dims = st.sampled_from([1, 2, 3, 5, 8, 16])


@st.composite
def heads(draw, gqa: bool):
    """(Hq, Hkv). With gqa: group size Hq/Hkv in 1, 2, 3, 4, and Hq (MQA, Hkv = 1)."""
    if not gqa:
        h = draw(st.integers(1, 4))
        return h, h
    kind = draw(st.sampled_from(["group", "mqa"]))
    if kind == "mqa":
        return draw(st.integers(1, 6)), 1
    hkv = draw(st.integers(1, 3))
    return hkv * draw(st.sampled_from([1, 2, 3, 4])), hkv


@st.composite
def padding_masks(draw, B: int, Sk: int):
    """(B, Sk) bool: random densities, plus rows that are all True or all False."""
    gen = torch.Generator().manual_seed(draw(seeds))
    p = draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))
    mask = torch.rand(B, Sk, generator=gen) < p
    if draw(st.booleans()):  # one row entirely masked out
        mask[draw(st.integers(0, B - 1))] = False
    if draw(st.booleans()):  # one row entirely visible
        mask[draw(st.integers(0, B - 1))] = True
    return mask


# =============================================================================== Task 1
class TestTask1Attention:
    """Multi-head attention without masks: shapes, dtype, inputs untouched, values, scale."""

    def test_output_shape_and_dtype(self, device):
        gen = torch.Generator().manual_seed(0)
        for dtype in [torch.float32, torch.float64, torch.float16, torch.bfloat16]:
            q, k, v = make_qkv(gen, 2, 3, 3, 5, 7, 4, dtype)
            out = call(device, q, k, v)
            assert tuple(out.shape) == (2, 3, 5, 4), (
                f"attention(q (2,3,5,4), k/v (2,3,7,4)) returned shape {tuple(out.shape)}, "
                "expected (B, Hq, Sq, D) = (2, 3, 5, 4)")
            assert out.dtype == dtype, (
                f"attention on {dtype} inputs returned {out.dtype}: cast the result back to q's "
                "dtype (compute in float32 inside if you like)")

    @pytest.mark.parametrize("dtype", FLOATS)
    def test_inputs_unmodified(self, device, dtype):
        gen = torch.Generator().manual_seed(1)
        q, k, v = (t.to(device) for t in make_qkv(gen, 2, 2, 2, 4, 6, 8, dtype))
        before = [t.clone() for t in (q, k, v)]
        m.attention(q, k, v)
        m.attention(q, k, v, scale=0.37)
        for name, t, b in zip("qkv", (q, k, v), before):
            assert torch.equal(t, b), (
                f"attention modified its input {name} ({dtype}) in place. Note that "
                f"x.to({dtype}) returns x itself when the dtype already matches, so an in-place "
                "op after it (mul_, div_, masked_fill_) writes into the caller's tensor")

    def test_head_dim_mismatch_raises(self, device):
        gen = torch.Generator().manual_seed(2)
        q = randn((1, 2, 3, 8), gen).to(device)
        k = randn((1, 2, 4, 6), gen).to(device)
        with pytest.raises(ValueError):
            m.attention(q, k, k.clone())

    def test_single_key_returns_its_value(self, device):
        """One key: softmax over one score is 1, so every query outputs that value."""
        gen = torch.Generator().manual_seed(3)
        q, k, v = make_qkv(gen, 2, 2, 2, 5, 1, 4)
        out = call(device, q, k, v)
        assert_close(out, v.expand(2, 2, 5, 4), what="attention with Sk=1",
                     inputs=dict(q=q, k=k, v=v, seed=3),
                     hint="with one key the weights are exactly 1; check the softmax dim")

    def test_uniform_scores_average_values(self, device):
        """Identical keys give equal weights: the output is the mean of v over keys."""
        gen = torch.Generator().manual_seed(4)
        q = randn((1, 1, 3, 4), gen)
        k = randn((1, 1, 1, 4), gen).expand(1, 1, 6, 4).contiguous()
        v = randn((1, 1, 6, 4), gen)
        assert_close(call(device, q, k, v), v.mean(dim=2, keepdim=True).expand(1, 1, 3, 4),
                     what="attention with identical keys", inputs=dict(q=q, k=k, v=v, seed=4),
                     hint="the softmax normalises over the keys (last dim of the scores)")

    @pytest.mark.parametrize("dtype", FLOATS)
    @given(seed=seeds, B=st.integers(1, 3), h=heads(gqa=False), Sq=lengths, Sk=lengths, D=head_dims)
    def test_matches_sdpa(self, device, dtype, seed, B, h, Sq, Sk, D):
        gen = torch.Generator().manual_seed(seed)
        q, k, v = make_qkv(gen, B, h[0], h[1], Sq, Sk, D, dtype)
        assert_close(call(device, q, k, v), expected_attention(q, k, v).to(dtype),
                     what="attention(q, k, v)", inputs=dict(q=q, k=k, v=v, seed=seed),
                     hint="softmax(q @ k^T * D**-0.5, dim=-1) @ v, softmax over the keys")

    @given(seed=seeds, Sq=lengths, Sk=lengths, D=head_dims,
           scale=st.sampled_from([0.0, 0.05, 0.5, 1.0, 2.5, -1.0]))
    def test_custom_scale(self, device, seed, Sq, Sk, D, scale):
        gen = torch.Generator().manual_seed(seed)
        q, k, v = make_qkv(gen, 2, 2, 2, Sq, Sk, D)
        assert_close(call(device, q, k, v, scale=scale),
                     expected_attention(q, k, v, scale=scale),
                     what=f"attention(q, k, v, scale={scale})",
                     inputs=dict(q=q, k=k, v=v, scale=scale, seed=seed),
                     hint="a given scale replaces D**-0.5 (it is used as is, even 0 or negative)")

    def test_default_scale_is_rsqrt_d(self, device):
        """scale=None and scale=D**-0.5 give the same result; scale=1 does not."""
        gen = torch.Generator().manual_seed(5)
        q, k, v = make_qkv(gen, 1, 2, 2, 4, 9, 16)
        q = 3 * q  # large scores make a wrong scale obvious
        expected = expected_attention(q, k, v, scale=16 ** -0.5)
        assert_close(call(device, q, k, v), expected, what="attention(q, k, v) with D=16",
                     inputs=dict(q=q, k=k, v=v, seed=5),
                     hint="the default scale is D ** -0.5 = 0.25 here (not 1, not 1/D)")

    @pytest.mark.parametrize("dtype", FLOATS)
    def test_large_scores_stay_finite(self, device, dtype):
        """Scores in the thousands (exp overflows even float64 past 709). Integer q and k with
        D=4 (default scale 0.5) make every score exact, so float32 is compared at its usual
        tolerance."""
        gen = torch.Generator().manual_seed(6)
        q = torch.randint(-100, 101, (2, 2, 5, 4), generator=gen).to(dtype)
        k = torch.randint(-100, 101, (2, 2, 7, 4), generator=gen).to(dtype)
        v = randn((2, 2, 7, 4), gen, dtype)
        out = call(device, q, k, v)
        assert not torch.isnan(out).any(), (
            "attention with scores up to ~1e4 gave NaN: exp(score) overflows "
            "to inf and inf / inf = NaN. Subtract each row's max score before exp (torch.softmax does)")
        assert_close(out, expected_attention(q, k, v).to(dtype),
                     what="attention with scores in the thousands",
                     inputs=dict(q=q, k=k, v=v, seed=6),
                     hint="softmax(s) = exp(s - max s) / sum exp(s - max s): the max of the VISIBLE scores")

    def test_non_contiguous_inputs(self, device):
        """q, k, v as a model makes them: (B, S, H, D) projections viewed as (B, H, S, D)."""
        gen = torch.Generator().manual_seed(7)
        q = randn((2, 5, 3, 8), gen).to(device).transpose(1, 2)  # (B, H, Sq, D), strided
        kv = randn((2, 9, 6, 8), gen).to(device).transpose(1, 2)  # K and V heads in one tensor
        k, v = kv[:, :3], kv[:, 3:]
        out = m.attention(q, k, v)
        assert isinstance(out, torch.Tensor), f"attention returned {type(out).__name__}"
        assert_close(out.cpu(), expected_attention(q, k, v),
                     what="attention on transposed (non-contiguous) q, k, v",
                     inputs=dict(q=q.cpu(), k=k.cpu(), v=v.cpu(), seed=7),
                     hint="q.transpose(1, 2) is a view with other strides: use reshape (not view), "
                          "matmul/einsum, or .contiguous() first")

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    @given(seed=seeds, B=st.integers(1, 2), h=heads(gqa=False), Sq=lengths, Sk=lengths, D=head_dims)
    @settings(max_examples=15)
    def test_half_precision(self, device, dtype, seed, B, h, Sq, Sk, D):
        gen = torch.Generator().manual_seed(seed)
        q, k, v = make_qkv(gen, B, h[0], h[1], Sq, Sk, D, dtype)
        out = call(device, q, k, v)
        atol, rtol = HALF_TOL[dtype]  # README "Tolerances": scores may be rounded to dtype
        assert_close(out, expected_attention(q, k, v).to(dtype), what=f"attention in {dtype}",
                     inputs=dict(q=q, k=k, v=v, seed=seed), atol=atol, rtol=rtol,
                     hint="compute the softmax in float32 and cast the output back to q's dtype")


# =============================================================================== Task 2
class TestTask2Masks:
    """Causal (bottom-right) and key padding masks; a query that sees nothing outputs zeros."""

    def test_no_nan_when_everything_is_masked(self, device):
        gen = torch.Generator().manual_seed(10)
        q, k, v = make_qkv(gen, 2, 2, 2, 3, 4, 4, torch.float32)
        mask = torch.tensor([[False] * 4, [True, False, True, False]])
        out = call(device, q, k, v, key_padding_mask=mask)
        assert not torch.isnan(out).any(), (
            "batch row 0 has every key masked and got NaN: softmax of a row of -inf is 0/0. "
            "A query that sees no key must output zeros")
        assert_close(out[0], torch.zeros(2, 3, 4), what="output of a fully masked batch row",
                     inputs=dict(key_padding_mask=mask, seed=10),
                     hint="a query that sees no key outputs zeros")

    def test_mask_unmodified(self, device):
        gen = torch.Generator().manual_seed(11)
        q, k, v = (t.to(device) for t in make_qkv(gen, 2, 2, 2, 5, 5, 4, torch.float32))
        mask = torch.tensor([[True, True, False, True, False], [False] * 5], device=device)
        before = [t.clone() for t in (q, k, v, mask)]
        m.attention(q, k, v, causal=True, key_padding_mask=mask)
        for name, t, b in zip(["q", "k", "v", "key_padding_mask"], (q, k, v, mask), before):
            assert torch.equal(t, b), f"attention(causal=True, key_padding_mask=...) modified {name}"

    def test_causal_square_matches_torch_is_causal(self, device):
        """For Sq == Sk bottom-right and top-left alignment agree: torch's is_causal applies."""
        gen = torch.Generator().manual_seed(12)
        q, k, v = make_qkv(gen, 2, 3, 3, 7, 7, 8)
        expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        assert_close(call(device, q, k, v, causal=True), expected, what="causal attention, Sq = Sk = 7",
                     inputs=dict(q=q, k=k, v=v, seed=12),
                     hint="query i sees keys 0..i; the mask is applied before the softmax")

    def test_causal_single_query_sees_every_key(self, device):
        """Decode (Sq = 1): the one query is the newest token and sees all Sk keys."""
        gen = torch.Generator().manual_seed(13)
        q, k, v = make_qkv(gen, 2, 2, 2, 1, 6, 4)
        assert_close(call(device, q, k, v, causal=True), expected_attention(q, k, v),
                     what="causal attention with Sq=1, Sk=6", inputs=dict(q=q, k=k, v=v, seed=13),
                     hint="causal is aligned bottom-right: query i sees keys j <= i + (Sk - Sq). "
                          "torch's is_causal (top-left) would let this query see key 0 only")

    def test_causal_chunked_prefill(self, device):
        """Sq=3 new queries after 4 cached keys: query i sees keys 0..4+i."""
        gen = torch.Generator().manual_seed(14)
        q, k, v = make_qkv(gen, 1, 2, 2, 3, 7, 4)
        expected = torch.cat([expected_attention(q[:, :, i:i + 1], k[:, :, :5 + i], v[:, :, :5 + i])
                              for i in range(3)], dim=2)  # brute force: one query at a time
        assert_close(call(device, q, k, v, causal=True), expected,
                     what="causal attention with Sq=3, Sk=7", inputs=dict(q=q, k=k, v=v, seed=14),
                     hint="query i sees keys j <= i + (Sk - Sq) = i + 4 (bottom-right), j included")

    def test_causal_more_queries_than_keys(self, device):
        """Sq > Sk: the first Sq - Sk queries see no key and output zeros."""
        gen = torch.Generator().manual_seed(15)
        q, k, v = make_qkv(gen, 2, 2, 2, 6, 4, 4)
        out = call(device, q, k, v, causal=True)
        assert not torch.isnan(out).any(), "causal Sq=6 > Sk=4 gave NaN: queries 0, 1 see no key"
        assert_close(out, expected_attention(q, k, v, causal=True),
                     what="causal attention with Sq=6, Sk=4", inputs=dict(q=q, k=k, v=v, seed=15),
                     hint="query i sees keys j <= i - 2: queries 0 and 1 see none and output zeros")

    @pytest.mark.parametrize("dtype", FLOATS)
    @given(seed=seeds, B=st.integers(1, 3), h=heads(gqa=False), Sq=lengths, Sk=lengths, D=head_dims)
    def test_causal_matches_sdpa(self, device, dtype, seed, B, h, Sq, Sk, D):
        gen = torch.Generator().manual_seed(seed)
        q, k, v = make_qkv(gen, B, h[0], h[1], Sq, Sk, D, dtype)
        assert_close(call(device, q, k, v, causal=True),
                     expected_attention(q, k, v, causal=True).to(dtype),
                     what="attention(causal=True)", inputs=dict(q=q, k=k, v=v, seed=seed),
                     hint="allowed[i, j] = j <= i + (Sk - Sq); rows with no allowed key are zeros")

    @pytest.mark.parametrize("dtype", FLOATS)
    @given(data=st.data(), seed=seeds, B=st.integers(1, 3), h=heads(gqa=False), Sq=lengths,
           Sk=lengths, D=head_dims, causal=st.booleans())
    def test_padding_matches_sdpa(self, device, dtype, data, seed, B, h, Sq, Sk, D, causal):
        gen = torch.Generator().manual_seed(seed)
        q, k, v = make_qkv(gen, B, h[0], h[1], Sq, Sk, D, dtype)
        mask = data.draw(padding_masks(B, Sk), label="key_padding_mask")
        out = call(device, q, k, v, causal=causal, key_padding_mask=mask)
        assert_close(out, expected_attention(q, k, v, causal=causal, key_padding_mask=mask).to(dtype),
                     what=f"attention(causal={causal}, key_padding_mask=...)",
                     inputs=dict(q=q, k=k, v=v, key_padding_mask=mask, seed=seed),
                     hint="key_padding_mask[b, j] True means key j of batch row b may be attended; "
                          "it combines (AND) with the causal mask; no visible key -> zeros")

    def test_masked_keys_do_not_leak(self, device):
        """Changing a masked key's K and V (even to huge values) changes nothing."""
        gen = torch.Generator().manual_seed(16)
        q, k, v = make_qkv(gen, 2, 2, 2, 4, 6, 4)
        mask = torch.tensor([[True, False, True, True, False, True], [True] * 3 + [False] * 3])
        out = call(device, q, k, v, key_padding_mask=mask)
        k2, v2 = k.clone(), v.clone()
        for b in range(2):
            k2[b][:, ~mask[b]] = 1e3
            v2[b][:, ~mask[b]] = -1e3
        out2 = call(device, q, k2, v2, key_padding_mask=mask)
        assert_close(out2, out, what="attention after changing only masked keys",
                     inputs=dict(key_padding_mask=mask, seed=16),
                     hint="masked keys must get weight exactly 0: fill their scores with -inf "
                          "before the softmax (True = attend, False = masked)")

    @pytest.mark.parametrize("dtype", FLOATS)
    @pytest.mark.parametrize("causal", [False, True])
    def test_masked_keys_invisible_at_any_score(self, device, dtype, causal):
        """Visible keys score about -1e5, masked keys +1e5 (exact values, D=1, scale=1): a
        masked key gets weight 0 whatever its score, so filling masked scores with a finite
        number such as -1e4 is not masking."""
        q = torch.tensor([-1.0, -2.0], dtype=dtype).reshape(1, 1, 2, 1)
        # keys 0, 2, 3 visible; key 1 padded out; key 4 hidden from query 0 by the causal mask
        k = torch.tensor([1e5, -1e5, 1e5 + 1, 1e5 + 3, -1e5], dtype=dtype).reshape(1, 1, 5, 1)
        v = torch.tensor([1.0, -50.0, 2.0, 3.0, -70.0], dtype=dtype).reshape(1, 1, 5, 1)
        mask = torch.tensor([[True, False, True, True, causal]])
        out = call(device, q, k, v, causal=causal, scale=1.0, key_padding_mask=mask)
        assert_close(out, expected_attention(q, k, v, causal=causal, scale=1.0, key_padding_mask=mask).to(dtype),
                     what=f"attention(causal={causal}) with visible scores ~-1e5 and masked scores +1e5",
                     inputs=dict(q=q, k=k, v=v, key_padding_mask=mask),
                     hint="set masked scores to -inf (not -1e4, not a large finite negative number) and take "
                          "the softmax's max over the visible scores only")


# =============================================================================== Task 3
class TestTask3GroupedQuery:
    """GQA and MQA: query head h reads kv head h // (Hq // Hkv)."""

    def test_heads_not_divisible_raises(self, device):
        gen = torch.Generator().manual_seed(20)
        q, k, v = (t.to(device) for t in make_qkv(gen, 1, 6, 4, 3, 3, 4))
        with pytest.raises(ValueError):
            m.attention(q, k, v)

    def test_output_shape_gqa(self, device):
        gen = torch.Generator().manual_seed(21)
        q, k, v = make_qkv(gen, 2, 8, 2, 3, 5, 4, torch.float32)
        out = call(device, q, k, v, causal=True)
        assert tuple(out.shape) == (2, 8, 3, 4), (
            f"GQA attention with Hq=8, Hkv=2 returned {tuple(out.shape)}, expected (B, Hq, Sq, D)")
        assert out.dtype == torch.float32

    def test_head_mapping_consecutive_groups(self, device):
        """Hq=4, Hkv=2: heads 0,1 read kv head 0 and heads 2,3 read kv head 1 (not 0,2 / 1,3)."""
        gen = torch.Generator().manual_seed(22)
        q = randn((1, 1, 2, 4), gen).expand(1, 4, 2, 4).contiguous()  # the same query in every head
        k, v = randn((1, 2, 5, 4), gen), randn((1, 2, 5, 4), gen)
        out = call(device, q, k, v)
        for h in range(4):
            kv = slice(h // 2, h // 2 + 1)
            expected = expected_attention(q[:, h:h + 1], k[:, kv], v[:, kv])
            assert_close(out[:, h:h + 1], expected, what=f"query head {h} of 4 (Hkv=2)",
                         inputs=dict(q=q, k=k, v=v, seed=22),
                         hint=f"query head h reads kv head h // (Hq // Hkv) = {h // 2}, not h % Hkv")

    def test_non_contiguous_inputs(self, device):
        """GQA, causal and padding on strided views: (B, S, H, D) projections transposed."""
        gen = torch.Generator().manual_seed(23)
        q = randn((2, 5, 6, 8), gen).to(device).transpose(1, 2)  # (B, Hq=6, Sq, D), strided
        kv = randn((2, 9, 4, 8), gen).to(device).transpose(1, 2)  # K and V heads in one tensor
        k, v = kv[:, :2], kv[:, 2:]  # Hkv = 2
        mask = (torch.rand(9, 2, generator=gen) < 0.7).to(device).t()  # (B, Sk), strided
        out = m.attention(q, k, v, causal=True, key_padding_mask=mask)
        assert isinstance(out, torch.Tensor), f"attention returned {type(out).__name__}"
        assert_close(out.cpu(), expected_attention(q, k, v, causal=True, key_padding_mask=mask),
                     what="GQA attention (Hq=6, Hkv=2, causal, padded) on transposed q, k, v and mask",
                     inputs=dict(q=q.cpu(), k=k.cpu(), v=v.cpu(), key_padding_mask=mask.cpu(), seed=23),
                     hint="strided views: expand K/V heads with indexing or repeat_interleave, and "
                          "reshape (not view)")

    @pytest.mark.parametrize("dtype", FLOATS)
    @given(data=st.data(), seed=seeds, B=st.integers(1, 2), h=heads(gqa=True), Sq=lengths,
           Sk=lengths, D=head_dims, causal=st.booleans(), padded=st.booleans())
    def test_gqa_matches_sdpa(self, device, dtype, data, seed, B, h, Sq, Sk, D, causal, padded):
        gen = torch.Generator().manual_seed(seed)
        q, k, v = make_qkv(gen, B, h[0], h[1], Sq, Sk, D, dtype)
        mask = data.draw(padding_masks(B, Sk), label="key_padding_mask") if padded else None
        out = call(device, q, k, v, causal=causal, key_padding_mask=mask)
        expected = expected_attention(q, k, v, causal=causal, key_padding_mask=mask).to(dtype)
        assert_close(out, expected, what=f"attention with Hq={h[0]}, Hkv={h[1]}, causal={causal}",
                     inputs=dict(q=q, k=k, v=v, key_padding_mask=mask, seed=seed),
                     hint="query head h reads kv head h // (Hq // Hkv): k.repeat_interleave "
                          "(not k.repeat) expands K/V that way")

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    @given(seed=seeds, h=heads(gqa=True), Sq=lengths, Sk=lengths, D=head_dims, causal=st.booleans())
    @settings(max_examples=10)
    def test_gqa_half_precision(self, device, dtype, seed, h, Sq, Sk, D, causal):
        gen = torch.Generator().manual_seed(seed)
        q, k, v = make_qkv(gen, 2, h[0], h[1], Sq, Sk, D, dtype)
        out = call(device, q, k, v, causal=causal)
        assert out.dtype == dtype, f"attention on {dtype} returned {out.dtype}"
        atol, rtol = HALF_TOL[dtype]  # README "Tolerances"
        assert_close(out, expected_attention(q, k, v, causal=causal).to(dtype),
                     what=f"GQA attention in {dtype}", inputs=dict(q=q, k=k, v=v, seed=seed),
                     atol=atol, rtol=rtol)


# =============================================================================== Task 4
def make_cache(gen, B, Hkv, S_max, D, lens, dtype=torch.float64, garbage=math.nan):
    """Caches whose row b holds lens[b] random tokens, then `garbage` up to S_max."""
    k = torch.full((B, Hkv, S_max, D), garbage, dtype=torch.float64)
    v = torch.full((B, Hkv, S_max, D), garbage, dtype=torch.float64)
    for b, n in enumerate(lens):
        k[b, :, :n] = randn((Hkv, n, D), gen)
        v[b, :, :n] = randn((Hkv, n, D), gen)
    return k.to(dtype), v.to(dtype)


def expected_decode(q, k_cache, v_cache, k_new, v_new, lens):
    """Brute force per batch row: attention of the one query over cache[:n] + the new token."""
    outs = []
    for b, n in enumerate(lens):
        k = torch.cat([k_cache[b:b + 1, :, :n], k_new[b:b + 1]], dim=2)
        v = torch.cat([v_cache[b:b + 1, :, :n], v_new[b:b + 1]], dim=2)
        outs.append(expected_attention(q[b:b + 1], k, v))
    return torch.cat(outs, dim=0)


def call_decode(device, q, k_cache, v_cache, k_new, v_new, cache_len):
    res = m.decode_step(*(t.to(device) for t in (q, k_cache, v_cache, k_new, v_new, cache_len)))
    assert isinstance(res, tuple) and len(res) == 3, (
        f"decode_step must return (out, k_cache, v_cache), got {type(res).__name__}")
    return tuple(t.cpu() for t in res)


@st.composite
def decode_cases(draw, max_s: int = 12):
    B = draw(st.integers(1, 4))
    Hq, Hkv = draw(heads(gqa=True))
    D = draw(head_dims)
    S_max = draw(st.integers(1, max_s))
    lens = draw(st.lists(st.integers(0, S_max - 1), min_size=B, max_size=B))
    return B, Hq, Hkv, D, S_max, lens


class TestTask4DecodeStep:
    """Append the new token's K/V at cache_len[b], attend over positions 0..cache_len[b]."""

    def _case(self, seed, B=3, Hq=4, Hkv=2, D=4, S_max=8, lens=(2, 5, 0), dtype=torch.float64,
              garbage=math.nan):
        gen = torch.Generator().manual_seed(seed)
        k_cache, v_cache = make_cache(gen, B, Hkv, S_max, D, lens, dtype, garbage)
        q = randn((B, Hq, 1, D), gen, dtype)
        k_new, v_new = randn((B, Hkv, 1, D), gen, dtype), randn((B, Hkv, 1, D), gen, dtype)
        return q, k_cache, v_cache, k_new, v_new, torch.tensor(lens, dtype=torch.long)

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
    def test_output_shape_and_dtype(self, device, dtype):
        q, kc, vc, kn, vn, lens = self._case(30, dtype=dtype, garbage=0.0)
        out, k_cache, v_cache = call_decode(device, q, kc.clone(), vc.clone(), kn, vn, lens)
        assert tuple(out.shape) == (3, 4, 1, 4), (
            f"decode_step out has shape {tuple(out.shape)}, expected (B, Hq, 1, D) = (3, 4, 1, 4)")
        assert out.dtype == dtype, f"decode_step on {dtype} returned out of dtype {out.dtype}"
        for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
            assert tuple(c.shape) == (3, 2, 8, 4) and c.dtype == dtype, (
                f"returned {name} is {tuple(c.shape)} {c.dtype}, expected the cache's shape and dtype "
                f"(3, 2, 8, 4) {dtype}")

    def test_inputs_unmodified(self, device):
        q, kc, vc, kn, vn, lens = (t.to(device) for t in self._case(31, dtype=torch.float32))
        before = [t.clone() for t in (q, kn, vn, lens)]
        m.decode_step(q, kc, vc, kn, vn, lens)
        for name, t, b in zip(["q", "k_new", "v_new", "cache_len"], (q, kn, vn, lens), before):
            assert torch.equal(t, b), (
                f"decode_step modified its input {name} (only the caches may change)")

    def test_cache_holds_new_token(self, device):
        q, kc, vc, kn, vn, lens = self._case(32)
        _, k_cache, v_cache = call_decode(device, q, kc.clone(), vc.clone(), kn, vn, lens)
        for b, n in enumerate(lens.tolist()):
            for name, cache, new, old in (("k_cache", k_cache, kn, kc), ("v_cache", v_cache, vn, vc)):
                assert torch.equal(cache[b, :, n], new[b, :, 0]), (
                    f"returned {name}[{b}, :, {n}] does not hold the new token (cache_len[{b}] = {n}): "
                    "write k_new/v_new at position cache_len[b] of row b (not cache_len[b] + 1, "
                    "not cache_len[0])")
                assert torch.equal(cache[b, :, :n], old[b, :, :n]), (
                    f"returned {name}[{b}, :, :{n}] changed: the cached tokens must stay as they were")

    @pytest.mark.parametrize("garbage", [math.nan, 1e30, -math.inf])
    def test_ignores_positions_past_cache_len(self, device, garbage):
        """Slots past cache_len[b] may hold anything (torch.empty, an old sequence)."""
        q, kc, vc, kn, vn, lens = self._case(33, garbage=garbage)
        out, _, _ = call_decode(device, q, kc.clone(), vc.clone(), kn, vn, lens)
        assert_close(out, expected_decode(q, kc, vc, kn, vn, lens.tolist()),
                     what=f"decode_step with {garbage} in the unused cache slots",
                     inputs=dict(q=q, k_cache=kc, cache_len=lens, seed=33),
                     hint="row b sees positions 0..cache_len[b] only; masking scores is not enough "
                          "when V holds NaN/inf there (0 * NaN = NaN): slice or zero those slots")

    def test_distinct_lengths_per_row(self, device):
        q, kc, vc, kn, vn, lens = self._case(34, B=4, lens=(7, 0, 3, 6), garbage=0.5)
        out, _, _ = call_decode(device, q, kc.clone(), vc.clone(), kn, vn, lens)
        assert_close(out, expected_decode(q, kc, vc, kn, vn, lens.tolist()),
                     what="decode_step with cache_len = [7, 0, 3, 6]",
                     inputs=dict(q=q, k_cache=kc, cache_len=lens, seed=34),
                     hint="each batch row has its own length: use cache_len[b] for row b, and "
                          "include the new token (positions 0..cache_len[b], inclusive)")

    @pytest.mark.parametrize("dtype", FLOATS)
    @given(case=decode_cases(), seed=seeds, garbage=st.sampled_from([math.nan, math.inf, 1e4, 0.0]))
    def test_matches_prefix_attention(self, device, dtype, case, seed, garbage):
        B, Hq, Hkv, D, S_max, lens = case
        q, kc, vc, kn, vn, cl = self._case(seed, B, Hq, Hkv, D, S_max, lens, dtype, garbage)
        out, k_cache, v_cache = call_decode(device, q, kc.clone(), vc.clone(), kn, vn, cl)
        assert_close(out, expected_decode(q, kc, vc, kn, vn, lens).to(dtype),
                     what=f"decode_step(Hq={Hq}, Hkv={Hkv}, S_max={S_max}, cache_len={lens})",
                     inputs=dict(q=q, k_cache=kc, seed=seed, garbage=garbage),
                     hint="out[b] = attention of q[b] over cache[b, :, :cache_len[b]] "
                          "plus the new token")
        rows = torch.arange(B)
        written = (torch.equal(k_cache[rows, :, cl], kn[:, :, 0])
                   and torch.equal(v_cache[rows, :, cl], vn[:, :, 0]))
        assert written, (
            f"returned caches do not hold k_new/v_new at position cache_len[b] (cache_len={lens})")

    @given(seed=seeds, B=st.integers(1, 3), h=heads(gqa=True), D=head_dims, steps=st.integers(1, 9))
    @settings(max_examples=15)
    def test_token_by_token_equals_causal_pass(self, device, seed, B, h, D, steps):
        """Decoding a sequence one token at a time from an empty cache equals one causal pass."""
        Hq, Hkv = h
        gen = torch.Generator().manual_seed(seed)
        q, k, v = make_qkv(gen, B, Hq, Hkv, steps, steps, D)
        k_cache = torch.full((B, Hkv, steps + 2, D), math.nan, dtype=torch.float64, device=device)
        v_cache = k_cache.clone()
        full = expected_attention(q, k, v, causal=True)
        for t in range(steps):
            cache_len = torch.full((B,), t, dtype=torch.long)
            res = m.decode_step(q[:, :, t:t + 1].to(device), k_cache, v_cache,
                                k[:, :, t:t + 1].to(device), v[:, :, t:t + 1].to(device),
                                cache_len.to(device))
            out, k_cache, v_cache = res
            assert_close(out.cpu(), full[:, :, t:t + 1],
                         what=f"decode step {t} (cache_len={t}) vs causal attention row {t}",
                         inputs=dict(q=q, k=k, v=v, seed=seed),
                         hint="feed the caches returned by the previous step; step t sees tokens 0..t")

    def test_last_slot_is_usable(self, device):
        q, kc, vc, kn, vn, lens = self._case(35, B=2, S_max=5, lens=(4, 1))
        out, k_cache, _ = call_decode(device, q, kc.clone(), vc.clone(), kn, vn, lens)
        assert_close(out, expected_decode(q, kc, vc, kn, vn, [4, 1]),
                     what="decode_step with cache_len = S_max - 1 (the last free slot)",
                     inputs=dict(cache_len=lens, seed=35),
                     hint="cache_len[b] = S_max - 1 is valid: the new token fills the last slot")
        assert torch.equal(k_cache[0, :, 4], kn[0, :, 0])

    @pytest.mark.parametrize("lens", [(5, 1), (2, 6)])
    def test_full_cache_raises(self, device, lens):
        q, kc, vc, kn, vn, _ = self._case(36, B=2, S_max=5, lens=(0, 0), garbage=0.0)
        with pytest.raises(ValueError):
            call_decode(device, q, kc, vc, kn, vn, torch.tensor(lens))

    def test_heads_not_divisible_raises(self, device):
        q, kc, vc, kn, vn, lens = self._case(37, Hq=3, Hkv=2, garbage=0.0)
        with pytest.raises(ValueError):
            call_decode(device, q, kc, vc, kn, vn, lens)

    def test_head_dim_mismatch_raises(self, device):
        q, kc, vc, kn, vn, lens = self._case(38, garbage=0.0)
        with pytest.raises(ValueError):
            call_decode(device, torch.cat([q, q], dim=-1), kc, vc, kn, vn, lens)
