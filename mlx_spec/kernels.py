"""One entry point for tree masks and positions; the caller never knows which implementation ran.

Today: the MLX-ops reference on every backend. GPU kernels (metal/) plug in here behind the same
signature.
"""
from __future__ import annotations

import mlx.core as mx

from .tree_mask import tree_mask_reference, tree_positions_reference


def tree_mask_and_positions(parents: list[int], depths: list[int], prefix_len: int):
    """Returns (mask [n, prefix_len + n] bool, positions [n] int32) as MLX arrays."""
    parents_arr = mx.array(parents, dtype=mx.int32)
    depths_arr = mx.array(depths, dtype=mx.int32)
    return (tree_mask_reference(parents_arr, prefix_len),
            tree_positions_reference(depths_arr, prefix_len))
