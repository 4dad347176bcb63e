"""Kata 04: attention and one decode step. Tasks as in README.md.

Expected values never come from the module under test: they are float64
`torch.nn.functional.scaled_dot_product_attention` with an explicit boolean mask built
here (and K/V expanded with repeat_interleave for GQA), or a brute-force loop.

A failing check adds the diagnosis of the small "probes" below that fail: a hint that
names a bug comes only from the probe that isolates that bug, and only the most basic
failing probe speaks (see "diagnosis: probes"). Inside each task class the contract checks
come first, then the small targeted checks, then the hypothesis properties.
"""
from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from typing import Callable, Optional

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import assert_close, load_kata_module, max_examples, tolerance

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
    kw = {n: (t.clone().to(device) if isinstance(t, torch.Tensor) else t) for n, t in kw.items()}
    # Copies: a module that writes into its inputs fails test_inputs_unmodified, not every check.
    out = m.attention(q.clone().to(device), k.clone().to(device), v.clone().to(device), **kw)
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


# ---------------------------------------------------------------- diagnosis: probes
# A probe is a tiny input that isolates one feature: one head and no mask for the softmax
# and the scale, one causal case with Sq != Sk, one padding mask, ... A hint that names a
# bug comes only from that bug's probe, and only when the probe fails. A probe lists in
# `after` the more basic probes its input also depends on: when one of those fails, it
# explains this failure as well, and only the more basic diagnosis is shown. Probes run
# only when a check has failed, once per run.
Diagnosis = Optional[str]


@dataclass(frozen=True)
class Probe:
    after: tuple[str, ...]
    run: Callable[[torch.device], Diagnosis]


PROBES: dict[str, Probe] = {}
_PROBE_RESULTS: dict[tuple[str, str], Diagnosis] = {}


def probe(*after: str):
    def register(fn: Callable[[torch.device], Diagnosis]):
        PROBES[fn.__name__.removeprefix("probe_")] = Probe(after, fn)
        return fn
    return register


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """a equals b (float64 tolerance; NaN matches NaN)."""
    if not isinstance(a, torch.Tensor) or tuple(a.shape) != tuple(b.shape):
        return False
    atol, rtol = tolerance(b.dtype if b.dtype in (torch.float32, torch.float64) else torch.float64)
    return bool(torch.allclose(a.to(b.dtype), b, atol=atol, rtol=rtol, equal_nan=True))


def probe_failure(name: str, device) -> Diagnosis:
    """The diagnosis of probe `name` (None when the module passes it), computed once."""
    key = (name, str(device))
    if key not in _PROBE_RESULTS:
        try:
            _PROBE_RESULTS[key] = PROBES[name].run(device)
        except Exception:  # noqa: BLE001 - an exception is shown by the check itself
            _PROBE_RESULTS[key] = None
    return _PROBE_RESULTS[key]


def _with_after(names) -> list[str]:
    """names and every probe they build on, in registration (basic first) order."""
    seen, todo = set(), list(names)
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(PROBES[n].after)
    return [n for n in PROBES if n in seen]


def diagnosis(device, topics) -> str:
    """'' or one '  diagnosis: ...' line per failing probe among `topics` (and the probes
    they build on) that no more basic failing probe explains."""
    lines = []
    for name in _with_after(topics):
        found = probe_failure(name, device)
        if found is None:
            continue
        if any(probe_failure(b, device) is not None for b in _with_after(PROBES[name].after)):
            continue  # a more basic probe fails too: its diagnosis explains this one
        lines.append("\n" + textwrap.fill(f"diagnosis: {found}", width=200, initial_indent="  ",
                                           subsequent_indent="    "))
    return "".join(lines)


def check(device, actual, expected, *, topics, **kw) -> None:
    """assert_close, plus the diagnosis of the probes in `topics` when it fails."""
    __tracebackhide__ = True
    try:
        assert_close(actual, expected, **kw)
    except AssertionError as exc:
        raise AssertionError(f"{exc}{diagnosis(device, topics)}") from None


def fail_unless(device, ok: bool, message: str, *, topics) -> None:
    __tracebackhide__ = True
    if not ok:
        raise AssertionError(f"{message}{diagnosis(device, topics)}")


def _attn(device, q, k, v, **kw) -> torch.Tensor:
    """The module's attention on copies of q, k, v (a probe's own inputs stay intact)."""
    return call(device, q.clone(), k.clone(), v.clone(), **kw).double()


@probe()
def probe_basic(device) -> Diagnosis:
    gen = torch.Generator().manual_seed(101)
    q, k, v = make_qkv(gen, 1, 1, 1, 3, 5, 4)
    q = 2 * q  # scores of size ~4: a wrong scale shows
    out = _attn(device, q, k, v)
    if _same(out, expected_attention(q, k, v)):
        return None
    s = q @ k.transpose(-1, -2)
    where = "(probe: one head, Sq=3, Sk=5, D=4, no mask)"
    mine = [t.clone().to(device) for t in (q, k, v)]
    m.attention(*mine)
    changed = [name for name, t, b in zip("qkv", mine, (q, k, v)) if not torch.equal(t.cpu(), b)]
    if changed:
        return (f"attention changes its input {changed[0]} in place, so the caller's tensor (and "
                "any later use of it) is wrong: x.to(dtype) returns x itself when the dtype "
                "already matches, so mul_/div_/masked_fill_ after it write into the input")
    if _same(out.float(), expected_attention(q, k, v).float()) and not _same(out, expected_attention(q, k, v)):
        return (f"float64 inputs are computed in float32 (the result is right to float32 "
                f"precision only): compute float64 inputs in float64 {where}")
    if _same(out, torch.softmax(s * 0.5, dim=-2) @ v):
        return (f"the softmax runs over the queries (dim=-2): each query's scores must be "
                f"normalised over the KEYS, softmax(scores, dim=-1) {where}")
    if _same(out, torch.softmax(s, dim=-1) @ v):
        return f"the scores are not scaled: scale=None means D ** -0.5 = 0.5 here {where}"
    if _same(out, torch.softmax(s / 4, dim=-1) @ v):
        return f"the scores are divided by D; the default scale is D ** -0.5, 1 / sqrt(D) {where}"
    return (f"plain attention is already wrong on a small case {where}: out = "
            f"softmax(q @ k^T * D**-0.5, dim=-1) @ v; get this right first")


