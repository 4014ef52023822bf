"""Shared by the kernel tests: random trees and beams, the compiled CPU harness, comparisons.

Cases are drawn by hypothesis as a few small parameters plus a seed, and the arrays are made with
numpy from that seed: generation stays fast for wide cases and a failure still prints a
reproducible example.
"""
from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from mlx_spec.kernels.harness import HarnessUnavailable, KernelHarness, default_harness
from mlx_spec.kernels import available_backends
from mlx_spec.kernels.tree_mask import PAD_PARENT

FUZZ = settings(deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# the CPU harness everywhere, plus metal / cuda on machines that have them
KERNEL_BACKENDS = [backend for backend in available_backends() if backend != "reference"]

MASK_DTYPES = st.sampled_from([mx.bool_, mx.float32, mx.float16])
# mostly short prefixes (cheap), sometimes long ones up to 4096
PREFIXES = st.one_of(st.integers(0, 8), st.integers(0, 4096))


def compiled_harness(bodies=None) -> KernelHarness:
    """The harness, or a clear test failure when no C++ compiler can build it."""
    try:
        return default_harness() if bodies is None else KernelHarness(bodies=bodies)
    except HarnessUnavailable as exc:
        pytest.fail(f"CPU kernel harness unavailable: {exc}", pytrace=False)


def random_parents(rng: np.random.Generator, size: int, style: str) -> list[int]:
    parents = [-1]
    for i in range(1, size):
        if style == "chain":
            parents.append(i - 1)
        elif style == "star":
            parents.append(0)
        elif style == "deep":  # mostly the previous node, sometimes a jump back
            parents.append(i - 1 if rng.random() < 0.8 else int(rng.integers(0, i)))
        elif style == "forest":  # a few extra roots
            parents.append(-1 if rng.random() < 0.15 else int(rng.integers(0, i)))
        else:
            parents.append(int(rng.integers(0, i)))
    return parents


@st.composite
def tree_batches(draw, max_batch: int = 4, max_nodes: int = 64):
    """[B, n] parents: ragged rows padded at the end with PAD_PARENT."""
    batch = draw(st.integers(1, max_batch))
    n = draw(st.integers(1, max_nodes))
    style = draw(st.sampled_from(["random", "chain", "star", "deep", "forest"]))
    ragged = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rows = []
    for _ in range(batch):
        size = int(rng.integers(1, n + 1)) if ragged else n
        rows.append(random_parents(rng, size, style) + [PAD_PARENT] * (n - size))
    return mx.array(rows, dtype=mx.int32)


@st.composite
def beam_batches(draw, max_batch: int = 3, max_width: int = 64, max_length: int = 8):
    """[B, W, L] beams from a small vocabulary (many shared prefixes), with duplicated beams,
    all-equal batches, and a shared first token (ReDrafter's root) most of the time."""
    batch = draw(st.integers(1, max_batch))
    width = draw(st.integers(1, max_width))
    length = draw(st.integers(1, max_length))
    vocab = draw(st.integers(1, 5))
    style = draw(st.sampled_from(["random", "duplicates", "all_equal"]))
    shared_root = draw(st.integers(0, 3)) > 0
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    beams = rng.integers(0, vocab, size=(batch, width, length))
    if style == "duplicates":
        beams = beams[:, rng.integers(0, width, size=width), :]
    elif style == "all_equal":
        beams[:] = beams[:, :1, :]
    if shared_root:
        beams[:, :, 0] = beams[:, :1, 0]
    return mx.array(beams.astype(np.int32))


def assert_same(actual: mx.array, expected: mx.array, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    if not mx.array_equal(actual, expected).item():
        diff = np.argwhere(np.array(actual != expected))
        raise AssertionError(f"{what}: {len(diff)} elements differ, first at {diff[0].tolist()}")
