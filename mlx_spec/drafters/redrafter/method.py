"""`redrafter`: Apple's recurrent drafter. A small head reads the target's hidden state at the last
accepted node and beam-searches W continuations of length L (root included); the beams become one
tree with shared prefixes merged, verified in a single target pass, and the longest matching path
over all beams is accepted (greedy, or exactly by sampling the target at each node).

When the target samples, beams are a poor guess of a random continuation: the head samples W
independent chains instead (same tree, same single verification), and multi-draft rejection
sampling accepts them exactly (see mlx_spec/accept.py). `sampled_drafts=False` keeps beams.
When sampling, the target's sampling head is used where one was shipped for it (distilled with
`mlxspec distill --soft-labels` on the target's whole distributions: its chains are accepted far
more often than those of a head distilled on greedy tokens, which stays the greedy head). The chains
are drawn from the head's logits divided by head_temperature: the value its config.json names
(--soft-labels writes 1, the head having learned the target's own distribution), else 2, since a
head distilled from greedy text is sharper than a sampling target and a flatter q is accepted more
often (docs/tuning.md).

The draft depth adapts (mlx_spec/drafters/draft_length.py): the tokens each depth would have
produced, learned as steps are verified, against the cost of drafting and verifying its levels, so
drafts shrink where the head keeps missing (high temperatures, unfamiliar text) and grow back to
beam_length when it keeps hitting. Greedy too (adaptive=None or True; False drafts beam_length
always): on SmolLM2's chat answers the head misses for whole answers (36% agreement), where a fixed
depth verified 9 drafts per step for 1.0 tokens until the back-off paused it, each such step ~2x a
plain one. Greedy drafts never change the output, so the greedy chooser carries what it learned to
the next request; a sampling one too, except with backoff=False, where it starts over so that a
seed gives one text (draft_length.ModelChoosers).

On a GPU the next beam search starts asynchronously as soon as a verification is observed, so it
runs while the engine commits the cache and streams text.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import mlx.core as mx

from ...errors import MlxSpecError
from ...loading import compute_on_cpu, shipped_companion, shipped_model
from ...tree import Tree
from .. import register
from ..base import Drafter, StepContext, check_draft_size
from ..draft_length import PRIOR, DraftChooser, ModelChoosers, shipped_acceptance, verify_cost_for
from ..shared import shared
from .beam_search import beam_search, greedy_chain
from .chain_sampling import sample_chains
from .head import load_drafter
from ..model_parts import token_embedding

GREEDY_HEAD_TEMPERATURE = 2.0  # for heads distilled on tokens (see the module text)
# shipped heads are found by the target they were made for, one per role: the head for greedy
# decoding, and (where one was distilled with --soft-labels) the head for sampling; a target with
# only one of them uses it for both
HEAD_ROLE = "redrafter-head"
SAMPLING_HEAD_ROLE = "redrafter-sampling-head"
# mx.async_eval runs in the calling thread on the CPU backend (measured: it returns only when the
# work is done), so there it would only move drafting time into the engine's "other" bucket
_EVAL_OVERLAPS = not compute_on_cpu()


def _head_folders(head: Optional[str], config: dict) -> tuple[Path, Path]:
    """(greedy head, sampling head). head=PATH serves both; head=None: the shipped heads whose
    target.json names this target's shape."""
    if head is not None:
        folder = shipped_model(head) or Path(head).expanduser()
        return folder, folder
    greedy = shipped_companion(config, HEAD_ROLE)
    sampling = shipped_companion(config, SAMPLING_HEAD_ROLE)
    if greedy is None and sampling is None:
        raise MlxSpecError("no shipped ReDrafter head fits this target; pass head=PATH (train "
                           "one with `mlxspec distill --instructions` for a chat model)")
    return greedy or sampling, sampling or greedy


def _load_head(model, folder: Path, draft_vocab: bool = True):
    """Load the head once per target (with its drafting tables: from its drafting vocabulary, if
    it has one and draft_vocab); it is checked against the target's vocabulary and width."""
    heads, key = shared(model).heads, (str(folder.resolve()), draft_vocab)
    if key not in heads:
        drafter = load_drafter(folder)
        embed = token_embedding(model.model)
        vocab, hidden = embed.weight.shape[0], drafter.config.hidden_size
        dims = model.config.get("hidden_size")
        if drafter.config.vocab_size != vocab or (dims and hidden != dims):
            raise MlxSpecError(f"the ReDrafter head in {folder} was made for vocab "
                               f"{drafter.config.vocab_size} / hidden {hidden}; this target has "
                               f"vocab {vocab} / hidden {dims}")
        heads[key] = (drafter, drafter.drafting_tables(embed, use_vocab=draft_vocab))
    return heads[key]