@probe("basic")
def probe_scale(device) -> Diagnosis:
    gen = torch.Generator().manual_seed(102)
    q, k, v = make_qkv(gen, 1, 1, 1, 3, 5, 4)
    q = 2 * q
    wrong = [s for s in (0.7, 0.0) if not _same(_attn(device, q, k, v, scale=s),
                                                expected_attention(q, k, v, scale=s))]
    if not wrong:
        return None
    default = _attn(device, q, k, v)
    if 0.7 in wrong and _same(_attn(device, q, k, v, scale=0.7), default):
        return "the scale argument is ignored: a given scale replaces D ** -0.5 (probe: scale=0.7)"
    if wrong == [0.0] and _same(_attn(device, q, k, v, scale=0.0), default):
        return ("scale=0.0 is treated as if no scale were given (`scale or D ** -0.5`?): test "
                "`scale is None`; a given scale is used as is, even 0 (probe: scale=0.0)")
    return f"a given scale must multiply the scores as is (probe: scale={wrong[0]})"


@probe("basic")
def probe_overflow(device) -> Diagnosis:
    q = torch.tensor([[300.0, -200.0], [-300.0, 100.0]], dtype=torch.float64).reshape(1, 1, 2, 2)
    k = torch.tensor([[40.0, 10.0], [-20.0, 30.0], [10.0, -50.0]], dtype=torch.float64).reshape(1, 1, 3, 2)
    v = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 0.0]], dtype=torch.float64).reshape(1, 1, 3, 2)
    out = _attn(device, q, k, v, scale=1.0)  # scores from -19000 to 13000
    if _same(out, expected_attention(q, k, v, scale=1.0)):
        return None
    if bool(torch.isnan(out).any()):
        return ("scores of size ~1e4 give NaN: exp(score) overflows to inf (inf / inf = NaN), or "
                "underflows to 0 for every key (0 / 0): subtract EACH ROW's max score before exp "
                "(torch.softmax does) (probe: scale=1, scores -19000..13000)")
    return "large scores give wrong values: softmax(s) = exp(s - max_row s) / sum exp(s - max_row s)"


@probe("basic")
def probe_strided(device) -> Diagnosis:
    gen = torch.Generator().manual_seed(103)
    q = randn((2, 3, 2, 4), gen).to(device).transpose(1, 2)  # (B, H=2, Sq=3, D), strided
    kv = randn((2, 5, 4, 4), gen).to(device).transpose(1, 2)
    k, v = kv[:, :2], kv[:, 2:]  # strided, and not dense either
    expected = expected_attention(q, k, v)
    try:
        out = m.attention(q, k, v).cpu().double()  # no copies: .clone() could make them contiguous
    except RuntimeError as exc:
        return (f"strided (transposed) inputs raise {type(exc).__name__}: {str(exc)[:60]}... "
                "q.transpose(1, 2) is a view with other strides: use reshape (not view), "
                "matmul/einsum, or .contiguous() first")
    if _same(out, expected):
        return None
    return ("strided (transposed) inputs give wrong values while contiguous ones are right: "
            "do not assume the memory layout (no as_strided / data_ptr arithmetic)")


@probe("basic", "overflow")
def probe_nan(device) -> Diagnosis:
    gen = torch.Generator().manual_seed(104)
    q, k, v = make_qkv(gen, 1, 1, 1, 3, 4, 4)
    q[0, 0, 1, 2] = math.nan
    out = _attn(device, q, k, v)
    if bool(torch.isnan(out[0, 0, 1]).all()) and _same(out[0, 0, [0, 2]], expected_attention(q, k, v)[0, 0, [0, 2]]):
        return None
    if not bool(torch.isnan(out).any()):
        return ("a NaN in q came out as a finite number: something hides NaN (torch.nan_to_num, "
                "or a where(isnan(...)) cleanup). Only a query that sees no key outputs zeros: "
                "find those rows from the mask (allowed.any(dim=-1)) and let every other NaN through "
                "(probe: NaN in q[0, 0, 1])")
    return ("a NaN in query 1 must make exactly that query's output NaN, and leave the other "
            "queries alone (probe: NaN in q[0, 0, 1], no mask)")


@probe("basic")
def probe_causal(device) -> Diagnosis:
    gen = torch.Generator().manual_seed(105)
    cases = [make_qkv(gen, 1, 1, 1, 3, 7, 4), make_qkv(gen, 1, 1, 1, 1, 5, 4)]
    outs = [_attn(device, q, k, v, causal=True) for q, k, v in cases]
    if all(_same(o, expected_attention(q, k, v, causal=True)) for o, (q, k, v) in zip(outs, cases)):
        return None

    def like(mask_of) -> bool:
        return all(_same(o, expected_attention(q, k, v, key_padding_mask=None) if mask_of is None
                         else _masked(q, k, v, mask_of(q.shape[2], k.shape[2])))
                   for o, (q, k, v) in zip(outs, cases))

    where = "(probe: causal, Sq=3 with Sk=7, and Sq=1 with Sk=5)"
    if like(lambda sq, sk: torch.ones(sq, sk, dtype=torch.bool).tril(0)):
        return ("the causal mask is aligned top-left (query i sees keys 0..i, like torch's "
                "is_causal); ours is bottom-right: query i sees keys j <= i + (Sk - Sq), so the "
                f"last query sees every key {where}")
    if like(lambda sq, sk: torch.ones(sq, sk, dtype=torch.bool).tril(sk - sq - 1)):
        return ("a query does not see the key at its own position: j <= i + (Sk - Sq) includes "
                f"j = i + (Sk - Sq) (<=, not <) {where}")
    if like(None):
        return f"causal=True changes nothing when Sq != Sk: the mask is not applied {where}"
    return f"causal: query i sees exactly the keys j <= i + (Sk - Sq) {where}"


def _masked(q, k, v, allowed: torch.Tensor) -> torch.Tensor:
    """float64 attention with an explicit (Sq, Sk) or (B, 1, Sq, Sk) mask; blind rows 0."""
    allowed = allowed.expand(q.shape[0], 1, q.shape[2], k.shape[2])
    sees = allowed.any(-1, keepdim=True)
    out = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=allowed | ~sees)
    return torch.where(sees, out, torch.zeros((), dtype=out.dtype))


