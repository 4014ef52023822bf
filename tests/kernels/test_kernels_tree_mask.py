"""Tree mask kernel (metal/tree_mask.metal, run by the CPU harness) against the MLX reference, and
the reference against the tree's own definition of ancestors."""
import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from support.kernel_cases import (FUZZ, KERNEL_BACKENDS, MASK_DTYPES, PREFIXES, assert_same,
                          compiled_harness, random_parents, tree_batches)
from mlx_spec import kernels
from mlx_spec.tree import Tree
from mlx_spec.kernels.tree_mask import PAD_PARENT


def setup_module(module):
    compiled_harness()  # compile (or load from the cache) once, fail clearly without g++


@settings(FUZZ, max_examples=300)
@given(size=st.integers(1, 64), style=st.sampled_from(["random", "chain", "star", "deep"]),
       seed=st.integers(0, 2**32 - 1), prefix=st.integers(0, 40))
def test_reference_mask_is_the_ancestor_relation(size, style, seed, prefix):
    tree = Tree(tokens=[0] * size, parents=random_parents(np.random.default_rng(seed), size, style))
    expected = np.zeros((size, prefix + size), dtype=bool)
    expected[:, :prefix] = True
    for node in range(size):
        expected[node, [prefix + a for a in tree.path_to(node)]] = True
    positions = mx.array([prefix + d for d in tree.depths], dtype=mx.int32)
    for backend in ("reference", "cpu"):
        mask, pos = kernels.tree_mask_and_positions(tree.parents, tree.depths, prefix, backend=backend)
        assert_same(mask, mx.array(expected), f"{backend} mask")
        assert_same(pos, positions, f"{backend} positions")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@settings(FUZZ, max_examples=1500)
@given(parents=tree_batches(), prefix=PREFIXES, mask_dtype=MASK_DTYPES)
def test_tree_mask_kernel_equals_reference(backend, parents, prefix, mask_dtype):
    mask, positions = kernels.tree_masks_and_positions(parents, prefix, mask_dtype, backend=backend)
    ref_mask, ref_positions = kernels.tree_masks_and_positions(parents, prefix, mask_dtype,
                                                               backend="reference")
    assert_same(mask, ref_mask, "mask")
    assert_same(positions, ref_positions, "positions")


def test_padding_nodes_see_only_themselves():
    parents = mx.array([[-1, 0, 1], [-1, PAD_PARENT, PAD_PARENT]], dtype=mx.int32)
    for backend in ("reference", "cpu"):
        mask, positions = kernels.tree_masks_and_positions(parents, 2, backend=backend)
        assert mask[1].tolist() == [[True, True, True, False, False],
                                    [False, False, False, True, False],
                                    [False, False, False, False, True]]
        assert positions.tolist() == [[2, 3, 4], [2, 2, 2]]


def test_engine_call_dispatches_by_platform():
    gpu = "metal" if mx.metal.is_available() else "cuda" if mx.cuda.is_available() else None
    assert kernels.active_backend() == (gpu or "reference")
    tree = Tree.from_branches(7, [[1, 2, 3], [1, 4], [5]])
    auto = kernels.tree_mask_and_positions(tree.parents, tree.depths, 9)
    kernel = kernels.tree_mask_and_positions(tree.parents, tree.depths, 9, backend="cpu")
    for a, b, what in zip(auto, kernel, ("mask", "positions")):
        assert_same(a, b, what)


def test_additive_and_boolean_masks_attend_alike():
    parents = mx.array([[-1, 0, 0, 1, 2, 2]], dtype=mx.int32)
    q, k, v = (mx.random.normal((1, 2, 6, 8), key=mx.random.key(i)) for i in range(3))
    k = mx.concatenate([mx.random.normal((1, 2, 3, 8)), k], axis=2)
    v = mx.concatenate([mx.random.normal((1, 2, 3, 8)), v], axis=2)
    outs = []
    for mask_dtype in (mx.bool_, mx.float32):
        mask, _ = kernels.tree_masks_and_positions(parents, 3, mask_dtype, backend="cpu")
        outs.append(mx.fast.scaled_dot_product_attention(q, k, v, scale=0.3, mask=mask[:, None]))
    assert mx.allclose(outs[0], outs[1], atol=1e-6).item()


def test_target_verifies_alike_with_the_kernel_mask(tmp_path, monkeypatch):
    """The engine's one call, served by the kernel body instead of the reference, gives the same
    verification: what Metal / CUDA machines run, minus the GPU."""
    import mlx_spec
    from mlx_spec.target import Target
    from support.random_models import make_model_folder

    spec_model = mlx_spec.load(str(make_model_folder(tmp_path / "llama", "llama")))
    tree = Tree.from_branches(5, [[17, 3, 9], [17, 4], [8, 2, 2, 6], [8, 2, 7]])
    logits = {}
    for backend in ("reference", "cpu"):
        monkeypatch.setattr(kernels, "active_backend", lambda backend=backend: backend)
        target = Target(spec_model.model)
        target.prefill(list(range(30, 70)))
        logits[backend] = target.verify(tree).logits
    assert mx.array_equal(logits["reference"], logits["cpu"]).item()
