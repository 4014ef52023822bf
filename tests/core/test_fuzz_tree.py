"""Tree.from_branches on random branch lists (duplicates, shared prefixes, empty branches) against
the brute-force set of distinct prefixes: one node per prefix, and path_to / children / depths /
leaves agree with prefix arithmetic. (Masks and positions of random trees are fuzzed against the
ancestor relation in test_kernels_tree_mask.py; beams against from_branches in
test_kernels_beams.py.)"""
from hypothesis import given
from hypothesis import strategies as st

from support.fuzz_cases import FUZZ, branch_lists, node_prefix
from mlx_spec.tree import Tree


def distinct_prefixes(branches) -> set[tuple[int, ...]]:
    return {tuple(b[:i]) for b in branches for i in range(1, len(b) + 1)}


@FUZZ
@given(root=st.integers(0, 3), branches=branch_lists())
def test_one_node_per_distinct_prefix(root, branches):
    tree = Tree.from_branches(root, branches)
    prefixes = [node_prefix(tree, node) for node in range(1, len(tree))]
    assert len(prefixes) == len(set(prefixes)), "two nodes for the same prefix"
    assert set(prefixes) == distinct_prefixes(branches)
    assert tree.tokens[0] == root and tree.parents[0] == -1 and tree.depths[0] == 0


@FUZZ
@given(root=st.integers(0, 3), branches=branch_lists())
def test_structure_agrees_with_prefix_arithmetic(root, branches):
    tree = Tree.from_branches(root, branches)
    node_of = {node_prefix(tree, node): node for node in range(len(tree))}  # root: ()
    children = tree.children()
    for prefix, node in node_of.items():
        assert tree.depths[node] == len(prefix)
        path = tree.path_to(node)
        assert path[0] == 0 and path[-1] == node
        assert path == [node_of[prefix[:i]] for i in range(len(prefix) + 1)]
        expected_children = {n for p, n in node_of.items() if len(p) == len(prefix) + 1 and p[:-1] == prefix}
        assert set(children[node]) == expected_children
        # siblings carry distinct tokens: acceptance can follow at most one child
        kid_tokens = [tree.tokens[c] for c in children[node]]
        assert len(kid_tokens) == len(set(kid_tokens))
    leaves = {p for p in node_of if not any(len(q) > len(p) and q[:len(p)] == p for q in node_of)}
    assert set(tree.leaves()) == {node_of[p] for p in leaves}
    for branch in branches:  # every branch is a root-to-node path of the tree
        assert tuple(branch) in node_of


@FUZZ
@given(root=st.integers(0, 3), chain=st.lists(st.integers(0, 3), max_size=8))
def test_chain_is_the_one_branch_tree(root, chain):
    tree = Tree.from_chain(root, chain)
    merged = Tree.from_branches(root, [chain])
    assert (tree.tokens, tree.parents, tree.depths) == (merged.tokens, merged.parents, merged.depths)
    assert tree.is_chain and tree.leaves() == [len(chain)]
