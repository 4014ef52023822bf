"""Tree verification equals a sequential forward along every root-to-leaf path, compaction equals a
fresh prefill, and a plain causal mask (the classic bug) is caught."""
import mlx.core as mx
import pytest

from mlx_spec.target import Target
from mlx_spec.tree import Tree
from support.random_models import ARCHITECTURES

PROMPT = [5, 6, 7, 8, 9, 10, 11, 12]
BRANCHES = [[1, 2, 3], [1, 4], [7, 8, 9, 10], [7, 8, 2], [30]]


def sequential_logits(model, prefix, tokens, kv_bits=None):
    target = Target(model, kv_bits=kv_bits)
    target.prefill(prefix)
    return target._forward(mx.array(tokens))


def path_error(model, tree, out, kv_bits=None):
    worst = 0.0
    for leaf in tree.leaves():
        path = tree.path_to(leaf)
        seq = sequential_logits(model, PROMPT, [tree.tokens[i] for i in path], kv_bits)
        index = mx.array(path)
        worst = max(worst, mx.abs(seq.logits - out.logits[index]).max().item(),
                    mx.abs(seq.hidden - out.hidden[index]).max().item())
    return worst


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_tree_forward_equals_sequential_paths(random_models, arch):
    model = random_models[arch].model
    tree = Tree.from_branches(3, BRANCHES)
    target = Target(model)
    target.prefill(PROMPT)
    out = target.verify(tree)
    assert path_error(model, tree, out) < 1e-4


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_commit_then_decode_equals_fresh_prefill(random_models, arch):
    model = random_models[arch].model
    tree = Tree.from_branches(3, BRANCHES)
    for leaf in tree.leaves():
        path = tree.path_to(leaf)
        target = Target(model)
        target.prefill(PROMPT)
        target.verify(tree)
        target.commit(path, len(tree))
        assert target.offset == len(PROMPT) + len(path)
        after = target._forward(mx.array([42, 43]))
        fresh = sequential_logits(model, PROMPT + [tree.tokens[i] for i in path], [42, 43])
        assert mx.abs(after.logits - fresh.logits).max().item() < 1e-4


def test_quantized_cache_tree_and_commit(tmp_path):
    import mlx_spec
    from support.random_models import make_model_folder

    # head_dim 64 so the KV cache can be quantized with group size 64
    folder = make_model_folder(tmp_path / "q", "llama", hidden_size=128, num_attention_heads=2,
                               num_key_value_heads=1)
    model = mlx_spec.load(str(folder)).model
    tree = Tree.from_branches(3, BRANCHES)
    target = Target(model, kv_bits=8)
    target.prefill(PROMPT)
    out = target.verify(tree)
    assert path_error(model, tree, out, kv_bits=8) < 1e-3
    path = tree.path_to(tree.leaves()[2])
    target.commit(path, len(tree))
    after = target._forward(mx.array([42]))
    fresh = sequential_logits(model, PROMPT + [tree.tokens[i] for i in path], [42], kv_bits=8)
    assert mx.abs(after.logits - fresh.logits).max().item() < 1e-3


def test_plain_causal_mask_is_caught(random_models):
    """Negative control: verifying a branching tree with the ordinary causal mask (no tree mask,
    no per-node positions) must be detected by the path check above."""
    model = random_models["llama"].model
    tree = Tree.from_branches(3, BRANCHES)
    target = Target(model)
    target.prefill(PROMPT)
    wrong = target._forward(mx.array(tree.tokens))  # causal: siblings see each other
    assert path_error(model, tree, wrong) > 1e-2


def test_tree_from_branches_merges_shared_prefixes():
    tree = Tree.from_branches(0, [[1, 2, 3], [1, 2, 4], [1, 5], [6]])
    assert tree.tokens == [0, 1, 2, 3, 4, 5, 6]
    assert tree.parents == [-1, 0, 1, 2, 2, 1, 0]
    assert tree.depths == [0, 1, 2, 3, 3, 2, 1]
    assert sorted(tree.leaves()) == [3, 4, 5, 6]
    distinct_prefixes = {tuple(b[:i]) for b in [[1, 2, 3], [1, 2, 4], [1, 5], [6]] for i in range(1, len(b) + 1)}
    assert len(tree) - 1 == len(distinct_prefixes)
