"""The draft model's forward over its own KV cache, with short feeds (drafting) compiled.

A drafter spends its time in one-token forwards, and on a small model each forward is mostly
per-operation overhead (the default 2-layer drafter: ~1.1 ms of dispatch for a few hundred
microseconds of arithmetic on this CPU). mx.compile fuses that graph, but it needs the same shapes
and no Python-side positions on every call, which mlx-lm's KVCache does not give (its buffers grow
and its offset is an int). So the compiled path keeps keys and values in fixed-capacity buffers
(`SlotKVCache`): the step writes at an offset held in an mx.array and masks the unused slots, and one
traced graph serves every position until the buffers have to grow (then it is traced once more).

Whether a given architecture works this way (it must take RoPE offsets and attention masks from the
cache, as mlx-lm's llama, qwen, mistral... do) is checked once per loaded model against the plain
forward, rejected drafts and a rewind included (`supports_compiled_step`); anything else keeps the
plain KVCache path, which is always correct.
"""
from __future__ import annotations

from typing import Optional

import mlx.core as mx
from mlx_lm.models.cache import KVCache, make_prompt_cache

from ..kv import UNKNOWN, TokenCache
from .model_parts import decoder_stack

CAPACITY_STEP = 256  # buffers grow in these steps: each new capacity traces the step once more
COMPILED_FEED = 2    # feeds of up to this many tokens run compiled (a draft round feeds 1, or 2
                     # after a fully accepted chain); each length is traced once


