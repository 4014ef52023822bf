"""One entry point for tree masks, positions and beam packing; the caller never knows which ran.

Backends: "metal" (mx.fast.metal_kernel on Apple GPUs), "cuda" (mx.fast.cuda_kernel with mlx's
CUDA build), both running the hand-written bodies in metal/; "reference" (MLX ops, tree_mask.py),
used everywhere else; and "cpu", the same bodies compiled for the host by kernel_harness.py, which
the tests and `mlxspec kernels` ask for by name. backend=None picks Metal, then CUDA, then the
reference.
"""
from __future__ import annotations

import functools
from typing import Optional

import mlx.core as mx

from . import catalog
from ..errors import MlxSpecError
from .tree_mask import (PAD_PARENT, BeamPacking, beam_mask_reference, pack_beams_reference,
                        tree_depths, tree_mask_reference, tree_positions_reference)

BACKENDS = ("metal", "cuda", "cpu", "reference")
THREADGROUP = 256

__all__ = ["BACKENDS", "PAD_PARENT", "BeamPacking", "active_backend", "beam_mask_and_positions",
           "pack_beams", "run_launch", "tree_mask_and_positions", "tree_masks_and_positions"]


def _cuda_available() -> bool:
    return hasattr(mx, "cuda") and mx.cuda.is_available()


def active_backend() -> str:
    if mx.metal.is_available():
        return "metal"
    if _cuda_available():
        return "cuda"
    return "reference"


def available_backends() -> list[str]:
    """Backends that can run here (the CPU harness only when a compiler is present)."""
    from .harness import HarnessUnavailable, find_compiler

    found = [b for b, ok in (("metal", mx.metal.is_available()), ("cuda", _cuda_available())) if ok]
    try:
        find_compiler()
        found.append("cpu")
    except HarnessUnavailable:
        pass
    return found + ["reference"]


@functools.lru_cache(maxsize=None)
def _gpu_kernel(backend: str, name: str):
    """Built once per process; mlx compiles it on first call and caches the pipeline."""
    spec = catalog.SPECS[name]
    header, source = catalog.gpu_source(backend, name)
    outputs = [out for out, _ in spec.outputs]
    if backend == "metal":
        return mx.fast.metal_kernel(name=f"mlxspec_{name}", input_names=list(spec.inputs),
                                    output_names=outputs, source=source, header=header)
    return mx.fast.cuda_kernel(name=f"mlxspec_{name}", input_names=list(spec.inputs),
                               output_names=outputs, source=source, header=header)


def run_launch(launch: catalog.Launch, backend: str) -> list[mx.array]:
    if backend == "cpu":
        from .harness import default_harness
        return default_harness().run(launch)
    if backend not in ("metal", "cuda"):
        raise MlxSpecError(f"no kernel backend {backend!r} (choose from {', '.join(BACKENDS)})")
    kernel = _gpu_kernel(backend, launch.spec.name)
    return kernel(inputs=launch.inputs, template=launch.template,
                  grid=(max(launch.threads, 1), 1, 1), threadgroup=(THREADGROUP, 1, 1),
                  output_shapes=launch.output_shapes, output_dtypes=launch.output_dtypes)


def _resolve(backend: Optional[str]) -> str:
    backend = backend or active_backend()
    if backend not in BACKENDS:
        raise MlxSpecError(f"no kernel backend {backend!r} (choose from {', '.join(BACKENDS)})")
    return backend


# -- trees -------------------------------------------------------------------------------------

def tree_masks_and_positions(parents: mx.array, prefix_len: int, mask_dtype=mx.bool_,
                             backend: Optional[str] = None):
    """Masks and positions for a batch of trees appended after prefix_len cached slots.

    parents: [B, n] (or [n]) int32, -1 for a root, PAD_PARENT for padding in ragged batches.
    mask_dtype: mx.bool_ for a boolean mask, a float dtype for the additive form (0 / -inf).
    Returns (mask [B, n, prefix_len + n], positions [B, n] = prefix_len + depth)."""
    backend = _resolve(backend)
    single = parents.ndim == 1
    parents = (parents[None] if single else parents).astype(mx.int32)
    if backend == "reference":
        mask = tree_mask_reference(parents, prefix_len, mask_dtype)
        positions = tree_positions_reference(tree_depths(parents), prefix_len)
    else:
        mask, positions = run_launch(catalog.tree_mask_launch(parents, prefix_len, mask_dtype), backend)
    return (mask[0], positions[0]) if single else (mask, positions)


def tree_mask_and_positions(parents: list[int], depths: list[int], prefix_len: int,
                            backend: Optional[str] = None):
    """The engine's call, one tree: (mask [n, prefix_len + n] bool, positions [n] int32)."""
    backend = _resolve(backend)
    parents_arr = mx.array(parents, dtype=mx.int32)
    if backend == "reference":  # the depths are known: no need to derive them
        return (tree_mask_reference(parents_arr, prefix_len),
                tree_positions_reference(mx.array(depths, dtype=mx.int32), prefix_len))
    return tree_masks_and_positions(parents_arr, prefix_len, backend=backend)


# -- beams -------------------------------------------------------------------------------------

def pack_beams(beams: mx.array, pad_token: int = 0, backend: Optional[str] = None) -> BeamPacking:
    """Deduplicate beams [B, W, L] into packed trees (see tree_mask.BeamPacking)."""
    backend = _resolve(backend)
    beams = beams.astype(mx.int32)
    if beams.ndim != 3:
        raise MlxSpecError(f"beams must be [batch, width, length], got shape {beams.shape}")
    if backend == "reference":
        return pack_beams_reference(beams, pad_token)
    (owners,) = run_launch(catalog.beam_owner_launch(beams), backend)
    tokens, parents, beam_of, depth_of, unpack, count = run_launch(
        catalog.beam_pack_launch(beams, owners, pad_token), backend)
    return BeamPacking(owners, tokens, parents, beam_of, depth_of, unpack, count)


def beam_mask_and_positions(packing: BeamPacking, prefix_len: int, mask_dtype=mx.bool_,
                            backend: Optional[str] = None):
    """(mask [B, N, prefix_len + N], positions [B, N]) of packed beams, one thread per element;
    N is packing.beam_of.shape[1] (W * L, or fewer after packing.trimmed())."""
    backend = _resolve(backend)
    if backend == "reference":
        return beam_mask_reference(packing, prefix_len, mask_dtype)
    launch = catalog.beam_mask_launch(packing.owners, packing.beam_of, packing.depth_of,
                                      prefix_len, mask_dtype)
    return tuple(run_launch(launch, backend))
