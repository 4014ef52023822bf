"""The CPU harness can fail: deliberately broken kernel bodies are caught by the same comparisons
the fuzz tests make, a missing bounds check is caught by the guard zone, and a missing compiler
gives a clear test failure."""
import mlx.core as mx
import pytest
from hypothesis import given, settings

from support.kernel_cases import FUZZ, assert_same, beam_batches, compiled_harness, tree_batches
from mlx_spec.kernels import catalog
from mlx_spec import kernels

# one plausible bug per kernel: (kernel, correct text, broken text)
MUTATIONS = [
    ("tree_mask", "node > target &&", "node > target + 1 &&"),            # walk stops one early
    ("beam_owner", "d <= depth && same", "d < depth && same"),              # ignores its own depth
    ("beam_pack", "base_parent + depth - 1 - start_parent",
     "base_self + depth - 1 - start_self"),                                 # parent in own beam
    ("beam_mask", "beam_q >= 0 && depth_q <= depth_p", "beam_q >= 0 && depth_q < depth_p"),  # misses itself
]


def mutated_bodies(mutations):
    bodies = {}
    for name, correct, broken in mutations:
        body = catalog.read_body(name)
        assert body.count(correct) == 1, f"mutation target not found once in {name}"
        bodies[name] = body.replace(correct, broken)
    return bodies


@pytest.fixture(scope="module")
def broken():
    return compiled_harness(mutated_bodies(MUTATIONS))


def compare_tree_mask(harness, parents, prefix):
    launch = catalog.tree_mask_launch(parents, prefix, mx.bool_)
    mask, positions = harness.run(launch)
    ref_mask, ref_positions = kernels.tree_masks_and_positions(parents, prefix, backend="reference")
    assert_same(mask, ref_mask, "mask")
    assert_same(positions, ref_positions, "positions")


def compare_beam_kernel(harness, kernel, beams, prefix):
    """Runs one beam kernel on the reference's inputs, so a mismatch points at that kernel."""
    ref = kernels.pack_beams(beams, backend="reference")
    if kernel == "beam_owner":
        (owners,) = harness.run(catalog.beam_owner_launch(beams))
        assert_same(owners, ref.owners, "owners")
    elif kernel == "beam_pack":
        packed = harness.run(catalog.beam_pack_launch(beams, ref.owners, 0))
        for got, field in zip(packed, ("tokens", "parents", "beam_of", "depth_of", "unpack", "count")):
            assert_same(got, getattr(ref, field), field)
    else:
        launch = catalog.beam_mask_launch(ref.owners, ref.beam_of, ref.depth_of, prefix, mx.bool_)
        expected, _ = kernels.beam_mask_and_positions(ref, prefix, backend="reference")
        assert_same(harness.run(launch)[0], expected, "beam mask")


def check(harness, kernel, case):
    if kernel == "tree_mask":
        compare_tree_mask(harness, case, 2)
    else:
        compare_beam_kernel(harness, kernel, case, 2)


def test_the_comparisons_pass_on_the_real_kernels():
    harness = compiled_harness()
    check(harness, "tree_mask", mx.array([[-1, 0, 1, 2, 0, 4]]))
    for kernel in ("beam_owner", "beam_pack", "beam_mask"):
        check(harness, kernel, mx.array([[[5, 1, 2], [5, 1, 3], [5, 4, 2]]]))


@pytest.mark.parametrize("kernel,field", [("tree_mask", "mask"), ("beam_owner", "owners"),
                                          ("beam_pack", "parents"), ("beam_mask", "beam mask")])
def test_fuzzing_catches_a_broken_kernel(broken, kernel, field):
    """Each broken body fails within a fraction of the real tests' fuzz budget."""
    cases = tree_batches() if kernel == "tree_mask" else beam_batches(max_width=16)

    @settings(FUZZ, max_examples=300)
    @given(case=cases)
    def fuzz(case):
        check(broken, kernel, case)

    with pytest.raises(AssertionError, match=field):
        fuzz()


def test_a_missing_bounds_check_is_caught():
    body = catalog.read_body("tree_mask")
    unguarded = body.replace("if (tid >= batch * n * columns) {\n    return;", "if (false) {\n    return;")
    assert unguarded != body
    harness = compiled_harness({"tree_mask": unguarded})
    with pytest.raises(AssertionError, match="wrote past the end"):
        compare_tree_mask(harness, mx.array([[-1, 0, 1]]), 1)  # 12 threads, a block of 256 runs


def test_a_missing_compiler_fails_clearly(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-c++-compiler")
    monkeypatch.setenv("MLXSPEC_CACHE", "/nonexistent-cache-dir")
    with pytest.raises(pytest.fail.Exception, match="C\\+\\+ compiler"):
        compiled_harness({"tree_mask": catalog.read_body("tree_mask") + "\n"})


def test_gpu_sources_put_the_backend_prologue_before_the_same_body():
    for name in catalog.SPECS:
        body = catalog.read_body(name)
        for backend, marker in (("metal", "thread_position_in_grid"), ("cuda", "blockIdx.x")):
            header, source = catalog.gpu_source(backend, name)
            assert source.endswith(body) and marker in source.splitlines()[0]
            assert "MASK_NEG_INF" in header
