"""What a drafting method is: something that proposes a Tree after the current root token and may
learn from what the target accepted. It never sees how the target verifies."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

from ..accept import Acceptance
from ..sampling import SamplingParams
from ..target import VerifyOutput
from ..tree import Tree

MAX_DRAFTS = 256  # the most draft tokens a drafter's settings may ask one step to verify: far
# past what pays on any machine (a verify of 256 tokens costs tens of one-token steps), and the
# choosers weigh every size at every step (num_draft_tokens=100000 hung before its first step)


def check_draft_size(name: str, value: int, least: int = 1, error: type = ValueError) -> None:
    """Refuse a draft-size setting outside least..MAX_DRAFTS: a ValueError in a drafter (create()
    names the method), the `error` a decoder of its own raises (MlxSpecError)."""
    if not least <= value <= MAX_DRAFTS:
        raise error(f"{name} must be in {least}..{MAX_DRAFTS}, got {value}")


@dataclass
class StepContext:
    tokens: list[int]          # prompt + output so far; tokens[-1] is the root (not yet cached)
    max_drafts: int            # never propose more candidate tokens than this
    sampling: SamplingParams
    key: Optional[object] = None  # an mx.random key for drafters that sample
    trees: bool = True         # False: the target verifies chains only (propose a chain)
    # the decoder's own time (s): wall time less what its consumer held the yielded steps (a UI,
    # or the bench running other methods' steps in between); a drafter timing whole steps reads it
    clock: Callable[[], float] = time.perf_counter


class Drafter:
    name = "base"
    # True for drafters that need the target's hidden states (the engine checks the model has them)
    needs_hidden_states = False
    # True for drafters whose proposal depends on the tokens so far alone (no model run, no random
    # draws), so asking for a tree that is never sent costs little and changes nothing (auto
    # scores such candidates in the shadow)
    drafts_from_text = False

    @property
    def learns_while_paused(self) -> bool:
        """Whether the drafter goes on guessing on the engine's back-off's plain steps and learns
        from those unsent guesses (pld, lookahead), so that expected_gain() can end a pause."""
        return False

    def expected_gain(self) -> Optional[float]:
        """The speedup over plain decoding that the drafter's own evidence expects of drafting
        now (engine.BackOff.resume_if), or None where it has none."""
        return None

    def begin(self, prompt_tokens: list[int]) -> None:
        """A new request starts; prompt_tokens ends with the root."""

    def keep_learning(self) -> None:
        """Carry what the drafter learns while sampling (its draft sizes) across requests. By
        default a drafter whose sampled drafts depend on it starts afresh each request, so that a
        seed gives the same text; where no seed reproduces the text anyway, this is called: on
        auto's candidates, and on a drafter whose decoder has the engine's back-off
        (methods.make_decoder; draft_length.ModelChoosers)."""

    def propose(self, ctx: StepContext) -> Tree:
        raise NotImplementedError

    def while_verifying(self, ctx: StepContext) -> None:
        """Work for this step that the tree does not wait on: the engine calls it right after it
        dispatches the verify of the tree propose() returned (on a GPU the host is free until the
        step's one sync), and before observe(). A decoder that cannot overlap calls it right
        after propose()."""

    def observe(self, ctx: StepContext, tree: Tree, acceptance: Acceptance,
                out: VerifyOutput) -> None:
        """The target verified `tree` and accepted `acceptance`; ctx.tokens is already extended."""

    def prepare(self, ctx: StepContext, acceptance: Acceptance, out: VerifyOutput) -> None:
        """The next step will draft: start on it from the target's outputs of this one (drafters
        whose drafts need them, e.g. a head on the hidden state, begin here so the work overlaps
        streaming). Not called before steps that draft nothing (the engine's back-off), and
        called after steps whose tree another drafter proposed (method `auto`)."""

    def steady(self) -> bool:
        """Whether the step just observed shows the method's own speed: the engine's back-off
        judges drafting on such steps only (auto: not the trials it lends other candidates, a
        bounded cost of choosing that had paused auto for 16-64 steps where its leader won)."""
        return True

    def switch_instead(self, plain_s: float, clear: float) -> bool:
        """Asked when the engine's back-off judged the last drafting steps a loss, before it
        pauses drafting: a drafter that can draft another way whose own measurements beat plain
        decoding (a step of `plain_s` seconds, one token) by more than `clear` switches to it
        and returns True, and drafting goes on (auto: another candidate; after an idle model
        drafter's loss, a text-only one at plain decoding's rate or above)."""
        return False

    def proposers(self) -> dict[str, int]:
        """This request's drafting steps per method that proposed them (method `auto`)."""
        return {}

    def end(self) -> None:
        """The request finished (drafters that keep state across requests update it here)."""
