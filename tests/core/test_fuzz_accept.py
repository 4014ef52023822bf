"""accept() on random trees, random logits and planted acceptance patterns, against brute force.

Greedy: the result must be the deepest node whose whole path follows the target's argmax chain
(found by checking every node's path), and the tokens that path's drafts plus the argmax after it.
Planted patterns: logits built so that a chosen node is exactly where acceptance must stop; for
sampled chains, draft distributions equal to the target's (always accepted) up to a chosen node
whose draft the target gives zero probability (always rejected), with a draft distribution that
leaves exactly one token in the residual max(0, p - q), so the replacement token is known too."""
import mlx.core as mx
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from support.fuzz_cases import FUZZ, trees
from support.rows import BOTH_ROW_PATHS, rows_on
from mlx_spec.accept import accept
from mlx_spec.sampling import SamplingParams, log_probs
from mlx_spec.tree import Tree

TREE_VOCAB = 4   # tree tokens are 0..3: siblings and prefixes collide often
VOCAB = 6        # tokens 4 and 5 are never drafted: a bonus that matches no child always exists
GREEDY = SamplingParams()


def random_logits(seed: int, n: int) -> np.ndarray:
    """Distinct values in every row, so the argmax is unique."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(VOCAB) + rng.random(VOCAB) * 0.5 for _ in range(n)]).astype(np.float32)


def brute_force_greedy(tree: Tree, logits: np.ndarray) -> tuple[list[int], list[int]]:
    """Check every node's whole path against the argmax chain; keep the deepest that passes."""
    best = logits.argmax(axis=-1)
    followed = [node for node in range(len(tree))
                if all(tree.tokens[b] == best[a] for a, b in zip(tree.path_to(node), tree.path_to(node)[1:]))]
    deepest = max(followed, key=lambda node: tree.depths[node])
    assert sum(tree.depths[f] == tree.depths[deepest] for f in followed) == 1  # unique answer
    path = tree.path_to(deepest)
    return path, [tree.tokens[i] for i in path[1:]] + [int(best[deepest])]


def plant_greedy_stop(tree: Tree, logits: np.ndarray, end: int) -> np.ndarray:
    """Raise the logits along path_to(end) so its drafts are the argmax, and at `end` raise a token
    no child of `end` carries: greedy acceptance must stop exactly at `end`."""
    logits = logits.copy()
    path = tree.path_to(end)
    for parent, child in zip(path, path[1:]):
        logits[parent, tree.tokens[child]] = logits[parent].max() + 1
    logits[end, VOCAB - 1] = logits[end].max() + 1
    return logits


def check_is_walk(tree: Tree, result, logits: np.ndarray, top_k: int) -> None:
    """Facts every deterministic-tree acceptance must satisfy, whatever was sampled."""
    path, tokens = result.path, result.tokens
    assert path[0] == 0 and len(tokens) == len(path)
    assert all(tree.parents[b] == a for a, b in zip(path, path[1:])), "path is not a tree path"
    assert tokens[:-1] == [tree.tokens[i] for i in path[1:]]
    kids = tree.children()[path[-1]]
    assert tokens[-1] not in {tree.tokens[c] for c in kids}, "stopped although a child matched"
    for node, token in zip(path, tokens):  # every emitted token is in the target's top-k
        assert token in np.argsort(-logits[node])[:top_k]


@BOTH_ROW_PATHS
@FUZZ
@given(tree=trees(TREE_VOCAB), seed=st.integers(0, 2**32 - 1))
def test_greedy_equals_brute_force_on_random_logits(host, tree, seed):
    logits = random_logits(seed, len(tree))
    with rows_on(host):
        result = accept(tree, mx.array(logits), GREEDY)
    assert (result.path, result.tokens) == brute_force_greedy(tree, logits)


