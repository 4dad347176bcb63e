"""Kata 13 reference: speculative decoding (rejection sampling, greedy verification, the loop).

One identity carries the kata. A draft proposes x ~ q; accept it with probability
min(1, p(x) / q(x)); on rejection draw from normalize(max(0, p - q)). Then

    P(emit y) = min(p(y), q(y)) + max(0, p(y) - q(y)) = p(y),

so every emitted token is distributed exactly as the target p (README, Concept).

Two paths compute the same thing. On CPU (and for float64) plain torch ops; on CUDA two
Triton kernels that read only what the math needs: the probabilities of the drafted tokens,
then one row of p and of q per sequence (the first rejected position, or p_k alone for the
bonus), and sample that row by an exponential race, argmax_y r(y) / E_y with E_y ~ Exp(1),
which needs neither the normaliser nor a second pass. Nothing waits on the host.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice
from torch import Tensor

# model(tokens) -> (len(tokens), V): row i is the next-token distribution after tokens[: i + 1]
Model = Callable[[list[int]], Tensor]


def _check_inputs(draft_tokens: Tensor, target_probs: Tensor,
                  draft_probs: Tensor | None = None) -> tuple[int, int, int]:
    """(B, k, V), or ValueError naming what is wrong."""
    if not isinstance(draft_tokens, Tensor) or draft_tokens.dim() != 2 \
            or draft_tokens.dtype.is_floating_point or draft_tokens.dtype == torch.bool:
        raise ValueError("draft_tokens must be a (B, k) integer tensor, got "
                         f"{getattr(draft_tokens, 'shape', type(draft_tokens).__name__)}")
    B, k = draft_tokens.shape
    if not isinstance(target_probs, Tensor) or target_probs.dim() != 3 \
            or tuple(target_probs.shape[:2]) != (B, k + 1) or target_probs.shape[2] < 1:
        raise ValueError(f"target_probs must be (B, k + 1, V) = ({B}, {k + 1}, V) for draft_tokens "
                         f"({B}, {k}), got {tuple(getattr(target_probs, 'shape', ()))}")
    V = target_probs.shape[2]
    if draft_probs is not None and (not isinstance(draft_probs, Tensor)
                                    or tuple(draft_probs.shape) != (B, k, V)):
        raise ValueError(f"draft_probs must be (B, k, V) = ({B}, {k}, {V}), got "
                         f"{tuple(getattr(draft_probs, 'shape', ()))}")
    return B, k, V


def _compute_dtype(*ts: Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32


def _emit(draft_tokens: Tensor, num_accepted: Tensor, last: Tensor) -> Tensor:
    """(B, k + 1): the accepted drafts, then the one sampled token, then -1."""
    B, k = draft_tokens.shape
    tokens = torch.full((B, k + 1), -1, dtype=torch.long, device=draft_tokens.device)
    accepted = torch.arange(k, device=draft_tokens.device) < num_accepted[:, None]
    tokens[:, :k] = torch.where(accepted, draft_tokens.long(), -1)
    tokens.scatter_(1, num_accepted[:, None], last[:, None])
    return tokens


# ------------------------------------------------------------------------------ Task 1
def greedy_verify(draft_tokens: Tensor, target_probs: Tensor) -> tuple[Tensor, Tensor]:
    """Temperature 0: accept while the draft token is the target's argmax (a tie with the
    maximum counts as a match), then emit a target argmax. Returns (tokens, num_accepted)."""
    B, k, _ = _check_inputs(draft_tokens, target_probs)
    x = draft_tokens.long()
    p_x = target_probs[:, :k].gather(2, x.unsqueeze(-1)).squeeze(-1)
    matches = p_x == target_probs[:, :k].amax(dim=2)
    num_accepted = matches.long().cumprod(dim=1).sum(dim=1)  # the run before the first miss
    rows = torch.arange(B, device=target_probs.device)
    last = target_probs[rows, num_accepted].argmax(dim=1)
    return _emit(draft_tokens, num_accepted, last), num_accepted


# ------------------------------------------------------------------------------ Tasks 2-3, 5
def rejection_sample(draft_tokens: Tensor, draft_probs: Tensor, target_probs: Tensor,
                     generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Accept draft token i with probability min(1, p_i(x_i) / q_i(x_i)); at the first
    rejection emit one token from normalize(max(0, p_i - q_i)) and stop; if all k are
    accepted emit a bonus token from p_k. Returns tokens (B, k + 1) long, -1 after the last
    emitted token, and num_accepted (B,) long."""
    B, k, V = _check_inputs(draft_tokens, target_probs, draft_probs)
    if _use_triton(draft_tokens, draft_probs, target_probs):
        return _rejection_sample_triton(draft_tokens, draft_probs, target_probs, generator)
    dev, ftype = target_probs.device, _compute_dtype(draft_probs, target_probs)
    x = draft_tokens.long()

    # Task 2: accept with probability min(1, p / q), written u * q < p (no division by zero;
    # a token the target gives 0 is never accepted).
    q_x = draft_probs.gather(2, x.unsqueeze(-1)).squeeze(-1).to(ftype)
    p_x = target_probs[:, :k].gather(2, x.unsqueeze(-1)).squeeze(-1).to(ftype)
    u = torch.rand(B, k, generator=generator, device=dev, dtype=ftype)
    accepted = u * q_x < p_x
    num_accepted = accepted.long().cumprod(dim=1).sum(dim=1)  # stop at the first rejection

    # Task 3: one token from the residual at the first rejected position, or the bonus from p_k.
    rows = torch.arange(B, device=dev)
    p_next = target_probs[rows, num_accepted].to(ftype)
    if k > 0:
        q_next = draft_probs[rows, num_accepted.clamp(max=k - 1)].to(ftype)
        q_next = torch.where((num_accepted < k)[:, None], q_next, 0.0)  # bonus: no draft to subtract
    else:
        q_next = torch.zeros_like(p_next)
    residual = (p_next - q_next).clamp(min=0)
    mass = residual.sum(dim=1, keepdim=True)
    # A rejection implies mass > 0 in exact arithmetic; if rounding left none, p itself.
    residual = torch.where(mass > 0, residual / mass, p_next)
    last = torch.multinomial(residual, 1, generator=generator).squeeze(1)
    return _emit(draft_tokens, num_accepted, last), num_accepted


