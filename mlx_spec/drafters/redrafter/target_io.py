"""What the draft head reads from an mlx-lm target: its token embedding and its post-norm hidden
states (with the logits computed from them, for batched distillation outside the engine)."""
from __future__ import annotations

import mlx.core as mx

from ...errors import UnsupportedModelError


def _inner(model):
    """The decoder stack (the module holding embed_tokens and the final norm)."""
    for path in ("model", "language_model.model"):
        owner = model
        try:
            for part in path.split("."):
                owner = getattr(owner, part)
        except AttributeError:
            continue
        if hasattr(owner, "embed_tokens"):
            return owner
    raise UnsupportedModelError("ReDrafter needs the target's token embedding (embed_tokens), "
                                "which this architecture does not expose")


def token_embedding(model):
    return _inner(model).embed_tokens


def hidden_and_logits(model, tokens: mx.array, cache, last_only: bool = False
                      ) -> tuple[mx.array, mx.array]:
    """Post-norm hidden states [B, n, D] and logits [B, n, V] of a batched forward (with
    last_only, hidden [B, 1, D] and logits [B, 1, V] of the last position: a prompt's prefill
    skips the vocabulary projection of every other position)."""
    hidden = _inner(model)(tokens, cache=cache)
    if last_only:
        hidden = hidden[:, -1:]
    head = getattr(model, "lm_head", None)
    logits = head(hidden) if head is not None else _inner(model).embed_tokens.as_linear(hidden)
    return hidden, logits
