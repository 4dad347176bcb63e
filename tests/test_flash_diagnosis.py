"""Kata 05's diagnosis (katas/05_flash_attention/diagnose_flash.py) on synthetic error patterns.

These check the suite, not a learner's module, so they live here and not in the kata.

Each case plants one pattern that a known bug leaves in (out, lse) or in the weights probe,
and checks that `diagnose` names that bug.
"""
from __future__ import annotations

import math
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "katas", "05_flash_attention"))
from diagnose_flash import (  # noqa: E402
    Shapes, describe_error, diagnose, expected_attention, looks_like_interpreter_garbage, visible,
)

TOL = dict(atol=1e-2, rtol=1e-2)


def says(phrase: str, text: str) -> None:
    assert phrase in text, f"the diagnosis should say {phrase!r}; it says: {text!r}"


def _case(causal=False, s=Shapes(1, 4, 2, 20, 30, 16), seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(s.B, s.Hq, s.Sq, s.D, generator=gen, dtype=torch.float64)
    k = torch.randn(s.B, s.Hkv, s.Sk, s.D, generator=gen, dtype=torch.float64)
    v = torch.randn(s.B, s.Hkv, s.Sk, s.D, generator=gen, dtype=torch.float64)
    out, lse = expected_attention(q, k, v, causal=causal)
    return s, out, lse


def _weights(sq, sk, d, support):
    w = support.double() / support.double().sum(-1, keepdim=True).clamp_min(1)
    full = torch.zeros(1, 1, sq, d, dtype=torch.float64)
    full[..., :sk] = w
    return full


def test_agreeing_results_get_no_hint():
    s, out, lse = _case()
    text = diagnose(out.clone(), out, shapes=s, causal=False, **TOL)
    assert text == "", f"results that agree must get no hint, got {text!r}"


def test_nan_in_rows_that_see_no_key():
    s, out, lse = _case(causal=True, s=Shapes(1, 2, 2, 30, 10, 16))
    bad = out.clone()
    bad[:, :, :20] = math.nan  # the first Sq - Sk = 20 queries see no key
    says("see no key", diagnose(bad, out, shapes=s, causal=True, **TOL))
    bad_lse = lse.clone()
    bad_lse[:, :, :20] = 0.0
    says("see no key", diagnose(bad_lse, lse, shapes=s, causal=True, kind="lse", **TOL))


def test_heads_of_a_later_group():
    s, out, lse = _case()
    bad = out.clone()
    bad[:, 1:3] += 0.5  # what h % Hkv gives with Hq=4, Hkv=2
    says("h // (Hq // Hkv)", diagnose(bad, out, shapes=s, causal=False, **TOL))


def test_lse_in_base_2():
    s, out, lse = _case()
    lse = lse + 3.0  # keep |lse| away from 0 so that the ratio is well defined
    says("base 2", diagnose(lse / math.log(2), lse, shapes=s, causal=False, kind="lse", **TOL))


def test_lse_without_the_max():
    s, out, lse = _case()
    text = diagnose(lse - 2.5, lse, shapes=s, causal=False, kind="lse", out_ok=True, **TOL)
    says("add the running max", text)


def test_every_row_off_by_a_factor_is_the_running_sum():
    s, out, lse = _case()
    factor = 0.5 + torch.rand(s.B, s.Hq, s.Sq, 1, generator=torch.Generator().manual_seed(1),
                              dtype=torch.float64) * 0.4
    says("running sum l", diagnose(out * factor, out, shapes=s, causal=False, **TOL))


def test_factor_of_padded_keys_is_edge_masking():
    s, out, lse = _case()
    bad = out / (1 + 6 / lse.exp())[..., None]  # six keys of score 0 and value 0 attended
    text = diagnose(bad, out, shapes=s, causal=False, expected_lse=lse, **TOL)
    says("partial tile", text)
    says("6 extra keys", text)


def test_zero_rows_are_skipped_tiles():
    s, out, lse = _case()
    says("partial tile", diagnose(torch.zeros_like(out), out, shapes=s, causal=False, **TOL))


def test_underflow_when_every_score_is_far_below_zero():
    s, out, lse = _case()
    deep = lse - 200.0  # the same weights, every score 200 lower: exp underflows in float32
    text = diagnose(torch.zeros_like(out), out, shapes=s, causal=False, expected_lse=deep, **TOL)
    says("running max m at -inf", text)
    lost = torch.full_like(lse, -math.inf)
    says("running max m at -inf", diagnose(lost, deep, shapes=s, causal=False, kind="lse", **TOL))
    # ordinary scores: zero rows still point at skipped tiles, not at underflow
    says("partial tile", diagnose(torch.zeros_like(out), out, shapes=s, causal=False,
                                      expected_lse=lse, **TOL))


def test_spread_errors_point_at_the_scale_or_the_rescale():
    s, out, lse = _case()
    bad = out + 0.3 * torch.randn(out.shape, generator=torch.Generator().manual_seed(2),
                                  dtype=torch.float64)
    says("rescale acc", diagnose(bad, out, shapes=s, causal=False, lse_ok=True, **TOL))
    says("softmax scale", diagnose(bad, out, shapes=s, causal=False, lse_ok=False, **TOL))


def test_last_queries_only():
    s, out, lse = _case(s=Shapes(1, 2, 2, 20, 30, 16))
    bad = out.clone()
    bad[:, :, 16:] += 1.0
    says("partial tile of queries", diagnose(bad, out, shapes=s, causal=False, **TOL))


def test_a_probe_names_only_the_bugs_it_isolates():
    """With allow=, a pattern outside the probe's tags gets the plain account, naming no bug."""
    s, out, lse = _case()
    bad = out.clone()
    bad[:, 1:3] += 0.5  # looks like a GQA mapping error, but this probe does not isolate it
    text = diagnose(bad, out, shapes=s, causal=False, allow={"weights"}, **TOL)
    assert "h // (Hq // Hkv)" not in text and "random case" in text, text
    says("h // (Hq // Hkv)", diagnose(bad, out, shapes=s, causal=False, allow={"heads"}, **TOL))


def test_describe_error_says_where_not_what():
    s, out, lse = _case()
    bad = out.clone()
    bad[:, 2, 5:7] += 1.0
    text = describe_error(bad, out, shapes=s, causal=False, **TOL)
    assert "2 of" in text and "query heads 2" in text and "queries 5, 6" in text, text
    for bug in ("rescale acc", "h // (Hq // Hkv)", "partial tile", "softmax scale", "-inf"):
        assert bug not in text, (bug, text)
    text = describe_error(out.clone(), out, shapes=s, causal=False, **TOL)
    assert text == "", f"results that agree must get no account, got {text!r}"


def test_interpreter_garbage(monkeypatch):
    s, out, lse = _case()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert looks_like_interpreter_garbage(out * 1e9, out), "errors 1e9 times the data are garbage"
    assert looks_like_interpreter_garbage(torch.full_like(out, math.nan), out), "NaN is garbage"
    assert not looks_like_interpreter_garbage(out + 0.5, out), "an error of 0.5 is a plain bug"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not looks_like_interpreter_garbage(out * 1e9, out), "no interpreter, no garbage"


class TestWeightsProbe:
    sq, sk, d = 24, 40, 64
    s = Shapes(1, 1, 1, 24, 40, 64)

    def _diag(self, support, causal=True):
        e = _weights(self.sq, self.sk, self.d, visible(self.sq, self.sk, causal))
        a = _weights(self.sq, self.sk, self.d, support)
        return diagnose(a, e, shapes=self.s, causal=causal, kind="weights", atol=1e-3, rtol=1e-2)

    def test_top_left(self):
        says("aligned top-left", self._diag(torch.ones(24, 40, dtype=torch.bool).tril(0)))

    def test_strict(self):
        says("with <=, not <", self._diag(torch.ones(24, 40, dtype=torch.bool).tril(15)))

    def test_weight_past_the_diagonal(self):
        support = visible(24, 40, True).clone()
        support[3, 30] = True
        says("past the bottom-right diagonal", self._diag(support))

    def test_causal_loop_stops_early(self):
        support = visible(24, 40, True) & (torch.arange(40) < 16)
        says("stops too early", self._diag(support))

    def test_last_partial_key_tile_skipped(self):
        support = torch.ones(24, 40, dtype=torch.bool)
        support[:, 32:] = False
        says("partial tile", self._diag(support, causal=False))

    def test_only_the_first_key_tile(self):
        support = torch.ones(24, 40, dtype=torch.bool)
        support[:, 16:] = False
        says("the loop over key tiles stops after key 15", self._diag(support, causal=False))

    def test_keys_bounded_by_the_query_count(self):
        support = torch.ones(24, 40, dtype=torch.bool)
        support[:, 24:] = False  # Sq = 24
        says("bounded by the number of queries", self._diag(support, causal=False))

    def test_whole_tiles_skipped(self):
        support = torch.ones(24, 40, dtype=torch.bool)
        support[:, :32] = False
        says("some key tiles are skipped", self._diag(support, causal=False))

    def test_later_query_tiles_never_computed(self):
        e = _weights(self.sq, self.sk, self.d, visible(self.sq, self.sk, False))
        a = e.clone()
        a[..., 16:, :] = 0.0  # rows of the second query tile left as allocated
        text = diagnose(a, e, shapes=self.s, causal=False, kind="weights", atol=1e-3, rtol=1e-2)
        says("never computed", text)

    def test_padded_keys_share_the_weight(self):
        e = _weights(self.sq, self.sk, self.d, visible(self.sq, self.sk, False))
        a = e * self.sk / 48  # 8 padded keys of score 0 and value 0 in the normaliser
        text = diagnose(a, e, shapes=self.s, causal=False, kind="weights", atol=1e-3, rtol=1e-2)
        says("8 extra keys", text)
        says("partial tile", text)


def test_wrap_breaks_only_between_sentences():
    from diagnose_flash import NO_KEY, wrap
    text = wrap(NO_KEY + ". " + NO_KEY, width=120)
    lines = text.split("\n")
    assert len(lines) > 1, "a long hint is broken into lines"
    assert " ".join(line.strip() for line in lines) == NO_KEY + ". " + NO_KEY, (
        "wrapping only replaces a space after '. ', ': ' or '; ' by a line break")
    for line in lines[:-1]:
        assert line.rstrip()[-1] in ".:;", f"a line ends inside a sentence: {line!r}"
