"""Recursive rejection sampling over trees of sampled drafts (SpecInfer-style multi-draft
acceptance) on random trees with planted outcomes.

Along a chosen path, each node's children are tried in draw order against a residual r that starts
as the target's p. Planted so every outcome is certain: a first sibling whose token p excludes, with
q = r with the mass of one supported token y moved onto it, is surely rejected and leaves
r = one-hot(y); further siblings on tokens other than y (q one-hot) are surely rejected and keep it;
the path child is y then (surely accepted), or, with no rejection, a token of p's support drawn from
q = p (accepted with probability 1). The walk ends where a node has no child left to accept: the
last token is y after rejections, or a sample of p at a leaf. Off-path subtrees are random."""
import mlx.core as mx
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from support.fuzz_cases import FUZZ
from support.rows import BOTH_ROW_PATHS, rows_on
from mlx_spec.accept import accept
from mlx_spec.sampling import SamplingParams, log_probs
from mlx_spec.tree import Tree

VOCAB, TOP_K = 8, 3
PARAMS = SamplingParams(temperature=1.0, top_k=TOP_K)


class Builder:
    """Nodes in creation order (parents first); a node's children are tried in that order."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.tokens, self.parents, self.q = [int(rng.integers(VOCAB))], [-1], [np.zeros(VOCAB)]

    def add(self, parent: int, token: int, q=None) -> int:
        self.tokens.append(int(token))
        self.parents.append(parent)
        self.q.append(self.rng.dirichlet(np.ones(VOCAB)) if q is None else q)
        return len(self.tokens) - 1

    def add_random_subtree(self, parent: int, depth: int, avoid=()) -> None:
        """Off-path nodes: never reached, whatever they hold."""
        if depth == 0:
            return
        free = [t for t in range(VOCAB) if t not in avoid]
        for token in self.rng.choice(free, size=min(len(free), int(self.rng.integers(0, 3))), replace=False):
            self.add_random_subtree(self.add(parent, token), depth - 1)

    def tree(self) -> Tree:
        return Tree(tokens=self.tokens, parents=self.parents,
                    draft_probs=mx.array(np.stack(self.q).astype(np.float32)))


def planted(seed: int, path_length: int, rejections: list[int], end_with_rejections: bool):
    """(tree, logits, p, expected path, expected last token or None: any token of p there)."""
    rng = np.random.default_rng(seed)
    logits = mx.array((np.stack([rng.permutation(VOCAB) for _ in range(256)])
                       + rng.random((256, VOCAB)) * 0.5).astype(np.float32))
    p = np.array(mx.exp(log_probs(logits, PARAMS)), dtype=np.float64)  # after node i: row i
    build, node, path = Builder(rng), 0, [0]
    for level in range(path_length + 1):
        stop = level == path_length
        if stop and not end_with_rejections:
            break  # a leaf: the bonus token is a sample of p there
        r, support = p[node], np.flatnonzero(p[node] > 0)
        y, tried = int(rng.choice(support)), []
        for _ in range(max(rejections[level], 1 if stop else 0)):
            x = int(rng.choice([t for t in np.flatnonzero(r == 0) if t not in tried]))
            if not tried:  # r with y's mass moved onto x: rejected, residual one-hot(y)
                q = r.copy()
                q[x], q[y] = r[y], 0.0
            else:          # one-hot(x) against one-hot(y): rejected, residual unchanged
                q = np.eye(VOCAB)[x]
            tried.append(x)
            build.add_random_subtree(build.add(node, x, q), 2)
        if stop:
            return build.tree(), logits[:len(build.tokens)], p, path, y
        if tried:  # the residual is one-hot(y): any q that can draw y is accepted
            q = rng.dirichlet(np.ones(VOCAB))
            q[y] += 0.1
            q /= q.sum()
        else:      # drawn from r itself: accepted with probability 1
            q = r.copy()
        parent, node = node, build.add(node, y, q)
        path.append(node)
        build.add_random_subtree(parent, 1, avoid=tried + [y])  # later siblings: never tried
    return build.tree(), logits[:len(build.tokens)], p, path, None


@BOTH_ROW_PATHS
@FUZZ
@given(seed=st.integers(0, 2**32 - 1), path_length=st.integers(0, 4),
       rejections=st.lists(st.integers(0, 3), min_size=5, max_size=5), end_with_rejections=st.booleans())
def test_recursive_rejection_follows_a_planted_tree(host, seed, path_length, rejections, end_with_rejections):
    tree, logits, p, path, last = planted(seed, path_length, rejections, end_with_rejections)
    with rows_on(host):
        result = accept(tree, logits, PARAMS, mx.random.key(seed))
    assert result.path == path
    assert result.tokens[:-1] == [tree.tokens[i] for i in path[1:]]
    if last is not None:
        assert result.tokens[-1] == last
    else:
        assert p[path[-1], result.tokens[-1]] > 0
