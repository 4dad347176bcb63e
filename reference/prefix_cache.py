"""Kata 09 reference: a radix tree over token ids for prefix reuse (SGLang's RadixAttention).

Each node holds an edge: a run of tokens and their KV slots (values). A node's children are
keyed by the first token of their edge, so walking `tokens` down the tree costs
O(len(tokens)) whatever the cache holds. Every token of one edge shares one last-use time
and one pin count: a match, insert, lock or unlock that ends inside an edge splits it there
first, so per-token times and pins are exact.

Eviction removes tokens from the ends of cached sequences (leaf edges, from their last
token backwards), least recently used first. Along any path the times never increase
going deeper (a use of a token uses its whole prefix), so evicting a leaf edge from its end
is the same as evicting one token at a time; and no two evictable tokens ever share a time
(one call uses one path, and two ends of cached sequences are never on one path), so the
order is well defined.
"""
from __future__ import annotations

import heapq
import itertools


class _Node:
    __slots__ = ("key", "value", "children", "parent", "last_use", "pins")

    def __init__(self, key: list[int], value: list[int], parent: _Node | None, last_use: int) -> None:
        self.key, self.value = key, value  # the edge's tokens and their KV slots
        self.children: dict[int, _Node] = {}  # first token of the child's edge -> child
        self.parent = parent
        self.last_use = last_use
        self.pins = 0  # pins on every token of this edge


class RadixCache:
    """Token-id sequences -> KV slots, common prefixes shared, LRU eviction of the ends."""

    def __init__(self) -> None:
        self._root = _Node([], [], None, 0)
        self._clock = 0  # a counter, not wall time: every use gets a distinct, larger time
        self._size = 0

    @property
    def num_tokens(self) -> int:
        return self._size

    def _split(self, node: _Node, k: int) -> _Node:
        """Cut node's edge after k tokens; return the new upper node (edge key[:k])."""
        upper = _Node(node.key[:k], node.value[:k], node.parent, node.last_use)
        upper.pins = node.pins
        upper.children[node.key[k]] = node
        node.parent.children[node.key[0]] = upper
        node.key, node.value, node.parent = node.key[k:], node.value[k:], upper
        return upper

    def _walk(self, tokens: list[int]) -> tuple[list[_Node], int]:
        """The nodes that hold the longest cached prefix of tokens, exactly (the last edge is
        split where the match ends), and that prefix's length."""
        node, i, path = self._root, 0, []
        while i < len(tokens):
            child = node.children.get(tokens[i])
            if child is None:
                break
            k = 0  # how far the edge agrees with tokens[i:]
            while k < len(child.key) and i + k < len(tokens) and child.key[k] == tokens[i + k]:
                k += 1
            if k < len(child.key):  # the match ends inside this edge
                child = self._split(child, k)
            path.append(child)
            node, i = child, i + k
        return path, i

    def _use(self, path: list[_Node]) -> None:
        self._clock += 1
        for node in path:
            node.last_use = self._clock

    def match(self, tokens: list[int]) -> list[int]:
        path, _ = self._walk(list(tokens))
        self._use(path)
        return [v for node in path for v in node.value]

    def insert(self, tokens: list[int], values: list[int]) -> int:
        tokens, values = list(tokens), list(values)
        if len(tokens) != len(values):
            raise ValueError(f"{len(tokens)} tokens but {len(values)} values")
        path, n = self._walk(tokens)
        if n < len(tokens):  # the uncached rest becomes one new leaf edge
            parent = path[-1] if path else self._root
            leaf = _Node(tokens[n:], values[n:], parent, 0)
            parent.children[tokens[n]] = leaf
            path.append(leaf)
            self._size += len(tokens) - n
        self._use(path)
        return n

    def lock(self, tokens: list[int]) -> None:
        path, n = self._walk(list(tokens))
        if n < len(tokens):
            raise ValueError(f"only {n} of the {len(tokens)} tokens are cached: nothing locked")
        for node in path:
            node.pins += 1

    def unlock(self, tokens: list[int]) -> None:
        path, n = self._walk(list(tokens))
        if n < len(tokens) or any(node.pins == 0 for node in path):
            raise ValueError("unlock of a token that holds no pin: nothing unlocked")
        for node in path:
            node.pins -= 1

    def evict(self, num_tokens: int) -> list[int]:
        order = itertools.count()  # a tie-breaker for the heap; ties never happen (see top)
        heap = [(n.last_use, next(order), n) for n in self._leaves() if n.pins == 0]
        heapq.heapify(heap)
        removed: list[int] = []
        while heap and len(removed) < num_tokens:
            _, _, leaf = heapq.heappop(heap)  # least recently used end of a cached sequence
            take = min(num_tokens - len(removed), len(leaf.key))
            first = leaf.key[0]
            removed += leaf.value[::-1][:take]  # from the end of the edge backwards
            del leaf.key[len(leaf.key) - take:], leaf.value[len(leaf.value) - take:]
            self._size -= take
            if not leaf.key:  # the whole edge is gone: its parent may now end a sequence
                parent = leaf.parent
                del parent.children[first]
                if parent is not self._root and not parent.children and parent.pins == 0:
                    heapq.heappush(heap, (parent.last_use, next(order), parent))
        return removed

    def _nodes(self) -> list[_Node]:
        """Every node but the root, parents before children (iterative: trees can be deep)."""
        out, stack = [], list(self._root.children.values())
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(node.children.values())
        return out

    def _leaves(self) -> list[_Node]:
        return [n for n in self._nodes() if not n.children]

    @property
    def num_evictable(self) -> int:
        # A token is evictable when neither it nor any token below it is pinned.
        pinned_below: dict[int, bool] = {}
        count = 0
        for node in reversed(self._nodes()):  # children before parents
            pinned = node.pins > 0 or any(pinned_below[id(c)] for c in node.children.values())
            pinned_below[id(node)] = pinned
            if not pinned:
                count += len(node.key)
        return count
