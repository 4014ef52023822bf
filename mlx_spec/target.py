"""The target: an unmodified mlx-lm model that can verify a whole tree of candidates in one pass.

Three small, reversible attachments make that possible without touching the model's code:
- caches whose make_mask returns the tree's ancestor mask while a tree is being verified;
- a per-token RoPE shim on each attention's `rope`: it moves tokens onto the batch axis so that
  mx.fast.rope, which takes one offset per batch row, gives every node its own position;
- a tap on the final norm that keeps the post-norm hidden states (drafters such as ReDrafter read
  them) while logits still come from the model's own head.
The attachments live in instance __dict__ slots, outside the module tree, so model.parameters()
and mlx-lm's own generation are unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import mlx.core as mx
from mlx_lm.models.cache import KVCache, QuantizedKVCache, make_prompt_cache

from .errors import UnsupportedModelError
from .kernels import tree_mask_and_positions
from .tree import Tree


class TreeKVCache(KVCache):
    tree_mask = None

    def make_mask(self, *args, **kwargs):
        return self.tree_mask if self.tree_mask is not None else super().make_mask(*args, **kwargs)


class TreeQuantizedKVCache(QuantizedKVCache):
    tree_mask = None

    def make_mask(self, *args, **kwargs):
        return self.tree_mask if self.tree_mask is not None else super().make_mask(*args, **kwargs)


class _PerTokenRope:
    """Wraps a RoPE module; while `positions` is set, each token is rotated to its own position."""

    def __init__(self, inner):
        self.inner = inner
        self.positions: Optional[mx.array] = None

    def __call__(self, x, offset=0, **kwargs):
        if self.positions is None:
            return self.inner(x, offset=offset, **kwargs)
        # (1, H, L, D) -> (L, H, 1, D): tokens become batch rows, one offset each
        rotated = self.inner(x.swapaxes(0, 2), offset=self.positions, **kwargs)
        return rotated.swapaxes(0, 2)


class _HiddenTap:
    """Wraps the final norm and remembers its output (the post-norm hidden states)."""

    def __init__(self, inner):
        self.inner = inner
        self.last: Optional[mx.array] = None

    def __call__(self, x, *args, **kwargs):
        self.last = self.inner(x, *args, **kwargs)
        return self.last


_NORM_PATHS = ("model.norm", "language_model.model.norm", "model.final_layernorm", "transformer.ln_f")


def _shadow(module, name: str, wrapper) -> None:
    object.__setattr__(module, name, wrapper)  # instance attribute: hides, does not replace, the child


def _attach(model):
    """Install the RoPE shims and the hidden-state tap once per model object."""
    attached = model.__dict__.get("_mlxspec_attachments")
    if attached is not None:
        return attached
    ropes = []
    for _, module in model.named_modules():
        if isinstance(module, dict) and "rope" in module and callable(module["rope"]):
            shim = _PerTokenRope(module["rope"])
            _shadow(module, "rope", shim)
            ropes.append(shim)
    tap = None
    for path in _NORM_PATHS:
        owner = model
        parts = path.split(".")
        try:
            for part in parts[:-1]:
                owner = owner[part] if isinstance(owner, dict) and part in owner else getattr(owner, part)
            norm = owner[parts[-1]]
        except (AttributeError, KeyError, TypeError):
            continue
        tap = _HiddenTap(norm)
        _shadow(owner, parts[-1], tap)
        break
    attached = (ropes, tap)
    object.__setattr__(model, "_mlxspec_attachments", attached)
    return attached


@dataclass
class VerifyOutput:
    logits: mx.array            # [n, V], lazy
    hidden: Optional[mx.array]  # [n, D] post-norm hidden states, lazy; None if the model hides them


class Target:
    """Owns one KV cache for one conversation with the model."""

    def __init__(self, model, kv_bits: Optional[int] = None, kv_group_size: int = 64):
        self.model = model
        self._ropes, self._hidden_tap = _attach(model)
        self.kv_bits, self.kv_group_size = kv_bits, kv_group_size
        self.cache = self._new_cache()

    # -- cache ---------------------------------------------------------------------------------
    def _new_cache(self) -> list:
        default = make_prompt_cache(self.model)
        if any(type(c) is not KVCache for c in default):
            kinds = sorted({type(c).__name__ for c in default})
            raise UnsupportedModelError(
                f"this model uses {', '.join(kinds)} caches, which cannot be rewound after a "
                "rejected draft; speculative decoding needs plain KV caches (use mlx_lm.generate)")
        if self.kv_bits:
            return [TreeQuantizedKVCache(group_size=self.kv_group_size, bits=self.kv_bits)
                    for _ in default]
        return [TreeKVCache() for _ in default]

    @property
    def offset(self) -> int:
        return self.cache[0].offset

    def reset(self) -> None:
        self.cache = self._new_cache()

    def trim(self, n: int) -> None:
        for c in self.cache:
            c.trim(n)

    @property
    def supports_trees(self) -> bool:
        return bool(self._ropes)

    @property
    def has_hidden_states(self) -> bool:
        return self._hidden_tap is not None

    # -- forward passes ---------------------------------------------------------------------------
    def _forward(self, tokens: mx.array, mask=None, positions=None) -> VerifyOutput:
        for shim in self._ropes:
            shim.positions = positions
        for c in self.cache:
            c.tree_mask = mask
        try:
            logits = self.model(tokens[None], cache=self.cache)
        finally:
            for shim in self._ropes:
                shim.positions = None
            for c in self.cache:
                c.tree_mask = None
        hidden = self._hidden_tap.last[0] if self._hidden_tap is not None else None
        return VerifyOutput(logits=logits[0], hidden=hidden)

    def prefill(self, tokens: list[int], step: int = 2048) -> None:
        """Put `tokens` into the cache (chunked like mlx-lm's prefill), computing no outputs."""
        for start in range(0, len(tokens), step):
            out = self._forward(mx.array(tokens[start:start + step]))
            mx.eval([c.state for c in self.cache], out.logits)

    def verify(self, tree: Tree) -> VerifyOutput:
        """Append the tree's nodes to the cache and return logits/hidden states per node (lazy).
        A chain runs as the model's ordinary causal forward; a branching tree gets its mask and
        per-node positions."""
        tokens = mx.array(tree.tokens)
        if tree.is_chain:
            return self._forward(tokens)
        if not self.supports_trees:
            raise UnsupportedModelError("this architecture exposes no RoPE module to place tree "
                                        "nodes; use a chain method (pld, draft)")
        mask, positions = tree_mask_and_positions(tree.parents, tree.depths, self.offset)
        return self._forward(tokens, mask=mask, positions=positions)

    def commit(self, path: list[int], tree_size: int) -> None:
        """Keep only `path` (node indices, root first, ascending) of the tree just verified:
        compact their keys/values into consecutive slots after the prefix; nothing is recomputed."""
        prefix = self.offset - tree_size
        kept = len(path)
        if path == list(range(kept)):
            self.trim(tree_size - kept)
            return
        index = mx.array(path, dtype=mx.int32) + prefix
        for c in self.cache:
            if isinstance(c.keys, (tuple, list)):  # quantized: (data, scales, biases)
                for part_k, part_v in zip(c.keys, c.values):
                    part_k[..., prefix:prefix + kept, :] = part_k[..., index, :]
                    part_v[..., prefix:prefix + kept, :] = part_v[..., index, :]
            else:
                c.keys[..., prefix:prefix + kept, :] = c.keys[..., index, :]
                c.values[..., prefix:prefix + kept, :] = c.values[..., index, :]
            c.offset = prefix + kept