@probe("basic")
def probe_padding(device) -> Diagnosis:
    gen = torch.Generator().manual_seed(107)
    q, k, v = make_qkv(gen, 2, 1, 1, 6, 6, 4)
    mask = torch.tensor([[True, False, True, True, False, True], [False, True, True, False, False, True]])
    out = _attn(device, q, k, v, key_padding_mask=mask)
    if _same(out, expected_attention(q, k, v, key_padding_mask=mask)):
        return None
    where = "(probe: B=2, Sq=Sk=6, no causal)"
    if _same(out, expected_attention(q, k, v, key_padding_mask=~mask)):
        return f"key_padding_mask is read upside down: True means ATTEND to that key, False masks it {where}"
    if _same(out, expected_attention(q, k, v)):
        return f"key_padding_mask is not applied: keys where it is False must get weight 0 {where}"
    if _same(out, expected_attention(q, k, v, key_padding_mask=mask[:1].expand(2, 6))):
        return f"every batch row uses row 0 of key_padding_mask: row b must use key_padding_mask[b] {where}"
    if _same(out, _masked(q, k, v, mask[:, None, :, None])):
        return ("key_padding_mask masks queries instead of keys: it is (B, Sk) and broadcasts "
                f"against the (B, H, Sq, Sk) scores as mask[:, None, None, :] {where}")
    return f"key_padding_mask[b, j] == False must give key j of batch row b weight 0 {where}"


@probe("causal", "padding")
def probe_blind(device) -> Diagnosis:
    gen = torch.Generator().manual_seed(106)
    q, k, v = make_qkv(gen, 2, 1, 1, 5, 3, 4)
    cases = [dict(causal=True), dict(key_padding_mask=torch.tensor([[False] * 3, [True, False, True]]))]
    outs = [_attn(device, q, k, v, **kw) for kw in cases]
    if all(_same(o, expected_attention(q, k, v, **kw)) for o, kw in zip(outs, cases)):
        return None
    where = "(probe: causal with Sq=5 > Sk=3, and a key_padding_mask row that is all False)"
    if any(bool(torch.isnan(o).any()) for o in outs):
        return ("a query that sees no key got NaN (the softmax of a row of -inf is 0/0): such a "
                f"query outputs zeros; find those rows with allowed.any(dim=-1) {where}")
    return f"a query that sees no key outputs zeros {where}"


@probe("padding", "overflow")
def probe_finite_fill(device) -> Diagnosis:
    q = torch.tensor([-1.0, -2.0], dtype=torch.float64).reshape(1, 1, 2, 1)
    k = torch.tensor([1e5, -1e5, 1e5 + 1, 1e5 + 3], dtype=torch.float64).reshape(1, 1, 4, 1)
    v = torch.tensor([1.0, -50.0, 2.0, 3.0], dtype=torch.float64).reshape(1, 1, 4, 1)
    mask = torch.tensor([[True, False, True, True]])
    out = _attn(device, q, k, v, scale=1.0, key_padding_mask=mask)
    if _same(out, expected_attention(q, k, v, scale=1.0, key_padding_mask=mask)):
        return None
    return ("a padded-out key still gets weight when every visible score is very negative "
            "(~-1e5 here): masked scores must be -inf, not a finite number such as -1e4 or "
            "finfo.min / 2 (probe: D=1, scale=1, one masked key scoring +1e5)")


@probe("basic")
def probe_gqa(device) -> Diagnosis:
    gen = torch.Generator().manual_seed(110)
    q, k, v = make_qkv(gen, 1, 4, 2, 2, 3, 4)
    out = _attn(device, q, k, v)
    if _same(out, expected_attention(q, k, v)):
        return None
    modulo = torch.arange(4) % 2
    if _same(out, expected_attention(q, k[:, modulo], v[:, modulo])):
        return ("query head h reads kv head h % Hkv (k.repeat / tile); it must read kv head "
                "h // (Hq // Hkv): consecutive query heads share a kv head "
                "(k.repeat_interleave(Hq // Hkv, dim=1)) (probe: Hq=4, Hkv=2)")
    return "query head h must read kv head h // (Hq // Hkv) (probe: Hq=4, Hkv=2, no mask)"


def _decode_probe_case(seed, lens, garbage, S_max=6):
    gen = torch.Generator().manual_seed(seed)
    B = len(lens)
    kc, vc = make_cache(gen, B, 1, S_max, 4, lens, garbage=garbage)
    q, kn, vn = (randn((B, 1, 1, 4), gen) for _ in range(3))
    return q, kc, vc, kn, vn, torch.tensor(lens, dtype=torch.long)


def _decode(device, q, kc, vc, kn, vn, cl):
    out, k_cache, v_cache = m.decode_step(*(t.clone().to(device) for t in (q, kc, vc, kn, vn, cl)))
    return out.cpu().double(), k_cache.cpu(), v_cache.cpu()


@probe()
def probe_decode_write(device) -> Diagnosis:
    q, kc, vc, kn, vn, cl = _decode_probe_case(111, (3, 0, 1), 0.0)
    _, k_cache, _ = _decode(device, q, kc, vc, kn, vn, cl)
    at = [int(n) for n in cl]

    def holds(pos) -> bool:
        return all(torch.equal(k_cache[b, :, p], kn[b, :, 0]) for b, p in enumerate(pos) if p < 6)

    if holds(at) and torch.equal(k_cache[0, :, :3], kc[0, :, :3]):
        return None
    where = "(probe: cache_len = [3, 0, 1], S_max = 6)"
    if holds([n + 1 for n in at]):
        return f"the new K/V is written at cache_len[b] + 1; it goes to slot cache_len[b] {where}"
    if holds([at[0]] * 3):
        return f"every row's new K/V is written at cache_len[0]: row b uses its own cache_len[b] {where}"
    return f"k_new/v_new go to slot cache_len[b] of row b, the slots before it unchanged {where}"


@probe("basic", "padding", "decode_write")
def probe_decode_read(device) -> Diagnosis:
    lens = [3, 0, 5]
    q, kc, vc, kn, vn, cl = _decode_probe_case(112, lens, 0.5)
    out, _, _ = _decode(device, q, kc, vc, kn, vn, cl)
    if _same(out, expected_decode(q, kc, vc, kn, vn, lens)):
        return None
    where = "(probe: cache_len = [3, 0, 5], S_max = 6, finite values in the unused slots)"
    rows = []  # what each row gets if the query sees positions 0..n-1 only
    for b, n in enumerate(lens):
        rows.append(expected_attention(q[b:b + 1], kc[b:b + 1, :, :n], vc[b:b + 1, :, :n]) if n
                    else torch.zeros(1, 1, 1, 4, dtype=torch.float64))
    if _same(out, torch.cat(rows)):
        return ("the query does not see the new token: it attends over positions "
                f"0..cache_len[b] INCLUSIVE, the token just written included {where}")
    if _same(out, expected_decode(q, kc, vc, kn, vn, [lens[0]] * 3)[:, :, :, :]) or \
            _same(out, expected_decode(q, kc, vc, kn, vn, [max(lens)] * 3)):
        return f"every row attends over the same length: row b sees positions 0..cache_len[b] {where}"
    return f"row b's query attends over positions 0..cache_len[b] of row b's cache {where}"