class SlotKVCache:
    """Keys/values in buffers of fixed capacity; slots at and after `offset` are masked out.

    `offset` is a Python int between calls; inside the compiled step it is the traced mx.array,
    which RoPE, the slice update and the mask all accept."""

    def __init__(self):
        self.keys: Optional[mx.array] = None
        self.values: Optional[mx.array] = None
        self.offset = 0

    @property
    def capacity(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    def capacity_for(self, needed: int) -> int:
        return max(self.capacity, -(-needed // CAPACITY_STEP) * CAPACITY_STEP)

    def reserve(self, needed: int, like_keys: mx.array, like_values: mx.array) -> None:
        """Grow the buffers (keeping their contents) so that `needed` slots fit."""
        if needed <= self.capacity:
            return
        capacity = self.capacity_for(needed)

        def grown(old, like):
            shape = (*like.shape[:2], capacity, like.shape[3])
            new = mx.zeros(shape, like.dtype)
            return new if old is None else mx.slice_update(new, old, mx.array([0]), axes=(2,))

        self.keys, self.values = grown(self.keys, like_keys), grown(self.values, like_values)

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        start = mx.array(self.offset).reshape(1)
        if isinstance(self.offset, int):  # outside the compiled step: make room first
            self.reserve(self.offset + keys.shape[2], keys, values)
        self.keys = mx.slice_update(self.keys, keys, start, axes=(2,))
        self.values = mx.slice_update(self.values, values, start, axes=(2,))
        if isinstance(self.offset, int):
            self.offset += keys.shape[2]
        return self.keys, self.values

    def make_mask(self, n: int, return_array: bool = False, window_size: Optional[int] = None):
        # the offset has not advanced yet when the model asks for the mask: query i sits at
        # position offset + i and sees every slot up to it
        # (outside the compiled step the buffers grow to fit these n before they are written)
        positions = self.offset + mx.arange(n)
        width = self.capacity_for(self.offset + n) if isinstance(self.offset, int) else self.capacity
        return mx.arange(width)[None] <= positions[:, None]

    def trim(self, n: int) -> int:
        n = min(self.offset, n)
        self.offset -= n
        return n

    def floor(self) -> int:
        return 0

    @property
    def state(self):
        return self.keys, self.values


class DraftForward:
    """Feeds tokens to the draft model and returns the logits after the last one; `kv` (a
    kv.TokenCache) holds the drafter's cache and the ids in it.

    Short feeds (drafting) run the compiled step when `compiled` is true; prompts run the model
    directly over the same buffers. Any other drafter uses kv.py's layer caches (sliding windows,
    recurrent state: every kind the target supports). With `columns` ([D, K]: a drafting
    vocabulary's columns of the vocabulary projection, draft_model.vocabulary_columns) the logits
    are those K, projected from the last position's hidden state alone."""

    def __init__(self, module, compiled: bool, columns: Optional[mx.array] = None):
        self.module = module
        self.compiled = compiled
        self.columns = columns
        self.stack = decoder_stack(module) if columns is not None else None
        if compiled:
            def slots():
                return [SlotKVCache() for _ in module.layers]
            self.kv = TokenCache(slots(), fresh=slots)
            self._scratch = [SlotKVCache() for _ in module.layers]
            self._step = mx.compile(self._short_feed)
        else:  # recurrent drafters snapshot every feed: a round's rejected drafts rewind free
            self.kv = TokenCache.for_model(module, snapshots=64)

    @property
    def cache(self) -> list:
        return self.kv.layers

    @property
    def offset(self) -> int:
        return self.kv.physical

    def trim(self, n: int) -> None:
        self.kv.rewind(len(self.kv.tokens) - n)

    def _short_feed(self, ids, offset, *buffers):
        for i, c in enumerate(self._scratch):
            c.keys, c.values, c.offset = buffers[2 * i], buffers[2 * i + 1], offset
        logits = self._last_logits(ids, self._scratch)
        return (logits, *[b for c in self._scratch for b in (c.keys, c.values)])

    def _last_logits(self, ids: mx.array, cache) -> mx.array:
        if self.columns is None:
            return self.module(ids[None], cache=cache)[0, -1]
        return self.stack(ids[None], cache=cache)[0, -1] @ self.columns

    def __call__(self, ids) -> mx.array:
        """ids: token ids after the cache (a list, or a lazy [n] array whose ids are named later
        with kv.name_tokens); the logits row after the last one."""
        known = ids if isinstance(ids, list) else [UNKNOWN] * ids.shape[0]
        ids = mx.array(ids) if isinstance(ids, list) else ids
        fed = self.kv.take_feed(known)
        if len(fed) > len(known):  # pending tokens of a rewound recurrent state go first
            ids = mx.concatenate([mx.array(fed[:len(fed) - len(known)]), ids])
        n = ids.shape[0]
        cache = self.kv.layers
        if not self.compiled or n > COMPILED_FEED or cache[0].keys is None:
            return self._last_logits(ids, cache)
        offset = cache[0].offset
        for c in cache:
            c.reserve(offset + n, c.keys, c.values)
        buffers = [b for c in cache for b in (c.keys, c.values)]
        logits, *buffers = self._step(ids, mx.array(offset, dtype=mx.int32), *buffers)
        for i, c in enumerate(cache):
            c.keys, c.values, c.offset = buffers[2 * i], buffers[2 * i + 1], offset + n
        return logits


def supports_compiled_step(module, vocab_size: int) -> bool:
    """True when the compiled path reproduces the plain forward on this model, through a prefill,
    one- and two-token steps, a rewind over them and steps over the rewound slots."""
    if not hasattr(module, "layers") or any(type(c) is not KVCache
                                             for c in make_prompt_cache(module)):
        return False  # the slots know no windows, recurrent state or other cache kinds
    vocab_size = max(vocab_size, 1)
    sequence = [(7 * i + 3) % vocab_size for i in range(14)]
    rewound = sequence[:9] + [(s + 1) % vocab_size for s in sequence[9:]]
    try:
        reference = {tuple(seq): module(mx.array([seq]))[0] for seq in (sequence, rewound)}
        forward = DraftForward(module, compiled=True)
        got = []
        forward(mx.array(sequence[:6]))
        for i in range(6, 12):
            got.append((sequence, i, forward(mx.array([sequence[i]]))))
        got.append((sequence, 13, forward(mx.array(sequence[12:14]))))
        forward.trim(5)
        got.append((rewound, 10, forward(mx.array(rewound[9:11]))))
        for i in range(11, 14):
            got.append((rewound, i, forward(mx.array([rewound[i]]))))
        for seq, i, logits in got:
            expected = reference[tuple(seq)][i]
            scale = mx.abs(expected).max() + 1e-6
            if (mx.abs(logits - expected).max() / scale).item() > 1e-3:
                return False
    except Exception:  # an architecture that needs an int offset or builds its own mask
        return False
    return True