@BOTH_ROW_PATHS
@FUZZ
@given(tree=trees(TREE_VOCAB), seed=st.integers(0, 2**32 - 1), pick=st.integers(0, 10**6))
def test_greedy_stops_at_a_planted_node(host, tree, seed, pick):
    end = pick % len(tree)
    logits = plant_greedy_stop(tree, random_logits(seed, len(tree)), end)
    with rows_on(host):
        result = accept(tree, mx.array(logits), GREEDY)
    assert result.path == tree.path_to(end)
    assert result.tokens == [tree.tokens[i] for i in result.path[1:]] + [VOCAB - 1]
    assert result.accepted_drafts == tree.depths[end]
    assert (result.path, result.tokens) == brute_force_greedy(tree, logits)


@BOTH_ROW_PATHS
@FUZZ
@given(tree=trees(TREE_VOCAB), seed=st.integers(0, 2**32 - 1), temperature=st.sampled_from([0.5, 1.0, 2.0]))
def test_top1_sampling_is_greedy(host, tree, seed, temperature):
    """With top_k 1 the processed distribution is a point mass on the argmax at any temperature."""
    logits = random_logits(seed, len(tree))
    with rows_on(host):
        result = accept(tree, mx.array(logits), SamplingParams(temperature=temperature, top_k=1),
                        mx.random.key(seed), seed=seed, root_position=len(tree))
    assert (result.path, result.tokens) == brute_force_greedy(tree, logits)


@BOTH_ROW_PATHS
@FUZZ
@given(tree=trees(TREE_VOCAB), seed=st.integers(0, 2**32 - 1), top_k=st.integers(1, VOCAB),
       seeded=st.booleans())
def test_sampled_walk_is_a_valid_walk(host, tree, seed, top_k, seeded):
    """`seeded`: the target's draws at per-position uniforms (as the engine samples), else from
    the step's key."""
    logits = random_logits(seed, len(tree))
    at = {"seed": seed, "root_position": 3} if seeded else {}
    with rows_on(host):
        result = accept(tree, mx.array(logits), SamplingParams(temperature=1.0, top_k=top_k),
                        mx.random.key(seed), **at)
    check_is_walk(tree, result, logits, top_k)


@FUZZ
@given(tree=trees(TREE_VOCAB), seed=st.integers(0, 2**32 - 1),
       params=st.sampled_from([SamplingParams(temperature=1.0), SamplingParams(temperature=0.7),
                               SamplingParams(temperature=1.3, top_p=0.8)]))
def test_both_row_paths_walk_alike_at_a_seed(tree, seed, params):
    """At a seed the host rows and MLX's draw the same tokens: the same inverse-CDF draw (they
    may differ at an interval's edge, float32 against float64 sums: not with these six-token
    rows)."""
    logits = mx.array(random_logits(seed, len(tree)))
    walks = []
    for host in (True, False):
        with rows_on(host):
            walks.append(accept(tree, logits, params, seed=seed, root_position=5))
    assert (walks[0].path, walks[0].tokens) == (walks[1].path, walks[1].tokens)


# -- sampled chains (rejection sampling) --------------------------------------------------------

TOP_K = 3  # tokens outside the top 3 have target probability 0: a draft there is always rejected


def planted_chain(seed: int, length: int, stop: int, params: SamplingParams):
    """(tree, logits) of a sampled chain whose drafts 1..stop-1 were drawn from exactly the target's
    distribution (accepted with probability 1) and whose draft `stop` (if stop <= length) is a token
    x the target gives probability 0 (rejected with probability 1). There q is p with the mass of
    one supported token y moved onto x, so max(0, p - q) is p(y) at y and 0 elsewhere: the
    replacement must be y. Returns (tree, logits, p, y or None)."""
    rng = np.random.default_rng(seed)
    logits = mx.array(random_logits(seed, length + 1))
    p = np.array(mx.exp(log_probs(logits, params)))
    q = np.zeros_like(p)
    chain, replacement = [], None
    for node in range(1, length + 1):
        row = p[node - 1]
        if node < stop:
            token = int(rng.choice(np.flatnonzero(row > 0)))
            q[node] = row                                  # drafted from the target itself
        elif node == stop:
            token = int(rng.choice(np.flatnonzero(row == 0)))
            replacement = int(rng.choice(np.flatnonzero(row > 0)))
            q[node] = row
            q[node, token], q[node, replacement] = row[replacement], 0.0
        else:
            token = int(rng.integers(0, VOCAB))
            q[node] = np.full(VOCAB, 1 / VOCAB)
        chain.append(token)
    tree = Tree.from_chain(int(rng.integers(0, VOCAB)), chain, draft_probs=mx.array(q))
    return tree, logits, p, replacement


