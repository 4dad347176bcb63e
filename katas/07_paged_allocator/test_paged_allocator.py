"""Kata 07: a paged KV-cache block allocator. Tasks as in README.md.

Expected behaviour comes from a plain model kept here: the block tables the allocator
returned, each sequence's length, and a simulated KV memory (slot -> the token written
there) that the tests write exactly as a serving engine would: copies first, then the new
tokens at their slots. Nothing depends on which free block is handed out first: the model
records the blocks the allocator chose and checks only what every correct allocator must
do with them (they were free, they are distinct, shared blocks are never written, ...).
"""
from __future__ import annotations

import gc
import numbers
import time
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition, rule,
                                 run_state_machine_as_test)

from harness import assert_raises, load_kata_module, max_examples

m = load_kata_module("paged_allocator")

UNKNOWN_ID_ERRORS = (KeyError, ValueError)  # where the contract names no error type (README)


raises = assert_raises  # from harness: names the call, the error it must raise, the step


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def snapshot(alloc: Any, seqs) -> dict:
    """Everything observable: free count, and each known sequence's table and length."""
    return {"num_free_blocks": alloc.num_free_blocks,
            **{seq: (list(alloc.block_table(seq)), alloc.num_tokens(seq)) for seq in seqs}}


def assert_unchanged(before: dict, alloc: Any, seqs, what: str) -> None:
    after = snapshot(alloc, seqs)
    changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    assert not changed, (f"{what} must leave everything as it was, but changed "
                         f"(key: (before, after)): {changed}")


# ---------------------------------------------------------------- the model and the machine
IDS = st.integers(0, 9)  # sequence ids; rules that need a live one pick it with `pick`