@register("redrafter")
class ReDrafter(Drafter):
    needs_hidden_states = True

    def __init__(self, model, beam_width: int = 1, beam_length: int = 10, head: Optional[str] = None,
                 top_k: int = 50, min_prob: float = 0.0, sampled_drafts: bool = True,
                 adaptive: Optional[bool] = None, verify_cost: Optional[float] = None,
                 verify_overhead: Optional[float] = None,
                 draft_cost: float = 0.06, head_temperature: Optional[float] = None,
                 draft_vocab: bool = True):
        check_draft_size("beam_length", beam_length, least=2)
        check_draft_size("beam_width", beam_width)
        check_draft_size("beam_width x (beam_length - 1)", beam_width * (beam_length - 1))
        if not 0.0 <= min_prob < 1.0:
            raise ValueError("min_prob must be in [0, 1)")
        self.width, self.length, self.top_k = beam_width, beam_length, top_k
        # a beam is cut where the head's probability of its prefix drops below min_prob: such
        # nodes would cost verification work for little expected gain
        self.min_log_prob = math.log(min_prob) if min_prob > 0 else -math.inf
        self.sampled_drafts = sampled_drafts
        self.choosers: Optional[ModelChoosers] = None  # None: fixed depth
        folders = _head_folders(head, model.config)  # (greedy head, sampling head)
        if adaptive is not False:
            verify = {sampled: verify_cost_for(model, verify_cost, verify_overhead,
                                               default=(0.07, 0.15), tree=beam_width > 1,
                                               sampled=sampled)
                      for sampled in (False, True)}  # priced once: a request's chooser reads it

            def make(start_level=PRIOR, sampled=False):
                return DraftChooser.for_depths(beam_length - 1, 0, draft_cost=draft_cost,
                                               verify=verify[sampled], probe_backoff=True,
                                               start_level=start_level)

            settings = ("redrafter", head, beam_width, beam_length, top_k, min_prob,
                        sampled_drafts, verify_cost, verify_overhead, draft_cost,
                        head_temperature, draft_vocab)
            self.choosers = ModelChoosers(model, settings, make, shipped_acceptance(folders[1]))
        if head_temperature is not None and head_temperature <= 0:
            raise ValueError("head_temperature must be > 0")
        # by regime (sampling?): the head, its drafting tables, the temperature of its chains
        # draft_vocab=False drafts from the whole vocabulary even where the head has a drafting
        # vocabulary (head.py)
        self.heads = {sampling: _Head(*_load_head(model, folder, draft_vocab), head_temperature)
                      for sampling, folder in zip((False, True), folders)}
        self.embed = token_embedding(model.model)
        self._pending = None  # the drafts for the next root, still lazy (see _Drafts)

    def begin(self, prompt_tokens: list[int]) -> None:
        # no hidden state for the prompt's last token yet: the first step verifies the root alone
        self._pending = None
        if self.choosers is not None:
            self.choosers.begin()

    def keep_learning(self) -> None:
        if self.choosers is not None:
            self.choosers.keep_learning()

    def propose(self, ctx: StepContext) -> Tree:
        root, pending = ctx.tokens[-1], self._pending
        if pending is None or pending.root != root or ctx.max_drafts < 1:
            return Tree.from_chain(root, [])
        if pending.probs is not None:
            return self._sampled_tree(root, pending, ctx.max_drafts, ctx.trees)
        if pending.log_probs is None:  # a greedy chain: every token kept
            return Tree.from_chain(root, pending.tokens.tolist()[0][1:1 + ctx.max_drafts])
        tokens, log_probs = pending.tokens, pending.log_probs
        mx.eval(tokens, log_probs)  # one evaluation of the shared graph (no-op if already done)
        branches = [beam[1:1 + self._kept(lp, best=i == 0, limit=ctx.max_drafts)]
                    for i, (beam, lp) in enumerate(zip(tokens.tolist(), log_probs.tolist()))]
        tree = Tree.from_branches(root, [b for b in branches if b])
        if len(tree) - 1 > ctx.max_drafts or not ctx.trees:  # near the token limit, or a
            # chain-only target: keep the best beam only
            tree = Tree.from_chain(root, branches[0])
        return tree

    def _sampled_tree(self, root: int, pending: "_Drafts", max_drafts: int, trees: bool) -> Tree:
        mx.eval(pending.tokens, pending.probs)
        branches = pending.tokens.tolist()
        if sum(len(b) for b in branches) > max_drafts or not trees:  # near the token limit or
            branches = [branches[0][:max_drafts]]  # chain-only: one chain is still an exact sample
        return Tree.from_sampled_branches(root, branches, pending.probs)

    def _kept(self, log_probs: list[float], best: bool, limit: int) -> int:
        """How many draft tokens of a beam to keep (the best beam keeps at least one)."""
        total, kept = 0.0, 0
        for log_p in log_probs[:limit]:
            total += log_p
            if total < self.min_log_prob and not (best and kept == 0):
                break
            kept += 1
        return kept

    def _chooser(self, ctx: StepContext) -> Optional[DraftChooser]:
        """The depth chooser of this step, None where the depth is fixed (adaptive=False)."""
        return self.choosers.get(ctx.sampling) if self.choosers is not None else None

    def observe(self, ctx, tree, acceptance, out) -> None:
        self._pending = None  # spent; prepare() makes the next root's drafts if it is called
        chooser = self._chooser(ctx)
        if chooser is not None:  # a root-only tree (nothing drafted) lets unexplored depths
            # drift back up
            chooser.record(acceptance.accepted_drafts, max(tree.depths), len(tree) - 1)

    def prepare(self, ctx, acceptance, out) -> None:
        """Run the head on the hidden state of the last accepted token: the next root's drafts."""
        chooser = self._chooser(ctx)
        depth = (chooser.choose(cached=len(ctx.tokens)) if chooser is not None
                 else self.length - 1)
        if depth == 0:  # plain decoding pays more here than drafting wins back
            self._pending = None
            return
        root = acceptance.tokens[-1]
        hidden = out.hidden[acceptance.path[-1]]
        head = self.heads[not ctx.sampling.greedy]
        if self.width == 1 and ctx.sampling.greedy and self.min_log_prob == -math.inf:
            tokens = greedy_chain(head.model, self.embed, hidden[None], mx.array([root]), depth + 1,
                                  head.tables)
            drafts = _Drafts(root, tokens)  # nothing reads a greedy chain's probabilities
        elif ctx.sampling.greedy or not self.sampled_drafts:
            beams = beam_search(head.model, self.embed, hidden[None], mx.array([root]), self.width,
                                depth + 1, self.top_k, tables=head.tables)
            drafts = _Drafts(root, beams.tokens[0], log_probs=beams.token_log_probs[0])
        else:
            tokens, probs = sample_chains(head.model, self.embed, hidden, root, self.width,
                                          depth + 1, ctx.sampling, chains_key(ctx.key),
                                          head.tables, head.temperature)
            drafts = _Drafts(root, tokens, probs=probs)
        if _EVAL_OVERLAPS:  # the GPU drafts while the engine commits the cache and streams
            mx.async_eval(*drafts.arrays())
        self._pending = drafts

    def end(self) -> None:
        self._pending = None