@BOTH_ROW_PATHS
@FUZZ
@given(seed=st.integers(0, 2**32 - 1), length=st.integers(1, 7), stop_pick=st.integers(0, 10**6),
       temperature=st.sampled_from([0.7, 1.0]))
def test_rejection_sampling_follows_a_planted_pattern(host, seed, length, stop_pick, temperature):
    params = SamplingParams(temperature=temperature, top_k=TOP_K)
    stop = 1 + stop_pick % (length + 1)  # length + 1: every draft is accepted
    tree, logits, p, replacement = planted_chain(seed, length, stop, params)
    with rows_on(host):
        result = accept(tree, logits, params, mx.random.key(seed))
    assert result.path == list(range(stop))
    assert result.tokens[:-1] == tree.tokens[1:stop]
    if replacement is not None:  # drawn from the residual, which holds one token
        assert result.tokens[-1] == replacement
    else:  # the bonus token is a sample of the target after the last draft
        assert p[stop - 1, result.tokens[-1]] > 0


@BOTH_ROW_PATHS
@FUZZ
@given(seed=st.integers(0, 2**32 - 1), length=st.integers(1, 7))
def test_greedy_ignores_draft_distributions(host, seed, length):
    """At temperature 0 a sampled chain is accepted by the argmax walk, whatever q says."""
    rng = np.random.default_rng(seed)
    chain = [int(t) for t in rng.integers(0, TREE_VOCAB, size=length)]
    q = rng.dirichlet(np.ones(VOCAB), size=length + 1).astype(np.float32)
    tree = Tree.from_chain(int(rng.integers(0, VOCAB)), chain, draft_probs=mx.array(q))
    end = int(rng.integers(0, length + 1))
    logits = plant_greedy_stop(tree, random_logits(seed, length + 1), end)
    with rows_on(host):
        result = accept(tree, mx.array(logits), GREEDY, mx.random.key(seed))
    assert (result.path, result.tokens) == brute_force_greedy(tree, logits)
    assert result.path == list(range(end + 1))


@BOTH_ROW_PATHS
def test_a_sampled_chains_first_token_is_distributed_as_the_target(host):
    """Drafts drawn from q, accepted by rejection sampling: the first emitted token is a sample
    of the target's p whatever q is (chi-square over 4,000 trials, each with fresh drafts)."""
    rng = np.random.default_rng(7)
    params = SamplingParams(temperature=1.0)
    logits = mx.array(rng.normal(size=(3, VOCAB)).astype(np.float32) * 1.5)
    p = np.array(mx.softmax(logits[0]))
    q = rng.dirichlet(np.ones(VOCAB), size=3).astype(np.float32)  # row 0 (the root) unused
    counts = np.zeros(VOCAB)
    with rows_on(host):
        for trial in range(4000):
            chain = [int(rng.choice(VOCAB, p=q[i] / q[i].sum())) for i in (1, 2)]
            tree = Tree.from_chain(0, chain, draft_probs=mx.array(q))
            counts[accept(tree, logits, params, mx.random.key(trial)).tokens[0]] += 1
    expected = 4000 * p
    assert ((counts - expected) ** 2 / expected).sum() < 20.5  # df 5: p = 0.001
