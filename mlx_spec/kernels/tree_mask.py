"""Tree attention masks, positions and beam packing with plain MLX ops: the reference every kernel
(metal/*.metal) must equal, and what runs on the CPU.

mask[i, j] is True when node i may attend to cache slot j: every slot of the committed prefix, and
the tree nodes that are i's ancestors or i itself. Positions are prefix + depth, so each node gets
the RoPE position it would have in a sequential decode of its own path.

Batched trees ([B, n] parents) may be ragged: shorter trees are padded with PAD_PARENT nodes. A
padding node sees only itself (not the prefix, so no softmax row is empty) and sits at position
`prefix`; its outputs are meant to be ignored.

Beams [B, W, L] (ReDrafter: every beam starts with the last accepted token) are deduplicated: the
nodes of the packed tree are the (beam, depth) pairs that no earlier beam shares, in (beam, depth)
order, which is the order Tree.from_branches would give.
"""
from __future__ import annotations

from dataclasses import dataclass
import mlx.core as mx

PAD_PARENT = -2  # parent index of a padding node in a batch of ragged trees


def _as_mask(allowed: mx.array, mask_dtype) -> mx.array:
    """Boolean mask as is; a floating dtype gives the additive form (0 where allowed, -inf not)."""
    if mask_dtype == mx.bool_:
        return allowed
    return mx.where(allowed, 0.0, -float("inf")).astype(mask_dtype)


def ancestor_matrix(parents: mx.array) -> mx.array:
    """[..., n, n] bool: entry (i, j) is True when j is i or an ancestor of i.

    Pointer doubling: after k rounds each row holds the ancestors closer than 2**k and `jump` the
    ancestor exactly 2**k up, so ceil(log2 n) rounds cover any tree of n nodes."""
    n = parents.shape[-1]
    reach = mx.broadcast_to(mx.eye(n, dtype=mx.bool_), parents.shape + (n,))
    jump = parents.astype(mx.int32)
    span = 1
    while span < n:
        has_jump = jump >= 0
        safe = mx.maximum(jump, 0)
        rows = mx.take_along_axis(reach, mx.broadcast_to(safe[..., None], reach.shape), axis=-2)
        reach = reach | (rows & has_jump[..., None])
        jump = mx.where(has_jump, mx.take_along_axis(jump, safe, axis=-1), jump)
        span *= 2
    return reach


def tree_depths(parents: mx.array) -> mx.array:
    """[..., n] int32: number of ancestors of each node (0 for roots and padding)."""
    return (ancestor_matrix(parents).sum(axis=-1) - 1).astype(mx.int32)


def tree_mask_reference(parents: mx.array, prefix_len: int, mask_dtype=mx.bool_) -> mx.array:
    """[..., n, prefix_len + n] attention mask for trees appended after prefix_len cached slots."""
    real = parents != PAD_PARENT
    prefix = mx.broadcast_to(real[..., None], parents.shape + (prefix_len,))
    return _as_mask(mx.concatenate([prefix, ancestor_matrix(parents)], axis=-1), mask_dtype)


def tree_positions_reference(depths: mx.array, prefix_len: int) -> mx.array:
    return (depths + prefix_len).astype(mx.int32)


# -- beams -------------------------------------------------------------------------------------

@dataclass
class BeamPacking:
    """Beams [B, W, L] deduplicated into one packed tree per batch row, N = W * L slots each.

    owners [B, W, L]: the first beam equal to beam w up to and including depth d
    tokens, parents, beam_of, depth_of [B, N]: packed node k; slots from count[b] on are padding
        (token pad_token, parent PAD_PARENT, beam -1, depth -1)
    unpack [B, W, L]: packed slot of (w, d); take_along_axis(per_node, unpack) restores beams
    count [B]: nodes in each packed tree
    """
    owners: mx.array
    tokens: mx.array
    parents: mx.array
    beam_of: mx.array
    depth_of: mx.array
    unpack: mx.array
    count: mx.array

    def trimmed(self) -> "BeamPacking":
        """Cut the padding tail shared by all rows (reads count: synchronises)."""
        size = max(int(self.count.max().item()), 1)
        return BeamPacking(self.owners, self.tokens[:, :size], self.parents[:, :size],
                           self.beam_of[:, :size], self.depth_of[:, :size], self.unpack, self.count)

    def tree(self, row: int = 0):
        """Batch row `row` as a Tree (its beams must share their first token, the root)."""
        from ..tree import Tree

        size = int(self.count[row].item())
        return Tree(tokens=self.tokens[row, :size].tolist(), parents=self.parents[row, :size].tolist(),
                    depths=self.depth_of[row, :size].tolist())