# ------------------------------------------------------------------------------ Task 4
def speculative_generate(target: Model, draft: Model, prompt: Sequence[int], *, k: int,
                         max_new_tokens: int, generator: torch.Generator | None = None) -> list[int]:
    """Exactly max_new_tokens new tokens (prompt excluded), distributed as sampling them from
    target alone; target is called once per round on the prompt, the output so far and up
    to k drafted tokens."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    seq = [int(t) for t in prompt]
    if not seq:
        raise ValueError("the prompt must hold at least one token (the models condition on it)")
    out: list[int] = []
    while len(out) < max_new_tokens:
        n_draft = min(k, max_new_tokens - len(out) - 1)  # a round emits at most n_draft + 1
        drafted: list[int] = []
        q_rows: list[Tensor] = []
        for _ in range(n_draft):
            q = draft(seq + drafted)[-1]
            drafted.append(int(torch.multinomial(q, 1, generator=generator)))
            q_rows.append(q)
        p = target(seq + drafted)[len(seq) - 1:]  # rows after seq, seq + x_0, ..., all drafts
        V = p.shape[-1]
        d = torch.tensor([drafted], dtype=torch.long, device=p.device).view(1, n_draft)
        q_all = torch.stack(q_rows)[None] if q_rows else p.new_zeros(1, 0, V)
        tokens, n = rejection_sample(d, q_all.to(p.dtype), p[None], generator=generator)
        new = tokens[0, : int(n[0]) + 1].tolist()
        out += new
        seq += new
    return out


# ------------------------------------------------------------------------------ Task 5: CUDA
def _use_triton(*ts: Tensor) -> bool:
    probs = ts[1:]
    return all(t.is_cuda for t in ts) and all(
        t.dtype in (torch.float32, torch.float16, torch.bfloat16) for t in probs)


@triton.jit
def _race(p_row, q_row, stride_pv, stride_qv, cols, V, V_q, u, FAST_LOG: tl.constexpr):
    """Race keys of one block: r / E where r = max(0, p - q) > 0; where r is 0 (only when
    rounding left no residual at all) -E / p, a race over p that loses to any r > 0.
    V_q is V, or 0 for the bonus row (no q to subtract)."""
    p = tl.load(p_row + cols * stride_pv, mask=cols < V, other=0.0).to(tl.float32)
    q = tl.load(q_row + cols * stride_qv, mask=cols < V_q, other=0.0).to(tl.float32)
    r = tl.maximum(p - q, 0.0)
    if FAST_LOG:  # lg2.approx on a GPU; the interpreter knows only tl.log2
        e = -libdevice.fast_log2f(u)  # Exp(1) / ln 2: one scale for all tokens, same argmax
    else:
        e = -tl.log2(u)
    return tl.where(r > 0, r / e, tl.where(p > 0, -e / p, float("-inf")))


@triton.jit
def _accept_and_race_kernel(p_ptr, q_ptr, tok_ptr, seed_ptr, key_out, idx_out, nacc_out,
                            V, k, chunk, n_chunks,
                            s_pb, s_pk, s_pv, s_qb, s_qk, s_qv, s_tb, s_tk,
                            K_PAD: tl.constexpr, SUB: tl.constexpr, FAST_LOG: tl.constexpr):
    """Program (b, c): the acceptance of row b (every program of the row computes the same),
    then the race over columns [c * chunk, (c + 1) * chunk) of the one row it needs."""
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1).to(tl.int64)
    seed = tl.load(seed_ptr)

    i = tl.arange(0, K_PAD)
    valid = i < k
    x = tl.load(tok_ptr + b * s_tb + i * s_tk, mask=valid, other=0).to(tl.int64)
    q_x = tl.load(q_ptr + b * s_qb + i * s_qk + x * s_qv, mask=valid, other=1.0).to(tl.float32)
    p_x = tl.load(p_ptr + b * s_pb + i * s_pk + x * s_pv, mask=valid, other=0.0).to(tl.float32)
    u = tl.rand(seed, b * K_PAD + i + (1 << 40))  # Philox counters >= 2^40: the residual's are below
    rejected = valid & (u * q_x >= p_x)
    n = tl.min(tl.where(rejected, i, k), axis=0)  # the first rejection, or k
    tl.store(nacc_out + b, n.to(tl.int64))  # every program of the row stores the same value

    V_q = tl.where(n < k, V, 0)  # n == k: the bonus row p_k, no q to subtract
    p_row = p_ptr + b * s_pb + n * s_pk
    q_row = q_ptr + b * s_qb + tl.minimum(n, k - 1) * s_qk  # only read when n < k
    t = tl.arange(0, SUB)
    best = tl.full([SUB], float("-inf"), tl.float32)
    best_col = tl.zeros([SUB], dtype=tl.int64)
    start = c * chunk
    for off in range(0, chunk, 4 * SUB):
        cols = start + off + t
        u0, u1, u2, u3 = tl.rand4x(seed, (b * n_chunks + c) * (chunk // 4) + off // 4 + t)
        key = _race(p_row, q_row, s_pv, s_qv, cols, V, V_q, u0, FAST_LOG)
        best_col = tl.where(key > best, cols, best_col)
        best = tl.maximum(best, key)
        key = _race(p_row, q_row, s_pv, s_qv, cols + SUB, V, V_q, u1, FAST_LOG)
        best_col = tl.where(key > best, cols + SUB, best_col)
        best = tl.maximum(best, key)
        key = _race(p_row, q_row, s_pv, s_qv, cols + 2 * SUB, V, V_q, u2, FAST_LOG)
        best_col = tl.where(key > best, cols + 2 * SUB, best_col)
        best = tl.maximum(best, key)
        key = _race(p_row, q_row, s_pv, s_qv, cols + 3 * SUB, V, V_q, u3, FAST_LOG)
        best_col = tl.where(key > best, cols + 3 * SUB, best_col)
        best = tl.maximum(best, key)
    win = tl.argmax(best, axis=0)
    tl.store(key_out + b * n_chunks + c, tl.max(best, axis=0))
    tl.store(idx_out + b * n_chunks + c, tl.sum(tl.where(t == win, best_col, 0), axis=0))


@triton.jit
def _emit_kernel(tok_ptr, key_ptr, idx_ptr, nacc_ptr, out_ptr, n_chunks, k, s_tb, s_tk,
                 C_PAD: tl.constexpr, K1_PAD: tl.constexpr):
    """Program b: the winner over the row's chunks, then the row of tokens."""
    b = tl.program_id(0).to(tl.int64)
    cc = tl.arange(0, C_PAD)
    keys = tl.load(key_ptr + b * n_chunks + cc, mask=cc < n_chunks, other=float("-inf"))
    cols = tl.load(idx_ptr + b * n_chunks + cc, mask=cc < n_chunks, other=0)
    win = tl.argmax(keys, axis=0)
    token = tl.sum(tl.where(cc == win, cols, 0), axis=0)
    n = tl.load(nacc_ptr + b)
    j = tl.arange(0, K1_PAD)
    drafted = tl.load(tok_ptr + b * s_tb + j * s_tk, mask=j < n, other=-1).to(tl.int64)
    row = tl.where(j < n, drafted, tl.where(j == n, token, -1))
    tl.store(out_ptr + b * (k + 1) + j, row, mask=j <= k)


