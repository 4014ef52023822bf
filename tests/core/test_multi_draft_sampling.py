"""Multi-draft rejection sampling on trees of sampled drafts (mlx_spec/accept.py) is exact: on a
toy two-step target and a deliberately different drafter, three independently sampled chains
(duplicates and all) yield the target's joint distribution of two tokens; the naive rule that tests
every sibling against the untouched target distribution is caught by the same test."""
import mlx.core as mx
import numpy as np
from scipy.stats import chisquare

from mlx_spec.accept import Acceptance, accept
from mlx_spec.sampling import SamplingParams
from mlx_spec.tree import Tree

V, CHAINS, TRIALS = 4, 3, 6000
rng = np.random.default_rng(0)
P0 = np.array([0.1, 0.2, 0.3, 0.4])                      # target, first token
P1 = rng.dirichlet(np.ones(V), size=V)                   # target, second token given the first
Q0 = np.array([0.55, 0.25, 0.15, 0.05])                  # drafter: mostly wrong about P0
Q1 = 0.5 * rng.dirichlet(np.ones(V), size=V) + 0.5 * P1  # drafter: half right about P1


def sampled_tree(draw_rng) -> Tree:
    branches, probs = [], []
    for _ in range(CHAINS):
        a = int(draw_rng.choice(V, p=Q0))
        b = int(draw_rng.choice(V, p=Q1[a]))
        branches.append([a, b])
        probs.append([Q0, Q1[a]])
    return Tree.from_sampled_branches(V, branches, mx.array(np.array(probs, dtype=np.float32)))


def target_logits(tree: Tree) -> mx.array:
    """Row i: the target's log-distribution of the token after node i (uniform after depth 2)."""
    rows = []
    for node, depth in enumerate(tree.depths):
        dist = {0: P0, 1: P1[tree.tokens[node]] if depth == 1 else None}.get(depth)
        rows.append(np.log(dist if dist is not None else np.full(V, 1 / V)))
    return mx.array(np.array(rows, dtype=np.float32))


def naive_accept(tree, logits, params, key=None):
    """Wrong on purpose: every sibling is tested against the target's own distribution."""
    p = np.exp(np.array(logits, dtype=np.float64))
    q = np.array(tree.draft_probs, dtype=np.float64)
    node, path, tokens = 0, [0], []
    while True:
        chosen = next((c for c in tree.draws[node]
                       if rng.random() * q[c, tree.tokens[c]] < p[node, tree.tokens[c]]), None)
        if chosen is None:
            tokens.append(int(rng.choice(V, p=p[node] / p[node].sum())))
            return Acceptance(path=path, tokens=tokens)
        path.append(chosen)
        tokens.append(tree.tokens[chosen])
        node = chosen


def two_token_counts(accept_fn) -> tuple[np.ndarray, float]:
    """Counts of the first two output tokens, and the mean number of accepted drafts."""
    draw_rng, counts, accepted = np.random.default_rng(1), np.zeros((V, V)), 0
    params = SamplingParams(temperature=1.0)
    for trial in range(TRIALS):
        tree = sampled_tree(draw_rng)
        result = accept_fn(tree, target_logits(tree), params, mx.random.key(trial))
        accepted += result.accepted_drafts
        if len(result.tokens) < 2:  # the first token was a correction: draw the second from the
            result.tokens.append(int(draw_rng.choice(V, p=P1[result.tokens[0]])))  # target
        counts[result.tokens[0], result.tokens[1]] += 1
    return counts, accepted / TRIALS


def joint_pvalue(counts: np.ndarray) -> float:
    expected = (P0[:, None] * P1).ravel() * counts.sum()
    return float(chisquare(counts.ravel(), expected).pvalue)


def test_tree_keeps_every_draw_and_merges_prefixes():
    branches = [[1, 2], [1, 3], [1, 2], [0, 2]]
    probs = mx.array(np.arange(4 * 2 * V, dtype=np.float32).reshape(4, 2, V))
    tree = Tree.from_sampled_branches(9, branches, probs)
    assert tree.tokens == [9, 1, 2, 3, 0, 2]
    assert tree.draws[0] == [1, 1, 1, 4]   # token 1 drawn three times, then token 0
    assert tree.draws[1] == [2, 3, 2]      # below it: 2, 3, 2 again
    # each node's distribution is the one its first draw came from
    assert np.array(tree.draft_probs[3]).tolist() == np.array(probs[1, 1]).tolist()
    assert np.array(tree.draft_probs[4]).tolist() == np.array(probs[3, 0]).tolist()


def test_sampled_trees_give_the_target_distribution():
    counts, accepted = two_token_counts(accept)
    assert joint_pvalue(counts) > 1e-4
    # drafts were really used: one draw of Q0 alone would be accepted with sum min(P0, Q0) = 0.5
    assert accepted > 0.8


def test_naive_sibling_rule_is_caught():
    counts, _ = two_token_counts(naive_accept)
    assert joint_pvalue(counts) < 1e-6


def test_merged_duplicates_must_still_count():
    """Testing each distinct token once (forgetting that a merged node was drawn several times)
    skips residual updates, and that bias is caught too."""
    def once_per_token(tree, logits, params, key):
        tree.draws = [list(dict.fromkeys(d)) for d in tree.draws]
        return accept(tree, logits, params, key)

    counts, _ = two_token_counts(once_per_token)
    assert joint_pvalue(counts) < 1e-6
