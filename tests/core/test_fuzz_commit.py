"""KV compaction after random accepted paths equals a fresh prefill of the accepted tokens.

Random prompts, then one to three rounds of: verify a random tree (duplicates, shared prefixes),
commit the path to a random node (not only leaves: acceptance stops anywhere). Afterwards the
cache must hold exactly what a fresh prefill of prompt + every committed token holds, and the next
forward must give the same logits."""
import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from support.fuzz_cases import FUZZ, trees
from mlx_spec.target import Target
from mlx_spec.tree import Tree

TOKEN_BASE = 40  # tree tokens 0..3 become ordinary vocabulary ids 40..43
TOLERANCE = 1e-4


@st.composite
def rounds(draw):
    """[(tree, node to commit up to)] for one to three verify/commit rounds."""
    out = []
    for _ in range(draw(st.integers(1, 3))):
        tree = draw(trees(max_branches=6, max_length=5))
        tree = Tree(tokens=[TOKEN_BASE + t for t in tree.tokens], parents=tree.parents)
        out.append((tree, draw(st.integers(0, len(tree) - 1))))
    return out


def cached(target: Target) -> list[tuple[mx.array, mx.array]]:
    return [(c.keys[..., :c.offset, :], c.values[..., :c.offset, :]) for c in target.cache]


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
@settings(FUZZ, max_examples=40)
@given(prompt_seed=st.integers(0, 2**32 - 1), prompt_length=st.integers(1, 24), plan=rounds())
def test_commit_equals_fresh_prefill(random_models, arch, prompt_seed, prompt_length, plan):
    model = random_models[arch].model
    prompt = np.random.default_rng(prompt_seed).integers(2, 200, size=prompt_length).tolist()
    target = Target(model)
    target.prefill(prompt)
    committed = list(prompt)
    for tree, node in plan:
        target.verify(tree)  # lazy outputs: the cache update is what matters here
        path = tree.path_to(node)
        target.commit(path, len(tree))
        committed += [tree.tokens[i] for i in path]
        assert target.offset == len(committed)

    fresh = Target(model)
    fresh.prefill(committed)
    for (keys, values), (fresh_keys, fresh_values) in zip(cached(target), cached(fresh)):
        assert keys.shape == fresh_keys.shape
        assert mx.abs(keys - fresh_keys).max().item() < TOLERANCE
        assert mx.abs(values - fresh_values).max().item() < TOLERANCE
    after, expected = (t._forward(mx.array([50, 51])) for t in (target, fresh))
    assert mx.abs(after.logits - expected.logits).max().item() < TOLERANCE
