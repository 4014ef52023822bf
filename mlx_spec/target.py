"""The target: an unmodified mlx-lm model that can verify a whole tree of candidates in one pass.

Three small, reversible attachments make that possible without touching the model's code:
- layer caches (kv.py) whose make_mask returns the tree's ancestor mask (and the layer's window)
  while a tree is being verified;
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

from .errors import UnsupportedModelError
from .kernels import tree_mask_and_positions
from .kv import PREFILL_CHUNK, TokenCache, TreeBatch, common_prefix
from .tree import Tree


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


def has_hidden_states(model) -> bool:
    """Whether the target's last hidden states can be read (a final norm was found to tap)."""
    return _attach(model)[1] is not None


@dataclass
class VerifyOutput:
    logits: mx.array            # [n, V], lazy
    hidden: Optional[mx.array]  # [n, D] post-norm hidden states, lazy; None if the model hides them


class Target:
    """Owns one TokenCache (kv.py) for one conversation with the model."""

    def __init__(self, model, kv_bits: Optional[int] = None, kv_group_size: int = 64):
        self.model = model
        self._ropes, self._hidden_tap = _attach(model)
        self.kv = TokenCache.for_model(model, kv_bits, kv_group_size)
        self.replayed = 0  # tokens fed again after recurrent state was rewound (kv.py)

    # -- cache ---------------------------------------------------------------------------------
    @property
    def cache(self) -> list:
        return self.kv.layers

    @property
    def tokens(self) -> list[int]:
        """The token ids the cache holds."""
        return self.kv.tokens

    @property
    def offset(self) -> int:
        return len(self.kv.tokens)

    def reset(self) -> None:
        self.kv.reset()

    def trim(self, n: int) -> None:
        self.kv.rewind(len(self.kv.tokens) - n)

    @property
    def supports_trees(self) -> bool:
        """Whether a branching tree can be verified exactly: every node needs its own position
        (a RoPE module to shim, no other per-position code) and every layer a tree mask."""
        return (bool(self._ropes) and self.kv.trees_ok
                and all(type(shim.inner).__name__ in _PER_TOKEN_ROPES for shim in self._ropes)
                and _model_type(self.model) not in POSITION_DEPENDENT)

    @property
    def has_hidden_states(self) -> bool:
        return self._hidden_tap is not None

    # -- forward passes ---------------------------------------------------------------------------
    def _forward(self, tokens: mx.array, tree: Optional[TreeBatch] = None,
                 positions=None) -> VerifyOutput:
        """The model over `tokens` after whatever the layers hold (no token bookkeeping)."""
        for shim in self._ropes:
            shim.positions = positions
        self.kv.set_tree(tree)
        try:
            logits = self.model(tokens[None], cache=self.cache)
        finally:
            for shim in self._ropes:
                shim.positions = None
            self.kv.set_tree(None)
        hidden = self._hidden_tap.last[0] if self._hidden_tap is not None else None
        return VerifyOutput(logits=logits[0], hidden=hidden)

    def sync(self, tokens: list[int]) -> int:
        """Make the cache hold exactly `tokens`, reusing the longest cached prefix (a forward cut
        short by an interrupt leaves layers out of step: then it starts over). Returns how many
        tokens were not fed again."""
        if not self.kv.consistent():
            self.kv.reset()
        keep = common_prefix(self.kv.tokens, tokens)
        self.kv.rewind(keep)
        reused = self.kv.physical
        self.prefill(tokens[keep:])
        return reused

    def prefill(self, tokens: list[int], step: int = PREFILL_CHUNK) -> None:
        """Append `tokens` (and any pending ones) to the cache in chunks, computing no outputs."""
        fed = self.kv.take_feed(tokens)
        for start in range(0, len(fed), step):
            out = self._forward(mx.array(fed[start:start + step]))
            mx.eval([c.state for c in self.cache], out.logits)

    def verify(self, tree: Tree) -> VerifyOutput:
        """Append the tree's nodes to the cache and return logits/hidden states per node (lazy).
        A chain runs as the model's ordinary causal forward, after any pending tokens; a branching
        tree gets its mask and per-node positions."""
        if tree.is_chain:
            fed = self.kv.take_feed(tree.tokens)
            extra = len(fed) - len(tree)
            self.replayed += extra
            out = self._forward(mx.array(fed))
            if extra:
                out = VerifyOutput(out.logits[extra:],
                                   None if out.hidden is None else out.hidden[extra:])
            return out
        if not self.supports_trees:
            raise UnsupportedModelError("this architecture cannot verify a branching tree exactly "
                                        "(no RoPE module, recurrent layers or other per-position "
                                        "code); use a chain")
        if self.kv.pending:
            self.prefill([])
        prefix = self.kv.physical
        mask, positions = tree_mask_and_positions(tree.parents, tree.depths, prefix)
        self.kv.take_feed(tree.tokens)
        batch = TreeBatch(mask, mx.array(tree.depths, dtype=mx.int32), prefix)
        return self._forward(mx.array(tree.tokens), tree=batch, positions=positions)

    def commit(self, path: list[int], tree_size: int) -> None:
        """Keep only `path` (node indices, root first, ascending) of the tree just verified:
        their keys/values are compacted into consecutive slots after the prefix; nothing is
        recomputed (recurrent layers: see kv.TokenCache.rewind)."""
        self.kv.commit(path, tree_size)


# Architectures whose forward does something per position that a tree node cannot get from the
# RoPE shim and the cache's mask (found by reading every model file of mlx-lm 0.32): they verify
# chains only. Architectures with no `rope` module at all (recurrent models, learned position
# embeddings) are chain-only without being listed.
CHAIN_ONLY = {
    "ministral3": "attention scaling from each token's index (llama-4 style)",
    "mistral3": "attention scaling from each token's index (llama-4 style)",
    "mistral4": "attention scaling from each token's index (llama-4 style)",
    "llama4": "chunked-attention masks built inside the model; attention temperature per index",
    "gpt2": "learned absolute position embeddings",
    "gpt_bigcode": "learned absolute position embeddings",
    "baichuan_m1": "a convolution over keys and values in slot order",
    "longcat_flash_ngram": "n-gram embeddings over the preceding token ids",
    "deepseek_v41": "compressed key groups and windows computed inside the model",
    "phi3small": "block-sparse masks built inside the model",
    "olmo": "adds the mask to the scores (a boolean tree mask would be added as 0/1)",
    "muse_spark": "a fused norm and RoPE kernel that bypasses the rope module",
    "minimax_m3_vl": "a second RoPE (index_rope) on its sparse layers",
    "plamo": "RoPE through `rotary_emb`",
    "qwen": "RoPE through `rotary_emb`",
    "talkie": "RoPE through a method",
    "nanochat": "RoPE through a function",
}
POSITION_DEPENDENT = frozenset(CHAIN_ONLY)

# RoPE modules whose rotation of one token depends only on that token's position, so the shim may
# rotate tree nodes as a batch of single tokens (DynamicNTKScalingRoPE, for one, derives its base
# from the sequence length and is not).
_PER_TOKEN_ROPES = ("RoPE", "Llama3RoPE", "YarnRoPE", "SuScaledRoPE", "ProportionalRoPE", "NoPE")


def _model_type(model) -> str:
    args = getattr(model, "args", None) or getattr(model, "config", None)
    return str(getattr(args, "model_type", "") or "")
