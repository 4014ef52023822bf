"""The n-gram trie behind `lookahead` drafting (Ant Group's Lookahead, arXiv 2312.12728).

Every position of a token stream inserts the next `window` tokens as one path from the root, so a
node stands for an n-gram and its `freq` counts the positions where that n-gram starts. Looking up
the last 1-2 tokens of the context lands on a node whose subtree holds every continuation seen after
them, each with its count: those continuations are the draft branches.

A node's count never exceeds its parent's (every occurrence of an n-gram is also one of its prefix),
and the same holds for `last`, the tick of the latest position that passed through it. So ranking
by (freq, last) visits parents before children, and cutting every node below a threshold of that
key leaves a well-formed trie: both best-first retrieval and pruning rely on it.

Frequencies decay lazily: decay() scales up the weight of future insertions instead of scaling down
every stored count, so it costs O(1); counts are renormalised only when the weight grows large.
"""
from __future__ import annotations

import heapq
import io
import itertools
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

FORMAT = "mlx-spec-ngram-trie-v1"
_RENORMALISE_ABOVE = 1e12


class TrieNode:
    __slots__ = ("children", "freq", "last")

    def __init__(self):
        self.children: dict[int, TrieNode] = {}
        self.freq = 0.0
        self.last = -1


class NgramTrie:
    def __init__(self):
        self.root = TrieNode()
        self.size = 0          # nodes, root excluded
        self.weight = 1.0      # what one new occurrence adds to a count (grows as decay() is called)
        self.tick = 0          # positions inserted so far; stamps `last`

    # -- insertion --------------------------------------------------------------------------------
    def add_path(self, path: Sequence[int], done: int = 0, tick: Optional[int] = None) -> None:
        """Count one occurrence of `path`, whose first `done` tokens were counted earlier (a window
        that grows as a stream does): only the nodes at depths done+1 .. len(path) are counted.
        A window must finish growing before the next decay(), or a child could outweigh its parent."""
        tick = self.tick if tick is None else tick
        node = self.root
        for depth, token in enumerate(path):
            child = node.children.get(token)
            if child is None:
                child = node.children[token] = TrieNode()
                self.size += 1
            if depth >= done:
                child.freq += self.weight
                child.last = tick
            node = child

    def insert(self, tokens: Sequence[int], window: int, first: int = 0,
               stop: Optional[int] = None) -> None:
        """Count the positions first..stop-1 (default: all) of a finished token sequence, each with
        its next `window` tokens (a long text goes in slices, pruned in between)."""
        tokens = list(tokens)
        for start in range(first, len(tokens) if stop is None else min(stop, len(tokens))):
            self.add_path(tokens[start:start + window], tick=self.tick)
            self.tick += 1

    # -- lookup -----------------------------------------------------------------------------------
    def find(self, tokens: Sequence[int]) -> Optional[TrieNode]:
        node = self.root
        for token in tokens:
            node = node.children.get(token)
            if node is None:
                return None
        return node

    def count(self, tokens: Sequence[int]) -> float:
        """How often `tokens` occurred, in units of one undecayed occurrence (0 if never)."""
        node = self.find(tokens)
        return node.freq / self.weight if node is not None and tokens else 0.0

    def nodes(self):
        """(depth, parent node, token, node) for every node, parents before children."""
        stack = [(0, self.root, token, child) for token, child in self.root.children.items()]
        while stack:
            depth, parent, token, node = stack.pop()
            yield depth + 1, parent, token, node
            stack.extend((depth + 1, node, t, c) for t, c in node.children.items())

    # -- forgetting -------------------------------------------------------------------------------
    def decay(self, factor: float) -> None:
        """Multiply every count by `factor` (0 < factor <= 1), lazily."""
        if not 0.0 < factor <= 1.0:
            raise ValueError(f"decay factor must be in (0, 1], got {factor}")
        self.weight /= factor
        if self.weight > _RENORMALISE_ABOVE:
            for _, _, _, node in self.nodes():
                node.freq /= self.weight
            self.weight = 1.0

    def prune(self, budget: int) -> None:
        """Keep at most `budget` nodes: drop the rarest (and, among equals, the least recent)."""
        if self.size <= budget:
            return
        keys = sorted((node.freq, node.last) for _, _, _, node in self.nodes())
        threshold = keys[self.size - budget - 1]  # dropping every key <= this leaves <= budget
        stack = [self.root]
        while stack:
            node = stack.pop()
            for token, child in list(node.children.items()):
                if (child.freq, child.last) <= threshold:
                    self.size -= _subtree_size(child)
                    del node.children[token]
                else:
                    stack.append(child)

    def absorb(self, other: "NgramTrie") -> None:
        """Add every count of `other` (a loaded warm-start trie) to this one."""
        mine = {id(other.root): self.root}
        for _, parent, token, node in other.nodes():
            into = mine[id(parent)]
            child = into.children.get(token)
            if child is None:
                child = into.children[token] = TrieNode()
                self.size += 1
            child.freq += node.freq / other.weight * self.weight
            child.last = max(child.last, node.last)
            mine[id(node)] = child
        self.tick = max(self.tick, other.tick)

    # -- files ------------------------------------------------------------------------------------
    def save(self, path) -> None:
        """One .npz-format file: nodes in parent-first order as parallel arrays."""
        tokens, parents, freqs, lasts = [], [], [], []
        index = {id(self.root): -1}
        for _, parent, token, node in self.nodes():
            index[id(node)] = len(tokens)
            tokens.append(token)
            parents.append(index[id(parent)])
            freqs.append(node.freq / self.weight)
            lasts.append(node.last)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, format=np.array(FORMAT), tick=np.array(self.tick),
                            tokens=np.array(tokens, dtype=np.int64),
                            parents=np.array(parents, dtype=np.int64),
                            freqs=np.array(freqs, dtype=np.float64),
                            lasts=np.array(lasts, dtype=np.int64))
        # written beside, then renamed over: an interrupt leaves the previous file whole
        partial = Path(f"{path}.partial")
        partial.write_bytes(buffer.getvalue())
        os.replace(partial, path)

    @classmethod
    def load(cls, path) -> "NgramTrie":
        try:
            with np.load(str(path), allow_pickle=False) as data:
                if str(data["format"]) != FORMAT:
                    raise ValueError(f"{path} is not a saved n-gram trie ({data['format']})")
                arrays = {k: data[k].tolist() for k in ("tokens", "parents", "freqs", "lasts")}
                tick = int(data["tick"])
        except Exception as exc:  # numpy and zipfile raise many kinds for a damaged file
            raise ValueError(f"{path} is not a saved n-gram trie: {exc}") from None
        trie = cls()
        trie.tick = tick
        made: list[TrieNode] = []
        for token, parent, freq, last in zip(*arrays.values()):
            node = TrieNode()
            node.freq, node.last = freq, last
            (made[parent] if parent >= 0 else trie.root).children[token] = node
            made.append(node)
        trie.size = len(made)
        return trie


