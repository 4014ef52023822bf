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

Nodes are integers (ROOT is 0) into flat lists (a pruned node's number goes to the next new one),
and a node's children are a dict of token -> node made at its first child. Int-only dicts are
invisible to Python's cycle collector, and a list of numbers is one object to it: with a node
object and a dict per node, each token's ~12 new nodes were objects the collector kept traversing
(README, "The n-gram trie and the cycle collector").
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
ROOT = 0


class NgramTrie:
    """Not for two threads at once (nor was the object trie): each decoder uses it from one thread."""

    def __init__(self):
        self.kids: list[Optional[dict[int, int]]] = [None]  # node -> {token: child}, None: a leaf
        self.freq = [0.0]   # node -> count, in units of `weight`
        self.last = [-1]    # node -> tick of the latest position through it
        self.weight = 1.0      # what one new occurrence adds to a count (grows as decay() is called)
        self.tick = 0          # positions inserted so far; stamps `last`
        self.free: list[int] = []  # numbers of pruned nodes, for new ones (their freq is -1)
        self.pruned = 0        # prunes so far (a node number kept across one may name another)

    @property
    def size(self) -> int:
        """Nodes, root excluded."""
        return len(self.freq) - 1 - len(self.free)

    def children(self, node: int) -> dict[int, int]:
        """token -> child of `node` (a copy: the trie's own dict is not for changing)."""
        return dict(self.kids[node] or {})

    # -- insertion --------------------------------------------------------------------------------
    def _child(self, node: int, token: int) -> int:
        """`node`'s child for `token`, made (with no count) where there is none yet."""
        return self.walk(node, (token,), -1, count=False)

    def add_path(self, path: Sequence[int], done: int = 0, tick: Optional[int] = None) -> int:
        """Count one occurrence of `path`, whose first `done` tokens were counted earlier (a window
        that grows as a stream does): only the nodes at depths done+1 .. len(path) are counted.
        A window must finish growing before the next decay(), or a child could outweigh its parent.
        Returns the node of the whole path."""
        tick = self.tick if tick is None else tick
        return self.walk(self.walk(ROOT, path[:done], tick, count=False), path[done:], tick)

    def walk(self, node: int, tokens: Sequence[int], tick: int, count: bool = True) -> int:
        """From `node` down `tokens`, making the nodes missing; each passed counts one occurrence
        more, stamped `tick`, where `count`. Returns the last node. (The one place that makes
        nodes, written out in the loop: on text that does not repeat nearly every step down
        makes one, and under a profiler a call per node took as long as the rest of the walk.)"""
        kids, freq, last, weight, free = self.kids, self.freq, self.last, self.weight, self.free
        for token in tokens:
            children = kids[node]
            if children is None:
                children = kids[node] = {}
            child = children.get(token)
            if child is not None:
                if count:
                    freq[child] += weight
                    last[child] = tick
            elif free:
                child = children[token] = free.pop()
                freq[child], last[child] = (weight, tick) if count else (0.0, -1)
            else:
                child = children[token] = len(freq)
                kids.append(None)
                freq.append(weight if count else 0.0)
                last.append(tick if count else -1)
            node = child
        return node

    def insert(self, tokens: Sequence[int], window: int, first: int = 0,
               stop: Optional[int] = None) -> None:
        """Count the positions first..stop-1 (default: all) of a finished token sequence, each with
        its next `window` tokens (a long text goes in slices, pruned in between)."""
        tokens = list(tokens)
        for start in range(first, len(tokens) if stop is None else min(stop, len(tokens))):
            self.add_path(tokens[start:start + window], tick=self.tick)
            self.tick += 1

    # -- lookup -----------------------------------------------------------------------------------
    def find(self, tokens: Sequence[int]) -> Optional[int]:
        """The node of n-gram `tokens` (ROOT for no tokens: compare with None, not by truth), or
        None where it never occurred."""
        node = ROOT
        for token in tokens:
            children = self.kids[node]
            node = children.get(token) if children is not None else None
            if node is None:
                return None
        return node

    def count(self, tokens: Sequence[int]) -> float:
        """How often `tokens` occurred, in units of one undecayed occurrence (0 if never)."""
        node = self.find(tokens)
        return self.freq[node] / self.weight if node is not None and tokens else 0.0

    # -- forgetting -------------------------------------------------------------------------------
    def decay(self, factor: float) -> None:
        """Multiply every count by `factor` (0 < factor <= 1), lazily."""
        if not 0.0 < factor <= 1.0:
            raise ValueError(f"decay factor must be in (0, 1], got {factor}")
        self.weight /= factor
        if self.weight > _RENORMALISE_ABOVE:
            self.freq[:] = [f / self.weight if f >= 0 else f for f in self.freq]
            self.weight = 1.0

    def prune(self, budget: int) -> None:
        """Keep at most `budget` nodes: drop the rarest (and, among equals, the least recent).
        Their numbers go to `free`, for the next new nodes (rebuilding the kept ones as a new trie
        took 1.5x the old object trie's time, 410 ms at 234,000 nodes)."""
        if self.size <= budget:
            return
        kids, freq, last, free = self.kids, self.freq, self.last, self.free
        keys = sorted(zip(freq[1:], last[1:]))  # (free numbers' keys first: their freq is -1)
        threshold = keys[len(free) + self.size - budget - 1]  # dropping each key <= this leaves
        kept = [ROOT]                                         # <= budget
        for node in kept:  # breadth first (grows as it goes)
            children = kids[node]
            if not children:
                continue
            for token, child in list(children.items()):
                if (freq[child], last[child]) > threshold:
                    kept.append(child)
                    continue
                del children[token]
                dropped = [child]  # its subtree goes with it
                for gone in dropped:
                    dropped.extend((kids[gone] or {}).values())
                    kids[gone], freq[gone], last[gone] = None, -1.0, -1
                free.extend(dropped)
        self.pruned += 1

    def _edges(self):
        """(parent, token, node) for every node but the root, parents first: depth first, each
        node's children last to first, the order of the object trie's walk. save() and absorb()
        keep it, so a file written by either version and absorbed by the other makes siblings in
        the same order (their order breaks ties of count and tick in retrieval)."""
        kids = self.kids
        stack = [(ROOT, token, child) for token, child in (kids[ROOT] or {}).items()]
        while stack:
            parent, token, node = stack.pop()
            yield parent, token, node
            if kids[node]:
                stack.extend((node, t, c) for t, c in kids[node].items())

    def absorb(self, other: "NgramTrie") -> None:
        """Add every count of `other` (a loaded warm-start trie) to this one."""
        mine = {ROOT: ROOT}  # other's node -> this trie's
        for parent, token, node in other._edges():
            child = mine[node] = self._child(mine[parent], token)
            self.freq[child] += other.freq[node] / other.weight * self.weight
            self.last[child] = max(self.last[child], other.last[node])
        self.tick = max(self.tick, other.tick)

    # -- files ------------------------------------------------------------------------------------
    def save(self, path) -> None:
        """One .npz-format file: nodes in parent-first order as parallel arrays (a node's parent
        as its index in them, -1 for the root)."""
        tokens, parents, nodes = [], [], []
        index = {ROOT: -1}
        for parent, token, node in self._edges():
            index[node] = len(tokens)
            tokens.append(token)
            parents.append(index[parent])
            nodes.append(node)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, format=np.array(FORMAT), tick=np.array(self.tick),
                            tokens=np.array(tokens, dtype=np.int64),
                            parents=np.array(parents, dtype=np.int64),
                            freqs=np.array([self.freq[n] for n in nodes], dtype=np.float64)
                            / self.weight,
                            lasts=np.array([self.last[n] for n in nodes], dtype=np.int64))
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
            if len({len(values) for values in arrays.values()}) != 1:
                raise ValueError("its arrays differ in length")
            if not all(0.0 <= f < float("inf") for f in arrays["freqs"]):
                raise ValueError("a count is negative or not finite")
            trie = cls()
            trie.tick = tick
            for index, (token, parent, freq, last) in enumerate(zip(*arrays.values())):
                if not -1 <= parent < index:
                    raise ValueError(f"node {index}'s parent {parent} is not before it")
                node = trie._child(parent + 1, token)
                if node != index + 1:
                    raise ValueError(f"node {index} repeats an earlier one")
                trie.freq[node], trie.last[node] = freq, last
        except Exception as exc:  # numpy and zipfile raise many kinds for a damaged file
            raise ValueError(f"{path} is not a saved n-gram trie: {exc}") from None
        return trie


