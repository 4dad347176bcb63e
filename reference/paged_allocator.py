"""Kata 07 reference: a paged KV-cache block allocator (vLLM's PagedAttention memory manager).

The KV cache is a pool of `num_blocks` fixed-size blocks of `block_size` token slots. A
sequence owns a block table: logical block i (its tokens i*block_size .. (i+1)*block_size-1)
lives in physical block table[i]. Blocks are reference counted, so a forked sequence
(parallel sampling, beam search) shares its parent's blocks until one of them writes into a
shared block: then that block is copied first (copy-on-write).

Every operation touches only the blocks it hands out or gives back: O(1) in the pool size
(a stack of free block ids, a list of ref counts indexed by block id).
"""
from __future__ import annotations

from collections.abc import Hashable


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class BlockAllocator:
    """Block tables, ref counts, fork and copy-on-write over a pool of KV-cache blocks."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 0 or block_size < 1:
            raise ValueError(f"need num_blocks >= 0 and block_size >= 1, got {num_blocks}, {block_size}")
        self.block_size = block_size
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))  # a stack: pop() is O(1)
        self._ref: list[int] = [0] * num_blocks  # how many block tables hold each block
        self._tables: dict[Hashable, list[int]] = {}
        self._tokens: dict[Hashable, int] = {}

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def _take(self) -> int:
        block = self._free.pop()
        self._ref[block] = 1
        return block

    def _release(self, block: int) -> None:
        self._ref[block] -= 1
        if self._ref[block] == 0:  # nobody holds it any more
            self._free.append(block)

    def _known(self, seq_id: Hashable) -> None:
        if seq_id not in self._tables:
            raise KeyError(f"unknown sequence {seq_id!r}")

    def allocate(self, seq_id: Hashable, num_tokens: int) -> list[int]:
        if seq_id in self._tables:
            raise ValueError(f"sequence {seq_id!r} already exists")
        if num_tokens < 0:
            raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
        needed = _ceil_div(num_tokens, self.block_size)
        if needed > len(self._free):  # check first: nothing changes on failure
            raise MemoryError(f"sequence {seq_id!r} needs {needed} blocks, {len(self._free)} are free")
        self._tables[seq_id] = [self._take() for _ in range(needed)]
        self._tokens[seq_id] = num_tokens
        return list(self._tables[seq_id])

    def append(self, seq_id: Hashable, num_tokens: int = 1) -> list[tuple[int, int]]:
        self._known(seq_id)
        if num_tokens < 0:
            raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
        table, old = self._tables[seq_id], self._tokens[seq_id]
        new_blocks = _ceil_div(old + num_tokens, self.block_size) - len(table)
        # The first new token goes into the partly filled last block, if there is one; when
        # another sequence holds that block too, we must write into a private copy.
        cow = num_tokens > 0 and old % self.block_size != 0 and self._ref[table[-1]] > 1
        if new_blocks + cow > len(self._free):  # check everything before changing anything
            raise MemoryError(f"sequence {seq_id!r} needs {new_blocks + cow} blocks, "
                              f"{len(self._free)} are free")
        copies = []
        if cow:
            src, dst = table[-1], self._take()
            self._release(src)  # still held by the other sequence(s): ref >= 1 stays
            table[-1] = dst
            copies.append((src, dst))
        table.extend(self._take() for _ in range(new_blocks))
        self._tokens[seq_id] = old + num_tokens
        return copies

    def fork(self, parent_id: Hashable, child_id: Hashable) -> None:
        self._known(parent_id)
        if child_id in self._tables:
            raise ValueError(f"sequence {child_id!r} already exists")
        table = self._tables[parent_id]
        for block in table:  # the child shares every block: no copy until someone writes
            self._ref[block] += 1
        self._tables[child_id] = list(table)
        self._tokens[child_id] = self._tokens[parent_id]

    def free(self, seq_id: Hashable) -> None:
        self._known(seq_id)
        for block in self._tables.pop(seq_id):
            self._release(block)
        del self._tokens[seq_id]

    def block_table(self, seq_id: Hashable) -> list[int]:
        self._known(seq_id)
        return list(self._tables[seq_id])

    def num_tokens(self, seq_id: Hashable) -> int:
        self._known(seq_id)
        return self._tokens[seq_id]

    def slot(self, seq_id: Hashable, position: int) -> int:
        self._known(seq_id)
        if not 0 <= position < self._tokens[seq_id]:
            raise IndexError(f"position {position} outside sequence {seq_id!r} "
                             f"of {self._tokens[seq_id]} tokens")
        block = self._tables[seq_id][position // self.block_size]
        return block * self.block_size + position % self.block_size
