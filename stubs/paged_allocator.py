"""Kata 07: a paged KV-cache block allocator. Read katas/07_paged_allocator/README.md, then
fill in the class. Run `pytest katas/07` to see how far you got.

The pool has `num_blocks` blocks of `block_size` token slots each. A sequence's block table
maps its logical block i (tokens i*block_size .. (i+1)*block_size - 1) to a physical block.
Sequence ids are any hashable values (ints, strings, tuples).
"""
from __future__ import annotations

from collections.abc import Hashable


class BlockAllocator:
    """Block tables, ref counts, fork and copy-on-write over a pool of KV-cache blocks.

    Every operation must cost O(1) in the pool size (a 10^6-block pool is as fast per
    operation as a 10^3-block one); creating the allocator may cost O(num_blocks).
    """

    def __init__(self, num_blocks: int, block_size: int) -> None:
        """An empty pool: all `num_blocks` blocks free, no sequences. Task 1."""
        raise NotImplementedError("Task 1: set up the free blocks, ref counts and block tables")

    @property
    def num_free_blocks(self) -> int:
        """Blocks that no sequence holds. Task 1."""
        raise NotImplementedError("Task 1: count the free blocks")

    def allocate(self, seq_id: Hashable, num_tokens: int) -> list[int]:
        """A new sequence of num_tokens tokens; returns its block table of
        ceil(num_tokens / block_size) distinct free blocks.

        Raises:
            ValueError: seq_id already exists, or num_tokens < 0.
            MemoryError: fewer free blocks than needed; then nothing changes.

        Task 1.
        """
        raise NotImplementedError("Task 1: allocate a sequence's block table")

    def free(self, seq_id: Hashable) -> None:
        """Forget the sequence; each of its blocks returns to the pool when no other
        sequence holds it.

        Raises:
            KeyError: unknown seq_id.

        Task 1 (Task 4: blocks shared after `fork`).
        """
        raise NotImplementedError("Task 1: free a sequence's blocks")

    def block_table(self, seq_id: Hashable) -> list[int]:
        """The sequence's physical block ids, logical block order. Task 1."""
        raise NotImplementedError("Task 1: return the block table")

    def num_tokens(self, seq_id: Hashable) -> int:
        """How many tokens the sequence holds. Task 1."""
        raise NotImplementedError("Task 1: return the sequence's length")

    def slot(self, seq_id: Hashable, position: int) -> int:
        """Where token `position` of the sequence lives in the flat KV cache:
        block_table[position // block_size] * block_size + position % block_size.

        Raises:
            IndexError: position outside 0 .. num_tokens - 1 (see the README).

        Task 2.
        """
        raise NotImplementedError("Task 2: map a token position to its KV-cache slot")

    def append(self, seq_id: Hashable, num_tokens: int = 1) -> list[tuple[int, int]]:
        """Grow the sequence by num_tokens tokens (new blocks as needed). When the first new
        token would go into a partly filled last block that another sequence also holds,
        that block is first replaced by a private copy (copy-on-write).

        Returns:
            The (src, dst) block copies the caller must perform before writing the new
            tokens' K/V: [] unless a copy-on-write happened (Task 4).

        Raises:
            KeyError: unknown seq_id.
            MemoryError: fewer free blocks than needed (new blocks plus the copy); then
                nothing changes.

        Task 3 (Task 4: copy-on-write).
        """
        raise NotImplementedError("Task 3: grow a sequence")

    def fork(self, parent_id: Hashable, child_id: Hashable) -> None:
        """A new sequence child_id that shares every block (and the length) of parent_id;
        no block is copied now.

        Raises:
            KeyError: unknown parent_id.
            ValueError: child_id already exists.

        Task 4.
        """
        raise NotImplementedError("Task 4: fork a sequence (shared blocks, ref counts)")