def _subtree_size(node: TrieNode) -> int:
    size, stack = 0, [node]
    while stack:
        current = stack.pop()
        size += 1
        stack.extend(current.children.values())
    return size


def is_saved_trie(path) -> bool:
    """Saved tries are zip (npz) files; anything else is treated as text."""
    with open(path, "rb") as handle:
        return handle.read(4) == b"PK\x03\x04"


class TrieStream:
    """Feeds a growing token sequence into a trie as it streams: each position's window is counted
    once, extended as later tokens arrive, so a phrase just generated can be drafted at once."""

    def __init__(self, trie: NgramTrie, window: int):
        self.trie, self.window = trie, window
        self.tokens: list[int] = []
        self._base_tick = trie.tick

    def extend(self, new_tokens: Sequence[int]) -> None:
        before = len(self.tokens)
        self.tokens.extend(new_tokens)
        after = len(self.tokens)
        for start in range(max(0, before - self.window + 1), after):
            done = max(0, before - start)
            self.trie.add_path(self.tokens[start:start + self.window], done=done,
                               tick=self._base_tick + start)
        self.trie.tick = max(self.trie.tick, self._base_tick + after)


# -- retrieval ------------------------------------------------------------------------------------

class Retrieval:
    """Draft nodes in the order they were chosen: node 0 is the root (the last context token),
    parents[i] < i, and any prefix of the lists is itself a tree (a smaller budget's choice)."""

    def __init__(self, root: int):
        self.tokens, self.parents = [root], [-1]
        self.child: dict[tuple[int, int], int] = {}
        self.child_count = [0]

    def __len__(self) -> int:
        return len(self.tokens)

    def add(self, parent: int, token: int) -> tuple[int, bool]:
        """Index of the node for `token` under `parent`, and whether it was new."""
        key = (parent, token)
        existing = self.child.get(key)
        if existing is not None:
            return existing, False
        self.child[key] = len(self.tokens)
        self.tokens.append(token)
        self.parents.append(parent)
        self.child_count[parent] += 1
        self.child_count.append(0)
        return len(self.tokens) - 1, True

    def matched_ranks(self, continuation: Sequence[int]) -> tuple[list[int], bool]:
        """Indices of the nodes the actual continuation walks through (root excluded), and whether
        the walk was cut short by the end of `continuation` rather than by a mismatch."""
        node, ranks = 0, []
        for token in continuation:
            node = self.child.get((node, token))
            if node is None:
                return ranks, False
            ranks.append(node)
        return ranks, True