@probe("decode_read")
def probe_decode_garbage(device) -> Diagnosis:
    lens = [3, 0, 5]
    q, kc, vc, kn, vn, cl = _decode_probe_case(112, lens, math.nan)
    out, _, _ = _decode(device, q, kc, vc, kn, vn, cl)
    if _same(out, expected_decode(q, kc, vc, kn, vn, lens)):
        return None
    return ("NaN in the unused cache slots (past cache_len[b]) reaches the output: masking the "
            "scores gives those slots weight 0, but 0 * NaN = NaN in probs @ V; slice them off or "
            "zero them (torch.where) before the product (probe: NaN past cache_len)")


# =============================================================================== Task 1
class TestTask1Attention:
    """Multi-head attention without masks: shapes, dtype, inputs untouched, values, scale."""

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
    def test_output_shape_and_dtype(self, device, dtype):
        gen = torch.Generator().manual_seed(0)
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
            pytest.fail("attention(q with D=8, k and v with D=6) must raise ValueError "
                        "(q and k must have the same head dim)")

    def test_single_query_single_head(self, device):
        """The smallest case with a softmax to get right: one head, Sq=3, Sk=5, D=4."""
        gen = torch.Generator().manual_seed(101)
        q, k, v = make_qkv(gen, 1, 1, 1, 3, 5, 4)
        q = 2 * q
        check(device, call(device, q, k, v), expected_attention(q, k, v), topics=("basic",),
              what="attention(q, k, v), one head, Sq=3, Sk=5, D=4",
              inputs=dict(q=q, k=k, v=v, seed=101),
              hint="out = softmax(q @ k^T * D**-0.5, dim=-1) @ v")

    def test_single_key_returns_its_value(self, device):
        """One key: softmax over one score is 1, so every query outputs that value."""
        gen = torch.Generator().manual_seed(3)
        q, k, v = make_qkv(gen, 2, 2, 2, 5, 1, 4)
        check(device, call(device, q, k, v), v.expand(2, 2, 5, 4), topics=("basic",),
              what="attention with Sk=1", inputs=dict(q=q, k=k, v=v, seed=3),
              hint="with one key its weight is exactly 1, so each query outputs that key's value")

    def test_uniform_scores_average_values(self, device):
        """Identical keys give equal weights: the output is the mean of v over keys."""
        gen = torch.Generator().manual_seed(4)
        q = randn((1, 1, 3, 4), gen)
        k = randn((1, 1, 1, 4), gen).expand(1, 1, 6, 4).contiguous()
        v = randn((1, 1, 6, 4), gen)
        check(device, call(device, q, k, v), v.mean(dim=2, keepdim=True).expand(1, 1, 3, 4),
              topics=("basic",), what="attention with 6 identical keys",
              inputs=dict(q=q, k=k, v=v, seed=4),
              hint="identical keys get identical weights 1/6: each query outputs the mean of v over the keys")

    def test_default_scale_is_rsqrt_d(self, device):
        """scale=None and scale=D**-0.5 give the same result; scale=1 does not."""
        gen = torch.Generator().manual_seed(5)
        q, k, v = make_qkv(gen, 1, 2, 2, 4, 9, 16)
        q = 3 * q  # large scores make a wrong scale obvious
        check(device, call(device, q, k, v), expected_attention(q, k, v, scale=16 ** -0.5),
              topics=("basic",), what="attention(q, k, v) with D=16",
              inputs=dict(q=q, k=k, v=v, seed=5),
              hint="the default scale is D ** -0.5 = 0.25 here")

    @given(seed=seeds, Sq=lengths, Sk=lengths, D=head_dims,
           scale=st.sampled_from([0.0, 0.05, 0.5, 1.0, 2.5, -1.0]))
    def test_custom_scale(self, device, seed, Sq, Sk, D, scale):
        gen = torch.Generator().manual_seed(seed)
        q, k, v = make_qkv(gen, 2, 2, 2, Sq, Sk, D)
        check(device, call(device, q, k, v, scale=scale), expected_attention(q, k, v, scale=scale),
              topics=("scale",), what=f"attention(q, k, v, scale={scale})",
              inputs=dict(q=q, k=k, v=v, scale=scale, seed=seed),
              hint="a given scale replaces D**-0.5 and is used as is, even 0 or negative")

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
        fail_unless(device, not torch.isnan(out).any(),
                    f"attention with integer q, k in [-100, 100] (scores up to ~1e4, {dtype}) gave "
                    f"{int(torch.isnan(out).sum())} NaN; seed=6", topics=("overflow",))
        check(device, out, expected_attention(q, k, v).to(dtype), topics=("overflow",),
              what="attention with scores in the thousands", inputs=dict(q=q, k=k, v=v, seed=6),
              hint="the softmax must stay exact however large the scores are")

    def test_non_contiguous_inputs(self, device):
        """q, k, v as a model makes them: (B, S, H, D) projections viewed as (B, H, S, D)."""
        gen = torch.Generator().manual_seed(7)
        q = randn((2, 5, 3, 8), gen).to(device).transpose(1, 2)  # (B, H, Sq, D), strided
        kv = randn((2, 9, 6, 8), gen).to(device).transpose(1, 2)  # K and V heads in one tensor
        k, v = kv[:, :3], kv[:, 3:]
        expected = expected_attention(q, k, v)
        try:
            out = m.attention(q, k, v)
        except RuntimeError as exc:
            raise AssertionError(
                f"attention on transposed (non-contiguous) q (2, 3, 5, 8), k and v (2, 3, 9, 8) raised\n"
                f"  {type(exc).__name__}: {str(exc)[:200]}{diagnosis(device, ('strided',))}") from None
        check(device, out.cpu() if isinstance(out, torch.Tensor) else out, expected,
              topics=("strided",), what="attention on transposed (non-contiguous) q, k, v",
              inputs=dict(q=q.cpu(), k=k.cpu(), v=v.cpu(), seed=7),
              hint="any strides are valid input: the values must not depend on the memory layout")

    @pytest.mark.parametrize("where", ["q", "k", "v"])
    def test_nan_input_reaches_the_queries_that_see_it(self, device, where):
        """NaN is never hidden: NaN in q makes that query's output NaN, NaN in a key makes
        every query of that head NaN, NaN in one value entry makes that output column NaN.
        Everything else stays exact."""
        gen = torch.Generator().manual_seed(8)
        q, k, v = make_qkv(gen, 2, 2, 2, 3, 4, 4, torch.float32)
        expected = expected_attention(q, k, v).float()
        if where == "q":
            q[1, 0, 2, 1] = math.nan
            expected[1, 0, 2, :] = math.nan
            poisoned = "q[1, 0, 2, 1] (batch 1, head 0, query 2)"
        elif where == "k":
            k[0, 1, 3, 2] = math.nan
            expected[0, 1, :, :] = math.nan
            poisoned = "k[0, 1, 3, 2] (batch 0, head 1, key 3: every query of that head sees it)"
        else:
            v[1, 1, 2, 3] = math.nan
            expected[1, 1, :, 3] = math.nan
            poisoned = "v[1, 1, 2, 3] (batch 1, head 1, key 2, column 3)"
        check(device, call(device, q, k, v), expected, topics=("nan",),
              what=f"attention with NaN in {poisoned}", inputs=dict(q=q, k=k, v=v, seed=8),
              hint="a NaN input must come out as NaN in exactly the outputs it feeds (and nowhere "
                   "else): hiding it would hide a broken layer upstream")

    @pytest.mark.parametrize("dtype", FLOATS)
    @given(seed=seeds, B=st.integers(1, 3), h=heads(gqa=False), Sq=lengths, Sk=lengths, D=head_dims)
    def test_matches_sdpa(self, device, dtype, seed, B, h, Sq, Sk, D):
        gen = torch.Generator().manual_seed(seed)
        q, k, v = make_qkv(gen, B, h[0], h[1], Sq, Sk, D, dtype)
        check(device, call(device, q, k, v), expected_attention(q, k, v).to(dtype), topics=("basic",),
              what="attention(q, k, v)", inputs=dict(q=q, k=k, v=v, seed=seed),
              hint="softmax(q @ k^T * D**-0.5, dim=-1) @ v, computed in float64 for float64 inputs")

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    @given(seed=seeds, B=st.integers(1, 2), h=heads(gqa=False), Sq=lengths, Sk=lengths, D=head_dims)
    @settings(max_examples=max_examples(15))
    def test_half_precision(self, device, dtype, seed, B, h, Sq, Sk, D):
        gen = torch.Generator().manual_seed(seed)
        q, k, v = make_qkv(gen, B, h[0], h[1], Sq, Sk, D, dtype)
        out = call(device, q, k, v)
        atol, rtol = HALF_TOL[dtype]  # README "Tolerances": scores may be rounded to dtype
        check(device, out, expected_attention(q, k, v).to(dtype), topics=("basic",),
              what=f"attention in {dtype}", inputs=dict(q=q, k=k, v=v, seed=seed), atol=atol, rtol=rtol,
              hint="compute the softmax in float32 and cast the output back to q's dtype")


