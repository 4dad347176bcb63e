"""Kata 13, Task 5 on a GPU: rejection_sample at serving size (skipped without CUDA).

First correctness on CUDA tensors: the same enumeration checks as Tasks 2-3 (many rows, so
the bounds are tight), and a 131072-token vocabulary whose mass sits on a few tokens spread
over the whole row (so a kernel that splits the row into chunks must merge them right).

Then speed: B = 256 sequences, k = 4 and 8 drafts, V = 131072, fp32 probabilities, judged
against perf_targets/spec_decode.toml [rejection_sample]:
  vs_plain_torch  the time of `plain_rejection_sample` below (textbook torch that forms the
                  residual max(0, p_i - q_i) at every position and samples them all) / yours;
  copy_fraction   minimal bytes per second / this GPU's copy bandwidth, measured in the same
                  run. Minimal bytes = the gathered probabilities p_i(x_i) and q_i(x_i)
                  (2 B k fp32) plus one row of p and one of q per sequence (2 B V fp32): the
                  acceptance needs only the drafted tokens' probabilities, and the residual is
                  needed at one position per sequence at most.
A learner's run must reach bronze; `--impl reference` must reach gold.

The harness (harness/perf.py) calls rejection_sample only on inputs it has never seen
(make_inputs(i)) and checks every timed output with `check_rejection` outside the timed
region: the format, and the facts every correct sample satisfies (accepted drafts are the
drafts and have p > 0; a rejected draft has p(x) < q(x); the emitted token has residual
mass > 0, or p_k > 0 for the bonus).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from harness import load_kata_file, load_kata_module

m = load_kata_module("spec_decode")
T = load_kata_file(Path(__file__).with_name("test_spec_decode.py"), "_kata13_checks")

B, V = 256, 131072
KS = [4, 8]


# -- The peer, the inputs, the check ----------------------------------------------------------
def plain_rejection_sample(draft_tokens: torch.Tensor, draft_probs: torch.Tensor,
                           target_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain torch version (the bronze bar): correct, but it forms the residual at every
    position, normalises and samples all k + 1 rows, then keeps one per sequence."""
    Bn, k, Vn = draft_probs.shape
    x = draft_tokens.unsqueeze(-1)
    q_x = draft_probs.gather(2, x).squeeze(-1)
    p_x = target_probs[:, :k].gather(2, x).squeeze(-1)
    accepted = torch.rand_like(p_x) * q_x < p_x
    n = accepted.long().cumprod(dim=1).sum(dim=1)
    residual = torch.cat([(target_probs[:, :k] - draft_probs).clamp(min=0), target_probs[:, k:]], 1)
    mass = residual.sum(-1, keepdim=True)
    residual = torch.where(mass > 0, residual / mass, target_probs)
    every = torch.multinomial(residual.view(Bn * (k + 1), Vn), 1).view(Bn, k + 1)
    last = every.gather(1, n[:, None])
    pos = torch.arange(k + 1, device=draft_tokens.device)
    drafts = torch.nn.functional.pad(draft_tokens, (0, 1), value=-1)
    tokens = torch.where(pos < n[:, None], drafts, -1)
    return torch.where(pos == n[:, None], last, tokens), n


