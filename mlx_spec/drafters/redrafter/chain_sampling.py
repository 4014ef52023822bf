"""Independent sampled chains from the draft head: ReDrafter's drafts when the target samples.

Beam search picks the head's most likely sequences, which a sampling target rarely follows token for
token. Sampling W chains from the head instead, each token from q = the head's distribution processed
with the target's own sampling settings, gives a tree of sampled drafts that multi-draft rejection
sampling (mlx_spec/accept.py) accepts with probability sum min(p, q) per draw while keeping the
output exactly the target's. One lazy graph, evaluated once, like the beam search.
"""
from __future__ import annotations

import mlx.core as mx

from ...sampling import SamplingParams, invert_cdf, probs


def sample_chains(drafter, embed, context: mx.array, root: int, width: int, length: int,
                  params: SamplingParams, key, tables: dict,
                  head_temperature: float = 1.0) -> tuple[mx.array, mx.array]:
    """context: [D] the target's hidden state after `root`. Returns the drafted tokens [W, L-1]
    and the distributions they were drawn from [W, L-1, V] (lazy). head_temperature flattens the
    head's logits before the target's settings apply: a head distilled from greedy text is
    sharper than a sampling target, and a flatter q is accepted more often."""
    features, state = drafter.start_drafting(context[None], width, tables)
    token = mx.full((1, width), root, dtype=mx.int32)
    tokens, rows = [], []
    for step_key in mx.random.split(key, length - 1):
        state = drafter.state_from_token(state, token, embed, tables)
        logits = drafter.logits_from_features(features, state, tables) / head_temperature
        q = probs(logits, params)                                                 # [1, W, V]
        token = invert_cdf(q, mx.random.uniform(shape=q.shape[:-1], key=step_key)).astype(mx.int32)
        tokens.append(token[0])
        rows.append(q[0])
    return mx.stack(tokens, axis=-1), mx.stack(rows, axis=1)
