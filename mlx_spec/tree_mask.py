"""Tree attention mask and positions with plain MLX ops: the reference every kernel must equal.

mask[i, j] is True when node i may attend to cache slot j: every slot of the committed prefix, and
the tree nodes that are i's ancestors or i itself. Positions are prefix + depth, so each node gets
the RoPE position it would have in a sequential decode of its own path.
"""
from __future__ import annotations

import mlx.core as mx


def ancestor_matrix(parents: mx.array) -> mx.array:
    """[n, n] bool: entry (i, j) is True when j is i or an ancestor of i (parents[0] == -1)."""
    n = parents.shape[0]
    columns = mx.arange(n)
    current = mx.arange(n)
    is_ancestor = current[:, None] == columns[None, :]
    # pointer jumping one level at a time; a tree of n nodes is at most n - 1 deep
    for _ in range(n - 1):
        current = mx.where(current >= 0, parents[mx.maximum(current, 0)], -1)
        is_ancestor = is_ancestor | (current[:, None] == columns[None, :])
    return is_ancestor


def tree_mask_reference(parents: mx.array, prefix_len: int) -> mx.array:
    """[n, prefix_len + n] bool attention mask for a tree appended after prefix_len cached slots."""
    n = parents.shape[0]
    prefix = mx.ones((n, prefix_len), dtype=mx.bool_)
    return mx.concatenate([prefix, ancestor_matrix(parents)], axis=1)


def tree_positions_reference(depths: mx.array, prefix_len: int) -> mx.array:
    return (depths + prefix_len).astype(mx.int32)
