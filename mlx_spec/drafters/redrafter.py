"""`redrafter`: Apple's recurrent drafter. A small head reads the target's hidden state at the last
accepted node and beam-searches W continuations of length L (root included); the beams become one
tree with shared prefixes merged, verified in a single target pass, and the longest matching path
over all beams is accepted (greedy, or exactly by sampling the target at each node).

The next beam search is started asynchronously as soon as a verification is observed, so it runs
while the engine commits the cache and streams text.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import mlx.core as mx

from ..errors import MlxSpecError
from ..loading import shipped_model
from ..redrafter import beam_search, load_drafter
from ..redrafter.target_io import token_embedding
from ..tree import Tree
from . import register
from .base import Drafter, StepContext

SHIPPED_HEAD = "tinystories-redrafter"


def _head_folder(head: Optional[str]) -> Path:
    if head is None:
        folder = shipped_model(SHIPPED_HEAD)
        if folder is None:
            raise MlxSpecError(f"the shipped ReDrafter head {SHIPPED_HEAD} is missing; pass "
                               "head=PATH (train one with `mlxspec distill`)")
        return folder
    return shipped_model(head) or Path(head).expanduser()


def _load_head(model, head: Optional[str]):
    """Load the head once per target; it is checked against the target's vocabulary and width."""
    folder = _head_folder(head)
    key = ("redrafter", str(folder.resolve()))
    if key not in model.extras:
        drafter = load_drafter(folder)
        embed = token_embedding(model.model)
        vocab, hidden = embed.weight.shape[0], drafter.config.hidden_size
        dims = model.config.get("hidden_size")
        if drafter.config.vocab_size != vocab or (dims and hidden != dims):
            raise MlxSpecError(f"the ReDrafter head in {folder} was made for vocab "
                               f"{drafter.config.vocab_size} / hidden {hidden}; this target has "
                               f"vocab {vocab} / hidden {dims}")
        model.extras[key] = drafter
    return model.extras[key]


@register("redrafter")
class ReDrafter(Drafter):
    needs_hidden_states = True

    def __init__(self, model, beam_width: int = 4, beam_length: int = 5, head: Optional[str] = None,
                 top_k: int = 50):
        if beam_width < 1 or beam_length < 2:
            raise ValueError("need beam_width >= 1 and beam_length >= 2")
        self.width, self.length, self.top_k = beam_width, beam_length, top_k
        self.head = _load_head(model, head)
        self.embed = token_embedding(model.model)
        self._pending: Optional[tuple[int, mx.array]] = None  # (root, beams being computed)

    def begin(self, prompt_tokens: list[int]) -> None:
        # no hidden state for the prompt's last token yet: the first step verifies the root alone
        self._pending = None

    def _search(self, hidden: mx.array, root: int) -> mx.array:
        beams = beam_search(self.head, self.embed, hidden[None], mx.array([root]),
                            self.width, self.length, self.top_k)
        return beams.tokens[0]

    def propose(self, ctx: StepContext) -> Tree:
        root = ctx.tokens[-1]
        if self._pending is None or self._pending[0] != root or ctx.max_drafts < 1:
            return Tree.from_chain(root, [])
        beams = [beam[1:ctx.max_drafts + 1] for beam in self._pending[1].tolist()]
        tree = Tree.from_branches(root, beams)
        if len(tree) - 1 > ctx.max_drafts:  # near the token limit: keep the best beam only
            tree = Tree.from_chain(root, beams[0][:ctx.max_drafts])
        return tree

    def observe(self, ctx, tree, acceptance, out) -> None:
        root = acceptance.tokens[-1]
        beams = self._search(out.hidden[acceptance.path[-1]], root)
        mx.async_eval(beams)
        self._pending = (root, beams)

    def end(self) -> None:
        self._pending = None
