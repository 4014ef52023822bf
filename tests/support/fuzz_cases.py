"""Random drafts for the fuzz tests (tests/core/test_fuzz_*.py): branch lists as drafters produce them
(duplicates, shared prefixes, empty branches) over a small vocabulary so that prefixes collide
often, and the brute-force facts the tests compare the real code with."""
from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from mlx_spec.tree import Tree

FUZZ = settings(deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def branch_lists(draw, vocab: int = 4, max_branches: int = 8, max_length: int = 6):
    """A list of branches (token lists after the root); some are copies or extensions of others."""
    branches = []
    for _ in range(draw(st.integers(1, max_branches))):
        kind = draw(st.sampled_from(["fresh", "copy", "extend", "empty"])) if branches else "fresh"
        if kind == "copy":
            branch = list(draw(st.sampled_from(branches)))
        elif kind == "extend":  # shares a prefix with an earlier branch, then goes its own way
            base = draw(st.sampled_from(branches))
            branch = base[:draw(st.integers(0, len(base)))]
            branch += draw(st.lists(st.integers(0, vocab - 1), max_size=max_length - len(branch)))
        elif kind == "empty":
            branch = []
        else:
            branch = draw(st.lists(st.integers(0, vocab - 1), min_size=1, max_size=max_length))
        branches.append(branch)
    return branches


@st.composite
def trees(draw, vocab: int = 4, max_branches: int = 8, max_length: int = 6) -> Tree:
    root = draw(st.integers(0, vocab - 1))
    return Tree.from_branches(root, draw(branch_lists(vocab, max_branches, max_length)))


def node_prefix(tree: Tree, node: int) -> tuple[int, ...]:
    """The tokens after the root on the way to `node` (brute force: follow parents)."""
    tokens = []
    while node > 0:
        tokens.append(tree.tokens[node])
        node = tree.parents[node]
    return tuple(reversed(tokens))