def is_saved_trie(path) -> bool:
    """Saved tries are zip (npz) files; anything else is treated as text."""
    with open(path, "rb") as handle:
        return handle.read(4) == b"PK\x03\x04"


class TrieStream:
    """Feeds a growing token sequence into a trie as it streams: each position's window is counted
    once, extended as later tokens arrive, so a phrase just generated can be drafted at once. The
    windows still growing keep their last node, so a token costs one step down per window, not a
    walk from the root (14 windows of up to 14 tokens in lookahead)."""

    def __init__(self, trie: NgramTrie, window: int):
        self.trie, self.window = trie, window
        self.tokens: list[int] = []
        self._base_tick = trie.tick
        self._ends: dict[int, int] = {}  # start of a window still growing -> its last node
        self._pruned = trie.pruned

    def extend(self, new_tokens: Sequence[int]) -> None:
        trie, tokens, window = self.trie, self.tokens, self.window
        before = len(tokens)
        tokens.extend(new_tokens)
        after = len(tokens)
        ends, self._ends = self._ends, {}
        if self._pruned != trie.pruned:  # an end may be gone, its number another node's: none
            self._pruned = trie.pruned   # is kept, and each is found again below
            ends = {}
        for start in range(max(0, before - window + 1), after):
            stop = min(start + window, after)
            end = ends.get(start) if start < before else ROOT
            if end is None:  # pruned since (or an extend cut short): from the root, the missing
                # nodes made uncounted, window by window as the object trie's walks did
                end = trie.add_path(tokens[start:before], done=before - start)
            node = trie.walk(end, tokens[max(start, before):stop], self._base_tick + start)
            if stop - start < window:
                self._ends[start] = node
        trie.tick = max(trie.tick, self._base_tick + after)


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


