"""Acceptance.expected_tokens: a step's token count averaged over its acceptance draws, given the
tree and the target's rows (what `auto` ranks its model drafters by). Hand-computed cases, where
a rule that tested a second draw against the target's row instead of the residual the first
rejection left is caught; and on random trees, the mean of len(tokens) over many draws equals
it (one value, whatever the draws), on both row paths; greedy, it is len(tokens)."""
import mlx.core as mx
import numpy as np
import pytest

from support.rows import BOTH_ROW_PATHS, rows_on
from mlx_spec.accept import accept
from mlx_spec.sampling import SamplingParams
from mlx_spec.tree import Tree

T1 = SamplingParams(temperature=1.0)


def logits_of(rows) -> mx.array:
    """Logits whose softmax at temperature 1 is each of `rows`."""
    return mx.array(np.log(np.asarray(rows, dtype=np.float64)).astype(np.float32))


def expected(tree: Tree, logits: mx.array, params=T1) -> float:
    return accept(tree, logits, params, mx.random.key(0)).expected_tokens()


@BOTH_ROW_PATHS
def test_a_sampled_chain_of_one_draft(host):
    """p = (0.5, 0.5), the draft token 0 drawn from q = (0.8, 0.2): accepted with probability
    0.5 / 0.8 = 0.625 (then two tokens), else one: 1.625."""
    tree = Tree.from_chain(2, [0], draft_probs=mx.array([[0.0, 0.0, 0.0], [0.8, 0.2, 0.0]]))
    logits = logits_of([[0.5, 0.5, 1e-30], [0.2, 0.3, 0.5]])
    with rows_on(host):
        assert expected(tree, logits) == pytest.approx(1.625, abs=1e-5)


@BOTH_ROW_PATHS
def test_a_second_draw_is_tested_against_the_residual(host):
    """p = (0.5, 0.3, 0.2); draw A (token 1, q_A = (0.2, 0.6, 0.2)) is accepted with probability
    0.5; its rejection leaves r = normalize(max(p - q_A, 0)) = (1, 0, 0), so draw B (token 0,
    q_B = (0.8, 0.1, 0.1)) is then accepted surely: 0.5 x 2 + 0.5 x 2 = 2.0 (against the
    untouched p, B's chance would be 0.625 and the mean 1.8125)."""
    tree = Tree(tokens=[2, 1, 0], parents=[-1, 0, 0], draft_probs=mx.array(
        [[0.0, 0.0, 0.0], [0.2, 0.6, 0.2], [0.8, 0.1, 0.1]]), draws=[[1, 2], [], []])
    logits = logits_of([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [0.1, 0.1, 0.8]])
    with rows_on(host):
        assert expected(tree, logits) == pytest.approx(2.0, abs=1e-5)


@BOTH_ROW_PATHS
def test_a_draft_probability_rounded_to_zero_is_accepted_as_the_rules_accept_it(host):
    """q(x) = 0 for the drafted token (a float16 row that rounded a rare token away): both
    acceptance rules accept x wherever p(x) > 0, so the step emits two tokens surely."""
    tree = Tree.from_chain(2, [0], draft_probs=mx.array([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    logits = logits_of([[0.5, 0.5, 1e-30], [0.2, 0.3, 0.5]])
    with rows_on(host):
        acceptance = accept(tree, logits, T1, mx.random.key(3))
        assert acceptance.tokens[0] == 0 and acceptance.expected_tokens() == pytest.approx(2.0)


def random_sampled_tree(rng, vocab: int) -> Tree:
    """Three chains of three tokens each drawn from random distributions, so that they often
    share a prefix (merged nodes drawn more than once)."""
    branches, probs = [], []
    for _ in range(3):
        q = rng.dirichlet(np.full(vocab, 0.3), size=3)
        branches.append([int(rng.choice(vocab, p=row)) for row in q])
        probs.append(q)
    return Tree.from_sampled_branches(0, branches, mx.array(np.array(probs, dtype=np.float32)))


@BOTH_ROW_PATHS
@pytest.mark.parametrize("kind", ["sampled tree", "deterministic tree"])
def test_the_mean_over_draws_is_the_expected_count(host, kind):
    """4,000 acceptances of one tree with different keys: their mean len(tokens) is within four
    standard errors of expected_tokens, which is the same number for every key."""
    rng = np.random.default_rng(5)  # (its sampled tree draws one root child twice)
    vocab = 5
    if kind == "sampled tree":
        tree = random_sampled_tree(rng, vocab)
        assert any(len(d) != len(set(d)) for d in tree.draws)  # a node drawn more than once
    else:
        tree = Tree.from_branches(0, [[1, 2, 3], [1, 4], [2, 2], [3]])
    logits = mx.array((rng.normal(size=(len(tree), vocab)) * 1.2).astype(np.float32))
    counts, means = [], set()
    with rows_on(host):
        for i in range(4000):
            acceptance = accept(tree, logits, T1, mx.random.key(i))
            counts.append(len(acceptance.tokens))
            if i < 20:
                means.add(round(acceptance.expected_tokens(), 9))
    assert len(means) == 1
    mean, error = np.mean(counts), np.std(counts) / np.sqrt(len(counts))
    assert abs(mean - means.pop()) < 4 * error, (mean, error)


def test_greedy_it_is_the_count():
    tree = Tree.from_branches(0, [[1, 2], [3]])
    logits = mx.array(np.eye(4, dtype=np.float32)[[1, 2, 0, 0]] * 5)
    acceptance = accept(tree, logits, SamplingParams(), None)
    assert acceptance.tokens == [1, 2, 0] and acceptance.expected_tokens() == 3.0
