"""Planted bugs for kata 07: classic block-allocator mistakes. Each must be caught by a test."""
from harness import Mutant

MUTANTS: list[Mutant] = [
    Mutant("no_copy_on_write",
           "never copies: a forked sequence writes straight into the block it shares",
           "cow = num_tokens > 0 and old % self.block_size != 0 and self._ref[table[-1]] > 1",
           "cow = False"),
    Mutant("cow_when_not_shared",
           "copies the partly filled last block even when this sequence holds it alone",
           "self._ref[table[-1]] > 1", "self._ref[table[-1]] >= 1"),
    Mutant("cow_when_last_block_full",
           "copies a shared last block even when it is full (the new tokens go to a new block)",
           "cow = num_tokens > 0 and old % self.block_size != 0 and ",
           "cow = num_tokens > 0 and "),
    Mutant("cow_when_appending_nothing",
           "copies the shared last block on append(seq, 0), which writes nothing",
           "cow = num_tokens > 0 and ", "cow = num_tokens >= 0 and "),
    Mutant("free_ignores_ref_count",
           "free returns every block of the sequence to the pool, even blocks another sequence holds",
           "if self._ref[block] == 0:  # nobody holds it any more", "if True:"),
    Mutant("ref_count_not_decremented",
           "free never decrements ref counts: no block ever returns to the pool",
           "self._ref[block] -= 1", "self._ref[block] -= 0"),
    Mutant("fork_without_ref_increment",
           "fork shares the parent's blocks without counting the new holder",
           "self._ref[block] += 1", "pass"),
    Mutant("fork_aliases_table",
           "fork gives the child the parent's very list: growing one sequence grows the other",
           "self._tables[child_id] = list(table)", "self._tables[child_id] = table"),
    Mutant("fork_forgets_length",
           "fork gives the child an empty length instead of the parent's",
           "self._tokens[child_id] = self._tokens[parent_id]", "self._tokens[child_id] = 0"),
    Mutant("cow_keeps_ref_on_source",
           "copy-on-write leaves the source block's ref count as it was: it leaks when its "
           "other holders are freed",
           "self._release(src)  # still held by the other sequence(s): ref >= 1 stays", "pass"),
    Mutant("memory_error_after_partial_change",
           "allocate registers the sequence and takes blocks one by one, raising MemoryError "
           "only when the pool runs dry (half-done)",
           "        if needed > len(self._free):  # check first: nothing changes on failure\n"
           "            raise MemoryError(f\"sequence {seq_id!r} needs {needed} blocks, {len(self._free)} are free\")\n"
           "        self._tables[seq_id] = [self._take() for _ in range(needed)]\n",
           "        self._tables[seq_id] = []\n"
           "        for _ in range(needed):\n"
           "            if not self._free:\n"
           "                raise MemoryError(\"out of blocks\")\n"
           "            self._tables[seq_id].append(self._take())\n"),
    Mutant("append_check_forgets_copy",
           "append's MemoryError check counts the new blocks but not the copy-on-write block",
           "if new_blocks + cow > len(self._free):", "if new_blocks > len(self._free):"),
    Mutant("ceil_off_by_one",
           "computes the block count as n // block_size + 1 (one block too many at a boundary "
           "and for 0 tokens)",
           "return -(-a // b)", "return a // b + 1"),
    Mutant("floor_instead_of_ceil",
           "computes the block count as n // block_size: a partly filled last block is never "
           "allocated",
           "return -(-a // b)", "return a // b"),
    Mutant("slot_forgets_block_size",
           "slot = block + offset instead of block * block_size + offset",
           "return block * self.block_size + position % self.block_size",
           "return block + position % self.block_size"),
    Mutant("free_list_pop_front",
           "hands out free blocks with list.pop(0): O(pool size) per block",
           "block = self._free.pop()", "block = self._free.pop(0)"),
    Mutant("num_free_blocks_scans",
           "counts the free blocks by scanning every ref count: O(pool size) per call",
           "return len(self._free)", "return self._ref.count(0)"),
]
