"""Kata 13: speculative decoding. The checks, one class per README task.

Expected values come from enumeration in float64, never from a sampler: for a small
vocabulary the exact probability of every possible output row (num_accepted, y_0, ..., y_n)
of rejection_sample follows from the contract as a finite product,

    P(n, y_0..y_n) = prod_{i<n} min(p_i, q_i)(y_i) * (max(0, p_n - q_n)(y_n) if n < k else p_k(y_n)),

and the exact probability of every sequence speculative_generate may return is the
product of the target's own next-token probabilities.

Statistics: fixed seeds, many samples (rows are batched, cheap on a CPU), and
distribution-free bounds. A count of a cell of probability p among n independent rows is
Binomial(n, p); Bernstein's inequality bounds its deviation from n p, and a union bound over
the cells of a test keeps the chance that a correct implementation fails that test below the
rate its docstring states (1e-6 unless it says otherwise), whatever random stream the
implementation draws. Cells of probability 0 must have count 0. Nothing here depends on how
an implementation consumes random numbers; only distributions are compared, except where
the result is deterministic (greedy verification, a draft equal to the target, ...).
"""
from __future__ import annotations

import itertools
import math
from collections import Counter
from typing import Any, Sequence

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import assert_raises, load_kata_module, max_examples

m = load_kata_module("spec_decode")

DELTA = 1e-6  # the false-failure rate of each statistical test (union bound over its cells)


# -- Probabilities and draws (the test's own randomness) --------------------------------
def rand_probs(gen: torch.Generator, *shape: int, zeros: float = 0.0) -> torch.Tensor:
    """float64 distributions over the last dim; about a `zeros` fraction of exact zeros, at
    least one positive entry per row."""
    w = torch.rand(*shape, generator=gen, dtype=torch.float64) + 0.05
    if zeros > 0:
        w = torch.where(torch.rand(*shape, generator=gen, dtype=torch.float64) < zeros, 0.0, w)
        keep = torch.randint(shape[-1], (*shape[:-1], 1), generator=gen)
        w = w.scatter(-1, keep, w.gather(-1, keep) + 0.5)
    return w / w.sum(-1, keepdim=True)


