"""`pld`: prompt-lookup drafting. Find the most recent earlier occurrence of the last n tokens
(n = ngram_max down to ngram_min) in prompt + output and propose the tokens that followed it.

An incremental index (n-gram -> where its latest earlier occurrence ended) keeps each step O(n)
instead of rescanning the whole context.

Adaptive length (mlx_spec/drafters/draft_length.py): every lookup is remembered until the tokens it guessed
are known, then scored as if all of it had been sent (acceptance walks the target's own draws, so
what the target says does not depend on what was drafted). Guesses that keep failing (sampling at a
high temperature, text that does not repeat) shrink the draft down to plain decoding, and a
sampling regime's chooser drafts only as far as its forecasts held (DraftChooser.trust: at a
high temperature one lucky guess lifts its estimates for the misses that follow); the scoring
goes on, so drafting resumes when guesses start to match. Guesses made while the text still follows
an earlier one (inside a copied span) are sized and learned from by a chooser of their own, since
they hold far more often than the rest (RegimeChoosers.of). What it learned is kept per loaded model
and sampling regime (greedy, or each temperature and filter: SamplingParams.regime), so the next
request starts from it.
"""
from __future__ import annotations

from typing import Optional

from .draft_length import (DraftChooser, Guesses, RegimeChoosers, SizedByRegime,
                           verify_cost_for)
from ..tree import Tree
from . import register
from .base import MAX_DRAFTS, Drafter, StepContext, check_draft_size


class NgramIndex:
    def __init__(self, ngram_min: int, ngram_max: int):
        self.ngram_min, self.ngram_max = ngram_min, ngram_max
        self.tokens: list[int] = []
        self._continuation: dict[tuple[int, ...], int] = {}
        self._indexed_until = 0  # n-grams ending before this position are indexed

    def reset(self, tokens: list[int]) -> None:
        self.tokens, self._continuation, self._indexed_until = [], {}, 0
        self.extend(tokens)

    def extend(self, new_tokens: list[int]) -> None:
        self.tokens.extend(new_tokens)
        # index every n-gram whose continuation is known (it ends before the last token)
        for end in range(max(self._indexed_until, 1), len(self.tokens)):
            for n in range(self.ngram_min, self.ngram_max + 1):
                if end - n >= 0:
                    self._continuation[tuple(self.tokens[end - n:end])] = end
        self._indexed_until = max(self._indexed_until, len(self.tokens))

    def lookup(self, max_tokens: int) -> list[int]:
        for n in range(self.ngram_max, self.ngram_min - 1, -1):
            if len(self.tokens) < n:
                continue
            start = self._continuation.get(tuple(self.tokens[-n:]))
            if start is not None:
                return self.tokens[start:start + max_tokens]
        return []


@register("pld")
class PromptLookup(SizedByRegime, Drafter):
    drafts_from_text = True

    def __init__(self, model, num_draft_tokens: int = 8, ngram_max: int = 3, ngram_min: int = 1,
                 adaptive: bool = True, verify_cost: Optional[float] = None,
                 verify_overhead: Optional[float] = None):
        check_draft_size("num_draft_tokens", num_draft_tokens)
        if not 1 <= ngram_min <= ngram_max <= MAX_DRAFTS:
            raise ValueError(f"need 1 <= ngram_min <= ngram_max <= {MAX_DRAFTS}")
        self.num_draft_tokens = num_draft_tokens
        self.index = NgramIndex(ngram_min, ngram_max)
        settings = ("pld", num_draft_tokens, verify_cost, verify_overhead)
        self.choosers = (RegimeChoosers(model, settings, lambda sampled=False: (
            DraftChooser.for_depths(num_draft_tokens, 0, calibrated=sampled, verify=verify_cost_for(
                model, verify_cost, verify_overhead, default=(0.07, 0.2), sampled=sampled))))
                         if adaptive else None)
        self._guesses = Guesses(_chain_outcome)

    def begin(self, prompt_tokens: list[int]) -> None:
        self.index.reset(prompt_tokens)
        self._guesses.clear()  # the chooser keeps what earlier requests taught it

    def propose(self, ctx: StepContext) -> Tree:
        """A plain step (the engine's back-off, the last token) sends nothing but still looks
        up, so the chooser learns during the back-off's pauses what drafting would have won."""
        if ctx.max_drafts < 1 and self.choosers is None:
            return Tree.from_chain(ctx.tokens[-1], [])  # the index catches up on the next step
        if len(self.index.tokens) != len(ctx.tokens):
            self.index.extend(ctx.tokens[len(self.index.tokens):])
        draft = self.index.lookup(self.num_draft_tokens)
        if self.choosers is not None:  # a guess is sized and learned from by the chooser of
            # whether the text followed an earlier guess when it was made (RegimeChoosers.of):
            # one still open, or one it matched to its end by this step
            following = False
            for (matched, offered), was_following in self._guesses.settle_each(ctx.tokens):
                self.choosers.of(ctx.sampling, was_following).record(matched, offered,
                                                                     whole=True)
                following = following or matched == offered
            following = following or self._guesses.still_open
            chooser = self.choosers.use(ctx.sampling, following)
            if draft:
                self._guesses.add(len(ctx.tokens), draft, following)
                draft = draft[:chooser.choose(cached=len(ctx.tokens))]
        return Tree.from_chain(ctx.tokens[-1], draft[:ctx.max_drafts])


def _chain_outcome(guess: list[int], tokens: list[int], start: int):
    """(tokens of the guess the text matched, its length), once a mismatch or the guess's end is
    reached."""
    actual = tokens[start:start + len(guess)]
    matched = next((i for i, (a, b) in enumerate(zip(actual, guess)) if a != b), len(actual))
    return None if matched == len(actual) < len(guess) else (matched, len(guess))