def _merged_children(nodes: tuple) -> dict[int, tuple]:
    """Children of the same n-gram in several tries: token -> one node (or None) per trie."""
    present = [n.children for n in nodes if n is not None and n.children]
    if not present:
        return {}
    tokens = present[0].keys() if len(present) == 1 else set().union(*present)
    return {t: tuple(n.children.get(t) if n is not None else None for n in nodes) for t in tokens}


def _score(nodes: tuple) -> tuple:
    """Rank: counts in trie-priority order (the prompt first), then recency in the same order."""
    return (tuple(n.freq if n is not None else 0.0 for n in nodes)
            + tuple(n.last if n is not None else -1 for n in nodes))


def _negate(score: tuple) -> tuple:
    return tuple(-x for x in score)


def retrieve(tries: Sequence[NgramTrie], context: Sequence[int], budget: int, depth: int,
             max_match: int = 2, mode: str = "multi") -> Retrieval:
    """Draft branches after context[-1] from the tries, ranked by count with the earlier tries'
    counts compared first (the prompt before past outputs).

    multi: for the last max_match tokens, then fewer, take the continuations in the matched subtree
    best-first by count (parents before children, shared prefixes merged) until `budget` nodes
    exist, each at most `depth` deep; a shorter match only fills what a longer one left.
    single: the one most frequent path from the longest match that has any continuation.
    """
    result = Retrieval(context[-1])
    if budget <= 0 or depth <= 0 or not context:
        return result
    for k in range(min(max_match, len(context)), 0, -1):
        suffix = context[-k:]
        matched = tuple(trie.find(suffix) for trie in tries)
        if all(node is None for node in matched):
            continue
        if mode == "single":
            _take_best_path(result, matched, min(budget, depth))
            if len(result) > 1:
                return result
        else:
            _take_best_first(result, matched, budget, depth)
            if len(result) > budget:
                return result
    return result


def _take_best_path(result: Retrieval, nodes: tuple, depth: int) -> None:
    parent = 0
    for _ in range(depth):
        children = _merged_children(nodes)
        if not children:
            return
        token, nodes = max(children.items(), key=lambda item: _score(item[1]))
        parent, _ = result.add(parent, token)


def _take_best_first(result: Retrieval, matched: tuple, budget: int, depth: int) -> None:
    order = itertools.count()
    heap: list = []

    def push_children(nodes: tuple, parent: int, parent_depth: int) -> None:
        if parent_depth >= depth:
            return
        children = _merged_children(nodes)
        # only the best `room` new ones can still be chosen; children already taken cost nothing
        room = budget + 1 - len(result) + result.child_count[parent]
        items = children.items()
        if len(children) > room:
            items = heapq.nlargest(room, items, key=lambda item: _score(item[1]))
        for token, child in items:
            heapq.heappush(heap, (_negate(_score(child)), parent_depth + 1, next(order),
                                  token, parent, child))

    push_children(matched, 0, 0)
    while heap and len(result) <= budget:
        _, node_depth, _, token, parent, nodes = heapq.heappop(heap)
        index, _ = result.add(parent, token)
        push_children(nodes, index, node_depth)
