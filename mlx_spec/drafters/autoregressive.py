"""`ar`: no drafts at all. Each target call decodes one token: the baseline every method must
equal token for token, run through the same target adapter."""
from __future__ import annotations

from ..tree import Tree
from . import register
from .base import Drafter, StepContext


@register("ar")
class Autoregressive(Drafter):
    def __init__(self, model):
        pass

    def propose(self, ctx: StepContext) -> Tree:
        return Tree.from_chain(ctx.tokens[-1], [])
