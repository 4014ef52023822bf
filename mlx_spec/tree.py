"""The one tree type every drafter proposes and the target verifies.

Node 0 is the root: the last token already chosen (sampled from the target) whose key/values are not
in the cache yet. Every other node is a candidate token whose parent comes earlier in the list, so
the node order is a topological order and a chain is simply parents = [-1, 0, 1, 2, ...].
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence


@dataclass
class Tree:
    tokens: list[int]
    parents: list[int]
    depths: list[int] = field(default_factory=list)
    # Sampled drafts only: per non-root node, the drafter's probability distribution it was drawn
    # from (an mx.array [n, V] aligned with nodes, row 0 unused). None for deterministic drafts.
    draft_probs: Optional[object] = None
    # Sampled trees only: per node, its children in the order they were drawn, repeated once per
    # draw (independent chains often draw the same token; merged, it still counts as each draw).
    # None means one draw per child, in node order.
    draws: Optional[list[list[int]]] = None

    def __post_init__(self):
        if len(self.tokens) != len(self.parents) or not self.tokens or self.parents[0] != -1:
            raise ValueError("a tree needs a root (parent -1) and one parent per token")
        if any(not (0 <= p < i) for i, p in enumerate(self.parents) if i > 0):
            raise ValueError("every parent must come before its child")
        if not self.depths:
            self.depths = [0] * len(self.tokens)
            for i in range(1, len(self.tokens)):
                self.depths[i] = self.depths[self.parents[i]] + 1

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def from_chain(cls, root: int, chain: Sequence[int], draft_probs=None) -> "Tree":
        return cls(tokens=[root, *chain], parents=list(range(-1, len(chain))), draft_probs=draft_probs)

    @classmethod
    def from_branches(cls, root: int, branches: Sequence[Sequence[int]]) -> "Tree":
        """Merge branches (token sequences following the root) so that every distinct prefix is
        one node: branches that share a beginning share those nodes."""
        tokens, parents, _ = _merge(root, branches)
        return cls(tokens=tokens, parents=parents)

    @classmethod
    def from_sampled_branches(cls, root: int, branches: Sequence[Sequence[int]],
                              branch_probs) -> "Tree":
        """Merge independently sampled branches; branch_probs[b, t] (an mx.array [B, L, V]) is the
        distribution token t of branch b was drawn from. Shared prefixes are merged as in
        from_branches, and every draw is kept in `draws` for exact multi-draft acceptance."""
        import mlx.core as mx

        tokens, parents, visits = _merge(root, branches)
        draws: list[list[int]] = [[] for _ in tokens]
        drawn_at = {0: (0, 0)}  # node -> (branch, step) of its first draw; the root's row is unused
        for b, nodes in enumerate(visits):
            for t, node in enumerate(nodes):
                drawn_at.setdefault(node, (b, t))
                draws[parents[node]].append(node)
        rows_b = mx.array([drawn_at[i][0] for i in range(len(tokens))])
        rows_t = mx.array([drawn_at[i][1] for i in range(len(tokens))])
        return cls(tokens=tokens, parents=parents, draft_probs=branch_probs[rows_b, rows_t],
                   draws=draws)

    @property
    def is_chain(self) -> bool:
        return all(p == i - 1 for i, p in enumerate(self.parents))

    def children(self) -> list[list[int]]:
        kids: list[list[int]] = [[] for _ in self.tokens]
        for i, p in enumerate(self.parents[1:], start=1):
            kids[p].append(i)
        return kids

    def path_to(self, node: int) -> list[int]:
        """Nodes from the root to `node`, inclusive."""
        path = []
        while node != -1:
            path.append(node)
            node = self.parents[node]
        return path[::-1]

    def leaves(self) -> list[int]:
        has_child = set(self.parents[1:])
        return [i for i in range(len(self.tokens)) if i not in has_child]


def _merge(root: int, branches: Sequence[Sequence[int]]):
    """Tokens and parents of the merged tree, and for each branch the nodes it passes through."""
    tokens, parents = [root], [-1]
    child_of: dict[tuple[int, int], int] = {}
    visits = []
    for branch in branches:
        node, nodes = 0, []
        for token in branch:
            key = (node, int(token))
            if key not in child_of:
                child_of[key] = len(tokens)
                tokens.append(int(token))
                parents.append(node)
            node = child_of[key]
            nodes.append(node)
        visits.append(nodes)
    return tokens, parents, visits