def _seed(generator: torch.Generator | None, device: torch.device) -> Tensor:
    """One int64 Philox seed drawn from the generator, on the device, without a host sync."""
    where = generator.device if generator is not None else device
    seed = torch.randint(0, 1 << 62, (1,), generator=generator, device=where, dtype=torch.int64)
    return seed.to(device, non_blocking=True)


def _rejection_sample_triton(draft_tokens: Tensor, draft_probs: Tensor, target_probs: Tensor,
                             generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    B, k = draft_tokens.shape
    V = target_probs.shape[2]
    dev = target_probs.device
    if B == 0:
        return (torch.empty(0, k + 1, dtype=torch.long, device=dev),
                torch.empty(0, dtype=torch.long, device=dev))
    sub = min(512, max(16, triton.next_power_of_2(triton.cdiv(V, 4))))
    chunk = 4 * sub * min(4, triton.cdiv(V, 4 * sub))  # columns per program, a multiple of 4 * sub
    n_chunks = triton.cdiv(V, chunk)
    keys = torch.empty(B, n_chunks, dtype=torch.float32, device=dev)
    cols = torch.empty(B, n_chunks, dtype=torch.int64, device=dev)
    num_accepted = torch.empty(B, dtype=torch.long, device=dev)
    tokens = torch.empty(B, k + 1, dtype=torch.long, device=dev)
    seed = _seed(generator, dev)
    # k == 0: empty tensors may have no storage; stand-ins that are never read (every load masked)
    q_arg, tok_arg = (draft_probs, draft_tokens) if k > 0 else (target_probs, num_accepted)
    _accept_and_race_kernel[(B, n_chunks)](
        target_probs, q_arg, tok_arg, seed, keys, cols, num_accepted,
        V, k, chunk, n_chunks, *target_probs.stride(), *draft_probs.stride(), *draft_tokens.stride(),
        K_PAD=max(1, triton.next_power_of_2(k)), SUB=sub, FAST_LOG=dev.type == "cuda")
    _emit_kernel[(B,)](tok_arg, keys, cols, num_accepted, tokens, n_chunks, k,
                       *draft_tokens.stride(), C_PAD=triton.next_power_of_2(n_chunks),
                       K1_PAD=triton.next_power_of_2(k + 1))
    return tokens, num_accepted
