"""Beam search over the draft head, built as one lazy MLX graph (no host sync inside the loop).

Every beam starts with the root: the token the target itself chose from `context`. Only beam 0 is
alive at first (log P = 0, the others log P = LOG_0), so step one spreads the best W first draft
tokens over the W beams instead of growing W copies of the same beam; later steps keep the W best
(beam, token) continuations by summed log-probability. The head's logits are shifted by their max
and top-k warped as in the reference before the log-softmax.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import mlx.core as mx

LOG_0 = -50000.0  # the reference's "log 0": finite, so sums of it still order correctly


def warp_top_k(logits: mx.array, top_k: int = 50, mask_value: float = LOG_0) -> mx.array:
    """Shift by the row max, then give every logit below the k-th largest `mask_value`."""
    logits = logits - logits.max(axis=-1, keepdims=True)
    top_k = min(top_k, logits.shape[-1])
    if top_k <= 0 or top_k == logits.shape[-1]:
        return logits
    kth = mx.partition(logits, -top_k, axis=-1)[..., -top_k:].min(axis=-1, keepdims=True)
    return mx.where(logits < kth, mask_value, logits)


def warped_log_probs(logits: mx.array, top_k: int) -> mx.array:
    logits = warp_top_k(logits.astype(mx.float32), top_k)
    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


def draft_log_probs(drafter, context: mx.array, state: mx.array, top_k: int) -> mx.array:
    return warped_log_probs(drafter(context, state), top_k)


@dataclass
class Beams:
    tokens: mx.array           # [B, W, L] int32: root then L-1 draft tokens, best beam first
    scores: mx.array           # [B, W] log P(beam) under the head
    token_log_probs: mx.array  # [B, W, L-1] log-probability of each draft token
    log_probs: Optional[mx.array] = None  # [B, W, L-1, V] the head's warped distributions


def _top(scores: mx.array, k: int) -> tuple[mx.array, mx.array]:
    """Indices and values of the k largest entries of each row, largest first."""
    if k == 1:
        index = mx.argmax(scores, axis=-1, keepdims=True)
    else:
        index = mx.argpartition(-scores, kth=k - 1, axis=-1)[..., :k]
        order = mx.argsort(-mx.take_along_axis(scores, index, axis=-1), axis=-1)
        index = mx.take_along_axis(index, order, axis=-1)
    return index, mx.take_along_axis(scores, index, axis=-1)


def _pick(x: mx.array, parent: mx.array) -> mx.array:
    """x[b, parent[b, w], ...] for x of shape [B, W, ...]."""
    index = parent.reshape(parent.shape + (1,) * (x.ndim - 2))
    return mx.take_along_axis(x, index, axis=1)


def beam_search(drafter, embed, context: mx.array, root: mx.array, width: int, length: int,
                top_k: int = 50, keep_distributions: bool = False,
                tables: Optional[dict] = None) -> Beams:
    """context: [B, D] target hidden states; root: [B] tokens the target chose from them;
    embed: the target's token embedding (a callable); tables: drafter.drafting_tables(embed),
    made once per head (made here when absent). Returns lazy arrays; the full per-step
    distributions only with keep_distributions (they cost a gather per step and beam)."""
    if width < 1 or length < 2:
        raise ValueError("beam search needs width >= 1 and length >= 2")
    if tables is None:
        tables = drafter.drafting_tables(embed)
    batch = root.shape[0]
    features, state = drafter.start_drafting(context, width, tables)
    tokens = mx.broadcast_to(root.astype(mx.int32)[:, None, None], (batch, width, 1))
    scores = mx.broadcast_to(mx.array([0.0] + [LOG_0] * (width - 1)), (batch, width))
    chosen, distributions = [], []
    for _ in range(length - 1):
        state = drafter.state_from_token(state, tokens[..., -1], embed, tables)
        log_p = warped_log_probs(drafter.logits_from_features(features, state, tables), top_k)
        vocab = log_p.shape[-1]
        flat = (log_p + scores[..., None]).reshape(batch, width * vocab)
        index, new_scores = _top(flat, width)
        parent, token = index // vocab, (index % vocab).astype(mx.int32)
        tokens = mx.concatenate([_pick(tokens, parent), token[..., None]], axis=-1)
        state = _pick(state, parent)
        chosen = [_pick(x, parent) for x in chosen] + [new_scores - _pick(scores, parent)]
        scores = new_scores
        if keep_distributions:
            distributions = [_pick(x, parent) for x in distributions] + [_pick(log_p, parent)]
    return Beams(tokens=tokens, scores=scores, token_log_probs=mx.stack(chosen, axis=-1),
                 log_probs=mx.stack(distributions, axis=2) if keep_distributions else None)


def greedy_chain(drafter, embed, context: mx.array, root: mx.array, length: int,
                 tables: Optional[dict] = None) -> mx.array:
    """The width-1 beam without its scores: the head's argmax at every step ([B, L] tokens, the
    root first). Top-k warping and normalisation never change an argmax, so this is exactly
    beam_search(width=1).tokens, about 20% cheaper (no partition or log-softmax per step); for
    greedy decoding, where nothing reads the draft's probabilities."""
    if length < 2:
        raise ValueError("a draft chain needs length >= 2")
    if tables is None:
        tables = drafter.drafting_tables(embed)
    features, state = drafter.start_drafting(context, 1, tables)
    token = root.astype(mx.int32)[:, None]
    tokens = [token]
    for _ in range(length - 1):
        state = drafter.state_from_token(state, token, embed, tables)
        token = mx.argmax(drafter.logits_from_features(features, state, tables), axis=-1)
        tokens.append(token.astype(mx.int32))
    return mx.concatenate(tokens, axis=-1)
