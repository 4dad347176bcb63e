"""Kata 08: paged attention for decode. Tasks as in README.md.

Every case is built from contiguous per-sequence K/V first (k_seq[b]: (len_b, Hkv, D)); those
tokens are then scattered into the block pool through a shuffled block table. The expected
output is float64 attention over k_seq / v_seq (K/V repeated per query head group), so it
never reads the cache the way the code under test does. The pool is built to catch the
classic paging mistakes:

- slots the sequences do not use (the rest of a last block, unused blocks) hold stale
  values, V at 100x the scale of real ones: attending one token too many shows;
- table entries past a sequence's ceil(len / block_size) blocks are poison: block ids
  >= num_blocks (not -1, which torch indexing silently wraps to the last block). The cache
  passed in is the first num_blocks blocks of a larger buffer whose extra blocks are NaN, so a
  Triton kernel that reads a poisoned entry gets NaN (and no crash), and torch indexing raises
  IndexError;
- the block table itself is followed in memory by more poison ids (reading past its end).

Under the Triton interpreter (no GPU) a kernel costs ~10 ms per program and loop step: the
Triton tasks use a few fixed small cases (D = 16, one or two kv heads); on a GPU they also
run realistic shapes (Hq = 32, Hkv = 8, D = 128, a thousand tokens).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import (assert_close, assert_raises, assert_triton_ran, count_triton_launches,
                     load_kata_module, max_examples)

m = load_kata_module("paged_attention")

ON_GPU = torch.cuda.is_available()
DEV = "cuda" if ON_GPU else "cpu"  # where the Triton tasks run (the torch tasks run on the CPU)
POISON_BLOCKS = 4  # NaN blocks after the pool; poisoned table entries point into them
STALE_V_SCALE = 100.0  # stale V values are this large: reading one token too many shows
BLOCK_SIZES = [1, 2, 3, 4, 5, 8, 16, 32]
# Tolerances against float64 math on the same rounded inputs (README, "Tolerances"): the output
# is rounded once to the dtype, the expected value is rounded once, and a kernel may round the
# probabilities to the dtype before the P @ V product (tensor cores) and q * scale before the
# scores. float32 and float64 use harness/compare.py's defaults.
TOL = {torch.float16: (4e-3, 4e-3), torch.bfloat16: (3e-2, 3e-2)}


def dname(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ------------------------------------------------------------------------------ building cases
@dataclass
class Case:
    """A paged cache holding the K/V of every sequence, and what attention over it must give."""

    q: torch.Tensor  # (B, Hq, D)
    k_cache: torch.Tensor  # (num_blocks, block_size, Hkv, D): a view of the first blocks of a buffer
    v_cache: torch.Tensor
    block_tables: torch.Tensor  # (B, max_blocks) int32, poisoned past each sequence's blocks
    seq_lens: torch.Tensor  # (B,) int32
    k_seq: list[torch.Tensor]  # per sequence (len, Hkv, D): the tokens, in order
    v_seq: list[torch.Tensor]
    seed: int
    lens: list[int] = field(default_factory=list)

    @property
    def args(self) -> tuple:
        return self.q, self.k_cache, self.v_cache, self.block_tables, self.seq_lens

    def inputs(self, **extra) -> dict:
        """For failure messages: the shapes, lengths, block size and seed."""
        return dict(q=self.q, k_cache=self.k_cache, block_tables=self.block_tables,
                    seq_lens=self.lens, block_size=self.k_cache.shape[1], seed=self.seed, **extra)

    def expected(self, scale: float | None = None) -> torch.Tensor:
        """float64 softmax(q k^T * scale) v per sequence over its contiguous K/V, in q's dtype."""
        B, Hq, D = self.q.shape
        Hkv = self.k_cache.shape[2]
        scale = D ** -0.5 if scale is None else scale
        out = torch.zeros(B, Hq, D, dtype=torch.float64)
        for b, (k, v) in enumerate(zip(self.k_seq, self.v_seq)):
            if k.shape[0] == 0:
                continue  # no key: zeros
            k = k.double().repeat_interleave(Hq // Hkv, dim=1)  # query head h reads kv head h // (Hq/Hkv)
            v = v.double().repeat_interleave(Hq // Hkv, dim=1)
            scores = torch.einsum("hd,nhd->hn", self.q[b].double().cpu(), k) * scale
            out[b] = torch.einsum("hn,nhd->hd", torch.softmax(scores, dim=-1), v)
        return out.to(self.q.dtype)


def make_case(seed: int, lens: list[int], *, Hq: int = 2, Hkv: int = 1, D: int = 16,
              block_size: int = 4, dtype: torch.dtype = torch.float32, extra_cols: int = 1,
              spare_blocks: int = 2, device: str = "cpu") -> Case:
    """Sequences of the given lengths in a shuffled block pool (see the module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    B = len(lens)

    def randn(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=gen, dtype=torch.float64)).to(dtype)

    need = [cdiv(n, block_size) for n in lens]
    num_blocks = sum(need) + spare_blocks
    max_blocks = max(need + [0]) + extra_cols
    shape = (num_blocks + POISON_BLOCKS, block_size, Hkv, D)
    k_buf, v_buf = randn(*shape), randn(*shape, scale=STALE_V_SCALE)  # stale everywhere at first
    k_buf[num_blocks:] = float("nan")
    v_buf[num_blocks:] = float("nan")
    order = torch.randperm(num_blocks, generator=gen).tolist()  # blocks handed out shuffled
    poison = lambda: num_blocks + int(torch.randint(POISON_BLOCKS, (1,), generator=gen))  # noqa: E731
    table = [[poison() for _ in range(max_blocks)] for _ in range(B)]
    k_seq, v_seq = [], []
    for b, n in enumerate(lens):
        k_seq.append(randn(n, Hkv, D))
        v_seq.append(randn(n, Hkv, D))
        for j in range(need[b]):
            table[b][j] = order.pop()
        t = torch.arange(n)
        blk = torch.tensor(table[b], dtype=torch.long)[t // block_size]  # token t's block ...
        k_buf[blk, t % block_size] = k_seq[b]  # ... at offset t % block_size
        v_buf[blk, t % block_size] = v_seq[b]
    flat = torch.tensor([x for row in table for x in row] + [poison() for _ in range(8)], dtype=torch.int32)
    tables = flat.to(device)[:B * max_blocks].view(B, max_blocks)  # contiguous, poison after its end
    k_buf, v_buf = k_buf.to(device), v_buf.to(device)
    return Case(q=randn(B, Hq, D).to(device), k_cache=k_buf[:num_blocks], v_cache=v_buf[:num_blocks],
                block_tables=tables, seq_lens=torch.tensor(lens, dtype=torch.int32, device=device),
                k_seq=k_seq, v_seq=v_seq, seed=seed, lens=list(lens))


POISON_HINT = ("table entries past a sequence's ceil(seq_lens[b] / block_size) blocks are arbitrary "
               "(here: block ids >= num_blocks) and must never be read; read only "
               "block_tables[b, :ceil(seq_lens[b] / block_size)] and tokens t < seq_lens[b]")


def call(fn, case: Case, what: str, **kw) -> torch.Tensor:
    """fn(*case.args, **kw), with an IndexError/RuntimeError turned into a failure that says why."""
    __tracebackhide__ = True
    try:
        out = fn(*case.args, **kw)
    except (IndexError, RuntimeError) as exc:
        if not isinstance(exc, IndexError) and "index" not in str(exc).lower():
            raise
        raise AssertionError(f"{what} raised {type(exc).__name__}: {str(exc)[:300]}\n  inputs: "
                             f"lens {case.lens}, block_size {case.k_cache.shape[1]}, "
                             f"num_blocks {case.k_cache.shape[0]}, seed {case.seed}\n  hint: "
                             f"an index out of range? {POISON_HINT}") from exc
    assert isinstance(out, torch.Tensor), f"{what} must return a tensor, got {type(out).__name__}"
    return out


def check_values(out: torch.Tensor, case: Case, what: str, *, scale=None, hint: str = "", **extra) -> None:
    __tracebackhide__ = True
    expected = case.expected(scale)
    atol, rtol = TOL.get(expected.dtype, (None, None))
    if tuple(out.shape) == tuple(expected.shape) and bool(torch.isnan(out).any()):
        hint = (hint + "; " if hint else "") + (
            "NaN: the only NaN in these inputs sit in the blocks that poisoned table entries "
            "point to (or come from 0/0 for an empty sequence or split). " + POISON_HINT)
    assert_close(out.cpu(), expected, what=what, inputs=case.inputs(**extra), atol=atol, rtol=rtol,
                 hint=hint)


def snapshot(case: Case) -> list[torch.Tensor]:
    """Copies of every input, including the buffer behind the cache views (the NaN blocks)."""
    return [t.clone() for t in (case.q, case.k_cache._base if case.k_cache._base is not None else case.k_cache,
                                case.v_cache._base if case.v_cache._base is not None else case.v_cache,
                                case.block_tables, case.seq_lens)]


def assert_unchanged(before: list[torch.Tensor], case: Case, what: str) -> None:
    __tracebackhide__ = True
    now = snapshot(case)
    names = ("q", "k_cache", "v_cache", "block_tables", "seq_lens")
    for name, a, b in zip(names, before, now):
        same = torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))  # NaN-safe
        assert same, f"{what} modified its input {name} (inputs must be left as they were); seed {case.seed}"


# ====================================================================== Task 1: write_kv
def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def first_difference(actual: torch.Tensor, expected: torch.Tensor, block_size: int) -> str:
    diff = (actual.double() != expected.double()).flatten(2).any(dim=-1)  # (num_blocks, block_size)
    blk, off = (int(i) for i in diff.nonzero()[0])
    return (f"first wrong slot {blk * block_size + off} (block {blk}, offset {off}): got "
            f"{actual[blk, off].flatten()[:3].tolist()}..., expected {expected[blk, off].flatten()[:3].tolist()}...")


def write_case(seed: int, num_blocks: int, block_size: int, Hkv: int, D: int, n_tokens: int,
               n_pad: int, cache_dtype: torch.dtype, kv_dtype: torch.dtype):
    gen = torch.Generator().manual_seed(seed)
    k_cache = torch.randn(num_blocks, block_size, Hkv, D, generator=gen, dtype=torch.float64).to(cache_dtype)
    v_cache = torch.randn(num_blocks, block_size, Hkv, D, generator=gen, dtype=torch.float64).to(cache_dtype)
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:n_tokens]
    slots = torch.cat([slots, torch.full((n_pad,), -1, dtype=torch.long)])
    slots = slots[torch.randperm(len(slots), generator=gen)].contiguous()
    N = len(slots)
    k = (3 * torch.randn(N, Hkv, D, generator=gen, dtype=torch.float64)).to(kv_dtype)
    v = (3 * torch.randn(N, Hkv, D, generator=gen, dtype=torch.float64)).to(kv_dtype)
    return k_cache, v_cache, k, v, slots


def expected_write(cache: torch.Tensor, new: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """Token by token, in plain Python: slot s -> block s // block_size, offset s % block_size."""
    out = cache.clone()
    bs = cache.shape[1]
    for i, s in enumerate(slots.tolist()):
        if s >= 0:
            out[s // bs, s % bs] = new[i].to(cache.dtype)
    return out


class TestTask1WriteKV:
    def test_in_place_and_inputs_unchanged(self):
        k_cache, v_cache, k, v, slots = write_case(0, 3, 4, 2, 8, 5, 2, torch.float32, torch.float32)
        ptrs = (k_cache.data_ptr(), v_cache.data_ptr())
        k0, v0, s0 = k.clone(), v.clone(), slots.clone()
        m.write_kv(k_cache, v_cache, k, v, slots)
        assert (k_cache.data_ptr(), v_cache.data_ptr()) == ptrs, (
            "write_kv must write into k_cache and v_cache in place (the engine's cache tensors), "
            "not into new tensors")
        assert torch.equal(k, k0) and torch.equal(v, v0) and torch.equal(slots, s0), (
            "write_kv modified k, v or slot_mapping; only the caches may change")

    @settings(max_examples=max_examples(40))
    @given(seed=st.integers(0, 2**31 - 1), num_blocks=st.integers(1, 6),
           block_size=st.sampled_from(BLOCK_SIZES), Hkv=st.integers(1, 3), D=st.sampled_from([1, 4, 8]),
           fill=st.floats(0, 1), n_pad=st.integers(0, 3),
           cache_dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]),
           kv_dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
    def test_writes_every_token_to_its_slot(self, seed, num_blocks, block_size, Hkv, D, fill, n_pad,
                                            cache_dtype, kv_dtype):
        """Distinct slots in random order, -1 padding mixed in, k/v cast to the cache's dtype;
        every other slot keeps its old value (bit for bit)."""
        n_tokens = round(fill * num_blocks * block_size)
        k_cache, v_cache, k, v, slots = write_case(seed, num_blocks, block_size, Hkv, D, n_tokens,
                                                   n_pad, cache_dtype, kv_dtype)
        want_k, want_v = expected_write(k_cache, k, slots), expected_write(v_cache, v, slots)
        m.write_kv(k_cache, v_cache, k, v, slots)
        where = (f"k_cache ({num_blocks}, {block_size}, {Hkv}, {D}) {dname(cache_dtype)}, k {dname(kv_dtype)}, "
                 f"slot_mapping {slots.tolist()}, seed {seed}")
        for name, got, want in (("k_cache", k_cache, want_k), ("v_cache", v_cache, want_v)):
            assert got.dtype == cache_dtype, f"write_kv changed {name}'s dtype to {got.dtype}; {where}"
            assert bits_equal(got, want), (
                f"write_kv: {name} is not the old cache with token i at slot slot_mapping[i] "
                f"(cast to the cache's dtype, -1 skipped, every other slot untouched): "
                f"{first_difference(got, want, block_size)}; {where}")

    def test_padding_slot_is_skipped(self):
        """slot -1 means "no token here" (padding in a batch); as an index -1 is the last slot."""
        k_cache, v_cache, k, v, _ = write_case(1, 2, 4, 1, 4, 0, 3, torch.float32, torch.float32)
        slots = torch.tensor([-1, 2, -1], dtype=torch.long)
        want_k, want_v = expected_write(k_cache, k, slots), expected_write(v_cache, v, slots)
        m.write_kv(k_cache, v_cache, k, v, slots)
        for name, got, want in (("k_cache", k_cache, want_k), ("v_cache", v_cache, want_v)):
            assert bits_equal(got, want), (
                f"write_kv with slot_mapping [-1, 2, -1]: {name} must change only at slot 2: "
                f"{first_difference(got, want, 4)} (slot 7 is the last: -1 used as an index "
                "wraps there; skip the -1 slots)")

    def test_no_tokens(self):
        k_cache, v_cache, k, v, slots = write_case(2, 2, 4, 1, 4, 0, 0, torch.float32, torch.float32)
        before = k_cache.clone(), v_cache.clone()
        m.write_kv(k_cache, v_cache, k, v, slots)
        assert bits_equal(k_cache, before[0]) and bits_equal(v_cache, before[1]), (
            "write_kv with no tokens (k, v (0, Hkv, D), slot_mapping (0,)) must change nothing")


# ====================================================================== Task 2: paged_attention
DTYPES_TORCH = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


class TestTask2PagedAttention:
    def test_contract(self):
        case = make_case(0, [5, 0, 9], Hq=4, Hkv=2, D=8, block_size=4, dtype=torch.float32)
        before = snapshot(case)
        out = call(m.paged_attention, case, "paged_attention")
        assert tuple(out.shape) == (3, 4, 8), (
            f"paged_attention: expected out (B, Hq, D) = (3, 4, 8), got {tuple(out.shape)}")
        assert out.dtype == case.q.dtype, f"paged_attention: out must have q's dtype float32, got {out.dtype}"
        assert_unchanged(before, case, "paged_attention")

    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dname)
    def test_one_token_gives_its_v_for_every_query_head(self, dtype):
        """Length 1: softmax over one key is 1, so out[b, h] = v of that token, kv head h // (Hq / Hkv)."""
        case = make_case(1, [1, 1, 1], Hq=6, Hkv=3, D=8, block_size=4, dtype=dtype)
        out = call(m.paged_attention, case, "paged_attention")
        check_values(out, case, "paged_attention, every sequence of length 1",
                     hint="with one key, out[b, h] is v[kv head of h]; query head h reads kv head "
                          "h // (Hq // Hkv) (heads 0, 1 -> kv 0; 2, 3 -> kv 1; ...), not h % Hkv")

    def test_length_zero_gives_zeros(self):
        case = make_case(2, [0, 3, 0], Hq=2, Hkv=1, D=8, block_size=2)
        out = call(m.paged_attention, case, "paged_attention")
        assert tuple(out.shape) == (3, 2, 8), f"expected (3, 2, 8), got {tuple(out.shape)}"
        assert bool((out[[0, 2]] == 0).all()), (
            f"paged_attention: a sequence of length 0 sees no key and must give zeros, got "
            f"{out[0].flatten()[:4].tolist()}... (lens [0, 3, 0], seed 2)")
        check_values(out, case, "paged_attention with lengths [0, 3, 0]")

    def test_default_and_explicit_scale(self):
        case = make_case(3, [6, 11], Hq=4, Hkv=2, D=16, block_size=4, dtype=torch.float64)
        check_values(call(m.paged_attention, case, "paged_attention"), case,
                     "paged_attention (scale=None)", hint="the default scale is D ** -0.5 = 1 / sqrt(D)")
        check_values(call(m.paged_attention, case, "paged_attention", scale=0.7), case,
                     "paged_attention (scale=0.7)", scale=0.7, hint="scores = (q . k) * scale")

    @pytest.mark.parametrize("block_size", BLOCK_SIZES)
    def test_exact_multiples_and_one_past(self, block_size):
        """Lengths at a block boundary (the last block full), one more, one less."""
        lens = [block_size, 2 * block_size, 2 * block_size + 1, max(1, 3 * block_size - 1)]
        case = make_case(4 + block_size, lens, Hq=2, Hkv=2, D=8, block_size=block_size,
                         dtype=torch.float64, extra_cols=0)
        check_values(call(m.paged_attention, case, "paged_attention"), case,
                     f"paged_attention, block_size {block_size}, lengths {lens}",
                     hint="sequence b has ceil(len / block_size) blocks; token t is at "
                          "(block_tables[b, t // block_size], t % block_size)")

    @settings(max_examples=max_examples(30))
    @given(seed=st.integers(0, 2**31 - 1), lens=st.lists(st.integers(0, 40), min_size=1, max_size=4),
           block_size=st.sampled_from(BLOCK_SIZES), Hkv=st.sampled_from([1, 2, 3]),
           group=st.sampled_from([1, 2, 4]), D=st.sampled_from([4, 8, 16]),
           dtype=st.sampled_from(DTYPES_TORCH), extra_cols=st.integers(0, 2))
    def test_matches_attention_over_the_gathered_kv(self, seed, lens, block_size, Hkv, group, D, dtype,
                                                    extra_cols):
        """Shuffled tables, ragged lengths (0 and exact multiples included), GQA and MQA."""
        case = make_case(seed, lens, Hq=Hkv * group, Hkv=Hkv, D=D, block_size=block_size,
                         dtype=dtype, extra_cols=extra_cols)
        out = call(m.paged_attention, case, "paged_attention")
        check_values(out, case, f"paged_attention (Hq {Hkv * group}, Hkv {Hkv}, {dname(dtype)})")

    def test_decode_loop_with_write_kv(self):
        """A server's decode loop: three sequences grow a token at a time; each step allocates a
        block when needed (from a shuffled free list), writes the new K/V with write_kv (a
        finished sequence's slot is -1), then attends over everything written so far."""
        gen = torch.Generator().manual_seed(5)
        Hq, Hkv, D, bs, num_blocks = 4, 2, 8, 3, 16
        k_cache = torch.zeros(num_blocks, bs, Hkv, D)
        v_cache = torch.zeros(num_blocks, bs, Hkv, D)
        free = torch.randperm(num_blocks, generator=gen).tolist()
        final = [7, 10, 4]  # sequence 2 stops early: its slot becomes -1
        tables: list[list[int]] = [[] for _ in final]
        ks = [torch.zeros(0, Hkv, D) for _ in final]
        vs = [torch.zeros(0, Hkv, D) for _ in final]
        for step in range(max(final)):
            slots = []
            k_new, v_new = torch.randn(3, Hkv, D, generator=gen), torch.randn(3, Hkv, D, generator=gen)
            for b in range(3):
                if step >= final[b]:
                    slots.append(-1)
                    continue
                if step % bs == 0:
                    tables[b].append(free.pop())
                slots.append(tables[b][step // bs] * bs + step % bs)
                ks[b], vs[b] = torch.cat([ks[b], k_new[b:b + 1]]), torch.cat([vs[b], v_new[b:b + 1]])
            m.write_kv(k_cache, v_cache, k_new, v_new, torch.tensor(slots, dtype=torch.long))
            lens = [min(step + 1, n) for n in final]
            width = max(len(t) for t in tables) + 1
            bt = torch.tensor([t + [num_blocks + 7] * (width - len(t)) for t in tables], dtype=torch.int32)
            q = torch.randn(3, Hq, D, generator=gen)
            case = Case(q=q, k_cache=k_cache, v_cache=v_cache, block_tables=bt,
                        seq_lens=torch.tensor(lens, dtype=torch.int32), k_seq=[k.clone() for k in ks],
                        v_seq=[v.clone() for v in vs], seed=5, lens=lens)
            check_values(call(m.paged_attention, case, f"paged_attention at decode step {step}"), case,
                         f"write_kv then paged_attention, decode step {step}, slots {slots}",
                         hint="write_kv puts token i at slot_mapping[i] (skipping -1); paged_attention "
                              "reads token t of sequence b at slot block_tables[b, t // bs] * bs + t % bs")


# ====================================================================== Task 3: paged_attention_triton, one split
# (lens, Hq, Hkv, D, block_size): each small enough for the interpreter, together covering GQA
# and MQA, block sizes 1 to 32, lengths 0, 1, exact multiples and several 16-token steps.
CPU_CASES = [
    ([1, 0, 37], 4, 2, 16, 16),  # GQA; length 0 and 1; 37 = 2 full blocks + 5
    ([32, 9], 4, 1, 16, 32),  # MQA; an exact multiple of block_size 32 and of 16
    ([13, 6], 2, 2, 32, 3),  # no GQA, D 32, block_size 3 (not a power of two)
    ([5, 20], 8, 2, 16, 1),  # block_size 1: one table entry per token; group of 4
]
GPU_CASES = CPU_CASES + [
    ([1000, 1, 0, 64, 513, 777], 32, 8, 128, 16),  # LLaMA-3-8B-like heads, ragged
    ([300, 2048, 17], 8, 1, 64, 32),  # MQA
    ([129, 640], 16, 4, 128, 5),
]
CASES = GPU_CASES if ON_GPU else CPU_CASES
KERNEL_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Under the interpreter fp16 and bf16 run one case each, float32 all; on a GPU all run all.
_HALF_CPU_CASES = {torch.float16: (2,), torch.bfloat16: (0,), torch.float32: (0, 1, 2, 3)}
ONE_SPLIT = [(c, dt) for dt in KERNEL_DTYPES for i, c in enumerate(CASES)
             if ON_GPU or i in _HALF_CPU_CASES[dt]]


def case_id(c) -> str:
    lens, Hq, Hkv, D, bs = c
    return f"lens{'-'.join(map(str, lens[:3]))}-Hq{Hq}-Hkv{Hkv}-D{D}-bs{bs}"


def triton_case(c, dtype, seed: int = 0) -> Case:
    lens, Hq, Hkv, D, bs = c
    return make_case(seed + 11 * len(lens) + bs, lens, Hq=Hq, Hkv=Hkv, D=D, block_size=bs, dtype=dtype,
                     device=DEV)


class TestTask3TritonKernel:
    def test_contract_and_a_triton_kernel_ran(self):
        case = triton_case(CPU_CASES[0], torch.float32)
        before = snapshot(case)
        with count_triton_launches() as launches:
            out = call(m.paged_attention_triton, case, "paged_attention_triton(num_splits=1)", num_splits=1)
        assert_triton_ran(launches, "paged_attention_triton(num_splits=1)")
        assert tuple(out.shape) == (3, 4, 16), f"expected out (B, Hq, D) = (3, 4, 16), got {tuple(out.shape)}"
        assert out.dtype == case.q.dtype and out.device == case.q.device, (
            f"out must be {case.q.dtype} on {case.q.device}, got {out.dtype} on {out.device}")
        assert_unchanged(before, case, "paged_attention_triton")

    @pytest.mark.parametrize("c,dtype", ONE_SPLIT, ids=[f"{case_id(c)}-{dname(dt)}" for c, dt in ONE_SPLIT])
    def test_one_split(self, c, dtype):
        case = triton_case(c, dtype)
        out = call(m.paged_attention_triton, case, "paged_attention_triton(num_splits=1)", num_splits=1)
        check_values(out, case, f"paged_attention_triton(num_splits=1), {dname(dtype)}",
                     hint="one program per (sequence, kv head) walking all the sequence's keys; "
                          "when a later step raises the running max, rescale l and acc by "
                          "exp(m_old - m_new) (kata 03); scores of tokens >= seq_len must be -inf")

    @pytest.mark.parametrize("num_splits", [1, 3])
    def test_explicit_scale(self, num_splits):
        case = triton_case(CPU_CASES[1], torch.float32, seed=1)
        what = f"paged_attention_triton(scale=0.3, num_splits={num_splits})"
        out = call(m.paged_attention_triton, case, what, scale=0.3, num_splits=num_splits)
        check_values(out, case, what, scale=0.3, hint="scores = (q . k) * scale, with one split or many")

    def test_head_dim_and_group_not_powers_of_two(self):
        """D = 24 and 3 query heads per kv head: tiles padded to powers of two must mask the
        extra columns and rows (loads and stores), or they read and write the next head's data."""
        case = make_case(12, [7, 20], Hq=6, Hkv=2, D=24, block_size=5, dtype=torch.float32, device=DEV)
        what = "paged_attention_triton(num_splits=1), D 24, Hq 6, Hkv 2"
        out = call(m.paged_attention_triton, case, what, num_splits=1)
        check_values(out, case, what, hint="tl.arange needs a power of two: pad D and the group to "
                                           "one and mask offs_d < D and the heads past the group")

    def test_inputs_changed_in_place_give_a_new_result(self):
        """A decode loop reuses the same tensors, written in place, every step: a result cached by
        data_ptr (or anything else that skips recomputing) is stale."""
        case = make_case(13, [5, 9], Hq=2, Hkv=1, D=16, block_size=4, dtype=torch.float32, device=DEV)
        call(m.paged_attention_triton, case, "paged_attention_triton(num_splits=1)", num_splits=1)
        case.q.mul_(-2.0)  # same tensor, new values
        out = call(m.paged_attention_triton, case, "paged_attention_triton(num_splits=1)", num_splits=1)
        check_values(out, case, "paged_attention_triton(num_splits=1) called again after q was changed "
                                "in place", hint="compute from the current values on every call")


# ====================================================================== Task 4: split-KV
SPLITS = [(torch.float32, 2), (torch.float32, 3), (torch.float32, 5), (torch.float32, None),
          (torch.bfloat16, 3), (torch.float16, 2)]


class TestTask4SplitKV:
    @pytest.mark.parametrize("bad", [0, -1])
    def test_num_splits_below_one_raises(self, bad):
        case = triton_case(CPU_CASES[1], torch.float32)
        with assert_raises(ValueError, f"paged_attention_triton(num_splits={bad})"):
            m.paged_attention_triton(*case.args, num_splits=bad)

    @pytest.mark.parametrize("dtype,num_splits", SPLITS, ids=[f"{dname(dt)}-{n}" for dt, n in SPLITS])
    def test_every_num_splits_gives_the_same_result(self, dtype, num_splits):
        """Sequences of 71, 0 and 33 tokens (up to 18 blocks of 4) split 2, 3, 5 ways or as the
        kernel chooses: some splits hold a partial tile, the empty sequence's hold nothing."""
        case = make_case(21, [71, 0, 33], Hq=4, Hkv=1, D=16, block_size=4, dtype=dtype, device=DEV)
        with count_triton_launches() as launches:
            out = call(m.paged_attention_triton, case, f"paged_attention_triton(num_splits={num_splits})",
                       num_splits=num_splits)
        assert_triton_ran(launches, f"paged_attention_triton(num_splits={num_splits})")
        check_values(out, case, f"paged_attention_triton(num_splits={num_splits}), {dname(dtype)}",
                     num_splits=num_splits,
                     hint="each split's partial must be its (out_s, lse_s) over its own keys; merge with "
                          "lse = log sum_s exp(lse_s) and out = sum_s exp(lse_s - lse) out_s, in one "
                          "log base throughout; together the splits must cover every key exactly once")

    def test_more_splits_than_tokens(self):
        """num_splits = 7 > every length: most splits are empty (lse = -inf) and must add nothing."""
        case = make_case(22, [0, 1, 5], Hq=2, Hkv=1, D=16, block_size=2, dtype=torch.float32, device=DEV)
        out = call(m.paged_attention_triton, case, "paged_attention_triton(num_splits=7)", num_splits=7)
        check_values(out, case, "paged_attention_triton(num_splits=7), lengths [0, 1, 5]",
                     num_splits=7,
                     hint="an empty split has lse = -inf and out 0; the merge must not compute "
                          "-inf - (-inf) (NaN): use 0 in place of a -inf max, as in kata 03")

    @pytest.mark.parametrize("num_splits", [2, 7])
    def test_long_sequences_many_steps_per_split(self, num_splits):
        """Two sequences of 150 and 97 tokens: each split walks several loop steps."""
        case = make_case(23, [150, 97], Hq=2, Hkv=1, D=16, block_size=16, dtype=torch.float32, device=DEV)
        out = call(m.paged_attention_triton, case, f"paged_attention_triton(num_splits={num_splits})",
                   num_splits=num_splits)
        check_values(out, case, f"paged_attention_triton(num_splits={num_splits}), lengths [150, 97]",
                     num_splits=num_splits)

    @pytest.mark.gpu
    @pytest.mark.parametrize("num_splits", [1, 2, 3, 16, 200, None])
    @pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=dname)
    def test_gpu_realistic_shapes(self, dtype, num_splits):
        if not ON_GPU:
            pytest.skip("needs a CUDA GPU")
        lens = [4097, 1, 0, 1024, 3000, 16, 2500, 100]
        case = make_case(24, lens, Hq=32, Hkv=8, D=128, block_size=16, dtype=dtype, device=DEV)
        out = call(m.paged_attention_triton, case, f"paged_attention_triton(num_splits={num_splits})",
                   num_splits=num_splits)
        check_values(out, case, f"paged_attention_triton(num_splits={num_splits}), {dname(dtype)}",
                     num_splits=num_splits)
