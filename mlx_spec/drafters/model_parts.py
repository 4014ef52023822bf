"""The parts of an mlx-lm model that drafters read: its decoder stack (post-norm hidden states),
token embedding and vocabulary projection. The ReDrafter head reads the target's embedding and
hidden states; a draft model with a drafting vocabulary projects its own hidden states onto a few
rows of its vocabulary projection."""
from __future__ import annotations

import mlx.core as mx

from ..errors import UnsupportedModelError


def decoder_stack(model):
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
    raise UnsupportedModelError("this architecture does not expose its token embedding "
                                "(embed_tokens), which ReDrafter heads and drafting vocabularies "
                                "read")


def token_embedding(model):
    return decoder_stack(model).embed_tokens


def projection_layer(model):
    """The layer whose rows are the vocabulary projection: lm_head, or the tied embedding."""
    head = getattr(model, "lm_head", None)
    return head if head is not None else token_embedding(model)


def output_projection(model):
    """The vocabulary projection as a function of post-norm hidden states."""
    layer = projection_layer(model)
    return layer.as_linear if hasattr(layer, "as_linear") else layer


def hidden_and_logits(model, tokens: mx.array, cache, last_only: bool = False
                      ) -> tuple[mx.array, mx.array]:
    """Post-norm hidden states [B, n, D] and logits [B, n, V] of a batched forward (with
    last_only, hidden [B, 1, D] and logits [B, 1, V] of the last position: a prompt's prefill
    skips the vocabulary projection of every other position)."""
    hidden = decoder_stack(model)(tokens, cache=cache)
    if last_only:
        hidden = hidden[:, -1:]
    return hidden, output_projection(model)(hidden)
