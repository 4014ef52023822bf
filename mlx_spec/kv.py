"""A model's cache and the tokens in it: one protocol over every kind of mlx-lm layer cache.

mlx-lm gives each layer a cache object (`make_prompt_cache`). Speculative decoding asks four more
things of them: verify a tree of candidates (a mask made of the tree's ancestry, and of the
layer's window if it has one), keep only the accepted path, rewind rejected tokens, and know which
token ids the cache holds. `TokenCache` holds the layer caches together with those ids, so every
user (the target, the draft model, DSI workers, chat, the app worker) asks one object what is
cached and brings it to a token list with `rewind` + `take_feed`.

One class per layer kind, each knowing how far back it can be rewound:

| mlx-lm cache | here | rewind | trees |
| --- | --- | --- | --- |
| KVCache | TreeKV | anything (offset moves) | tree mask |
| QuantizedKVCache | TreeQuantizedKV | anything | tree mask |
| RotatingKVCache (sliding window) | WindowKV | WINDOW_SLACK tokens past the window | window & tree mask |
| ChunkedKVCache (llama4) | ChunkKV | WINDOW_SLACK tokens past the chunk | no (llama4 masks itself) |
| ArraysCache (SSM, linear attention) | kept as is, state snapshots | to a snapshot, then replay | no |
| CacheList | CacheList of the above | the least of its parts | if all parts allow |

Recurrent state cannot be trimmed: the cache snapshots it (references to immutable arrays, no
copy) before every feed, and a rewind restores the latest snapshot at or before the target length;
the tokens between that snapshot and the target length become `pending`: counted as cached, and
fed again at the front of the next forward (so a rejected draft costs extra rows in the next
verification, not a forward of its own).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import mlx.core as mx
from mlx_lm.models.cache import (ArraysCache, CacheList, ChunkedKVCache, KVCache,
                                 QuantizedKVCache, RotatingKVCache, _BaseCache,
                                 create_attention_mask, make_prompt_cache)

from .errors import UnsupportedModelError

PREFILL_CHUNK = 512   # prompt tokens per forward when prefilling (every user of a cache)
WINDOW_SLACK = 256    # tokens a sliding-window layer keeps beyond its window, so rejected drafts
                      # (a tree is far smaller) can be rewound after the window wrapped
UNKNOWN = -1          # a token fed while still lazy (drafting), named later by `name_tokens`


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class TreeBatch:
    """A tree being verified, as the layers see it: each layer builds its mask from this."""
    mask: mx.array        # [n, prefix + n] bool: all earlier tokens, then the node's ancestors
    depths: mx.array      # [n] int32
    prefix: int           # tokens before the tree (the offset of a full-attention layer)
    _windowed: dict = field(default_factory=dict)

    def windowed(self, start: int, window: int) -> mx.array:
        """[n, prefix - start + n]: the mask of a layer holding positions start.. that lets each
        node see only keys less than `window` positions behind its own (prefix + depth)."""
        if (start, window) not in self._windowed:
            queries = self.prefix + self.depths
            keys = mx.concatenate([mx.arange(start, self.prefix), queries])
            near = (queries[:, None] - keys[None]) < window
            self._windowed[(start, window)] = self.mask[:, start:] & near
        return self._windowed[(start, window)]


class _FullAttention:
    """Mixed into mlx-lm's full-attention caches: while a tree is verified, its mask is the tree's;
    a tree path is kept by gathering it into place."""
    tree: Optional[TreeBatch] = None

    def make_mask(self, n, *args, window_size=None, **kwargs):
        if self.tree is None:
            return super().make_mask(n, *args, window_size=window_size, **kwargs)
        return self.tree.mask if window_size is None else self.tree.windowed(0, window_size)

    def floor(self) -> int:
        return 0

    def keep_path(self, path: list[int], tree_size: int) -> None:
        self.offset = _gather_path(self, self.offset - tree_size, path)


class TreeKV(_FullAttention, KVCache):
    pass


class TreeQuantizedKV(_FullAttention, QuantizedKVCache):
    pass


class WindowKV(_BaseCache):
    """A sliding-window layer (mlx-lm's RotatingKVCache) that can be rewound and verify trees.

    Keys stay in temporal order (slot i holds position start + i) instead of rotating in place,
    and the layer keeps WINDOW_SLACK positions beyond the window: the mask, not eviction, limits
    what a query sees (position q sees keys q - window < k <= q). Older keys are dropped between
    forwards, in batches, once more than 2 * WINDOW_SLACK extra have gathered."""
    step = 256
    tree: Optional[TreeBatch] = None

    def __init__(self, max_size: int):
        self.max_size = max_size
        self.keys = self.values = None
        self.offset = 0   # positions fed so far
        self.start = 0    # the position held in slot 0

    def update_and_fetch(self, keys, values):
        held, n = self.offset - self.start, keys.shape[2]
        if self.keys is None or held + n > self.keys.shape[2]:
            grow = -(-n // self.step) * self.step
            shape_k, shape_v = (*keys.shape[:2], grow, keys.shape[3]), (*values.shape[:2], grow, values.shape[3])
            new_k, new_v = mx.zeros(shape_k, keys.dtype), mx.zeros(shape_v, values.dtype)
            if self.keys is None:
                self.keys, self.values = new_k, new_v
            else:
                self.keys = mx.concatenate([self.keys[..., :held, :], new_k], axis=2)
                self.values = mx.concatenate([self.values[..., :held, :], new_v], axis=2)
        self.keys[..., held:held + n, :] = keys
        self.values[..., held:held + n, :] = values
        self.offset += n
        return self.keys[..., :held + n, :], self.values[..., :held + n, :]

    def make_mask(self, n: int, window_size: Optional[int] = None, return_array: bool = False):
        window = window_size or self.max_size
        if self.tree is not None:
            return self.tree.windowed(self.start, window)
        if self.start == 0 and self.offset + n <= window:  # the window changes nothing yet
            return create_attention_mask(n, self.offset, return_array, None)
        queries = self.offset + mx.arange(n)
        keys = mx.arange(self.start, self.offset + n)
        return (keys[None] <= queries[:, None]) & (queries[:, None] - keys[None] < window)

    def floor(self) -> int:
        """The shortest length the layer can be trimmed to: the next query must find every key
        of its window still held."""
        return 0 if self.start == 0 else self.start + self.max_size - 1

    def trim(self, n: int) -> int:
        n = min(self.offset - self.start, n)
        self.offset -= n
        return n

    def settle(self) -> None:
        """Between forwards: drop keys no query can see any more, keeping the slack."""
        held = self.offset - self.start
        if self.keys is not None and held > self.max_size - 1 + 2 * WINDOW_SLACK:
            drop = held - (self.max_size - 1 + WINDOW_SLACK)
            self.keys = self.keys[..., drop:held, :]
            self.values = self.values[..., drop:held, :]
            self.start += drop

    def keep_path(self, path: list[int], tree_size: int) -> None:
        held = self.offset - self.start
        self.offset = self.start + _gather_path(self, held - tree_size, path)

    def is_trimmable(self) -> bool:
        return True

    def size(self) -> int:
        return self.offset - self.start

    @property
    def state(self):
        return self.keys, self.values

    def empty(self) -> bool:
        return self.keys is None

    @property
    def nbytes(self) -> int:
        return 0 if self.keys is None else self.keys.nbytes + self.values.nbytes


class ChunkKV(ChunkedKVCache):
    """Chunked attention (llama4: a query sees the keys of its own chunk of `chunk_size`
    positions). The model builds that mask itself from `start_position`; this class only keeps
    WINDOW_SLACK more keys than mlx-lm does, so that rejected drafts can be rewound."""
    tree = None

    def maybe_trim_front(self):
        held = self.offset - self.start_position
        if self.keys is not None and held > self.chunk_size + 2 * WINDOW_SLACK:
            drop = held - (self.chunk_size + WINDOW_SLACK)
            self.start_position += drop
            self.keys = self.keys[..., drop:held, :]
            self.values = self.values[..., drop:held, :]

    def floor(self) -> int:
        """The next query needs every key of its chunk: the first whole chunk still held."""
        return -(-self.start_position // self.chunk_size) * self.chunk_size


def _gather_path(layer, first: int, path: list[int]) -> int:
    """Move the keys/values of tree nodes `path` (slots first + node) to slots first.. and return
    the new fill; quantized caches hold (data, scales, biases) tuples, each gathered."""
    index = mx.array(path, dtype=mx.int32) + first
    kept = len(path)
    for store in (layer.keys, layer.values):
        for part in (store if isinstance(store, (tuple, list)) else (store,)):
            part[..., first:first + kept, :] = part[..., index, :]
    return first + kept


def _adapt(cache, kv_bits: Optional[int], kv_group_size: int):
    """Our counterpart of one mlx-lm layer cache (a fresh, empty one)."""
    kind = type(cache)
    if kind is KVCache:
        return (TreeQuantizedKV(group_size=kv_group_size, bits=kv_bits) if kv_bits else TreeKV())
    if kind is QuantizedKVCache:
        return TreeQuantizedKV(group_size=cache.group_size, bits=cache.bits)
    if kind is RotatingKVCache:
        if cache.keep:
            raise UnsupportedModelError(f"a sliding-window cache that keeps {cache.keep} first "
                                        "tokens (attention sinks) is not supported yet")
        return WindowKV(cache.max_size)
    if kind is ChunkedKVCache:
        return ChunkKV(cache.chunk_size)
    if isinstance(cache, ArraysCache):
        return cache
    if kind is CacheList:
        return CacheList(*(_adapt(c, kv_bits, kv_group_size) for c in cache.caches))
    raise UnsupportedModelError(f"this model's {kind.__name__} layers are not supported for "
                                "speculative decoding (use mlx_lm.generate)")


def leaves(layers) -> list:
    """Every layer cache, CacheLists opened."""
    found = []
    for c in layers:
        found.extend(leaves(c.caches) if isinstance(c, CacheList) else [c])
    return found


def cache_kinds(model) -> list[str]:
    """The kinds of layer cache mlx-lm makes for `model` (CacheList opened), sorted."""
    return sorted({type(c).__name__ for c in leaves(make_prompt_cache(model))})


class TokenCache:
    """The layer caches of one model for one conversation, and the token ids they hold.

    `tokens` are the ids the cache stands for; the last `pending` of them are still to be fed
    (after a rewind of recurrent state), and `take_feed` puts them before the next forward's own
    tokens. Snapshots of recurrent state are kept for the last `snapshots` feeds."""

    def __init__(self, layers: list, snapshots: int = 2, fresh=None):
        self.layers = layers
        self.tokens: list[int] = []
        self.pending = 0
        self._fresh = fresh  # makes new empty layers (reset); None: layers cannot be remade
        self._max_snapshots = snapshots
        self._index()

    @classmethod
    def for_model(cls, model, kv_bits: Optional[int] = None, kv_group_size: int = 64,
                  snapshots: int = 2) -> "TokenCache":
        def fresh():
            return [_adapt(c, kv_bits, kv_group_size) for c in make_prompt_cache(model)]
        return cls(fresh(), snapshots=snapshots, fresh=fresh)

    def _index(self) -> None:
        self._leaves = leaves(self.layers)
        self._recurrent = [c for c in self._leaves if isinstance(c, ArraysCache)]
        self._trimmable = [c for c in self._leaves if not isinstance(c, ArraysCache)]
        self._snapshots: dict[int, list] = {}

    # -- what is cached ------------------------------------------------------------------------------
    @property
    def trees_ok(self) -> bool:
        """Trees need every layer to take a mask: recurrent layers read tokens in order."""
        return not self._recurrent

    @property
    def physical(self) -> int:
        """Tokens actually fed into the layers."""
        return len(self.tokens) - self.pending

    def consistent(self) -> bool:
        """False when a forward was cut short (an interrupt between layers)."""
        return all(c.offset == self.physical for c in self._trimmable if hasattr(c, "offset"))

    def reset(self) -> None:
        if self._fresh is None:
            raise RuntimeError("this TokenCache cannot remake its layers")
        self.layers = self._fresh()
        self.tokens, self.pending = [], 0
        self._index()

    # -- moving -------------------------------------------------------------------------------------
    def _landing(self, n: int) -> Optional[int]:
        """The physical length a rewind to n (< len(tokens)) keeps; None: the layers start over."""
        if n >= self.physical:
            return self.physical
        floor = max((c.floor() for c in self._trimmable), default=0)
        if not self._recurrent:
            return n if n >= floor else None
        return max((s for s in self._snapshots if floor <= s <= n), default=None)

    def reusable(self, tokens: Sequence[int]) -> int:
        """How many leading `tokens` a sync to them would not feed again."""
        if not self.consistent():
            return 0
        keep = common_prefix(self.tokens, tokens)
        return keep if keep == len(self.tokens) else (self._landing(keep) or 0)

    def rewind(self, n: int) -> None:
        """Make the cache stand for tokens[:n] (n <= len(tokens))."""
        if n >= len(self.tokens):
            return
        physical, to = self.physical, self._landing(n)
        if to is None:
            tokens = self.tokens[:n]
            self.reset()
            self.tokens, self.pending = tokens, n
            return
        if to < physical:
            for c in self._trimmable:
                c.trim(physical - to)
            if self._recurrent:
                for c, state in zip(self._recurrent, self._snapshots[to]):
                    c.cache = list(state)
                self._snapshots = {s: v for s, v in self._snapshots.items() if s <= to}
        del self.tokens[n:]
        self.pending = n - to

    def take_feed(self, new: Sequence[int]) -> list[int]:
        """`new` joins the cached tokens; returns what the next forward must run (the pending
        tokens, then `new`). Call right before that forward."""
        for c in self._trimmable:
            if isinstance(c, WindowKV):
                c.settle()
        physical = self.physical
        if self._recurrent:
            self._snapshots[physical] = [list(c.cache) for c in self._recurrent]
            while len(self._snapshots) > self._max_snapshots:
                del self._snapshots[min(self._snapshots)]
        fed = self.tokens[physical:] + list(new)
        self.tokens.extend(new)
        self.pending = 0
        return fed

    def name_tokens(self, ids: Sequence[int]) -> None:
        """Name, in order, tokens that were fed as UNKNOWN (lazy drafts)."""
        it = iter(ids)
        for i, t in enumerate(self.tokens):
            if t == UNKNOWN:
                self.tokens[i] = next(it, UNKNOWN)

    def set_tree(self, tree: Optional[TreeBatch]) -> None:
        for c in self._trimmable:
            c.tree = tree

    def commit(self, path: list[int], tree_size: int) -> None:
        """Of the tree just fed (the last `tree_size` tokens), keep the nodes `path` (root first,
        ascending): a chain prefix is a rewind; a branch is gathered into consecutive slots."""
        first = len(self.tokens) - tree_size
        kept = len(path)
        if path == list(range(kept)):
            self.rewind(first + kept)
            return
        assert self.trees_ok and self.pending == 0, "a branching tree was fed to a chain-only cache"
        for c in self._trimmable:
            c.keep_path(path, tree_size)
        nodes = self.tokens[first:]
        self.tokens[first:] = [nodes[i] for i in path]