class _Ranked:
    """Several tries read as one (the same n-gram's node in each, or None): merged children and
    their rank, counts in trie-priority order (the prompt first), then recency in the same order,
    negated (`rank`: the best first in ascending order, as heapq pops). It is written out for one
    and two tries (lookahead's): generic, it took a quarter of a retrieval's time."""

    def __init__(self, tries: Sequence[NgramTrie]):
        self.kids = [trie.kids for trie in tries]
        freqs, lasts = [trie.freq for trie in tries], [trie.last for trie in tries]
        if len(tries) == 2:
            (f0, f1), (l0, l1) = freqs, lasts

            def rank(nodes: tuple) -> tuple:
                a, b = nodes
                if a is None:
                    return (-0.0, -f1[b], 1, -l1[b])
                if b is None:
                    return (-f0[a], -0.0, -l0[a], 1)
                return (-f0[a], -f1[b], -l0[a], -l1[b])
        elif len(tries) == 1:
            (f0,), (l0,) = freqs, lasts

            def rank(nodes: tuple) -> tuple:
                return (-f0[nodes[0]], -l0[nodes[0]])
        else:
            def rank(nodes: tuple) -> tuple:
                return (tuple(-f[n] if n is not None else -0.0 for f, n in zip(freqs, nodes))
                        + tuple(-l[n] if n is not None else 1 for l, n in zip(lasts, nodes)))
        self.rank = rank  # (a child's nodes are never all None)

    def children(self, nodes: tuple) -> dict[int, tuple]:
        """token -> one node (or None) per trie."""
        if len(nodes) == 2:  # (lookahead's, written out: a third of a retrieval's time)
            (k0, k1), (a, b) = self.kids, nodes
            m0 = k0[a] if a is not None else None
            m1 = k1[b] if b is not None else None
            if not m1:
                return {t: (c, None) for t, c in m0.items()} if m0 else {}
            if not m0:
                return {t: (None, c) for t, c in m1.items()}
            return {t: (m0.get(t), m1.get(t)) for t in set().union(m0, m1)}
        maps = [kids[n] if n is not None else None for kids, n in zip(self.kids, nodes)]
        present = [m for m in maps if m]
        if not present:
            return {}
        if len(maps) == 1:
            return {t: (c,) for t, c in present[0].items()}
        tokens = present[0].keys() if len(present) == 1 else set().union(*present)
        return {t: tuple(m.get(t) if m else None for m in maps) for t in tokens}


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
    ranked = _Ranked(tries)
    for k in range(min(max_match, len(context)), 0, -1):
        suffix = context[-k:]
        matched = tuple(trie.find(suffix) for trie in tries)
        if all(node is None for node in matched):
            continue
        if mode == "single":
            _take_best_path(ranked, result, matched, min(budget, depth))
            if len(result) > 1:
                return result
        else:
            _take_best_first(ranked, result, matched, budget, depth)
            if len(result) > budget:
                return result
    return result


def _take_best_path(ranked: _Ranked, result: Retrieval, nodes: tuple, depth: int) -> None:
    parent = 0
    for _ in range(depth):
        children = ranked.children(nodes)
        if not children:
            return
        token, nodes = min(children.items(), key=lambda item: ranked.rank(item[1]))
        parent, _ = result.add(parent, token)


def _take_best_first(ranked: _Ranked, result: Retrieval, matched: tuple, budget: int,
                     depth: int) -> None:
    order = itertools.count()
    heap: list = []
    rank = ranked.rank

    def push_children(nodes: tuple, parent: int, parent_depth: int) -> None:
        if parent_depth >= depth:
            return
        children = ranked.children(nodes)
        # only the best `room` new ones can still be chosen; children already taken cost nothing
        room = budget + 1 - len(result.tokens) + result.child_count[parent]
        ranks = [(rank(child), i, token, child) for i, (token, child) in enumerate(children.items())]
        if len(ranks) > room:  # (ties keep their order, as a key's nsmallest would)
            ranks = heapq.nsmallest(room, ranks)
        for key, _, token, child in ranks:
            heapq.heappush(heap, (key, parent_depth + 1, next(order), token, parent, child))

    push_children(matched, 0, 0)
    while heap and len(result.tokens) <= budget:  # (.tokens: no Python __len__ per node)
        _, node_depth, _, token, parent, nodes = heapq.heappop(heap)
        index, _ = result.add(parent, token)
        push_children(nodes, index, node_depth)