def chains_key(key):
    """The key the chains for the step after `key`'s are drawn with: one derived from it, not
    `key` itself, which the step's own proposer may have drawn its drafts with (the `draft`
    candidate splits it one level, once per draft token). Inside `auto` a `draft` step can be
    followed by a `redrafter` one; chains drawn with that key would be correlated with drafts
    already in the text, and exact acceptance needs chains independent of it given the text."""
    return mx.random.split(mx.random.split(key, 2)[1], 2)[0]


@dataclass
class _Head:
    """A loaded head, its drafting tables, and the temperature its sampled chains divide its
    logits by (the caller's, else its config.json's, else GREEDY_HEAD_TEMPERATURE)."""
    model: object
    tables: dict
    temperature: Optional[float] = None

    def __post_init__(self):
        if self.temperature is None:
            self.temperature = self.model.config.extra.get("head_temperature",
                                                           GREEDY_HEAD_TEMPERATURE)


@dataclass
class _Drafts:
    """Drafts made after `root`: beams (tokens [W, L] with the root first, per-token log-probs),
    a greedy chain (tokens [1, L] with the root first, no log-probs) or sampled chains (tokens
    [W, L-1] without the root, the distributions they came from)."""
    root: int
    tokens: mx.array
    log_probs: Optional[mx.array] = None
    probs: Optional[mx.array] = None

    def arrays(self) -> list:
        return [a for a in (self.tokens, self.log_probs, self.probs) if a is not None]