def draw(q: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Draft tokens (B, k): x_i ~ q_i, as a draft model would propose them."""
    B, k, V = q.shape
    if k == 0:
        return torch.zeros(B, 0, dtype=torch.long)
    return torch.multinomial(q.reshape(B * k, V).double(), 1, generator=gen).view(B, k)


def bernstein_halfwidth(n: int, p: float, delta: float) -> float:
    """t with P(|Binomial(n, p) - n p| >= t) <= delta (Bernstein's inequality)."""
    L = math.log(2 / delta)
    return L / 3 + math.sqrt(L * L / 9 + 2 * L * n * p * (1 - p))


def check_counts(counts: Counter, expected: dict[Any, float], n: int, *, what: str, hint: str,
                 delta: float = DELTA) -> None:
    """Every cell's count within its Bernstein bound of n * P(cell) (union bound over the cells);
    a cell of probability 0 (or missing from `expected`) never observed."""
    impossible = {c: cnt for c, cnt in counts.items() if expected.get(c, 0.0) <= 0}
    if impossible:
        cell, cnt = max(impossible.items(), key=lambda kv: kv[1])
        raise AssertionError(
            f"{what}: {cell} has probability 0 but came out {cnt} times in {n}"
            f" ({len(impossible)} impossible outcome(s) seen)\n  hint: {hint}")
    cells = [c for c, p in expected.items() if p > 0]
    worst, worst_msg = 0.0, ""
    for c in cells:
        p = expected[c]
        t = bernstein_halfwidth(n, p, delta / len(cells))
        dev = abs(counts.get(c, 0) - n * p)
        if dev > t and dev / t > worst:
            worst = dev / t
            worst_msg = (f"{c} came out {counts.get(c, 0)} times in {n}, expected {n * p:.1f} "
                         f"+- {t:.1f} (probability {p:.5f}, observed {counts.get(c, 0) / n:.5f})")
    assert not worst_msg, (
        f"{what}: {worst_msg}; a correct implementation misses one of these {len(cells)} bounds "
        f"with probability < {delta:g}\n  hint: {hint}")


# -- Exact distributions by enumeration ---------------------------------------------------
def exact_rows(p: torch.Tensor, q: torch.Tensor) -> dict[tuple[int, ...], float]:
    """P(n, y_0, ..., y_n) for one row: p (k + 1, V), q (k, V), drafts x_i ~ q_i.

    The draft proposes y_i and it survives with probability q_i(y_i) min(1, p_i / q_i)(y_i)
    = min(p_i, q_i)(y_i); a rejection at n happens with probability 1 - sum min(p_n, q_n) =
    sum max(0, p_n - q_n), and then y_n ~ normalize(max(0, p_n - q_n)), so the product is
    max(0, p_n - q_n)(y_n); after k acceptances y_k ~ p_k."""
    p, q = p.double(), q.double()
    k, V = q.shape
    keep = torch.minimum(p[:k], q)
    out: dict[tuple[int, ...], float] = {}
    for n in range(k + 1):
        last = (p[n] - q[n]).clamp(min=0) if n < k else p[k]
        for ys in itertools.product(range(V), repeat=n + 1):
            pr = math.prod(float(keep[i, y]) for i, y in enumerate(ys[:-1])) * float(last[ys[-1]])
            if pr > 0:
                out[(n, *ys)] = pr
    return out


def row_counts(tokens: torch.Tensor, n: torch.Tensor) -> Counter:
    """Counter of rows (num_accepted, y_0, ..., y_n); rows are counted as integer codes first
    (cheap for 10^5 rows), and padding is read from num_accepted."""
    tokens, n = tokens.cpu(), n.cpu()
    V = int(tokens.max()) + 2
    pos = torch.arange(tokens.shape[1])
    digits = torch.where(pos <= n[:, None], tokens + 1, 0)  # 0 after the emitted tokens
    codes = n.clone()
    for i in range(tokens.shape[1]):
        codes = codes * V + digits[:, i]
    uniq, inverse, counts = torch.unique(codes, return_inverse=True, return_counts=True)
    first = torch.full((len(uniq),), len(codes)).scatter_reduce(
        0, inverse, torch.arange(len(codes)), "amin")  # a row of each distinct outcome
    out: Counter = Counter()
    for b, cnt in zip(first.tolist(), counts.tolist()):
        nn = int(n[b])
        out[(nn, *tokens[b, : nn + 1].tolist())] = cnt
    return out


def batch_of(p: torch.Tensor, q: torch.Tensor, rows: int, gen: torch.Generator,
             dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`rows` copies of one (p, q) configuration with fresh drafts x_i ~ q_i per row."""
    k, V = q.shape
    qq = q.to(dtype)[None].expand(rows, k, V).contiguous()
    pp = p.to(dtype)[None].expand(rows, k + 1, V).contiguous()
    x = torch.zeros(rows, k, dtype=torch.long)
    for i in range(k):  # one distribution per position: draw all rows at once
        x[:, i] = torch.multinomial(q[i].double(), rows, replacement=True, generator=gen)
    return x, qq, pp


def call(fn: Any, *args: Any, what: str, **kw: Any) -> tuple[torch.Tensor, torch.Tensor]:
    out = fn(*args, **kw)
    assert isinstance(out, tuple) and len(out) == 2, (
        f"{what} must return a tuple (tokens, num_accepted), got {type(out).__name__}")
    return out


def check_format(tokens: Any, n: Any, draft_tokens: torch.Tensor, V: int, *, what: str) -> None:
    """Shapes and dtypes; num_accepted in 0..k; the first n tokens are the drafts, token n is a
    vocabulary token, then -1 padding."""
    B, k = draft_tokens.shape
    assert isinstance(tokens, torch.Tensor) and tokens.shape == (B, k + 1) and tokens.dtype == torch.long, (
        f"{what}: tokens must be a ({B}, {k + 1}) long tensor, got "
        f"{tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__} "
        f"{getattr(tokens, 'dtype', '')}")
    assert isinstance(n, torch.Tensor) and n.shape == (B,) and n.dtype == torch.long, (
        f"{what}: num_accepted must be a ({B},) long tensor, got "
        f"{tuple(n.shape) if isinstance(n, torch.Tensor) else type(n).__name__} {getattr(n, 'dtype', '')}")
    tokens, n = tokens.cpu(), n.cpu()
    bad = (n < 0) | (n > k)
    assert not bad.any(), f"{what}: num_accepted must lie in 0..{k}, got {n[bad][:5].tolist()}"
    pos = torch.arange(k + 1)
    drafts = torch.cat([draft_tokens.cpu(), torch.full((B, 1), -2)], 1)
    wrong = ((pos < n[:, None]) & (tokens != drafts)).any(1)
    if wrong.any():
        b = int(wrong.nonzero()[0])
        raise AssertionError(
            f"{what}: row {b} has num_accepted {int(n[b])} but its first {int(n[b])} tokens "
            f"{tokens[b, :int(n[b])].tolist()} are not the draft tokens {draft_tokens[b].tolist()}"
            "\n  hint: num_accepted counts the accepted drafts, which come out first, unchanged")
    last = tokens.gather(1, n[:, None]).squeeze(1)
    bad = (last < 0) | (last >= V)
    if bad.any():
        b = int(bad.nonzero()[0])
        raise AssertionError(
            f"{what}: row {b} has num_accepted {int(n[b])}, so tokens[{b}, {int(n[b])}] must be the "
            f"one sampled token (0..{V - 1}), got {int(last[b])}; row {tokens[b].tolist()}"
            "\n  hint: every row emits num_accepted + 1 tokens; num_accepted must equal that count minus 1")
    pad = (pos > n[:, None]) & (tokens != -1)
    if pad.any():
        b = int(pad.any(1).nonzero()[0])
        raise AssertionError(
            f"{what}: row {b} emits {int(n[b]) + 1} tokens, so everything after position "
            f"{int(n[b])} must be -1, got {tokens[b].tolist()}\n  hint: pad with -1 (not 0, a real "
            "token), and make num_accepted agree with where the padding starts")


def inputs_desc(**kw: Any) -> str:
    return ", ".join(f"{k}={tuple(v.shape) if isinstance(v, torch.Tensor) else v}" for k, v in kw.items())


# -- Task 1 -------------------------------------------------------------------------------
def greedy_oracle(draft_tokens: torch.Tensor, target_probs: torch.Tensor) -> list[tuple[int, set[int]]]:
    """Per row: num_accepted, and the set of tokens allowed at position num_accepted."""
    out = []
    for x, p in zip(draft_tokens.tolist(), target_probs.double()):
        n = 0
        while n < len(x) and p[n, x[n]] == p[n].max():
            n += 1
        out.append((n, set((p[n] == p[n].max()).nonzero().flatten().tolist())))
    return out


class TableModel:
    """An n-gram language model as a callable: the next-token distribution depends on the last
    token (bigram) or the last two (trigram). model(tokens) -> (len(tokens), V), row i the
    distribution after tokens[: i + 1]. Accepts a list of ints or a 1-D long tensor."""

    def __init__(self, bigram: torch.Tensor, trigram: torch.Tensor | None = None) -> None:
        self.bigram, self.trigram, self.calls = bigram, trigram, 0

    def __call__(self, tokens: Any) -> torch.Tensor:
        self.calls += 1
        t = torch.as_tensor(tokens if isinstance(tokens, torch.Tensor) else list(tokens),
                            dtype=torch.long).flatten().cpu()
        if self.trigram is None or len(t) < 2:
            return self.bigram[t].clone()
        return torch.cat([self.bigram[t[:1]], self.trigram[t[:-1], t[1:]]]).clone()

    def next_probs(self, tokens: Sequence[int]) -> torch.Tensor:
        return self(list(tokens))[-1].double()


class TestTask1GreedyVerify:
    def test_shapes_and_dtypes(self) -> None:
        g = torch.Generator().manual_seed(0)
        p = rand_probs(g, 3, 5, 7).float()
        x = torch.randint(7, (3, 4), generator=g)
        tokens, n = call(m.greedy_verify, x, p, what="greedy_verify")
        check_format(tokens, n, x, 7, what=f"greedy_verify({inputs_desc(draft_tokens=x, target_probs=p)})")

    def test_inputs_not_modified(self) -> None:
        g = torch.Generator().manual_seed(1)
        p = rand_probs(g, 4, 3, 6).float()
        x = p[:, :2].argmax(-1)
        p0, x0 = p.clone(), x.clone()
        m.greedy_verify(x, p)
        assert torch.equal(p, p0) and torch.equal(x, x0), "greedy_verify modified its inputs"

    def test_bad_shapes_raise(self) -> None:
        p = torch.full((2, 4, 5), 0.2)
        x = torch.zeros(2, 3, dtype=torch.long)
        for what, args in [("draft_tokens 1-D", (x[0], p)),
                           ("target_probs (B, k, V) without the bonus row", (x, p[:, :3])),
                           ("target_probs of another batch size", (x, p[:1])),
                           ("target_probs 2-D", (x, p[:, 0]))]:
            with assert_raises(ValueError, f"greedy_verify with {what}"):
                m.greedy_verify(*args)

    @settings(max_examples=max_examples(30), deadline=None)
    @given(B=st.integers(1, 5), k=st.integers(0, 5), V=st.integers(1, 8), seed=st.integers(0, 2**31),
           agree=st.floats(0.0, 1.0))
    def test_matches_definition(self, B: int, k: int, V: int, seed: int, agree: float) -> None:
        """Drafts that match the target's argmax with probability `agree`, ties included
        (probabilities from a small grid, so equal values are common)."""
        g = torch.Generator().manual_seed(seed)
        p = torch.randint(1, 4, (B, k + 1, V), generator=g).double()
        p = p / p.sum(-1, keepdim=True)
        x = torch.where(torch.rand(B, k, generator=g) < agree, p[:, :k].argmax(-1),
                        torch.randint(V, (B, k), generator=g))
        what = f"greedy_verify({inputs_desc(draft_tokens=x, target_probs=p)}, seed={seed})"
        tokens, n = call(m.greedy_verify, x, p.float(), what=what)
        check_format(tokens, n, x, V, what=what)
        for b, (n_exp, allowed) in enumerate(greedy_oracle(x, p)):
            assert int(n[b]) == n_exp, (
                f"{what}: row {b} accepts {int(n[b])} drafts, expected {n_exp}: drafts {x[b].tolist()}, "
                f"target argmax sets {[set((r == r.max()).nonzero().flatten().tolist()) for r in p[b]]}"
                "\n  hint: accept while the draft token has the maximal probability (a tie with the "
                "maximum is a match), and stop at the first miss")
            assert int(tokens[b, n_exp]) in allowed, (
                f"{what}: row {b} emitted {int(tokens[b, n_exp])} after {n_exp} accepted drafts; a "
                f"token of maximal target probability at position {n_exp} is one of {sorted(allowed)}")

    def test_a_tie_with_the_maximum_is_a_match(self) -> None:
        p = torch.tensor([[[0.4, 0.4, 0.2], [0.1, 0.45, 0.45], [0.2, 0.2, 0.6]]])
        for x in ([0, 1], [1, 2], [1, 1], [0, 2]):
            tokens, n = m.greedy_verify(torch.tensor([x]), p)
            assert int(n[0]) == 2 and int(tokens[0, 2]) == 2, (
                f"greedy_verify(draft {x}, target rows {p[0].tolist()}): both drafts tie with the "
                f"maximum, so both are accepted and the bonus is token 2; got tokens {tokens[0].tolist()}, "
                f"num_accepted {int(n[0])}")

    def test_equals_greedy_decoding_of_the_target(self) -> None:
        """Greedy speculative decoding with a disagreeing bigram draft and a trigram target,
        k = 3: the text must equal the target's own greedy decoding, for 12 prompts."""
        g = torch.Generator().manual_seed(3)
        V, length, k = 6, 14, 3
        target = TableModel(rand_probs(g, V, V), rand_probs(g, V, V, V))
        draft = TableModel(rand_probs(g, V, V))
        for prompt in ([0], [1, 2], [3, 3, 5], [4], [5, 0], [2], [1], [0, 0], [3], [4, 1], [5], [2, 4]):
            expected = list(prompt)
            for _ in range(length):
                expected.append(int(target.next_probs(expected).argmax()))
            seq = list(prompt)
            while len(seq) < len(prompt) + length:
                drafted: list[int] = []
                for _ in range(k):
                    drafted.append(int(draft.next_probs(seq + drafted).argmax()))
                p = target(seq + drafted)[len(seq) - 1:]
                tokens, n = m.greedy_verify(torch.tensor([drafted]), p[None])
                seq += tokens[0, : int(n[0]) + 1].tolist()
            got = seq[: len(prompt) + length]
            assert got == expected, (
                f"greedy speculative decoding from prompt {prompt} gave {got[len(prompt):]}, the "
                f"target's greedy decoding is {expected[len(prompt):]}\n  hint: the emitted token "
                "after the accepted drafts is the target's argmax at that position (position "
                "num_accepted of target_probs)")


# -- Task 2 -------------------------------------------------------------------------------
@st.composite
def sample_case(draw_: Any, max_k: int = 5, max_V: int = 8) -> dict[str, Any]:
    B, k, V = draw_(st.integers(1, 6)), draw_(st.integers(0, max_k)), draw_(st.integers(1, max_V))
    seed = draw_(st.integers(0, 2**31))
    zeros = draw_(st.sampled_from([0.0, 0.3, 0.6]))
    g = torch.Generator().manual_seed(seed)
    q = rand_probs(g, B, k, V, zeros=zeros)
    p = rand_probs(g, B, k + 1, V, zeros=zeros)
    x = draw(q, g)
    return dict(B=B, k=k, V=V, seed=seed, zeros=zeros, p=p, q=q, x=x)


class TestTask2Acceptance:
    def test_shapes_and_dtypes(self) -> None:
        g = torch.Generator().manual_seed(0)
        q, p = rand_probs(g, 3, 4, 9).float(), rand_probs(g, 3, 5, 9).float()
        x = draw(q, g)
        what = f"rejection_sample({inputs_desc(draft_tokens=x, draft_probs=q, target_probs=p)})"
        tokens, n = call(m.rejection_sample, x, q, p, generator=torch.Generator().manual_seed(1), what=what)
        check_format(tokens, n, x, 9, what=what)

    def test_inputs_not_modified(self) -> None:
        g = torch.Generator().manual_seed(1)
        q, p = rand_probs(g, 5, 3, 6, zeros=0.3).float(), rand_probs(g, 5, 4, 6, zeros=0.3).float()
        x = draw(q, g)
        before = [t.clone() for t in (x, q, p)]
        m.rejection_sample(x, q, p, generator=torch.Generator().manual_seed(2))
        for name, t, t0 in zip(("draft_tokens", "draft_probs", "target_probs"), (x, q, p), before):
            assert torch.equal(t, t0), f"rejection_sample modified {name} (inputs must stay as they were)"

    def test_bad_shapes_raise(self) -> None:
        q, p = torch.full((2, 3, 5), 0.2), torch.full((2, 4, 5), 0.2)
        x = torch.zeros(2, 3, dtype=torch.long)
        for what, args in [("draft_tokens 1-D", (x[0], q, p)),
                           ("target_probs (B, k, V) without the bonus row", (x, q, p[:, :3])),
                           ("draft_probs (B, k + 1, V)", (x, p, p)),
                           ("draft_probs with another vocabulary", (x, q[..., :4], p)),
                           ("target_probs of another batch size", (x, q, p[:1])),
                           ("draft_tokens of another k", (x[:, :2], q, p))]:
            with assert_raises(ValueError, f"rejection_sample with {what}"):
                m.rejection_sample(*args)

    def test_same_generator_seed_same_result(self) -> None:
        g = torch.Generator().manual_seed(4)
        q, p = rand_probs(g, 64, 3, 5), rand_probs(g, 64, 4, 5)
        x = draw(q, g)
        torch.manual_seed(1)
        a = m.rejection_sample(x, q.float(), p.float(), generator=torch.Generator().manual_seed(9))
        torch.manual_seed(2)
        b = m.rejection_sample(x, q.float(), p.float(), generator=torch.Generator().manual_seed(9))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), (
            "two calls with generators seeded alike (and different global seeds) gave different "
            "results: draw every random number from `generator` (torch.rand(..., generator=g), "
            "torch.multinomial(..., generator=g))")
        c = m.rejection_sample(x, q.float(), p.float(), generator=torch.Generator().manual_seed(10))
        assert not torch.equal(a[0], c[0]), "generators with different seeds gave the same 64 rows"

    @settings(max_examples=max_examples(30), deadline=None)
    @given(case=sample_case())
    def test_format_and_acceptance_facts(self, case: dict[str, Any]) -> None:
        """Deterministic consequences of the rule, on any shape: a draft with p_i(x) >= q_i(x)
        is always accepted (min(1, p/q) = 1), one with p_i(x) = 0 never is."""
        x, q, p, k, V = case["x"], case["q"], case["p"], case["k"], case["V"]
        what = (f"rejection_sample({inputs_desc(draft_tokens=x, draft_probs=q, target_probs=p)}, "
                f"seed={case['seed']}, zeros={case['zeros']})")
        tokens, n = call(m.rejection_sample, x, q.float(), p.float(),
                         generator=torch.Generator().manual_seed(case["seed"]), what=what)
        check_format(tokens, n, x, V, what=what)
        n = n.cpu()
        if k == 0:
            return
        p32, q32 = p.float(), q.float()
        p_x = p32[:, :k].gather(2, x[..., None]).squeeze(-1)
        q_x = q32.gather(2, x[..., None]).squeeze(-1)
        pos = torch.arange(k)
        sure = (pos == n[:, None]) & (p_x >= q_x)  # the rejected position, if any
        assert not sure.any(), (
            f"{what}: row {int(sure.any(1).nonzero()[0])} rejected a draft whose target probability "
            "is at least its draft probability; min(1, p/q) = 1 there, so it must be accepted\n  "
            f"p(x) {p_x[sure.any(1)][0].tolist()}, q(x) {q_x[sure.any(1)][0].tolist()}, "
            f"num_accepted {n[sure.any(1)][0].tolist()}")
        never = (pos < n[:, None]) & (p_x == 0)
        assert not never.any(), (
            f"{what}: row {int(never.any(1).nonzero()[0])} accepted a draft token the target gives "
            "probability 0\n  hint: accept with probability min(1, p/q): u * q < p is never true for p = 0")

    def test_draft_equal_to_target_accepts_everything(self) -> None:
        g = torch.Generator().manual_seed(5)
        for k, V in [(1, 3), (4, 7), (8, 50)]:
            q = rand_probs(g, 300, k, V, zeros=0.3)
            p = torch.cat([q, rand_probs(g, 300, 1, V)], 1).float()
            x = draw(q, g)
            _, n = m.rejection_sample(x, q.float(), p, generator=torch.Generator().manual_seed(k))
            assert bool((n.cpu() == k).all()), (
                f"rejection_sample with draft_probs == target_probs[:, :k] (B=300, k={k}, V={V}) must "
                f"accept all {k} drafts in every row (min(1, p/q) = 1); num_accepted "
                f"{Counter(n.tolist())}")

    def test_acceptance_rate_of_each_draft_token_is_min_one_p_over_q(self) -> None:
        """k = 1, each row proposing a fixed token x with q(x) > 0: x must be accepted with
        probability min(1, p(x) / q(x)) (20 000 rows per token, 6 tokens)."""
        p = torch.tensor([0.30, 0.05, 0.25, 0.0, 0.20, 0.20, 0.0])
        q = torch.tensor([0.10, 0.20, 0.25, 0.15, 0.05, 0.10, 0.15])
        tokens = [0, 1, 2, 3, 4, 6]
        rows = 20_000
        x = torch.tensor(tokens).repeat_interleave(rows)[:, None]
        B = len(x)
        pp = torch.stack([p, torch.full((7,), 1 / 7)])[None].expand(B, 2, 7)
        qq = q[None, None].expand(B, 1, 7)
        _, n = m.rejection_sample(x, qq, pp, generator=torch.Generator().manual_seed(6))
        accepted = n.cpu().view(len(tokens), rows).sum(1)
        for j, tok in enumerate(tokens):
            rate = min(1.0, float(p[tok] / q[tok]))
            t = bernstein_halfwidth(rows, rate, DELTA / len(tokens))
            assert abs(float(accepted[j]) - rows * rate) <= t, (
                f"draft token {tok} (p={float(p[tok]):.2f}, q={float(q[tok]):.2f}) was accepted "
                f"{int(accepted[j])} times in {rows}; min(1, p/q) = {rate:.3f} gives {rows * rate:.0f} "
                f"+- {t:.0f} (false-failure rate < {DELTA:g})\n  hint: accept with probability "
                "min(1, p/q): draw u ~ U[0, 1) and accept when u < p/q (u * q < p avoids dividing by 0)")

    def test_acceptance_rate_with_a_large_vocabulary(self) -> None:
        """V = 1024 (vocabularies are large): k = 1, rows proposing token 0 (p 0.10, q 0.20) or
        token 1 (p 0.03, q 0.10) must accept at rates 0.5 and 0.3 (1 000 rows each; Bernstein,
        false-failure rate < 1e-6)."""
        V, rows = 1024, 1000
        g = torch.Generator().manual_seed(9)
        head_p, head_q = torch.tensor([0.10, 0.03]), torch.tensor([0.20, 0.10])
        rest_p = rand_probs(g, V - 2).float() * (1 - head_p.sum())
        rest_q = rand_probs(g, V - 2).float() * (1 - head_q.sum())
        p, q = torch.cat([head_p, rest_p]), torch.cat([head_q, rest_q])
        x = torch.tensor([0, 1]).repeat_interleave(rows)[:, None]
        B = len(x)
        pp = torch.stack([p, torch.full((V,), 1 / V)])[None].expand(B, 2, V)
        qq = q[None, None].expand(B, 1, V)
        _, n = m.rejection_sample(x, qq, pp, generator=torch.Generator().manual_seed(10))
        accepted = n.cpu().view(2, rows).sum(1)
        for j in range(2):
            rate = float(head_p[j] / head_q[j])
            t = bernstein_halfwidth(rows, rate, DELTA / 2)
            assert abs(float(accepted[j]) - rows * rate) <= t, (
                f"V={V}: draft token {j} (p={float(head_p[j]):.2f}, q={float(head_q[j]):.2f}) was "
                f"accepted {int(accepted[j])} times in {rows}; min(1, p/q) = {rate:.2f} gives "
                f"{rows * rate:.0f} +- {t:.0f}\n  hint: the same rule at every vocabulary size: accept "
                "with probability min(1, p/q), never a deterministic p >= q shortcut")

    def test_num_accepted_distribution(self) -> None:
        """Drafts x_i ~ q_i with a different (p_i, q_i) at each of k = 4 positions: position i
        accepts with probability beta_i = sum_x min(p_i, q_i)(x), independently, and the count
        stops at the first rejection: P(n = j) = beta_0 ... beta_{j-1} (1 - beta_j)."""
        g = torch.Generator().manual_seed(7)
        k, V, rows = 4, 5, 100_000
        q = rand_probs(g, k, V, zeros=0.2)
        p = rand_probs(g, k + 1, V, zeros=0.2)
        beta = torch.minimum(p[:k], q).sum(-1).tolist()
        expected = {j: math.prod(beta[:j]) * ((1 - beta[j]) if j < k else 1.0) for j in range(k + 1)}
        x, qq, pp = batch_of(p, q, rows, g)
        _, n = m.rejection_sample(x, qq, pp, generator=torch.Generator().manual_seed(8))
        check_counts(Counter(n.tolist()), expected, rows,
                     what=f"num_accepted of rejection_sample (B={rows}, k={k}, V={V}, acceptance "
                          f"probabilities {[round(b, 3) for b in beta]})",
                     hint="accept each draft with probability min(1, p/q) using a fresh uniform per "
                          "position, and count only the accepts before the first rejection")

    @pytest.mark.parametrize("k", [1, 3, 6])
    def test_mean_tokens_per_call_matches_the_formula(self, k: int) -> None:
        """The same (p, q) at every position: acceptances are i.i.d. with probability
        a = sum min(p, q), and a call emits n + 1 tokens with E[n + 1] = (1 - a^(k+1)) / (1 - a).
        Hoeffding on 100 000 rows (values in [1, k + 1]): false-failure rate < 1e-6."""
        g = torch.Generator().manual_seed(10 + k)
        V, rows = 6, 100_000
        q1, p1 = rand_probs(g, V), rand_probs(g, V)
        a = float(torch.minimum(p1, q1).sum())
        q, p = q1.expand(k, V), p1.expand(k + 1, V)
        x, qq, pp = batch_of(p, q, rows, g)
        _, n = m.rejection_sample(x, qq, pp, generator=torch.Generator().manual_seed(k))
        mean = float(n.double().mean()) + 1
        formula = (1 - a ** (k + 1)) / (1 - a)
        tol = k * math.sqrt(math.log(2 / DELTA) / (2 * rows))
        assert abs(mean - formula) <= tol, (
            f"mean tokens per call {mean:.4f} over {rows} rows (k={k}, V={V}, a={a:.4f}); the "
            f"formula (1 - a^(k+1)) / (1 - a) gives {formula:.4f} +- {tol:.4f}\n  hint: a draft is "
            "accepted with probability min(1, p/q); the emitted count is the accepted run plus one")


# -- Task 3 -------------------------------------------------------------------------------
HINT_EXACT = ("after the first rejection at position i, draw from normalize(max(0, p_i - q_i)) "
              "(not from p_i, not |p_i - q_i|); after k acceptances draw the bonus from p_k")


class TestTask3ExactDistribution:
    def test_tokens_the_target_gives_zero_never_come_out(self) -> None:
        """The draft puts most of its mass where the target has none: no emitted token, accepted,
        resampled or bonus, may have target probability 0 at its position."""
        g = torch.Generator().manual_seed(11)
        k, V, B = 3, 8, 20_000
        p = rand_probs(g, B, k + 1, V, zeros=0.6)
        q = torch.where(p[:, :k] == 0, 1.0, 0.05) * (torch.rand(B, k, V, generator=g, dtype=torch.float64) + 0.1)
        q = q / q.sum(-1, keepdim=True)
        x = draw(q, g)
        tokens, n = call(m.rejection_sample, x, q.float(), p.float(),
                         generator=torch.Generator().manual_seed(12), what="rejection_sample")
        check_format(tokens, n, x, V, what=f"rejection_sample(B={B}, k={k}, V={V})")
        tokens = tokens.cpu()
        emitted = tokens >= 0
        pt = p.gather(2, tokens.clamp(min=0)[..., None]).squeeze(-1)
        bad = emitted & (pt == 0)
        if bad.any():
            b, i = (int(v) for v in bad.nonzero()[0])
            raise AssertionError(
                f"rejection_sample emitted token {int(tokens[b, i])} at position {i} of row {b} "
                f"(num_accepted {int(n[b])}), whose target probability there is 0 "
                f"({int(bad.sum())} such tokens in {B} rows)\n  hint: {HINT_EXACT}")

    def test_tokens_the_draft_never_proposes_still_come_out(self) -> None:
        """q = 0 on tokens 0 and 1, which hold 60% of the target's mass: the residual must
        emit them at their target rates (k = 1, position 0, 100 000 rows)."""
        p = torch.tensor([[0.35, 0.25, 0.2, 0.2, 0.0], [0.2, 0.2, 0.2, 0.2, 0.2]], dtype=torch.float64)
        q = torch.tensor([[0.0, 0.0, 0.3, 0.3, 0.4]], dtype=torch.float64)
        rows = 100_000
        x, qq, pp = batch_of(p, q, rows, torch.Generator().manual_seed(13))
        tokens, n = m.rejection_sample(x, qq, pp, generator=torch.Generator().manual_seed(14))
        counts = Counter(tokens[:, 0].tolist())
        check_counts(counts, dict(enumerate(p[0].tolist())), rows,
                     what="the first emitted token of rejection_sample with q = 0 on tokens 0, 1 "
                          f"(p_0 = {p[0].tolist()}, q_0 = {q[0].tolist()})", hint=HINT_EXACT)

    def test_rejection_draws_from_the_residual_only(self) -> None:
        """p = [0.5, 0.3, 0.2], q = [0.2, 0.3, 0.5]: the residual max(0, p - q) = [0.3, 0, 0], so
        every rejected row must emit token 0."""
        p = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
        q = torch.tensor([[0.2, 0.3, 0.5]])
        x, qq, pp = batch_of(p, q, 5000, torch.Generator().manual_seed(15))
        tokens, n = m.rejection_sample(x, qq, pp, generator=torch.Generator().manual_seed(16))
        tokens, n = tokens.cpu(), n.cpu()
        rejected = n == 0
        assert rejected.any(), "no row rejected its draft in 5000 (each rejects with probability 0.3)"
        wrong = Counter(tokens[rejected, 0].tolist())
        assert set(wrong) == {0}, (
            f"rows that rejected their draft emitted {dict(wrong)}; with p_0 = {p[0].tolist()} and "
            f"q_0 = {q[0].tolist()} the residual max(0, p - q) is [0.3, 0, 0], so only token 0 may "
            f"come out\n  hint: {HINT_EXACT}")

    def test_bonus_token_comes_from_the_last_target_row(self) -> None:
        """Draft == target at positions 0..2, so every row accepts all k = 3 and the bonus must
        follow p_3, which differs from p_2 and from q_2 (50 000 rows)."""
        q = torch.tensor([[0.25, 0.25, 0.25, 0.25], [0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1]],
                         dtype=torch.float64)
        p = torch.cat([q, torch.tensor([[0.05, 0.15, 0.0, 0.8]], dtype=torch.float64)])
        rows = 50_000
        x, qq, pp = batch_of(p, q, rows, torch.Generator().manual_seed(17))
        tokens, n = m.rejection_sample(x, qq, pp, generator=torch.Generator().manual_seed(18))
        assert bool((n.cpu() == 3).all()), "draft == target: every row must accept all 3 drafts"
        check_counts(Counter(tokens[:, 3].tolist()), dict(enumerate(p[3].tolist())), rows,
                     what=f"the bonus token (p_3 = {p[3].tolist()}, p_2 = {p[2].tolist()})",
                     hint="when all k drafts are accepted, sample one more token from p_k = "
                          "target_probs[:, k], the target's distribution after the last draft")

    def test_k_zero_is_plain_sampling_from_the_target(self) -> None:
        p = torch.tensor([[0.1, 0.0, 0.6, 0.3]], dtype=torch.float64)
        rows = 50_000
        x = torch.zeros(rows, 0, dtype=torch.long)
        tokens, n = call(m.rejection_sample, x, torch.zeros(rows, 0, 4), p.float()[None].expand(rows, 1, 4),
                         generator=torch.Generator().manual_seed(19), what="rejection_sample with k = 0")
        check_format(tokens, n, x, 4, what=f"rejection_sample with k = 0 (B={rows}, V=4)")
        check_counts(Counter(tokens[:, 0].tolist()), dict(enumerate(p[0].tolist())), rows,
                     what=f"rejection_sample with k = 0, p_0 = {p[0].tolist()}",
                     hint="k = 0 drafts nothing: the one token is the bonus, drawn from p_0")

    @pytest.mark.parametrize("k,V,rows,dtype", [(1, 6, 100_000, torch.float32),
                                                (2, 4, 100_000, torch.float32),
                                                (3, 3, 100_000, torch.float64)])
    def test_whole_rows_match_the_enumerated_distribution(self, k: int, V: int, rows: int,
                                                          dtype: torch.dtype) -> None:
        """The joint distribution of (num_accepted, y_0..y_n) over all possible rows, by
        enumeration (see the module docstring), with zeros in both p and q. Bernstein per
        outcome, union bound: false-failure rate < 1e-6."""
        g = torch.Generator().manual_seed(100 * k + V)
        q = rand_probs(g, k, V, zeros=0.25)
        p = rand_probs(g, k + 1, V, zeros=0.25)
        x, qq, pp = batch_of(p, q, rows, g, dtype)
        tokens, n = m.rejection_sample(x, qq, pp, generator=torch.Generator().manual_seed(20 + k))
        check_format(tokens, n, x, V, what=f"rejection_sample(B={rows}, k={k}, V={V})")
        check_counts(row_counts(tokens, n), exact_rows(p, q), rows,
                     what=f"rows (num_accepted, y_0..y_n) of rejection_sample (k={k}, V={V}, {dtype}, "
                          f"p={[[round(v, 3) for v in r] for r in p.tolist()]}, "
                          f"q={[[round(v, 3) for v in r] for r in q.tolist()]})", hint=HINT_EXACT)

    def test_every_emitted_position_follows_the_target(self) -> None:
        """The theorem itself, for k = 5 and V = 7 with a different (p_i, q_i) per position:
        among rows that reach position t, the token at t (accepted or resampled) follows p_t."""
        g = torch.Generator().manual_seed(21)
        k, V, rows = 5, 7, 150_000
        q = rand_probs(g, k, V, zeros=0.3)
        p = rand_probs(g, k + 1, V, zeros=0.3)
        x, qq, pp = batch_of(p, q, rows, g)
        tokens, n = m.rejection_sample(x, qq, pp, generator=torch.Generator().manual_seed(22))
        tokens, n = tokens.cpu(), n.cpu()
        for t in range(k + 1):
            reached = n >= t
            count = int(reached.sum())
            check_counts(Counter(tokens[reached, t].tolist()), dict(enumerate(p[t].tolist())), count,
                         delta=DELTA / (k + 1),
                         what=f"token {t} of the {count} rows that reach position {t} (k={k}, V={V}, "
                              f"p_{t}={[round(v, 3) for v in p[t].tolist()]})", hint=HINT_EXACT)

    def test_rows_of_one_batch_are_independent(self) -> None:
        """Two different (p, q) configurations interleaved row by row in one batch (k = 1, V = 4,
        20 000 rows each): each row's outcomes follow its own enumerated distribution, so nothing
        (a residual, a bonus row, a uniform) may be taken from another row of the batch.
        False-failure rate < 1e-6."""
        g = torch.Generator().manual_seed(25)
        k, V, rows = 1, 4, 20_000
        confs = [(rand_probs(g, k + 1, V, zeros=0.25), rand_probs(g, k, V, zeros=0.25)) for _ in range(2)]
        batches = [batch_of(p, q, rows, g) for p, q in confs]
        x, qq, pp = (torch.stack([a, b], 1).flatten(0, 1) for a, b in zip(*batches))  # rows A, B, A, B, ...
        tokens, n = m.rejection_sample(x, qq, pp, generator=torch.Generator().manual_seed(26))
        check_format(tokens, n, x, V, what=f"rejection_sample on two interleaved configurations (B={2 * rows})")
        for c, (p, q) in enumerate(confs):
            check_counts(row_counts(tokens[c::2], n[c::2]), exact_rows(p, q), rows, delta=DELTA / 2,
                         what=f"rows {c}, {c + 2}, {c + 4}, ... of a batch interleaving two (p, q) "
                              f"configurations (k={k}, V={V}), configuration {c}: "
                              f"p={[[round(v, 3) for v in r] for r in p.tolist()]}, "
                              f"q={[[round(v, 3) for v in r] for r in q.tolist()]}",
                         hint="row b's residual and bonus come from target_probs[b] and draft_probs[b] "
                              "(index the batch with arange(B), not row 0)")

    def test_non_contiguous_probabilities(self) -> None:
        """Probabilities stored vocabulary-major (a transposed view) give the same distribution."""
        g = torch.Generator().manual_seed(23)
        k, V, rows = 2, 4, 100_000
        q = rand_probs(g, k, V, zeros=0.25)
        p = rand_probs(g, k + 1, V, zeros=0.25)
        x, qq, pp = batch_of(p, q, rows, g)
        qq = qq.permute(2, 0, 1).contiguous().permute(1, 2, 0)
        pp = pp.permute(2, 1, 0).contiguous().permute(2, 1, 0)
        assert not qq.is_contiguous() and not pp.is_contiguous(), "test setup: the views must be non-contiguous"
        tokens, n = m.rejection_sample(x, qq, pp, generator=torch.Generator().manual_seed(24))
        check_format(tokens, n, x, V, what="rejection_sample on non-contiguous probabilities")
        check_counts(row_counts(tokens, n), exact_rows(p, q), rows,
                     what=f"rows of rejection_sample on non-contiguous probabilities (k={k}, V={V})",
                     hint="index with the tensors' own strides (or call .contiguous() first)")


# -- Task 4 -------------------------------------------------------------------------------
def sequence_distribution(target: TableModel, prompt: list[int], length: int, V: int
                          ) -> dict[tuple[int, ...], float]:
    """P(y_1..y_length) under the target alone, by enumerating the tree of continuations."""
    out: dict[tuple[int, ...], float] = {}

    def walk(prefix: tuple[int, ...], prob: float) -> None:
        if len(prefix) == length:
            out[prefix] = prob
            return
        probs = target.next_probs(prompt + list(prefix))
        for y in range(V):
            if probs[y] > 0:
                walk(prefix + (y,), prob * float(probs[y]))

    walk((), 1.0)
    return out


def models(seed: int, V: int) -> tuple[TableModel, TableModel]:
    """A trigram target with zeros, and a bigram draft that has zeros where the target has
    mass (and mass where the target has none)."""
    g = torch.Generator().manual_seed(seed)
    big = rand_probs(g, V, V, zeros=0.3).float()
    tri = rand_probs(g, V, V, V, zeros=0.3).float()
    # peaked rows: a wrong context or a wrong rule moves a lot of mass
    tri = tri ** 2 / (tri ** 2).sum(-1, keepdim=True)
    draft = rand_probs(g, V, V, zeros=0.4).float()
    return TableModel(big, tri), TableModel(draft)


class TestTask4SpeculativeGenerate:
    def test_returns_exactly_max_new_tokens(self) -> None:
        target, draft = models(30, 5)
        for k, n_new in [(1, 0), (1, 1), (2, 1), (3, 7), (4, 5), (5, 13), (2, 2)]:
            out = m.speculative_generate(target, draft, [1, 2], k=k, max_new_tokens=n_new,
                                         generator=torch.Generator().manual_seed(k * 31 + n_new))
            assert isinstance(out, list) and all(type(t) is int for t in out), (
                f"speculative_generate must return a list of ints, got {type(out).__name__} "
                f"{out if isinstance(out, list) else ''}")
            assert len(out) == n_new, (
                f"speculative_generate(prompt [1, 2], k={k}, max_new_tokens={n_new}) returned "
                f"{len(out)} tokens: {out}\n  hint: exactly max_new_tokens new tokens, the prompt "
                "not included; a round may emit up to k + 1, so draft fewer near the end (or cut)")
            assert all(0 <= t < 5 for t in out), f"tokens outside the vocabulary 0..4: {out}"

    def test_prompt_not_modified(self) -> None:
        target, draft = models(31, 4)
        prompt = [3, 0, 2]
        m.speculative_generate(target, draft, prompt, k=3, max_new_tokens=6,
                               generator=torch.Generator().manual_seed(0))
        assert prompt == [3, 0, 2], f"speculative_generate modified the prompt list: now {prompt}"

    def test_bad_arguments_raise(self) -> None:
        target, draft = models(32, 4)
        for what, prompt, k, n_new in [("an empty prompt", [], 2, 3), ("k = 0", [1], 0, 3),
                                       ("max_new_tokens = -1", [1], 2, -1)]:
            with assert_raises(ValueError, f"speculative_generate with {what}"):
                m.speculative_generate(target, draft, prompt, k=k, max_new_tokens=n_new)

    def test_same_seed_same_tokens(self) -> None:
        target, draft = models(33, 6)
        run = [m.speculative_generate(target, draft, [1], k=3, max_new_tokens=20,
                                      generator=torch.Generator().manual_seed(s)) for s in (5, 5, 6)]
        assert run[0] == run[1], f"the same generator seed gave different tokens: {run[0]} vs {run[1]}"
        assert run[0] != run[2], "generators seeded 5 and 6 gave the same 20 tokens"

    def test_a_deterministic_target_gives_its_one_continuation(self) -> None:
        """A target whose every row is one-hot has one possible text, whatever the draft
        proposes: accepted drafts must be its tokens, and every rejection must emit its token."""
        V = 5
        g = torch.Generator().manual_seed(35)
        nxt2 = torch.randint(V, (V, V), generator=g)
        nxt1 = torch.randint(V, (V,), generator=g)
        eye = torch.eye(V)
        target = TableModel(eye[nxt1], eye[nxt2])
        draft = TableModel(rand_probs(g, V, V, zeros=0.3).float())
        for prompt, k in [([0], 2), ([1, 3], 3), ([4, 4, 2], 1), ([2], 4), ([3, 0], 5)]:
            expected = list(prompt)
            for _ in range(11):
                expected.append(int(target.next_probs(expected).argmax()))
            got = m.speculative_generate(target, draft, prompt, k=k, max_new_tokens=11,
                                         generator=torch.Generator().manual_seed(k))
            assert got == expected[len(prompt):], (
                f"speculative_generate(prompt {prompt}, k={k}, 11 tokens) with a target whose rows "
                f"are one-hot gave {got}; the target's only continuation is {expected[len(prompt):]}"
                "\n  hint: each round calls target(seq + drafts) on the whole text so far (the prompt "
                "and every token emitted before, then the drafts) and uses its rows from "
                "len(seq) - 1 on")

    def test_a_perfect_draft_needs_few_target_calls(self) -> None:
        """draft == target: every draft is accepted, so each target call yields k + 1 tokens and
        max_new_tokens = 12 needs ceil(12 / (k + 1)) target calls."""
        target, _ = models(34, 5)
        for k in (1, 2, 3, 5):
            target.calls = 0
            same = TableModel(target.bigram, target.trigram)
            out = m.speculative_generate(target, same, [0, 4], k=k, max_new_tokens=12,
                                         generator=torch.Generator().manual_seed(k))
            assert len(out) == 12, f"k={k}: returned {len(out)} tokens, expected 12"
            bound = -(-12 // (k + 1))
            assert target.calls <= bound, (
                f"speculative_generate with draft == target and k={k} called the target "
                f"{target.calls} times for 12 tokens; every draft is accepted, so {bound} calls "
                "suffice\n  hint: draft k tokens, call the target once on all of them, keep the "
                "accepted drafts plus the one extra token rejection_sample emits")

    @pytest.mark.parametrize("k,V,length,samples,seed", [(3, 3, 4, 1500, 40)])
    def test_sequences_follow_the_target(self, k: int, V: int, length: int, samples: int,
                                         seed: int) -> None:
        """The whole sequence, against the target's exact distribution over all V^length
        continuations: Bernstein per sequence with a union bound (false-failure rate < 1e-6)
        and zero-probability sequences never seen. The draft disagrees with the target, has
        zeros where the target has mass and mass where the target has none."""
        target, draft = models(seed, V)
        prompt = [1, 0]
        expected = sequence_distribution(target, prompt, length, V)
        g = torch.Generator().manual_seed(seed)
        counts = Counter(tuple(m.speculative_generate(target, draft, prompt, k=k, max_new_tokens=length,
                                                      generator=g)) for _ in range(samples))
        check_counts(counts, expected, samples,
                     what=f"sequences of speculative_generate (k={k}, V={V}, {length} tokens, prompt "
                          f"{prompt}, {samples} runs)",
                     hint="each round: drafts x_i sampled from the draft's row after seq + x_<i; "
                          "target_probs = target(seq + drafts)[len(seq) - 1:], the rows after seq, "
                          "seq + x_0, ..., seq + all drafts; keep tokens[: num_accepted + 1]")