def make_inputs_for(k: int):
    """Draft and target share most of their logits (base), each adds its own noise: about
    half of the drafts are accepted, so rows end at every position."""
    def make_inputs(i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        gen = torch.Generator(device="cuda").manual_seed(1_000_003 * k + i)
        base = 2.0 * torch.randn(B, 1, V, device="cuda", generator=gen)
        q = torch.softmax(base + 0.8 * torch.randn(B, k, V, device="cuda", generator=gen), dim=-1)
        p = torch.softmax(base + 0.8 * torch.randn(B, k + 1, V, device="cuda", generator=gen), dim=-1)
        x = torch.multinomial(q.view(B * k, V), 1, generator=gen).view(B, k)
        return x, q, p
    return make_inputs


def minimal_bytes(b: int, k: int, v: int, itemsize: int = 4) -> int:
    return 2 * b * k * itemsize + 2 * b * v * itemsize


def check_rejection(args: tuple, out: object) -> None:
    """Format plus the deterministic facts of a correct sample (one host sync at the end)."""
    x, q, p = args
    Bn, k = x.shape
    assert isinstance(out, tuple) and len(out) == 2, "rejection_sample must return (tokens, num_accepted)"
    tokens, n = out
    assert tokens.shape == (Bn, k + 1) and tokens.dtype == torch.long, \
        f"tokens: expected ({Bn}, {k + 1}) long, got {tuple(tokens.shape)} {tokens.dtype}"
    assert n.shape == (Bn,) and n.dtype == torch.long, f"num_accepted: expected ({Bn},) long, got {tuple(n.shape)} {n.dtype}"
    rows = torch.arange(Bn, device=x.device)
    pos = torch.arange(k + 1, device=x.device)
    nc = n.clamp(0, k)
    last = tokens.gather(1, nc[:, None]).squeeze(1)
    lc = last.clamp(0, p.shape[-1] - 1)
    p_x = p[:, :k].gather(2, x[..., None]).squeeze(-1)
    q_x = q.gather(2, x[..., None]).squeeze(-1)
    at = nc.clamp(max=k - 1)[:, None]
    p_last = p[rows, nc, lc]
    q_last = torch.where(nc < k, q[rows, nc.clamp(max=k - 1), lc], torch.zeros_like(p_last))
    facts = {
        "num_accepted in 0..k": ((n >= 0) & (n <= k)).all(),
        "the first num_accepted tokens are the drafts": ((pos[:k] >= nc[:, None]) | (tokens[:, :k] == x)).all(),
        "-1 after the emitted token": ((pos <= nc[:, None]) | (tokens == -1)).all(),
        "the emitted token is a vocabulary token": ((last >= 0) & (last < p.shape[-1])).all(),
        "accepted drafts have target probability > 0": ((pos[:k] >= nc[:, None]) | (p_x > 0)).all(),
        "a rejected draft has p(x) < q(x)": ((nc == k) | (p_x.gather(1, at).squeeze(1) < q_x.gather(1, at).squeeze(1))).all(),
        "the emitted token has max(0, p - q) > 0 (bonus: p_k > 0)": (p_last > q_last).all(),
    }
    ok = torch.stack(list(facts.values())).cpu()
    failed = [name for name, good in zip(facts, ok.tolist()) if not good]
    assert not failed, f"rejection_sample broke: {failed}"


def sparse_probs(gen: torch.Generator, rows: int, support: list[int], v: int) -> torch.Tensor:
    """(rows, v) distributions on `support` only, values multiples of 1/64 (exact in bf16 too)."""
    out = torch.zeros(rows, v, dtype=torch.float64)
    for r in range(rows):
        counts = torch.bincount(torch.randint(len(support), (64,), generator=gen), minlength=len(support))
        out[r, support] = counts.double() / 64
    return out


# -- Task 5 -----------------------------------------------------------------------------------
@pytest.mark.gpu
class TestTask5Cuda:
    def test_cuda_tensors_and_generator(self) -> None:
        make_inputs = make_inputs_for(4)
        args = make_inputs(0)
        g1 = torch.Generator(device="cuda").manual_seed(3)
        g2 = torch.Generator(device="cuda").manual_seed(3)
        a, b = m.rejection_sample(*args, generator=g1), m.rejection_sample(*args, generator=g2)
        check_rejection(args, a)
        assert a[0].is_cuda and a[1].is_cuda, "CUDA inputs must give CUDA results"
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), (
            "two calls with CUDA generators seeded alike gave different results")
        c = m.rejection_sample(*args, generator=g1)
        assert not torch.equal(a[0], c[0]), "the generator's state must advance between calls"

    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
    def test_cuda_whole_rows_match_the_enumerated_distribution(self, dtype: torch.dtype) -> None:
        """k = 2, V = 4, one million rows on the GPU (false-failure rate < 1e-6). Probabilities
        are multiples of 1/64, exact in bf16, so both dtypes have the same exact answer."""
        g = torch.Generator().manual_seed(50)
        k, v, rows = 2, 4, 1_000_000
        q = sparse_probs(g, k, list(range(v)), v)
        p = sparse_probs(g, k + 1, list(range(v)), v)
        x, qq, pp = T.batch_of(p, q, rows, g, dtype)
        tokens, n = m.rejection_sample(x.cuda(), qq.cuda(), pp.cuda(),
                                       generator=torch.Generator(device="cuda").manual_seed(51))
        T.check_format(tokens, n, x, v, what=f"rejection_sample on CUDA ({rows} rows, {dtype})")
        T.check_counts(T.row_counts(tokens, n), T.exact_rows(p, q), rows,
                       what=f"rows of rejection_sample on CUDA (k={k}, V={v}, {dtype})", hint=T.HINT_EXACT)

    def test_cuda_every_position_follows_the_target_k8(self) -> None:
        g = torch.Generator().manual_seed(52)
        k, v, rows = 8, 6, 500_000
        q = T.rand_probs(g, k, v, zeros=0.3)
        p = T.rand_probs(g, k + 1, v, zeros=0.3)
        x, qq, pp = T.batch_of(p, q, rows, g)
        tokens, n = m.rejection_sample(x.cuda(), qq.cuda(), pp.cuda(),
                                       generator=torch.Generator(device="cuda").manual_seed(53))
        T.check_format(tokens, n, x, v, what=f"rejection_sample on CUDA (k={k}, {rows} rows)")
        tokens, n = tokens.cpu(), n.cpu()
        for t in range(k + 1):
            reached = n >= t
            T.check_counts(Counter(tokens[reached, t].tolist()), dict(enumerate(p[t].tolist())),
                           int(reached.sum()), delta=T.DELTA / (k + 1),
                           what=f"token {t} of the rows that reach it on CUDA (k={k}, V={v})",
                           hint=T.HINT_EXACT)

    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
    def test_cuda_large_vocabulary(self, dtype: torch.dtype) -> None:
        """V = 131072, B = 256, k = 4: the mass sits on 8 tokens at both ends of the row and
        around the 4k/8k/64k boundaries where a chunked kernel splits it. 64 calls with fresh
        drafts (16 384 rows): each position's token among the rows that reach it follows p_t."""
        g = torch.Generator().manual_seed(54)
        k, calls = 4, 64
        support = [0, 1, 4095, 8191, 8192, 65537, 131070, 131071]
        q = sparse_probs(g, k, support, V)
        p = sparse_probs(g, k + 1, support, V)
        qq = q.to(dtype).cuda()[None].expand(B, k, V).contiguous()
        pp = p.to(dtype).cuda()[None].expand(B, k + 1, V).contiguous()
        gen = torch.Generator(device="cuda").manual_seed(55)
        all_tokens, all_n = [], []
        for _ in range(calls):
            x = torch.stack([torch.multinomial(q[i].float().cuda(), B, replacement=True, generator=gen)
                             for i in range(k)], 1)
            tokens, n = m.rejection_sample(x, qq, pp, generator=gen)
            check_rejection((x, qq.float(), pp.float()), (tokens, n))
            all_tokens.append(tokens.cpu())
            all_n.append(n.cpu())
        tokens, n = torch.cat(all_tokens), torch.cat(all_n)
        for t in range(k + 1):
            reached = n >= t
            expected = {tok: float(p[t, tok]) for tok in support}
            T.check_counts(Counter(tokens[reached, t].tolist()), expected, int(reached.sum()),
                           delta=T.DELTA / (k + 1),
                           what=f"token {t} of the rows that reach it (V={V}, {dtype}, mass on {support})",
                           hint="a row split into chunks must compare every chunk's candidate by the "
                                "same rule (and index columns from the chunk's start)")

    @pytest.mark.perf
    @pytest.mark.parametrize("k", KS)
    def test_speed(self, perf, k: int) -> None:
        make_inputs = make_inputs_for(k)
        args = make_inputs(0)
        check_rejection(args, m.rejection_sample(*args))  # a fast wrong answer earns nothing
        check_rejection(args, plain_rejection_sample(*args))  # nor a wrong peer
        del args
        r = perf.measure(m.rejection_sample, make_inputs=make_inputs, check=check_rejection,
                         label=f"B{B} k{k} V{V} fp32", bytes_moved=minimal_bytes(B, k, V),
                         peers={"plain_torch": plain_rejection_sample})
        perf.check("spec_decode", "rejection_sample", r)
