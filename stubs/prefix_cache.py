"""Kata 09: prefix reuse with a radix tree (SGLang's RadixAttention). Read
katas/09_prefix_cache/README.md, then fill in the class. Run `pytest katas/09` to see how
far you got.

The cache maps token-id sequences to the KV slots (ints, one per token) that hold them.
A token's last use is the last `match` or `insert` whose prefix contained it.
"""
from __future__ import annotations


class RadixCache:
    """Cached token sequences sharing common prefixes, with pins and LRU eviction.

    `match` and `insert` must cost O(len(tokens)), not O(tokens cached).
    """

    def __init__(self) -> None:
        """An empty cache. Task 1."""
        raise NotImplementedError("Task 1: set up the root of the radix tree")

    @property
    def num_tokens(self) -> int:
        """How many tokens are cached. Task 1."""
        raise NotImplementedError("Task 1: count the cached tokens")

    def match(self, tokens: list[int]) -> list[int]:
        """The values of the longest cached prefix of tokens ([] if none). Those tokens are
        used now (Task 2). Task 1."""
        raise NotImplementedError("Task 1: find the longest cached prefix")

    def insert(self, tokens: list[int], values: list[int]) -> int:
        """Cache tokens with values (same length). Returns n, how many leading tokens were
        cached already: their cached values stay (the caller frees its own values[:n]).
        All of tokens are used now (Task 2).

        Raises:
            ValueError: len(tokens) != len(values) (see the README).

        Task 1.
        """
        raise NotImplementedError("Task 1: insert a sequence, sharing its cached prefix")

    def lock(self, tokens: list[int]) -> None:
        """Add one pin to every token of tokens. Not a use.

        Raises:
            ValueError: tokens are not wholly cached; then no pin changes.

        Task 3.
        """
        raise NotImplementedError("Task 3: pin a cached sequence")

    def unlock(self, tokens: list[int]) -> None:
        """Remove one pin from every token of tokens. Not a use.

        Raises:
            ValueError: some token of tokens has no pin (or is not cached); then no pin
                changes.

        Task 3.
        """
        raise NotImplementedError("Task 3: unpin a sequence")

    @property
    def num_evictable(self) -> int:
        """Tokens that `evict` could remove now and later: unpinned, with no pinned token
        after them. Task 3."""
        raise NotImplementedError("Task 3: count the evictable tokens")

    def evict(self, num_tokens: int) -> list[int]:
        """Repeatedly remove, among the unpinned tokens that end a cached sequence (no cached
        token extends them), the least recently used one, until num_tokens are removed or
        none is left. Returns the removed values in removal order. Task 2 (Task 3: pins)."""
        raise NotImplementedError("Task 2: evict least recently used sequence ends")