# =============================================================================== Task 2
MASK_TOPICS = ("causal", "padding", "blind", "finite_fill")


class TestTask2Masks:
    """Causal (bottom-right) and key padding masks; a query that sees nothing outputs zeros.
    The small targeted checks come first: their failures say the most about the bug."""

    def test_mask_unmodified(self, device):
        gen = torch.Generator().manual_seed(11)
        q, k, v = (t.to(device) for t in make_qkv(gen, 2, 2, 2, 5, 5, 4, torch.float32))
        mask = torch.tensor([[True, True, False, True, False], [False] * 5], device=device)
        before = [t.clone() for t in (q, k, v, mask)]
        m.attention(q, k, v, causal=True, key_padding_mask=mask)
        for name, t, b in zip(["q", "k", "v", "key_padding_mask"], (q, k, v, mask), before):
            assert torch.equal(t, b), f"attention(causal=True, key_padding_mask=...) modified {name}"

    def test_causal_single_query_sees_every_key(self, device):
        """Decode (Sq = 1): the one query is the newest token and sees all Sk keys."""
        gen = torch.Generator().manual_seed(13)
        q, k, v = make_qkv(gen, 2, 2, 2, 1, 6, 4)
        check(device, call(device, q, k, v, causal=True), expected_attention(q, k, v), topics=("causal",),
              what="causal attention with Sq=1, Sk=6", inputs=dict(q=q, k=k, v=v, seed=13),
              hint="causal is aligned bottom-right: query i sees keys j <= i + (Sk - Sq), so with "
                   "Sq = 1 the query sees all 6 keys")

    def test_causal_chunked_prefill(self, device):
        """Sq=3 new queries after 4 cached keys: query i sees keys 0..4+i."""
        gen = torch.Generator().manual_seed(14)
        q, k, v = make_qkv(gen, 1, 2, 2, 3, 7, 4)
        expected = torch.cat([expected_attention(q[:, :, i:i + 1], k[:, :, :5 + i], v[:, :, :5 + i])
                              for i in range(3)], dim=2)  # brute force: one query at a time
        check(device, call(device, q, k, v, causal=True), expected, topics=("causal",),
              what="causal attention with Sq=3, Sk=7", inputs=dict(q=q, k=k, v=v, seed=14),
              hint="query i sees keys j <= i + (Sk - Sq) = i + 4 (bottom-right), j = i + 4 included")

    def test_causal_square_matches_torch_is_causal(self, device):
        """For Sq == Sk bottom-right and top-left alignment agree: torch's is_causal applies."""
        gen = torch.Generator().manual_seed(12)
        q, k, v = make_qkv(gen, 2, 3, 3, 7, 7, 8)
        expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        check(device, call(device, q, k, v, causal=True), expected, topics=("causal",),
              what="causal attention, Sq = Sk = 7", inputs=dict(q=q, k=k, v=v, seed=12),
              hint="query i sees keys 0..i; the mask is applied before the softmax")

    def test_causal_more_queries_than_keys(self, device):
        """Sq > Sk: the first Sq - Sk queries see no key and output zeros."""
        gen = torch.Generator().manual_seed(15)
        q, k, v = make_qkv(gen, 2, 2, 2, 6, 4, 4)
        out = call(device, q, k, v, causal=True)
        fail_unless(device, not torch.isnan(out).any(),
                    f"causal attention with Sq=6 > Sk=4 gave {int(torch.isnan(out).sum())} NaN "
                    "(queries 0 and 1 see no key and must output zeros); seed=15",
                    topics=("blind",))
        check(device, out, expected_attention(q, k, v, causal=True), topics=("blind",),
              what="causal attention with Sq=6, Sk=4", inputs=dict(q=q, k=k, v=v, seed=15),
              hint="query i sees keys j <= i - 2: queries 0 and 1 see none and output zeros")

    def test_padding_per_batch_row(self, device):
        """Each batch row has its own mask; True = attend."""
        gen = torch.Generator().manual_seed(17)
        q, k, v = make_qkv(gen, 2, 1, 1, 6, 6, 4)
        mask = torch.tensor([[True, False, True, True, False, True], [False, True, True, False, False, True]])
        check(device, call(device, q, k, v, key_padding_mask=mask),
              expected_attention(q, k, v, key_padding_mask=mask), topics=("padding",),
              what="attention(key_padding_mask=...), B=2, Sq=Sk=6",
              inputs=dict(q=q, k=k, v=v, key_padding_mask=mask, seed=17),
              hint="key_padding_mask[b, j] True means key j of batch row b may be attended, "
                   "False gives it weight 0")

    def test_no_nan_when_everything_is_masked(self, device):
        gen = torch.Generator().manual_seed(10)
        q, k, v = make_qkv(gen, 2, 2, 2, 3, 4, 4, torch.float32)
        mask = torch.tensor([[False] * 4, [True, False, True, False]])
        out = call(device, q, k, v, key_padding_mask=mask)
        fail_unless(device, not torch.isnan(out).any(),
                    "batch row 0 has every key masked (key_padding_mask row all False) and its "
                    f"output has {int(torch.isnan(out[0]).sum())} NaN: a query that sees no key "
                    "outputs zeros; seed=10", topics=("blind",))
        check(device, out[0], torch.zeros(2, 3, 4), topics=("blind",),
              what="output of a fully masked batch row", inputs=dict(key_padding_mask=mask, seed=10),
              hint="a query that sees no key outputs zeros")

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
        check(device, out2, out, topics=("padding", "finite_fill"),
              what="attention after changing only masked keys (K to 1e3, V to -1e3)",
              inputs=dict(key_padding_mask=mask, seed=16),
              hint="a masked key gets weight exactly 0, whatever its K and V")

    @pytest.mark.parametrize("dtype", FLOATS)
    @pytest.mark.parametrize("causal", [False, True], ids=["padding", "padding+causal"])
    def test_masked_keys_invisible_at_any_score(self, device, dtype, causal):
        """Visible keys score about -1e5, masked keys +1e5 (exact values, D=1, scale=1): a
        masked key gets weight 0 whatever its score."""
        q = torch.tensor([-1.0, -2.0], dtype=dtype).reshape(1, 1, 2, 1)
        # keys 0, 2, 3 visible; key 1 padded out; key 4 hidden from query 0 by the causal mask
        k = torch.tensor([1e5, -1e5, 1e5 + 1, 1e5 + 3, -1e5], dtype=dtype).reshape(1, 1, 5, 1)
        v = torch.tensor([1.0, -50.0, 2.0, 3.0, -70.0], dtype=dtype).reshape(1, 1, 5, 1)
        mask = torch.tensor([[True, False, True, True, causal]])
        out = call(device, q, k, v, causal=causal, scale=1.0, key_padding_mask=mask)
        check(device, out, expected_attention(q, k, v, causal=causal, scale=1.0, key_padding_mask=mask).to(dtype),
              topics=("finite_fill",) + (("causal",) if causal else ()),
              what=f"attention(causal={causal}) with visible scores ~-1e5 and masked scores +1e5",
              inputs=dict(q=q, k=k, v=v, key_padding_mask=mask),
              hint="a masked key gets weight exactly 0, whatever its score; the softmax's max is "
                   "taken over the visible scores")

    @pytest.mark.parametrize("dtype", FLOATS)
    @given(seed=seeds, B=st.integers(1, 3), h=heads(gqa=False), Sq=lengths, Sk=lengths, D=head_dims)
    def test_causal_matches_sdpa(self, device, dtype, seed, B, h, Sq, Sk, D):
        gen = torch.Generator().manual_seed(seed)
        q, k, v = make_qkv(gen, B, h[0], h[1], Sq, Sk, D, dtype)
        check(device, call(device, q, k, v, causal=True), expected_attention(q, k, v, causal=True).to(dtype),
              topics=("causal", "blind"), what=f"attention(causal=True), Sq={Sq}, Sk={Sk}",
              inputs=dict(q=q, k=k, v=v, seed=seed),
              hint="allowed[i, j] = j <= i + (Sk - Sq); rows with no allowed key are zeros")

    @pytest.mark.parametrize("dtype", FLOATS)
    @given(data=st.data(), seed=seeds, B=st.integers(1, 3), h=heads(gqa=False), Sq=lengths,
           Sk=lengths, D=head_dims, causal=st.booleans())
    def test_padding_matches_sdpa(self, device, dtype, data, seed, B, h, Sq, Sk, D, causal):
        gen = torch.Generator().manual_seed(seed)
        q, k, v = make_qkv(gen, B, h[0], h[1], Sq, Sk, D, dtype)
        mask = data.draw(padding_masks(B, Sk), label="key_padding_mask")
        out = call(device, q, k, v, causal=causal, key_padding_mask=mask)
        check(device, out, expected_attention(q, k, v, causal=causal, key_padding_mask=mask).to(dtype),
              topics=MASK_TOPICS, what=f"attention(causal={causal}, key_padding_mask=...), Sq={Sq}, Sk={Sk}",
              inputs=dict(q=q, k=k, v=v, key_padding_mask=mask, seed=seed),
              hint="key_padding_mask[b, j] True means key j of batch row b may be attended; "
                   "it combines (AND) with the causal mask; no visible key -> zeros")


