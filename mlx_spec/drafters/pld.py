"""`pld`: prompt-lookup drafting. Find the most recent earlier occurrence of the last n tokens
(n = ngram_max down to ngram_min) in prompt + output and propose the tokens that followed it.

An incremental index (n-gram -> where its latest earlier occurrence ended) keeps each step O(n)
instead of rescanning the whole context.
"""
from __future__ import annotations

from ..tree import Tree
from . import register
from .base import Drafter, StepContext


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
class PromptLookup(Drafter):
    def __init__(self, model, num_draft_tokens: int = 8, ngram_max: int = 3, ngram_min: int = 1):
        if num_draft_tokens < 1 or not 1 <= ngram_min <= ngram_max:
            raise ValueError("need num_draft_tokens >= 1 and 1 <= ngram_min <= ngram_max")
        self.num_draft_tokens = num_draft_tokens
        self.index = NgramIndex(ngram_min, ngram_max)

    def begin(self, prompt_tokens: list[int]) -> None:
        self.index.reset(prompt_tokens)

    def propose(self, ctx: StepContext) -> Tree:
        if len(self.index.tokens) != len(ctx.tokens):
            self.index.extend(ctx.tokens[len(self.index.tokens):])
        draft = self.index.lookup(min(self.num_draft_tokens, ctx.max_drafts))
        return Tree.from_chain(ctx.tokens[-1], draft)
