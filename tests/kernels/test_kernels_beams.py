"""Beam dedup / packing and the closed-form beam mask: kernels (metal/beam_*.metal, run by the CPU
harness) against the MLX reference, and the reference against Tree.from_branches."""
import mlx.core as mx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from support.kernel_cases import (FUZZ, KERNEL_BACKENDS, MASK_DTYPES, PREFIXES, assert_same, beam_batches,
                          compiled_harness)
from mlx_spec import kernels
from mlx_spec.tree import Tree
from mlx_spec.kernels.tree_mask import tree_mask_reference, unpack_to_beams

FIELDS = ("owners", "tokens", "parents", "beam_of", "depth_of", "unpack", "count")


def setup_module(module):
    compiled_harness()


@settings(FUZZ, max_examples=200)
@given(beams=beam_batches(max_batch=2, max_width=16))
def test_reference_packing_is_the_merged_tree(beams):
    packing = kernels.pack_beams(beams, backend="reference")
    # every (beam, depth) gets its own token back through the unpacking index
    assert_same(unpack_to_beams(packing.tokens[..., None], packing)[..., 0], beams, "unpacked tokens")
    for row, row_beams in enumerate(beams.tolist()):
        if len({beam[0] for beam in row_beams}) > 1:
            continue  # several roots: not a Tree
        merged = Tree.from_branches(row_beams[0][0], [beam[1:] for beam in row_beams])
        tree = packing.tree(row)
        assert (tree.tokens, tree.parents, tree.depths) == (merged.tokens, merged.parents, merged.depths)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@settings(FUZZ, max_examples=700)
@given(beams=beam_batches(), pad=st.integers(-1, 9))
def test_beam_packing_kernels_equal_reference(backend, beams, pad):
    packed = kernels.pack_beams(beams, pad_token=pad, backend=backend)
    expected = kernels.pack_beams(beams, pad_token=pad, backend="reference")
    for field in FIELDS:
        assert_same(getattr(packed, field), getattr(expected, field), field)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@settings(FUZZ, max_examples=700)
@given(beams=beam_batches(), prefix=PREFIXES, mask_dtype=MASK_DTYPES, trim=st.booleans())
def test_beam_mask_kernel_equals_reference(backend, beams, prefix, mask_dtype, trim):
    packing = kernels.pack_beams(beams, backend="reference")
    packing = packing.trimmed() if trim else packing
    mask, positions = kernels.beam_mask_and_positions(packing, prefix, mask_dtype, backend=backend)
    ref_mask, ref_positions = kernels.beam_mask_and_positions(packing, prefix, mask_dtype,
                                                              backend="reference")
    assert_same(mask, ref_mask, "mask")
    assert_same(positions, ref_positions, "positions")


@settings(FUZZ, max_examples=200)
@given(beams=beam_batches(max_width=24), prefix=st.integers(0, 6))
def test_closed_form_beam_mask_equals_tree_mask_of_packed_parents(beams, prefix):
    packing = kernels.pack_beams(beams, backend="reference")
    closed_form, _ = kernels.beam_mask_and_positions(packing, prefix, backend="reference")
    assert_same(closed_form, tree_mask_reference(packing.parents, prefix), "mask")


def test_redrafter_example_packs_shared_prefixes():
    beams = mx.array([[[9, 1, 2, 3], [9, 1, 4, 5], [9, 6, 7, 8], [9, 1, 2, 3]]])
    for backend in ("reference", "cpu"):
        packing = kernels.pack_beams(beams, backend=backend)
        assert packing.count.tolist() == [9]
        assert packing.tokens[0, :9].tolist() == [9, 1, 2, 3, 4, 5, 6, 7, 8]
        assert packing.parents[0, :9].tolist() == [-1, 0, 1, 2, 1, 4, 0, 6, 7]
        assert packing.unpack.tolist() == [[[0, 1, 2, 3], [0, 1, 4, 5], [0, 6, 7, 8], [0, 1, 2, 3]]]
        assert packing.parents[0, 9:].tolist() == [-2] * 7
        _, positions = kernels.beam_mask_and_positions(packing.trimmed(), 100, backend=backend)
        assert positions.tolist() == [[100, 101, 102, 103, 102, 103, 101, 102, 103]]