# =============================================================================== Task 3
class TestTask3GroupedQuery:
    """GQA and MQA: query head h reads kv head h // (Hq // Hkv)."""

    def test_heads_not_divisible_raises(self, device):
        gen = torch.Generator().manual_seed(20)
        q, k, v = (t.to(device) for t in make_qkv(gen, 1, 6, 4, 3, 3, 4))
        with pytest.raises(ValueError):
            m.attention(q, k, v)
            pytest.fail("attention with Hq=6, Hkv=4 must raise ValueError (Hq % Hkv != 0)")

    def test_output_shape_gqa(self, device):
        gen = torch.Generator().manual_seed(21)
        q, k, v = make_qkv(gen, 2, 8, 2, 3, 5, 4, torch.float32)
        out = call(device, q, k, v, causal=True)
        assert tuple(out.shape) == (2, 8, 3, 4), (
            f"GQA attention with Hq=8, Hkv=2 returned {tuple(out.shape)}, expected (B, Hq, Sq, D) = (2, 8, 3, 4)")
        assert out.dtype == torch.float32, f"GQA attention on float32 inputs returned {out.dtype}"

    def test_head_mapping_consecutive_groups(self, device):
        """Hq=4, Hkv=2: heads 0,1 read kv head 0 and heads 2,3 read kv head 1."""
        gen = torch.Generator().manual_seed(22)
        q = randn((1, 1, 2, 4), gen).expand(1, 4, 2, 4).contiguous()  # the same query in every head
        k, v = randn((1, 2, 5, 4), gen), randn((1, 2, 5, 4), gen)
        out = call(device, q, k, v)
        for h in range(4):
            kv = slice(h // 2, h // 2 + 1)
            expected = expected_attention(q[:, h:h + 1], k[:, kv], v[:, kv])
            check(device, out[:, h:h + 1], expected, topics=("gqa",), what=f"query head {h} of 4 (Hkv=2)",
                  inputs=dict(q=q, k=k, v=v, seed=22),
                  hint=f"query head h reads kv head h // (Hq // Hkv) = {h // 2}")

    def test_non_contiguous_inputs(self, device):
        """GQA, causal and padding on strided views: (B, S, H, D) projections transposed."""
        gen = torch.Generator().manual_seed(23)
        q = randn((2, 5, 6, 8), gen).to(device).transpose(1, 2)  # (B, Hq=6, Sq, D), strided
        kv = randn((2, 9, 4, 8), gen).to(device).transpose(1, 2)  # K and V heads in one tensor
        k, v = kv[:, :2], kv[:, 2:]  # Hkv = 2
        mask = (torch.rand(9, 2, generator=gen) < 0.7).to(device).t()  # (B, Sk), strided
        topics = ("strided", "gqa") + MASK_TOPICS
        expected = expected_attention(q, k, v, causal=True, key_padding_mask=mask)
        try:
            out = m.attention(q, k, v, causal=True, key_padding_mask=mask)
        except RuntimeError as exc:
            raise AssertionError(
                f"GQA attention (Hq=6, Hkv=2, causal, padded) on transposed q, k, v and mask raised\n"
                f"  {type(exc).__name__}: {str(exc)[:200]}{diagnosis(device, topics)}") from None
        check(device, out.cpu() if isinstance(out, torch.Tensor) else out, expected, topics=topics,
              what="GQA attention (Hq=6, Hkv=2, causal, padded) on transposed q, k, v and mask",
              inputs=dict(q=q.cpu(), k=k.cpu(), v=v.cpu(), key_padding_mask=mask.cpu(), seed=23),
              hint="any strides are valid input: the values must not depend on the memory layout")

    @pytest.mark.parametrize("dtype", FLOATS)
    @given(data=st.data(), seed=seeds, B=st.integers(1, 2), h=heads(gqa=True), Sq=lengths,
           Sk=lengths, D=head_dims, causal=st.booleans(), padded=st.booleans())
    def test_gqa_matches_sdpa(self, device, dtype, data, seed, B, h, Sq, Sk, D, causal, padded):
        gen = torch.Generator().manual_seed(seed)
        q, k, v = make_qkv(gen, B, h[0], h[1], Sq, Sk, D, dtype)
        mask = data.draw(padding_masks(B, Sk), label="key_padding_mask") if padded else None
        out = call(device, q, k, v, causal=causal, key_padding_mask=mask)
        expected = expected_attention(q, k, v, causal=causal, key_padding_mask=mask).to(dtype)
        check(device, out, expected, topics=("gqa",) + MASK_TOPICS,
              what=f"attention with Hq={h[0]}, Hkv={h[1]}, causal={causal}, Sq={Sq}, Sk={Sk}",
              inputs=dict(q=q, k=k, v=v, key_padding_mask=mask, seed=seed),
              hint="query head h reads kv head h // (Hq // Hkv)")

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    @given(seed=seeds, h=heads(gqa=True), Sq=lengths, Sk=lengths, D=head_dims, causal=st.booleans())
    @settings(max_examples=max_examples(10))
    def test_gqa_half_precision(self, device, dtype, seed, h, Sq, Sk, D, causal):
        gen = torch.Generator().manual_seed(seed)
        q, k, v = make_qkv(gen, 2, h[0], h[1], Sq, Sk, D, dtype)
        out = call(device, q, k, v, causal=causal)
        assert out.dtype == dtype, f"attention on {dtype} inputs returned {out.dtype}: cast back to q's dtype"
        atol, rtol = HALF_TOL[dtype]  # README "Tolerances"
        check(device, out, expected_attention(q, k, v, causal=causal).to(dtype),
              topics=("gqa", "causal", "blind"),
              what=f"GQA attention in {dtype}, Hq={h[0]}, Hkv={h[1]}, causal={causal}",
              inputs=dict(q=q, k=k, v=v, seed=seed), atol=atol, rtol=rtol,
              hint="compute in float32 and cast the output back to q's dtype")


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
    # Copies of q, k_new, v_new, cache_len: writing into them fails test_inputs_unmodified only.
    q, k_new, v_new, cache_len = (t.clone() for t in (q, k_new, v_new, cache_len))
    res = m.decode_step(*(t.to(device) for t in (q, k_cache, v_cache, k_new, v_new, cache_len)))
    assert isinstance(res, tuple) and len(res) == 3, (
        f"decode_step must return the tuple (out, k_cache, v_cache), got {type(res).__name__}")
    return tuple(t.cpu() for t in res)


@st.composite
def decode_cases(draw, max_s: int = 12):
    B = draw(st.integers(1, 4))
    Hq, Hkv = draw(heads(gqa=True))
    D = draw(head_dims)
    S_max = draw(st.integers(1, max_s))
    lens = draw(st.lists(st.integers(0, S_max - 1), min_size=B, max_size=B))
    return B, Hq, Hkv, D, S_max, lens


DECODE_TOPICS = ("decode_write", "decode_read", "decode_garbage", "gqa")


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

    @pytest.mark.parametrize("lens", [(5, 1), (2, 6)], ids=["cache_len=5,1", "cache_len=2,6"])
    def test_full_cache_raises(self, device, lens):
        q, kc, vc, kn, vn, _ = self._case(36, B=2, S_max=5, lens=(0, 0), garbage=0.0)
        with pytest.raises(ValueError):
            call_decode(device, q, kc, vc, kn, vn, torch.tensor(lens))
            pytest.fail(f"decode_step with S_max=5 and cache_len={list(lens)} must raise ValueError "
                        "(no free slot for the new token)")

    def test_heads_not_divisible_raises(self, device):
        q, kc, vc, kn, vn, lens = self._case(37, Hq=3, Hkv=2, garbage=0.0)
        with pytest.raises(ValueError):
            call_decode(device, q, kc, vc, kn, vn, lens)
            pytest.fail("decode_step with Hq=3 and Hkv=2 must raise ValueError (Hq % Hkv != 0)")

    def test_head_dim_mismatch_raises(self, device):
        q, kc, vc, kn, vn, lens = self._case(38, garbage=0.0)
        with pytest.raises(ValueError):
            call_decode(device, torch.cat([q, q], dim=-1), kc, vc, kn, vn, lens)
            pytest.fail("decode_step with q of head dim 8 and caches of head dim 4 must raise ValueError")

    def test_cache_holds_new_token(self, device):
        q, kc, vc, kn, vn, lens = self._case(32)
        _, k_cache, v_cache = call_decode(device, q, kc.clone(), vc.clone(), kn, vn, lens)
        for b, n in enumerate(lens.tolist()):
            for name, cache, new, old in (("k_cache", k_cache, kn, kc), ("v_cache", v_cache, vn, vc)):
                fail_unless(device, torch.equal(cache[b, :, n], new[b, :, 0]),
                            f"returned {name}[{b}, :, {n}] does not hold the new token (cache_len = "
                            f"{lens.tolist()}): k_new/v_new go to position cache_len[b] of row b; seed=32",
                            topics=("decode_write",))
                fail_unless(device, torch.equal(cache[b, :, :n], old[b, :, :n]),
                            f"returned {name}[{b}, :, :{n}] changed: the cached tokens before "
                            f"cache_len[{b}] = {n} must stay as they were; seed=32", topics=("decode_write",))

    def test_distinct_lengths_per_row(self, device):
        q, kc, vc, kn, vn, lens = self._case(34, B=4, lens=(7, 0, 3, 6), garbage=0.5)
        out, _, _ = call_decode(device, q, kc.clone(), vc.clone(), kn, vn, lens)
        check(device, out, expected_decode(q, kc, vc, kn, vn, lens.tolist()), topics=DECODE_TOPICS,
              what="decode_step with cache_len = [7, 0, 3, 6] (finite values in the unused slots)",
              inputs=dict(q=q, k_cache=kc, cache_len=lens, seed=34),
              hint="row b's query attends over positions 0..cache_len[b] of row b, inclusive: the "
                   "cached tokens and the new one")

    def test_last_slot_is_usable(self, device):
        q, kc, vc, kn, vn, lens = self._case(35, B=2, S_max=5, lens=(4, 1))
        out, k_cache, _ = call_decode(device, q, kc.clone(), vc.clone(), kn, vn, lens)
        check(device, out, expected_decode(q, kc, vc, kn, vn, [4, 1]), topics=DECODE_TOPICS,
              what="decode_step with cache_len = S_max - 1 (the last free slot)",
              inputs=dict(cache_len=lens, seed=35),
              hint="cache_len[b] = S_max - 1 is valid: the new token fills the last slot")
        fail_unless(device, torch.equal(k_cache[0, :, 4], kn[0, :, 0]),
                    "with cache_len[0] = 4 = S_max - 1 the returned k_cache[0, :, 4] must hold k_new[0]",
                    topics=("decode_write",))

    @pytest.mark.parametrize("garbage", [math.nan, 1e30, -math.inf])
    def test_ignores_positions_past_cache_len(self, device, garbage):
        """Slots past cache_len[b] may hold anything (torch.empty, an old sequence)."""
        q, kc, vc, kn, vn, lens = self._case(33, garbage=garbage)
        out, _, _ = call_decode(device, q, kc.clone(), vc.clone(), kn, vn, lens)
        check(device, out, expected_decode(q, kc, vc, kn, vn, lens.tolist()), topics=DECODE_TOPICS,
              what=f"decode_step with {garbage} in the unused cache slots (cache_len = {lens.tolist()})",
              inputs=dict(q=q, k_cache=kc, cache_len=lens, seed=33),
              hint="row b sees positions 0..cache_len[b] only: whatever the slots after it hold "
                   "must not reach the output")

    @pytest.mark.parametrize("dtype", FLOATS)
    @given(case=decode_cases(), seed=seeds, garbage=st.sampled_from([math.nan, math.inf, 1e4, 0.0]))
    def test_matches_prefix_attention(self, device, dtype, case, seed, garbage):
        B, Hq, Hkv, D, S_max, lens = case
        q, kc, vc, kn, vn, cl = self._case(seed, B, Hq, Hkv, D, S_max, lens, dtype, garbage)
        out, k_cache, v_cache = call_decode(device, q, kc.clone(), vc.clone(), kn, vn, cl)
        check(device, out, expected_decode(q, kc, vc, kn, vn, lens).to(dtype), topics=DECODE_TOPICS,
              what=f"decode_step(Hq={Hq}, Hkv={Hkv}, S_max={S_max}, cache_len={lens})",
              inputs=dict(q=q, k_cache=kc, seed=seed, garbage=garbage),
              hint="out[b] = attention of q[b] over cache[b, :, :cache_len[b]] plus the new token")
        rows = torch.arange(B)
        written = (torch.equal(k_cache[rows, :, cl], kn[:, :, 0])
                   and torch.equal(v_cache[rows, :, cl], vn[:, :, 0]))
        fail_unless(device, written,
                    f"the returned caches do not hold k_new/v_new at position cache_len[b] "
                    f"(cache_len={lens}, S_max={S_max}); seed={seed}", topics=("decode_write",))

    @given(seed=seeds, B=st.integers(1, 3), h=heads(gqa=True), D=head_dims, steps=st.integers(1, 9))
    @settings(max_examples=max_examples(15))
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
            res = m.decode_step(q[:, :, t:t + 1].clone().to(device), k_cache, v_cache,
                                k[:, :, t:t + 1].clone().to(device), v[:, :, t:t + 1].clone().to(device),
                                cache_len.to(device))
            out, k_cache, v_cache = res
            check(device, out.cpu(), full[:, :, t:t + 1], topics=DECODE_TOPICS,
                  what=f"decode step {t} (cache_len={t}) vs causal attention row {t}",
                  inputs=dict(q=q, k=k, v=v, seed=seed),
                  hint="each step is fed the caches the previous step returned; step t sees tokens 0..t")