class AllocatorMachine(RuleBasedStateMachine):
    """Task 1: allocate and free in random order against a plain model.

    After every step: free + held = total; each live table equals the model's, has
    ceil(tokens / block_size) distinct in-range blocks; the simulated KV memory still holds
    every sequence's tokens (so no write ever landed in another sequence's block).
    """

    use_slot = False  # Tasks 3/4 also check slot() for every written token

    @initialize(num_blocks=st.integers(0, 24), block_size=st.integers(1, 4))
    def setup(self, num_blocks: int, block_size: int) -> None:
        self.N, self.bs = num_blocks, block_size
        self.alloc = m.BlockAllocator(num_blocks, block_size)
        self.tables: dict[int, list[int]] = {}
        self.tokens: dict[int, list[int]] = {}  # the token values each sequence holds
        self.memory: dict[int, int] = {}  # slot -> token value written there
        self.next_value = 0
        self.ops = [f"BlockAllocator(num_blocks={num_blocks}, block_size={block_size})"]

    # -- helpers ------------------------------------------------------------------------
    def where(self) -> str:
        steps = "; ".join(f"{i}: {op}" for i, op in enumerate(self.ops))
        return f"step {len(self.ops) - 1} ({self.ops[-1]}); the steps so far: {steps}"

    def pick(self, which: int) -> int:
        """A live sequence, or (which == 9, one time in ten) the unknown id 99."""
        live = sorted(self.tables)
        return live[which % len(live)] if which < 9 else 99

    def held(self) -> set[int]:
        return {b for table in self.tables.values() for b in table}

    def holders(self, block: int) -> list[int]:
        return sorted(s for s, table in self.tables.items() if block in table)

    def write(self, seq: int, positions: range) -> None:
        """Write fresh token values at `positions` of `seq`, where the caller would."""
        for pos in positions:
            table = self.tables[seq]
            slot = table[pos // self.bs] * self.bs + pos % self.bs
            if self.use_slot:
                got = self.alloc.slot(seq, pos)
                assert got == slot, (f"slot({seq}, {pos}) = {got}, but block_table[{pos} // "
                                     f"{self.bs}] * {self.bs} + {pos} % {self.bs} = {slot}; at "
                                     f"{self.where()}")
            others = [s for s in self.holders(slot // self.bs) if s != seq]
            assert not others, (f"a shared block is written: token {pos} of sequence {seq} goes "
                                f"to slot {slot} in block {slot // self.bs}, which sequences "
                                f"{others} also hold (no copy-on-write?); at {self.where()}")
            self.memory[slot] = self.next_value
            self.tokens[seq].append(self.next_value)
            self.next_value += 1

    def expect_error(self, errors, call, what: str) -> None:
        seqs = list(self.tables)
        before = snapshot(self.alloc, seqs)
        with raises(errors, what, self.where()):
            call()
        assert_unchanged(before, self.alloc, seqs, f"{what} (which raised) at {self.where()}")

    def fresh_blocks(self, blocks: list[int], before_held: set[int], what: str) -> None:
        """New blocks must be in range, distinct, and held by nobody before."""
        bad = [b for b in blocks if not (isinstance(b, numbers.Integral) and 0 <= b < self.N)]
        assert not bad, f"{what} handed out blocks {bad} outside 0..{self.N - 1}; at {self.where()}"
        assert len(set(blocks)) == len(blocks), (f"{what} handed out the same block twice: "
                                                 f"{blocks}; at {self.where()}")
        taken = sorted(set(blocks) & before_held)
        assert not taken, (f"{what} handed out blocks {taken} that were not free (held by "
                           f"{ {b: self.holders(b) for b in taken} }); at {self.where()}")

    # -- rules ----------------------------------------------------------------------------
    @rule(seq=IDS, num_tokens=st.integers(-1, 12))
    def allocate(self, seq: int, num_tokens: int) -> None:
        self.ops.append(f"allocate({seq}, {num_tokens})")
        if seq in self.tables or num_tokens < 0:
            why = "a known seq_id" if seq in self.tables else "num_tokens < 0"
            return self.expect_error(ValueError, lambda: self.alloc.allocate(seq, num_tokens),
                                     f"allocate with {why}")
        need, free = ceil_div(num_tokens, self.bs), self.N - len(self.held())
        if need > free:
            return self.expect_error(MemoryError, lambda: self.alloc.allocate(seq, num_tokens),
                                     f"allocate needing {need} blocks with {free} free")
        before_held = self.held()
        table = list(self.alloc.allocate(seq, num_tokens))
        assert len(table) == need, (f"allocate({seq}, {num_tokens}) returned {len(table)} blocks, "
                                    f"ceil({num_tokens} / {self.bs}) = {need}; at {self.where()}")
        self.fresh_blocks(table, before_held, f"allocate({seq}, {num_tokens})")
        self.tables[seq], self.tokens[seq] = table, []
        self.write(seq, range(num_tokens))

    @precondition(lambda self: bool(self.tables))
    @rule(which=IDS)
    def free(self, which: int) -> None:
        seq = self.pick(which)
        self.ops.append(f"free({seq})")
        if seq not in self.tables:
            return self.expect_error(KeyError, lambda: self.alloc.free(seq), "free of an unknown seq_id")
        self.alloc.free(seq)
        del self.tables[seq], self.tokens[seq]

    @rule(seq=IDS, num_tokens=st.integers(0, 6))
    def allocate_short(self, seq: int, num_tokens: int) -> None:
        self.allocate(seq, num_tokens)  # a second rule: more sequences live at once

    @precondition(lambda self: hasattr(self, "alloc") and len(self.tables) < 10)
    @rule(leave=st.integers(0, 1), partial=st.booleans())
    def fill_pool(self, leave: int, partial: bool) -> None:
        """A new sequence takes all free blocks but `leave`: the pool runs short (its last
        block partly filled when `partial` and block_size > 1)."""
        blocks = max(0, self.N - len(self.held()) - leave)
        num_tokens = max(0, blocks * self.bs - (1 if partial and blocks else 0))
        self.allocate(min(set(range(10)) - set(self.tables)), num_tokens)

    @precondition(lambda self: len(self.tables) >= 4)
    @rule()
    def free_everything(self) -> None:
        self.ops.append(f"free every sequence ({sorted(self.tables)})")
        for seq in list(self.tables):
            self.alloc.free(seq)
            del self.tables[seq], self.tokens[seq]
        assert self.alloc.num_free_blocks == self.N, (
            f"after freeing every sequence num_free_blocks = {self.alloc.num_free_blocks}, "
            f"not all {self.N} blocks; at {self.where()}")

    # -- checked after every step ---------------------------------------------------------
    @invariant()
    def state_matches_model(self) -> None:
        if not hasattr(self, "alloc"):
            return
        held = self.held()
        free = self.alloc.num_free_blocks
        assert free + len(held) == self.N, (
            f"free + held != total: num_free_blocks = {free}, {len(held)} blocks are held by "
            f"live sequences ({sorted(held)}), the pool has {self.N}; at {self.where()}")
        for seq, table in self.tables.items():
            got = list(self.alloc.block_table(seq))
            assert got == table, (f"block_table({seq}) = {got}, but the model (the blocks "
                                  f"the allocator handed out, shared or copied) says {table}; "
                                  f"at {self.where()}")
            n = self.alloc.num_tokens(seq)
            assert n == len(self.tokens[seq]), (f"num_tokens({seq}) = {n}, expected "
                                                f"{len(self.tokens[seq])}; at {self.where()}")
            assert len(table) == ceil_div(n, self.bs), (
                f"sequence {seq} has {n} tokens in {len(table)} blocks, not "
                f"ceil({n} / {self.bs}) = {ceil_div(n, self.bs)}; at {self.where()}")
            assert len(set(table)) == len(table), (f"block_table({seq}) = {table} holds a block "
                                                   f"twice; at {self.where()}")
            for pos, value in enumerate(self.tokens[seq]):
                slot = table[pos // self.bs] * self.bs + pos % self.bs
                assert self.memory.get(slot) == value, (
                    f"token {pos} of sequence {seq} was overwritten: its slot {slot} (block "
                    f"{slot // self.bs}) holds the value written by another sequence; a block "
                    f"was shared and written without copy-on-write, or copied wrong; at {self.where()}")


class AppendMachine(AllocatorMachine):
    """Task 3: allocate, append, free."""

    use_slot = True

    @precondition(lambda self: bool(self.tables))
    @rule(which=IDS, num_tokens=st.integers(0, 6))
    def append(self, which: int, num_tokens: int) -> None:
        self.do_append(self.pick(which), num_tokens)

    def do_append(self, seq: int, num_tokens: int) -> None:
        self.ops.append(f"append({seq}, {num_tokens})")
        if seq not in self.tables:
            return self.expect_error(UNKNOWN_ID_ERRORS, lambda: self.alloc.append(seq, num_tokens),
                                     "append to an unknown seq_id")
        old, n = list(self.tables[seq]), len(self.tokens[seq])
        new_blocks = ceil_div(n + num_tokens, self.bs) - len(old)
        # The first new token lands in the partly filled last block; shared: copy it first.
        cow = num_tokens > 0 and n % self.bs != 0 and len(self.holders(old[-1])) > 1
        free = self.N - len(self.held())
        if new_blocks + cow > free:
            return self.expect_error(
                MemoryError, lambda: self.alloc.append(seq, num_tokens),
                f"append needing {new_blocks} new blocks{' and a copy-on-write block' if cow else ''} "
                f"with {free} free")
        before_held = self.held()
        copies = [tuple(c) for c in self.alloc.append(seq, num_tokens)]
        table = list(self.alloc.block_table(seq))
        what = f"append({seq}, {num_tokens})"
        assert len(table) == len(old) + new_blocks, (
            f"{what}: {n} + {num_tokens} tokens need {len(old) + new_blocks} blocks, the table "
            f"has {len(table)}: {table}; at {self.where()}")
        if cow:
            src = old[-1]
            assert len(copies) == 1 and copies[0][0] == src, (
                f"{what} writes into the partly filled last block {src}, which sequences "
                f"{self.holders(src)} share: it must return exactly one copy ({src}, new block), "
                f"got {copies}; at {self.where()}")
            dst = copies[0][1]
            self.fresh_blocks([dst], before_held, f"{what}'s copy-on-write")
            assert table[:len(old)] == old[:-1] + [dst], (
                f"{what}: after copying block {src} to {dst} the table must start "
                f"{old[:-1] + [dst]} (only the shared last block replaced), got {table}; at {self.where()}")
        else:
            reason = ("nothing is written" if num_tokens == 0 else "the last block is full" if n % self.bs == 0
                      else f"the last block {old[-1]} is not shared")
            assert copies == [], (f"{what} returned copies {copies}, but no copy is needed: "
                                  f"{reason}; at {self.where()}")
            assert table[:len(old)] == old, (f"{what} must keep the blocks {old} it had, got "
                                             f"{table}; at {self.where()}")
        self.fresh_blocks(table[len(old):] + [c[1] for c in copies], before_held, what)
        for src, dst in copies:  # the caller performs the copies, then writes the new tokens
            for off in range(self.bs):
                if src * self.bs + off in self.memory:
                    self.memory[dst * self.bs + off] = self.memory[src * self.bs + off]
        self.tables[seq] = table
        self.write(seq, range(n, n + num_tokens))


class ForkMachine(AppendMachine):
    """Task 4: everything, with fork, shared blocks and copy-on-write."""

    @precondition(lambda self: bool(self.tables))
    @rule(which=IDS, child=IDS)
    def fork(self, which: int, child: int) -> None:
        self.do_fork(self.pick(which), child)

    def do_fork(self, parent: int, child: int) -> None:
        self.ops.append(f"fork({parent}, {child})")
        if parent not in self.tables or child in self.tables:
            why = "an unknown parent" if parent not in self.tables else "a known child id"
            return self.expect_error(UNKNOWN_ID_ERRORS, lambda: self.alloc.fork(parent, child),
                                     f"fork with {why}")
        self.alloc.fork(parent, child)
        self.tables[child] = list(self.tables[parent])
        self.tokens[child] = list(self.tokens[parent])

    @precondition(lambda self: bool(self.tables) and len(self.tables) < 10)
    @rule(which=IDS, write_child=st.booleans(), num_tokens=st.integers(0, 3))
    def fork_then_append(self, which: int, write_child: bool, num_tokens: int) -> None:
        """The common case of parallel sampling: fork, then one side writes (a copy?)."""
        parent, child = self.pick(which % 9), min(set(range(10)) - set(self.tables))
        self.do_fork(parent, child)
        self.do_append(child if write_child else parent, num_tokens)


def run_machine(machine: type, examples: int, steps: int) -> None:
    run_state_machine_as_test(machine, settings=settings(max_examples=max_examples(examples),
                                                         stateful_step_count=steps))


def fresh(num_blocks: int = 8, block_size: int = 4):
    return m.BlockAllocator(num_blocks, block_size)


# ================================================================= Task 1
class TestTask1BlockTables:
    def test_new_pool_is_all_free(self) -> None:
        for n in (0, 1, 7):
            assert fresh(n).num_free_blocks == n, f"BlockAllocator({n}, 4).num_free_blocks must be {n}"

    def test_allocate_known_id_raises_value_error(self) -> None:
        a = fresh()
        a.allocate("a", 5)
        before = snapshot(a, ["a"])
        with raises(ValueError, "a.allocate('a', 3)"):
            a.allocate("a", 3)
        assert_unchanged(before, a, ["a"], "allocate('a', 3) for the known id 'a'")

    def test_allocate_negative_raises_value_error(self) -> None:
        a = fresh()
        with raises(ValueError, "a.allocate('a', -1)"):
            a.allocate("a", -1)
        assert a.num_free_blocks == 8, "allocate('a', -1) raised, but took blocks"
        a.allocate("a", 1)  # 'a' must not have been registered

    def test_memory_error_changes_nothing(self) -> None:
        a = fresh(num_blocks=3, block_size=4)
        a.allocate("a", 5)  # 2 blocks, 1 free
        before = snapshot(a, ["a"])
        with raises(MemoryError, "a.allocate('b', 9)"):
            a.allocate("b", 9)  # needs 3
        assert_unchanged(before, a, ["a"], "allocate('b', 9) with 1 free block (MemoryError)")
        table = a.allocate("b", 4)  # 'b' was not registered, and the 1 free block is still free
        assert len(table) == 1, f"allocate('b', 4) after the MemoryError returned {table}"
        with raises(MemoryError, "a.allocate('c', 1)"):
            a.allocate("c", 1)
        assert a.num_free_blocks == 0, "a failed allocate('c', 1) changed num_free_blocks"

    def test_free_unknown_raises_key_error(self) -> None:
        a = fresh()
        a.allocate("a", 5)
        with raises(KeyError, "a.free('b')"):
            a.free("b")
        a.free("a")
        with raises(KeyError, "a.free('a')"):
            a.free("a")  # freed twice
        assert a.num_free_blocks == 8, "free of an unknown id changed num_free_blocks"

    @pytest.mark.parametrize("block_size,num_tokens", [(4, 0), (4, 1), (4, 4), (4, 5), (1, 7), (16, 33)])
    def test_allocate_takes_ceil_blocks(self, block_size: int, num_tokens: int) -> None:
        a = m.BlockAllocator(10, block_size)
        table = list(a.allocate(7, num_tokens))
        need = ceil_div(num_tokens, block_size)
        assert len(table) == need, (f"allocate(7, {num_tokens}) with block_size {block_size} "
                                    f"returned {table}: ceil({num_tokens} / {block_size}) = {need} blocks")
        assert len(set(table)) == len(table) and all(0 <= b < 10 for b in table), (
            f"allocate returned {table}: blocks must be distinct ids in 0..9")
        assert a.num_free_blocks == 10 - need, f"num_free_blocks = {a.num_free_blocks} after taking {need} of 10"
        assert list(a.block_table(7)) == table, f"block_table(7) = {a.block_table(7)}, allocate returned {table}"
        assert a.num_tokens(7) == num_tokens, f"num_tokens(7) = {a.num_tokens(7)}, expected {num_tokens}"

    def test_sequences_get_disjoint_blocks_and_free_returns_them(self) -> None:
        a = fresh(num_blocks=6, block_size=2)
        ta, tb = list(a.allocate("a", 5)), list(a.allocate("b", 6))
        assert not set(ta) & set(tb), f"sequences 'a' {ta} and 'b' {tb} got the same block"
        assert a.num_free_blocks == 0, f"6 blocks held, num_free_blocks = {a.num_free_blocks}"
        a.free("a")
        assert a.num_free_blocks == 3, f"after free('a') (3 blocks) num_free_blocks = {a.num_free_blocks}"
        tc = list(a.allocate("c", 6))
        assert set(tc) == set(ta), f"'c' must get 'a''s freed blocks {ta} (the only free ones), got {tc}"
        a.free("b"), a.free("c")
        assert a.num_free_blocks == 6, f"after freeing everything num_free_blocks = {a.num_free_blocks}"

    def test_random_allocate_and_free(self) -> None:
        run_machine(AllocatorMachine, examples=30, steps=25)


# ================================================================= Task 2
class TestTask2Slot:
    @pytest.mark.parametrize("block_size", [1, 3, 4])
    def test_slot_is_block_times_size_plus_offset(self, block_size: int) -> None:
        a = m.BlockAllocator(20, block_size)
        seen: dict[int, tuple] = {}
        for seq, n in (("a", 7), ("b", 1), ("c", 2 * block_size)):
            table = list(a.allocate(seq, n))
            for pos in range(n):
                want = table[pos // block_size] * block_size + pos % block_size
                got = a.slot(seq, pos)
                assert got == want, (f"slot({seq!r}, {pos}) = {got}, but block_table = {table} "
                                     f"gives {table[pos // block_size]} * {block_size} + "
                                     f"{pos % block_size} = {want}")
                assert got not in seen, f"slot({seq!r}, {pos}) = {got} is also slot{seen.get(got)}"
                seen[got] = (seq, pos)

    def test_slot_of_last_token_of_a_full_block(self) -> None:
        a = m.BlockAllocator(4, 4)
        table = list(a.allocate(0, 8))
        assert a.slot(0, 3) == table[0] * 4 + 3, f"slot(0, 3) must be in block {table[0]} (table {table})"
        assert a.slot(0, 4) == table[1] * 4, f"slot(0, 4) must open block {table[1]} (table {table})"


# ================================================================= Task 3
class TestTask3Append:
    def test_append_unknown_id_raises(self) -> None:
        a = fresh()
        with raises(UNKNOWN_ID_ERRORS, "a.append('nobody', 1)"):
            a.append("nobody", 1)
        assert a.num_free_blocks == 8, "append to an unknown id took blocks"

    def test_append_memory_error_changes_nothing(self) -> None:
        a = fresh(num_blocks=3, block_size=4)
        a.allocate("a", 3)  # 1 block, room for 1 more token in it
        before = snapshot(a, ["a"])
        with raises(MemoryError, "a.append('a', 1 + 4 + 4 + 1)"):
            a.append("a", 1 + 4 + 4 + 1)  # fills the block, needs 3 new blocks, 2 are free
        assert_unchanged(before, a, ["a"], "append('a', 10) with 2 free blocks (MemoryError)")
        assert list(a.append("a", 9)) == [], "append('a', 9) (exactly 2 new blocks) after the MemoryError"

    @pytest.mark.parametrize("start,add", [(3, 1), (4, 1), (0, 1), (0, 0), (5, 0), (1, 11), (2, 2)])
    def test_append_grows_table(self, start: int, add: int) -> None:
        a = fresh(num_blocks=8, block_size=4)
        old = list(a.allocate("s", start))
        copies = a.append("s", add)
        assert list(copies) == [], (f"append('s', {add}) to an unshared sequence returned copies "
                                    f"{copies}; copy-on-write is only for shared blocks")
        table = list(a.block_table("s"))
        need = ceil_div(start + add, 4)
        assert len(table) == need and table[:len(old)] == old, (
            f"allocate('s', {start}) gave {old}; after append('s', {add}) the table must keep "
            f"those and have ceil({start + add} / 4) = {need} blocks, got {table}")
        assert len(set(table)) == len(table), f"block_table('s') = {table} holds a block twice"
        assert a.num_tokens("s") == start + add, f"num_tokens('s') = {a.num_tokens('s')}, expected {start + add}"
        assert a.num_free_blocks == 8 - need, f"num_free_blocks = {a.num_free_blocks}, expected {8 - need}"

    def test_default_appends_one_token(self) -> None:
        a = fresh()
        a.allocate("s", 4)
        a.append("s")
        assert a.num_tokens("s") == 5 and len(a.block_table("s")) == 2, (
            "append('s') (num_tokens defaults to 1) after 4 tokens must give 5 tokens in 2 blocks")

    def test_random_allocate_append_free(self) -> None:
        run_machine(AppendMachine, examples=40, steps=25)


# ================================================================= Task 4
class TestTask4ForkCopyOnWrite:
    def test_fork_errors(self) -> None:
        a = fresh()
        a.allocate("p", 5)
        a.allocate("q", 1)
        before = snapshot(a, ["p", "q"])
        with raises(UNKNOWN_ID_ERRORS, "a.fork('nobody', 'c')"):
            a.fork("nobody", "c")
        with raises(UNKNOWN_ID_ERRORS, "a.fork('p', 'q')"):
            a.fork("p", "q")  # the child id exists
        assert_unchanged(before, a, ["p", "q"], "fork('nobody', 'c') and fork('p', 'q') (which raised)")
        a.allocate("c", 0)  # "c" must not have been registered by the failed fork

    def test_fork_shares_every_block(self) -> None:
        a = fresh()
        table = list(a.allocate("p", 6))
        a.fork("p", "c")
        assert list(a.block_table("c")) == table, f"fork('p', 'c'): block_table('c') = {a.block_table('c')}, parent's {table}"
        assert a.num_tokens("c") == 6, f"fork('p', 'c'): num_tokens('c') = {a.num_tokens('c')}, parent's 6"
        assert a.num_free_blocks == 6, f"fork copies no block: num_free_blocks = {a.num_free_blocks}, expected 6"

    def test_write_into_shared_partial_block_copies_it(self) -> None:
        a = fresh(num_blocks=8, block_size=4)
        table = list(a.allocate("p", 6))  # block 1 holds 2 of 4 tokens
        a.fork("p", "c")
        copies = [tuple(c) for c in a.append("p", 1)]
        new = list(a.block_table("p"))
        assert len(copies) == 1 and copies[0][0] == table[1], (
            f"append('p', 1) writes into block {table[1]}, shared with 'c': expected one copy "
            f"({table[1]}, new block), got {copies}")
        dst = copies[0][1]
        assert dst not in table and new == [table[0], dst], (
            f"after the copy ({table[1]} -> {dst}) 'p' must hold [{table[0]}, {dst}] with {dst} a "
            f"fresh block, got {new}")
        assert list(a.block_table("c")) == table, f"the child's table changed: {a.block_table('c')}"
        assert a.num_free_blocks == 5, f"one block copied: num_free_blocks = {a.num_free_blocks}, expected 5"
        assert list(a.append("c", 1)) == [], ("after 'p' took its copy, block "
                                        f"{table[1]} is held by 'c' alone: append('c', 1) must not copy")

    def test_appending_nothing_copies_nothing(self) -> None:
        a = fresh(num_blocks=8, block_size=4)
        table = list(a.allocate("p", 6))
        a.fork("p", "c")
        copies = a.append("p", 0)
        assert list(copies) == [], (f"append('p', 0) writes nothing into the shared block "
                                    f"{table[1]}, yet returned copies {copies}")
        assert list(a.block_table("p")) == table and a.num_free_blocks == 6, (
            f"append('p', 0) changed the table ({a.block_table('p')}, was {table}) or took blocks")

    def test_full_shared_last_block_is_not_copied(self) -> None:
        a = fresh(num_blocks=8, block_size=4)
        table = list(a.allocate("p", 8))
        a.fork("p", "c")
        copies = a.append("p", 1)
        assert list(copies) == [], (f"'p' has 2 full blocks: its new token goes into a new block, "
                                    f"nothing shared is written, yet append returned copies {copies}")
        assert list(a.block_table("p"))[:2] == table, f"append('p', 1) replaced shared blocks: {a.block_table('p')}"

    def test_free_of_shared_blocks_keeps_them(self) -> None:
        a = fresh(num_blocks=8, block_size=4)
        table = list(a.allocate("p", 6))
        a.fork("p", "c")
        a.free("p")
        assert a.num_free_blocks == 6, (f"free('p') while 'c' shares all its blocks must return "
                                        f"none, num_free_blocks = {a.num_free_blocks}, expected 6")
        other = list(a.allocate("x", 24))  # every free block
        assert not set(other) & set(table), f"blocks {set(other) & set(table)} of 'c' were handed out again"
        a.free("c")
        assert a.num_free_blocks == 2, f"free('c'), the last holder, must return its 2 blocks: {a.num_free_blocks} free"

    def test_copy_on_write_memory_error_changes_nothing(self) -> None:
        a = fresh(num_blocks=2, block_size=4)
        a.allocate("p", 5)  # 2 blocks, 0 free; block 1 holds 1 token
        a.fork("p", "c")
        before = snapshot(a, ["p", "c"])
        with raises(MemoryError, "a.append('p', 1)"):
            a.append("p", 1)  # needs one block for the copy
        assert_unchanged(before, a, ["p", "c"], "append('p', 1) needing a copy-on-write block, none free")
        a.free("c")
        assert list(a.append("p", 3)) == [], "after free('c') 'p' holds its blocks alone: append must not copy"

    def test_copy_plus_new_block_memory_error_changes_nothing(self) -> None:
        a = fresh(num_blocks=3, block_size=4)
        a.allocate("p", 2)
        a.fork("p", "c")
        a.allocate("x", 4)  # 1 block free now
        before = snapshot(a, ["p", "c", "x"])
        with raises(MemoryError, "a.append('p', 3)"):
            a.append("p", 3)  # copy of the shared block + one new block: 2 needed
        assert_unchanged(before, a, ["p", "c", "x"], "append('p', 3) needing a copy and a new block, 1 free")
        copies = a.append("p", 2)  # only the copy: fits
        assert len(copies) == 1, f"append('p', 2) into the shared block must copy it once, got {copies}"

    def test_random_allocate_append_fork_free(self) -> None:
        run_machine(ForkMachine, examples=80, steps=30)


# ================================================================= Task 5
def workload(alloc: Any, tag: Any, n_seqs: int, deadline: float = float("inf")) -> bool:
    """A steady serving pattern (never more than ~100 blocks held): allocate a prompt, decode
    into it, fork it, write into the fork (a copy), read slots, free the oldest. False when
    it ran past `deadline` (time.perf_counter()) and stopped."""
    live: list = []
    for i in range(n_seqs):
        seq, child = (tag, i), (tag, i, "child")
        alloc.allocate(seq, 40)  # 3 blocks of 16, the last one half full
        alloc.append(seq, 2)
        alloc.fork(seq, child)
        alloc.append(child, 1)  # copy-on-write of the shared last block
        alloc.slot(seq, 41), alloc.block_table(child), alloc.num_tokens(child), alloc.num_free_blocks
        live += [seq, child]
        if len(live) > 40:
            alloc.free(live.pop(0)), alloc.free(live.pop(0))
        if i % 8 == 0 and time.perf_counter() > deadline:
            return False
    for seq in live:
        alloc.free(seq)
    return True


class TestTask5Complexity:
    FACTOR = 5.0  # an O(1) allocator is about as fast at 10^6 blocks as at 10^3; O(n) is ~1000x slower

    def test_operations_cost_o1_in_pool_size(self) -> None:
        """Same workload on a 10^3- and a 10^6-block pool; creating the pools is not timed.
        min of 5 interleaved repetitions; a run on the big pool stops once it is already
        over FACTOR x the best small time."""
        small, big = m.BlockAllocator(10**3, 16), m.BlockAllocator(10**6, 16)
        assert workload(small, "warmup", 50) and big.num_free_blocks == 10**6
        gc_was = gc.isenabled()
        gc.disable()
        best_small = best_big = float("inf")
        try:
            for rep in range(5):
                t0 = time.perf_counter()
                workload(small, ("small", rep), 300)
                best_small = min(best_small, time.perf_counter() - t0)
                t0 = time.perf_counter()
                finished = workload(big, ("big", rep), 300, deadline=t0 + self.FACTOR * best_small)
                if finished:
                    best_big = min(best_big, time.perf_counter() - t0)
        finally:
            if gc_was:
                gc.enable()
        assert small.num_free_blocks == 10**3, (
            f"after the workload freed every sequence the 10^3 pool has {small.num_free_blocks} free blocks")
        assert best_big < self.FACTOR * best_small, (
            f"not O(1) in the pool size: 300 rounds of allocate/append/fork/append/slot/free take "
            f"{best_small * 1e3:.1f} ms on a 10^3-block pool but "
            f"{'over ' if best_big == float('inf') else ''}"
            f"{min(best_big, self.FACTOR * best_small) * 1e3:.1f} ms on a 10^6-block pool "
            f"(best of 5; allowed: {self.FACTOR:g}x). Something scans the pool: list.pop(0), "
            f"min() over free blocks, counting free blocks by a loop, ...")

    @pytest.mark.benchmark(group="paged_allocator")
    def test_benchmark_throughput(self, benchmark: Any) -> None:
        """pytest-benchmark's record of the workload (200 allocate/append/fork/free rounds on
        a 4096-block pool). With --benchmark-disable (the self-test) it runs once."""
        def run() -> int:
            alloc = m.BlockAllocator(4096, 16)
            assert workload(alloc, "bench", 200), "the workload stopped early"
            return alloc.num_free_blocks

        free = benchmark.pedantic(run, rounds=5, warmup_rounds=1)
        assert free == 4096, f"after the workload freed every sequence {free} of 4096 blocks are free"
