"""Kata 05's test helpers: independent expected values, and a diagnosis of wrong results.

`expected_attention` is plain float64 torch math (explicit bottom-right mask, GQA by
repeat_interleave). `diagnose` looks at where a wrong result differs from the expected one
(which queries, which heads, which keys, by what factor) and names the likely bug; the
value tests pass its text as assert_close's hint=.

A hint that names a bug fires only in the test whose input isolates that bug (a "probe":
q = 0 with v = identity for the key range, scores that rise along the keys for the rescale,
...): each probe passes `allow=` the diagnoses it can vouch for, and a random test gets
`describe_error`'s plain account of where the error lies instead.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import torch

from harness import assert_close as _assert_close

# fp16/bf16 results against float64 math on the same (rounded) inputs. The output is
# rounded once to the input dtype, the probabilities may be rounded to it before the
# P @ V matmul (tensor cores), and an implementation may also round q * scale or the
# scores: a score of size ~4 then moves by 4 * 2**-11 (fp16) or 4 * 2**-8 (bf16), which
# moves the output by about as much times the spread of v. The LSE is float32 and sees
# only the score errors. (README, "Tolerances".)
OUT_TOL = {torch.float16: (1e-2, 1e-2), torch.bfloat16: (6e-2, 4e-2)}
LSE_TOL = {torch.float16: (1e-2, 1e-3), torch.bfloat16: (5e-2, 4e-3)}


@dataclass(frozen=True)
class Shapes:
    B: int
    Hq: int
    Hkv: int
    Sq: int
    Sk: int
    D: int

    @classmethod
    def of(cls, q: torch.Tensor, k: torch.Tensor) -> "Shapes":
        B, Hq, Sq, D = q.shape
        return cls(B, Hq, k.shape[1], Sq, k.shape[2], D)


def visible(sq: int, sk: int, causal: bool) -> torch.Tensor:
    """(Sq, Sk) bool: may query i see key j? Causal aligns bottom-right: j <= i + (Sk - Sq)."""
    allowed = torch.ones(sq, sk, dtype=torch.bool)
    return allowed.tril(diagonal=sk - sq) if causal else allowed


def expected_attention(q, k, v, *, causal=False, scale=None):
    """(out, lse) in float64 on q's device: out zeros and lse -inf for a query that sees nothing."""
    q, k, v = (t.detach().double() for t in (q, k, v))
    B, Hq, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    k = k.repeat_interleave(Hq // Hkv, dim=1)  # query head h reads kv head h // (Hq // Hkv)
    v = v.repeat_interleave(Hq // Hkv, dim=1)
    s = (q @ k.transpose(-1, -2)) * (D**-0.5 if scale is None else scale)  # (B, Hq, Sq, Sk)
    s = s.masked_fill(~visible(Sq, Sk, causal).to(s.device), -math.inf)
    lse = torch.logsumexp(s, dim=-1)  # -inf for a row with no visible key
    p = torch.exp(s - lse[..., None]).nan_to_num(0.0)  # such a row: exp(-inf + inf) -> 0
    return p @ v, lse


# ------------------------------------------------------------------------------ diagnosis
def _bad(a: torch.Tensor, e: torch.Tensor, atol: float, rtol: float) -> torch.Tensor:
    same = (torch.isnan(a) & torch.isnan(e)) | (torch.isinf(a) & (a == e))
    close = ((a - e).abs() <= atol + rtol * e.abs()) & torch.isfinite(e)  # inf only equals inf
    return ~same & ~close


def _span(idx: list[int], limit: int = 8) -> str:
    text = ", ".join(str(i) for i in idx[:limit])
    return text + (", ..." if len(idx) > limit else "")


NO_KEY = ("queries that see no key (causal with Sq > Sk: queries i < Sq - Sk) must output zeros and "
          "lse = -inf. Such a row keeps m = -inf and l = 0, so exp(s - m) is exp(-inf + inf) = NaN "
          "and acc / l is 0 / 0: subtract 0 instead of m while m is -inf, divide by 1 where l = 0, "
          "and write lse = -inf there")
UNDERFLOW = ("these queries' scores are all far below 0 (lse < -80) and they came out as if they saw "
             "no key: exp(s) underflows to 0 in float32 unless the running max is subtracted first. "
             "Start the running max m at -inf (not 0 or another fixed number) so that it follows the "
             "scores down, and take the max over the tile's scores before the exponentials")
GQA = ("with GQA query head h reads kv head h // (Hq // Hkv): consecutive query heads share a kv "
       "head (h % Hkv, or an offset computed with Hq where Hkv belongs, gives this pattern)")


def wrap(hint: str, width: int = 200) -> str:
    """A long hint on several lines (the failure report clips a line at 240 characters), broken
    only after '. ', ': ' or '; ', so that no phrase of a hint is split."""
    parts = re.split(r"(?<=[.:;]) ", hint)
    lines = [""]
    for part in parts:
        if lines[-1] and len(lines[-1]) + 1 + len(part) > width:
            lines.append(part)
        else:
            lines[-1] = f"{lines[-1]} {part}" if lines[-1] else part
    return "\n        ".join(lines)


def assert_close(actual, expected, *, hint: str = "", **kw) -> None:
    """harness.assert_close with the hint on lines short enough to be shown whole. It lives
    here, not in the test file, so that a failure's `check:` line is the test's own."""
    __tracebackhide__ = True
    _assert_close(actual, expected, hint=wrap(hint), **kw)


def looks_like_interpreter_garbage(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    """Under the Triton interpreter: inf/NaN where the expected value is finite, or errors far
    beyond the data's scale. That is what fp16/bf16 arithmetic gives there (no float32 cast
    after tl.load); assert_close then prints the interpreter hint, and ours stays silent."""
    if os.environ.get("TRITON_INTERPRET") != "1" or actual.shape != expected.shape:
        return False
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    fin = torch.isfinite(e)
    if bool((~torch.isfinite(a) & fin).any()):
        return True
    return bool(fin.any()) and float((a - e)[fin].abs().max()) > 1e3 * (1 + float(e[fin].abs().max()))


def describe_error(actual: torch.Tensor, expected: torch.Tensor, *, shapes: Shapes, causal: bool,
                   kind: str = "out", atol: float = 1e-2, rtol: float = 1e-2) -> str:
    """Where the error lies (heads, queries, NaN, size), naming no bug: the hint of a random
    case, whose input isolates nothing. It points at the targeted tests, which do."""
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    if a.shape != e.shape:
        return f"wrong shape {tuple(a.shape)}, expected {tuple(e.shape)}"
    bad = _bad(a, e, atol, rtol)
    row_bad = bad if kind == "lse" else bad.any(dim=-1)
    n_rows = int(row_bad.sum())
    if n_rows == 0:
        return ""
    heads = [i for i in range(shapes.Hq) if bool(row_bad[:, i].any())]
    queries = row_bad.any(dim=(0, 1)).nonzero().flatten().tolist()
    nan = int(torch.isnan(a).sum())
    text = (f"{n_rows} of {row_bad.numel()} query rows are wrong (query heads {_span(heads)}; "
            f"queries {_span(queries)})" + (f", {nan} NaN" if nan else "") + ". This is a random "
            "case; the targeted tests before it in this task (a weights probe, scores that rise "
            "along the keys, scores far below 0, a GQA head probe, ...) each isolate one bug and "
            "name it: if one of them fails, fix that first. If all pass, rerun this case with "
            "the printed seed and compare against a torch version of the same shapes")
    return text


def diagnose(actual: torch.Tensor, expected: torch.Tensor, *, shapes: Shapes, causal: bool,
             kind: str = "out", atol: float = 1e-2, rtol: float = 1e-2,
             expected_lse: torch.Tensor | None = None, lse_ok: bool | None = None,
             out_ok: bool | None = None, allow: frozenset[str] | set[str] | None = None) -> str:
    """Name the likely bug from where `actual` differs from `expected` ('' when they agree).

    kind: "out" (B, Hq, Sq, D) output, "lse" (B, Hq, Sq), or "weights": the output of a probe
    whose v is the identity (v[j] = e_j), so that column j of a row is the weight of key j.
    expected_lse (kind "out"): the float64 lse, to recognise padded keys leaking into l.
    lse_ok / out_ok: whether the other result of the same call was right (None: unknown).
    allow: the diagnoses this input can vouch for (None: all). Tags: "nokey" (NaN or errors
    only where a query sees no key), "nan", "underflow", "heads", "batch", "lse" (base 2, the
    running max), "weights" (the probe's key ranges), "factor" (the normaliser l, padded keys,
    skipped tiles), "queries" (the last query tile), "acc", "scale". When no allowed diagnosis
    fits, the answer is `describe_error`'s account of where the error lies.
    """
    def ok(tag: str) -> bool:
        return allow is None or tag in allow

    s = shapes
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    if a.shape != e.shape:
        return f"wrong shape {tuple(a.shape)}, expected {tuple(e.shape)}"
    bad = _bad(a, e, atol, rtol)
    row_bad = bad if kind == "lse" else bad.any(dim=-1)  # (B, Hq, Sq)
    if not bool(row_bad.any()):
        return ""
    vis = visible(s.Sq, s.Sk, causal)
    no_key = ~vis.any(dim=-1)  # (Sq,)
    nan_new = torch.isnan(a) & ~torch.isnan(e)
    nan_rows = nan_new if kind == "lse" else nan_new.any(dim=-1)

    # 1. queries that see no key
    if bool(nan_rows.any()) and (ok("nokey") or ok("nan")):
        if bool(no_key.any()) and not bool((nan_rows & ~no_key).any()) and ok("nokey"):
            return "NaN only in " + NO_KEY
        if ok("nan"):
            return (f"NaN in {int(nan_rows.sum())} rows of queries that do see keys: an exp of "
                    "inf - inf, a 0 / 0, or an exp that overflows because the running max is not "
                    "subtracted")
    if bool(no_key.any()) and not bool((row_bad & ~no_key).any()) and ok("nokey"):
        return "only the " + NO_KEY

    # 1b. scores far below 0, and the result is what l = 0 gives (zeros, lse = -inf)
    e_lse = e if kind == "lse" else (
        expected_lse.detach().to("cpu", torch.float64) if expected_lse is not None else None)
    if kind != "weights" and e_lse is not None and e_lse.shape == row_bad.shape and ok("underflow"):
        deep = torch.isfinite(e_lse) & (e_lse < -80.0)
        lost = (a == -math.inf) if kind == "lse" else (a.abs().amax(dim=-1) == 0)
        if bool((row_bad & deep & lost).any()) and not bool((row_bad & ~deep).any()):
            return UNDERFLOW

    # 2. some heads (or batches) right, others wrong
    head_bad = row_bad.any(dim=2).any(dim=0)  # (Hq,)
    if s.Hq > 1 and not bool(head_bad.all()) and ok("heads"):
        wrong = [i for i in range(s.Hq) if head_bad[i]]
        right = [i for i in range(s.Hq) if not head_bad[i]]
        where = f"only query heads {_span(wrong)} are wrong, heads {_span(right)} are right: "
        if s.Hkv < s.Hq:
            return where + GQA + f" (here h // {s.Hq // s.Hkv})"
        return where + "check the head offset (head index times stride) of q, k, v and out"
    batch_bad = row_bad.any(dim=2).any(dim=1)  # (B,)
    if s.B > 1 and not bool(batch_bad.all()) and ok("batch"):
        return ("only some batch entries are wrong: check the batch offset (b times stride) "
                "of q, k, v, out and lse")

    # 3. the LSE alone
    if kind == "lse" and ok("lse"):
        fin = torch.isfinite(a) & torch.isfinite(e) & (e.abs() > 0.5)
        if int(fin.sum()) >= 4:
            af, ef = a[fin], e[fin]
            c = float((af * ef).sum() / (ef * ef).sum())
            fits = float((af - c * ef).abs().max()) <= 0.02 * float(ef.abs().max()) + atol
            if fits and abs(c - 1 / math.log(2)) < 0.01:
                return ("lse is 1 / ln 2 = 1.4427 times too large: it is in base 2. Scores kept "
                        "in base-2 units give log2 of the sum; the natural log is that times ln 2")
            if fits and abs(c - math.log(2)) < 0.01:
                return "lse is ln 2 = 0.693 times too small: it is multiplied by ln 2 once too often"
        if out_ok:
            return ("out is right but lse is not: lse = m + log(l) in natural log. Did you add "
                    "the running max m back (log(l) alone is the log-sum-exp of s - m), and "
                    "convert from base 2 if m and l are kept in base-2 units? Is lse computed "
                    "from the same scaled scores as out?")
        return ("lse = log(sum_j exp(s_j)) with s = q k^T * scale, natural log; it is m + log(l) "
                "from your running state (add the running max m back, convert base 2 to natural)")

    # 4. the probe: column j is the weight of key j
    if kind == "weights" and ok("weights"):
        q_bad = row_bad.any(dim=(0, 1))  # (Sq,)
        r0 = int(q_bad.nonzero()[0])
        if not causal and r0 > 0 and r0 % 16 == 0 and bool(q_bad[r0:].all()):
            return (f"queries {r0}..{s.Sq - 1} are wrong and queries 0..{r0 - 1} right: the query "
                    f"tiles after the first {r0} queries are never computed (or never stored). "
                    "Launch one program per query tile, cdiv(Sq, BLOCK_M) of them per (batch, "
                    "head), with start_m = pid_m * BLOCK_M, and mask the rows past Sq")
        aw, ew = a[..., : s.Sk], e[..., : s.Sk]
        sup = aw > 0.25 / s.Sk  # every visible key has weight >= 1 / Sk in the probe
        extra = sup & ~vis
        missing = ~sup & vis
        off = s.Sk - s.Sq
        if causal:
            every = torch.ones(s.Sq, s.Sk, dtype=torch.bool)
            if s.Sq != s.Sk and bool((sup == every.tril(0)).all()):
                return (f"query i sees keys j <= i: the causal mask is aligned top-left (like "
                        f"torch's is_causal). The contract aligns it bottom-right: query i sees "
                        f"keys j <= i + (Sk - Sq) = i + {off}, so the last query sees every key")
            if bool((sup == every.tril(off - 1)).all()):
                return ("every query misses its diagonal key j = i + (Sk - Sq): a query sees "
                        "the keys j <= i + (Sk - Sq), with <=, not <")
            if bool(extra.any()):
                i, j = (int(t) for t in extra.any(dim=(0, 1)).nonzero()[0])
                return (f"queries give weight to keys past the bottom-right diagonal (e.g. query "
                        f"{i} sees key {j} > {i} + (Sk - Sq) = {i + off}): the causal mask is "
                        "missing or too loose in some tile; every tile that the diagonal "
                        "crosses must be masked")
        if bool(missing.any()):
            miss_rows = missing.any(dim=(0, 1)).any(dim=-1).nonzero().flatten().tolist()
            first = [int(missing.any(dim=(0, 1))[i].nonzero()[0]) for i in miss_rows]
            last_vis = [int(vis[i].nonzero()[-1]) for i in miss_rows]
            suffix = all(bool(missing.any(dim=(0, 1))[i, f: lv + 1].all())
                         for i, f, lv in zip(miss_rows, first, last_vis))
            if suffix and not causal:
                j0 = min(first)
                if j0 == s.Sq and s.Sq != s.Sk:
                    return (f"keys {j0}..{s.Sk - 1} get no weight, and {j0} is Sq: the key loop "
                            "(or its mask) is bounded by the number of queries. Queries and keys "
                            "have their own lengths: loop over the keys up to Sk")
                if s.Sk - j0 < 16:
                    return (f"keys {j0}..{s.Sk - 1} get no weight: the last, partial tile of keys "
                            "is never visited. Loop over cdiv(Sk, BLOCK_N) tiles and mask the keys "
                            "past Sk in the last one")
                return (f"keys {j0}..{s.Sk - 1} get no weight: the loop over key tiles stops "
                        f"after key {j0 - 1}, {s.Sk - j0} keys short of Sk. One program must "
                        "visit every key tile of its head, range(0, Sk, BLOCK_N), not only the "
                        "first one(s)")
            if suffix:
                return (f"queries miss the last keys they may see (query {miss_rows[0]} gets "
                        f"nothing from key {first[0]} on, though it sees keys up to "
                        f"{last_vis[0]}): the loop over key tiles stops too early. With Sk > Sq "
                        "a query tile needs keys up to start_m + BLOCK_M - 1 + (Sk - Sq), the "
                        "bottom-right offset included; and the last, partial tile of keys "
                        "must be visited (masked)")
            return (f"queries miss keys inside their visible range (query {miss_rows[0]}, keys "
                    f"from {first[0]}): some key tiles are skipped or wrongly masked")

        if not bool(missing.any()) and not bool(extra.any()):
            got = aw.sum(dim=-1)  # (B, H, Sq): 1 for a row that sees keys
            n_vis = vis.sum(dim=-1).double()
            rows = (n_vis > 0) & (got < 0.99)
            if bool(rows.any()):
                n_eff = (n_vis / got.clamp_min(1e-9))[rows]
                n_extra = float((n_eff - n_vis.expand_as(got)[rows]).median().round())
                if n_extra >= 1:
                    return (f"every visible key gets the same, too small weight, as if about "
                            f"{n_extra:g} extra keys with score 0 and value 0 were attended: the "
                            "keys past Sk in the last, partial tile are loaded as 0 but not "
                            "masked. Give them the score -inf (a zero key still scores 0)")

    # 5. every wrong row is the right row times a factor: the normaliser l is off
    e_norm = (e * e).sum(dim=-1)
    c = (a * e).sum(dim=-1) / e_norm.clamp_min(1e-300)  # (B, Hq, Sq)
    resid = _bad(a, c[..., None] * e, atol, rtol).any(dim=-1)
    cand = row_bad & (e_norm > 1e-6)
    if kind != "lse" and ok("factor") and int(cand.sum()) >= 1 \
            and float((cand & ~resid).sum()) >= 0.9 * float(cand.sum()):
        cs = c[cand]
        if float(cs.abs().max()) < 0.05:
            return ("queries that see keys output zeros: no key tile reached them. Is the last, "
                    "partial tile of keys skipped (Sk // BLOCK_N tiles instead of "
                    "cdiv(Sk, BLOCK_N)), or are fewer keys than one tile never visited?")
        if expected_lse is not None:
            n_pad = (1.0 / cs - 1.0) * expected_lse.detach().cpu().double()[cand].exp()
            n0 = float(n_pad.median().round())
            if n0 >= 1 and bool(((n_pad - n0).abs() < 0.05 * n0 + 0.05).all()):
                return (f"each wrong row is the right row times a factor < 1, exactly as if {n0:g} "
                        "extra keys with score 0 and value 0 were attended: keys past Sk in the "
                        "last, partial tile are not masked. Give them the score -inf")
        return (f"each wrong output row is the right row times a factor (median "
                f"{float(cs.median()):.4g}): the weights are right up to their normaliser, so "
                "the running sum l is off. When the running max grows, rescale l by alpha = "
                "exp(m_old - m_new), exactly like acc, then add the tile's row sums")

    # 6. only the last queries
    q_bad = row_bad.any(dim=(0, 1))  # (Sq,)
    r0 = int(q_bad.nonzero()[0])
    if r0 > 0 and not causal and ok("queries"):
        return (f"only queries {r0}..{s.Sq - 1} (the last ones) are wrong: look at the last, "
                "partial tile of queries: the row masks of its loads and stores")

    # 7. spread everywhere
    if lse_ok and ok("acc"):
        return ("lse is right but out is not, across many queries: the normaliser is right, "
                "so the accumulator is off. When the running max grows, rescale acc by alpha = "
                "exp(m_old - m_new) before adding the new tile's p @ v (kata 03's merge rule)")
    if not ok("scale"):
        return describe_error(a, e, shapes=s, causal=causal, kind=kind, atol=atol, rtol=rtol)
    if causal:
        text = ("errors across many queries of a causal call: if the non-causal tests pass, the "
                "causal path is wrong (the mask j <= i + (Sk - Sq), the loop bounds, the skipped "
                "tiles); TestTask3Causal::test_weights_probe shows which keys each query sees. "
                "Else check the softmax scale (scale=None means D ** -0.5; a given scale is used "
                "as is, even 0 or negative; with exp2, multiply by log2(e) as well, once)")
    else:
        text = ("errors across queries and heads, not tied to a head group (and "
                "TestTask3Causal::test_weights_probe shows whether some keys, e.g. a last partial "
                "tile, are skipped): check the softmax scale (scale=None means D ** -0.5; a given "
                "scale is used as is, even 0 or negative; with exp2, multiply by log2(e) as well, "
                "once)")
    if lse_ok is None:
        text += ("; and the online rescale of acc and l by alpha = exp(m_old - m_new) "
                 "whenever the running max grows")
    return text
