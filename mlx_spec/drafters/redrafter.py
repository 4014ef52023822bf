"""`redrafter`: Apple's recurrent drafter. A small head reads the target's hidden state at the last
accepted node and beam-searches W continuations of length L (root included); the beams become one
tree with shared prefixes merged, verified in a single target pass, and the longest matching path
over all beams is accepted (greedy, or exactly by sampling the target at each node).

On a GPU the next beam search starts asynchronously as soon as a verification is observed, so it
runs while the engine commits the cache and streams text.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import mlx.core as mx

from ..errors import MlxSpecError
from ..loading import compute_on_cpu, shipped_model
from ..redrafter import beam_search, load_drafter
from ..redrafter.target_io import token_embedding
from ..tree import Tree
from . import register
from .base import Drafter, StepContext

SHIPPED_HEAD = "tinystories-redrafter"
# mx.async_eval runs in the calling thread on the CPU backend (measured: it returns only when the
# work is done), so there it would only move drafting time into the engine's "other" bucket
_EVAL_OVERLAPS = not compute_on_cpu()


def _head_folder(head: Optional[str]) -> Path:
    if head is None:
        folder = shipped_model(SHIPPED_HEAD)
        if folder is None:
            raise MlxSpecError(f"the shipped ReDrafter head {SHIPPED_HEAD} is missing; pass "
                               "head=PATH (train one with `mlxspec distill`)")
        return folder
    return shipped_model(head) or Path(head).expanduser()


def _load_head(model, head: Optional[str]):
    """Load the head once per target (with its drafting tables); it is checked against the
    target's vocabulary and width."""
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
        model.extras[key] = (drafter, drafter.drafting_tables(embed))
    return model.extras[key]


@register("redrafter")
class ReDrafter(Drafter):
    needs_hidden_states = True

    def __init__(self, model, beam_width: int = 2, beam_length: int = 7, head: Optional[str] = None,
                 top_k: int = 50, min_prob: float = 0.0):
        if beam_width < 1 or beam_length < 2:
            raise ValueError("need beam_width >= 1 and beam_length >= 2")
        if not 0.0 <= min_prob < 1.0:
            raise ValueError("min_prob must be in [0, 1)")
        self.width, self.length, self.top_k = beam_width, beam_length, top_k
        # a beam is cut where the head's probability of its prefix drops below min_prob: such
        # nodes would cost verification work for little expected gain
        self.min_log_prob = math.log(min_prob) if min_prob > 0 else -math.inf
        self.head, self.tables = _load_head(model, head)
        self.embed = token_embedding(model.model)
        self._pending = None  # (root, beam tokens [W, L], draft log-probs [W, L-1]) in flight

    def begin(self, prompt_tokens: list[int]) -> None:
        # no hidden state for the prompt's last token yet: the first step verifies the root alone
        self._pending = None

    def propose(self, ctx: StepContext) -> Tree:
        root = ctx.tokens[-1]
        if self._pending is None or self._pending[0] != root or ctx.max_drafts < 1:
            return Tree.from_chain(root, [])
        _, tokens, log_probs = self._pending
        mx.eval(tokens, log_probs)  # one evaluation of the shared graph (no-op if already done)
        branches = [beam[1:1 + self._kept(lp, best=i == 0, limit=ctx.max_drafts)]
                    for i, (beam, lp) in enumerate(zip(tokens.tolist(), log_probs.tolist()))]
        tree = Tree.from_branches(root, [b for b in branches if b])
        if len(tree) - 1 > ctx.max_drafts:  # near the token limit: keep the best beam only
            tree = Tree.from_chain(root, branches[0])
        return tree

    def _kept(self, log_probs: list[float], best: bool, limit: int) -> int:
        """How many draft tokens of a beam to keep (the best beam keeps at least one)."""
        total, kept = 0.0, 0
        for log_p in log_probs[:limit]:
            total += log_p
            if total < self.min_log_prob and not (best and kept == 0):
                break
            kept += 1
        return kept

    def observe(self, ctx, tree, acceptance, out) -> None:
        root = acceptance.tokens[-1]
        hidden = out.hidden[acceptance.path[-1]]
        beams = beam_search(self.head, self.embed, hidden[None], mx.array([root]), self.width,
                            self.length, self.top_k, tables=self.tables)
        tokens, log_probs = beams.tokens[0], beams.token_log_probs[0]
        if _EVAL_OVERLAPS:  # the GPU drafts while the engine commits the cache and streams
            mx.async_eval(tokens, log_probs)
        self._pending = (root, tokens, log_probs)

    def end(self) -> None:
        self._pending = None