def beam_owners_reference(beams: mx.array) -> mx.array:
    """[B, W, L] int32: owners[b, w, d] = the first beam v with beams[b, v, :d+1] == beams[b, w, :d+1]."""
    same = beams[:, :, None, :] == beams[:, None, :, :]        # [B, w, v, L]
    same_prefix = mx.cumprod(same.astype(mx.int32), axis=-1)   # equal through depth d
    return mx.argmax(same_prefix, axis=2).astype(mx.int32)     # first v (v = w always matches)


def pack_beams_reference(beams: mx.array, pad_token: int = 0) -> BeamPacking:
    beams = beams.astype(mx.int32)
    batch, width, length = beams.shape
    size = width * length
    owners = beam_owners_reference(beams)
    beam_ids = mx.broadcast_to(mx.arange(width, dtype=mx.int32)[None, :, None], beams.shape)
    depth_ids = mx.broadcast_to(mx.arange(length, dtype=mx.int32)[None, None, :], beams.shape)
    owned = (owners == beam_ids).reshape(batch, size)
    slot = mx.cumsum(owned.astype(mx.int32), axis=-1) - 1      # packed slot of each owned node
    count = owned.sum(axis=-1).astype(mx.int32)
    # (w, d) lives in the slot its owner gave to depth d
    unpack = mx.take_along_axis(slot, (owners * length + depth_ids).reshape(batch, size), axis=-1)
    unpack = unpack.reshape(beams.shape)
    parent = mx.concatenate([mx.full((batch, width, 1), -1, mx.int32), unpack[:, :, :-1]], axis=-1)

    # scatter owned nodes to their slots; the rest go to a spare slot `size` that is dropped
    destination = mx.where(owned, slot, size)

    def packed(values: mx.array, pad: int) -> mx.array:
        out = mx.full((batch, size + 1), pad, mx.int32)
        out = mx.put_along_axis(out, destination, values.reshape(batch, size).astype(mx.int32), axis=-1)
        live = mx.arange(size)[None, :] < count[:, None]
        return mx.where(live, out[:, :size], pad)

    return BeamPacking(owners=owners, tokens=packed(beams, pad_token), parents=packed(parent, PAD_PARENT),
                       beam_of=packed(beam_ids, -1), depth_of=packed(depth_ids, -1),
                       unpack=unpack.astype(mx.int32), count=count)


def beam_mask_reference(packing: BeamPacking, prefix_len: int, mask_dtype=mx.bool_):
    """Closed form for packed beams: p sees q when depth_q <= depth_p and the beam of p passes
    through q, i.e. owners[beam_p, depth_q] == beam_q. Returns (mask [B, N, prefix_len + N],
    positions [B, N])."""
    owners, beam_of, depth_of = packing.owners, packing.beam_of, packing.depth_of
    batch, width, length = owners.shape
    n = beam_of.shape[-1]
    real = beam_of >= 0
    beam_p, depth_p = mx.maximum(beam_of, 0)[:, :, None], depth_of[:, :, None]
    beam_q, depth_q = beam_of[:, None, :], depth_of[:, None, :]
    index = (beam_p * length + mx.maximum(depth_q, 0)).reshape(batch, n * n)
    passes = mx.take_along_axis(owners.reshape(batch, width * length), index, axis=-1).reshape(batch, n, n)
    tree_part = real[:, :, None] & (beam_q >= 0) & (depth_q <= depth_p) & (passes == beam_q)
    tree_part = tree_part | (~real[:, :, None] & mx.eye(n, dtype=mx.bool_)[None])
    prefix = mx.broadcast_to(real[:, :, None], (batch, n, prefix_len))
    mask = _as_mask(mx.concatenate([prefix, tree_part], axis=-1), mask_dtype)
    return mask, (mx.maximum(depth_of, 0) + prefix_len).astype(mx.int32)


def unpack_to_beams(per_node: mx.array, packing: BeamPacking) -> mx.array:
    """[B, N, ...] results per packed node (logits, hidden states) -> [B, W, L, ...]."""
    batch, width, length = packing.unpack.shape
    extra = per_node.shape[2:]
    index = packing.unpack.reshape((batch, width * length) + (1,) * len(extra))
    gathered = mx.take_along_axis(per_node, mx.broadcast_to(index, (batch, width * length) + extra), axis=1)
    return gathered.reshape((batch, width, length) + extra)
