"""`lookahead`: training-free multi-branch drafting from an n-gram trie (Ant Group's Lookahead,
arXiv 2312.12728). No second model: the last 1-2 tokens are looked up in a trie of the prompt's
n-grams and of earlier outputs, and the most frequent continuations are verified together as one
tree, so it shines when the answer reuses the prompt (summaries, quotes, code edits) or repeats the
model's habitual phrases.

Two tries, ranked in this order: the request's (its prompt, then its output as it streams), rebuilt
for every request, and the outputs', shared per loaded model (shared.py) so that every decoder on the same loaded
model shares what was generated before (a chat session, an app); its counts decay after each request
and it is pruned to `node_budget` nodes. The request's own output ranks with the prompt: a model that
starts repeating itself must be followed at once, not outvoted by the prompt's paragraphs. `warmup` pre-fills it
from a text file of past answers or a saved trie; `save_trie` writes it after each request.

Adaptive budget: a wide tree costs more to verify (on a CPU, 32 tokens cost about 3 single-token
forwards), so a wrong guess is not free. Every retrieval is kept until the tokens it guessed are
known, and then scored for every candidate budget at once: the first d nodes of a retrieval are the
tree a budget of d would have sent (retrieval is best-first), so the drafter's chooser
(draft_length.DraftChooser, the one pld and redrafter size their chains with) learns, for each d,
the tokens a call would have produced. It sends the budget with the best tokens per unit of
verification cost, 0 (plain decoding) when guesses keep failing, and notices when they start
matching again: while at 0 it retrieves only PEEK nodes on every PEEK_EVERY-th step, which teach
the small budgets it grows back through, at a fraction of a full retrieval's cost.

All trie work happens inside propose(), so the engine's draft time is this method's whole cost.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from ..errors import MlxSpecError
from ..tree import Tree
from .trie import NgramTrie, Retrieval, TrieStream, is_saved_trie, retrieve
from . import CliFlag, register
from .base import Drafter, StepContext, check_draft_size
from .draft_length import (DraftChooser, Guesses, RegimeChoosers, SizedByRegime,
                           verify_cost_for)
from .shared import shared

# nodes retrieved while the chooser keeps to plain decoding: the small budgets it would grow back
# through learn from them; a full retrieval (decoding_length 32, best-first over two tries) cost
# ~3% of a 14 ms step on the embedded target at T = 1.0, where nothing it found was sent
PEEK = 4
PEEK_EVERY = 4  # ... and only on every PEEK_EVERY-th such step: a sample of them is enough to
# notice guesses matching again, and a peek on every plain step (catch-up, retrieval, scoring;
# ~0.4 ms) cost 3-4% of the embedded target's 10 ms step at T = 1.0, where plain steps are most
PRUNE_TO = 0.8  # once over its node budget, the trie is pruned to this fraction of it (so a
# sorting prune runs once per many requests, not on every step that adds a node)


@register("lookahead", flags=[CliFlag("--lookahead-warmup", "warmup", str,
                                             "lookahead: past answers (text) or a saved trie.")])
class Lookahead(SizedByRegime, Drafter):
    drafts_from_text = True

    def __init__(self, model, decoding_length: int = 32, branch_length: int = 12,
                 match_length: int = 2, mode: str = "multi", node_budget: int = 200_000,
                 decay: float = 0.9, adaptive: bool = True, verify_cost: Optional[float] = None,
                 verify_overhead: Optional[float] = None,
                 warmup: Optional[str] = None, save_trie: Optional[str] = None):
        for setting, value in (("decoding_length", decoding_length),
                               ("branch_length", branch_length), ("match_length", match_length)):
            check_draft_size(setting, value)
        if mode not in ("multi", "single"):
            raise ValueError(f"mode must be 'multi' or 'single', got {mode!r}")
        if node_budget < 1 or not 0.0 < decay <= 1.0:
            raise ValueError("need node_budget >= 1 and 0 < decay <= 1")
        self.decoding_length, self.branch_length = decoding_length, branch_length
        self.match_length, self.mode = match_length, mode
        self.window = match_length + branch_length
        self.node_budget, self.decay_factor = node_budget, decay
        self.save_path = save_trie
        # one chooser per loaded model, settings and sampling regime: a request starts from what
        # the last ones taught it (a fresh optimistic one per request paid a few 32-node misses
        # each time)
        self.choosers = (RegimeChoosers(model, ("lookahead", decoding_length, verify_cost,
                                                verify_overhead),
                                        lambda sampled=False: DraftChooser.for_budgets(
                                            decoding_length, verify=verify_cost_for(
                                                model, verify_cost, verify_overhead,
                                                default=(0.06, 0.25), tree=True,
                                                sampled=sampled)))
                         if adaptive else None)
        state = shared(model)
        if state.output_trie is None:
            state.output_trie = NgramTrie()
        self.output_trie: NgramTrie = state.output_trie
        if warmup is not None:
            self._warm_up(model, warmup)
        self.request_trie = NgramTrie()
        self.timing = {"calls": 0, "insert_s": 0.0, "retrieve_s": 0.0}
        self._tokens: Optional[list[int]] = None  # the request's tokens, as last seen (begin)
        self._request: Optional[TrieStream] = None
        self._output: Optional[TrieStream] = None
        self._output_from = 0
        self._guesses = Guesses(self._outcome)  # retrievals, scored once their outcome is known

    # -- warm start -------------------------------------------------------------------------------
    def _warm_up(self, model, path: str) -> None:
        """Fill the shared output trie once per loaded model and file."""
        file = Path(path).expanduser()
        if not file.is_file():
            raise MlxSpecError(f"lookahead warmup: {path} is not a file (past answers as text, "
                               "or a saved trie)")
        done = shared(model).warmed_from
        if str(file.resolve()) in done:
            return
        if is_saved_trie(file):
            try:
                self.output_trie.absorb(NgramTrie.load(file))
            except ValueError as exc:
                raise MlxSpecError(str(exc)) from None
        else:
            self._insert_answers(model.tokenizer, file.read_text(errors="replace"))
        self.output_trie.prune(self.node_budget)
        done.add(str(file.resolve()))

    def _insert_answers(self, tokenizer, text: str, slice_tokens: int = 20_000) -> None:
        """Past answers as output branches. The text is tokenized as one stream (so paragraph
        breaks are tokenized as in generation) and counted in slices, pruning in between so a
        large corpus never holds more than a little over the node budget."""
        tokens = tokenizer.encode(text, add_special_tokens=False)
        for first in range(0, len(tokens), slice_tokens):
            self.output_trie.insert(tokens, self.window, first, first + slice_tokens)
            self._keep_within_budget()

    # -- one request ------------------------------------------------------------------------------
    def _keep_within_budget(self) -> None:
        if self.output_trie.size > self.node_budget:
            self.output_trie.prune(int(PRUNE_TO * self.node_budget))

    def begin(self, prompt_tokens: list[int]) -> None:
        # the prompt is indexed in the first propose(), so its cost shows in the draft time
        self.request_trie = NgramTrie()
        self._request = TrieStream(self.request_trie, self.window)
        self._output = TrieStream(self.output_trie, self.window)
        # output windows start a little before the answer, so its first tokens can be matched
        self._output_from = max(0, len(prompt_tokens) - self.match_length)
        self._guesses.clear()
        self._plain_steps = 0  # plain steps so far (PEEK_EVERY)
        self._tokens = None
        self.timing = {"calls": 0, "insert_s": 0.0, "retrieve_s": 0.0}

    def _catch_up(self, tokens: list[int]) -> None:
        """Insert the tokens the tries have not seen yet (the engine extends `tokens` in place)."""
        self._tokens = tokens
        self._request.extend(tokens[len(self._request.tokens):])
        self._output.extend(tokens[self._output_from + len(self._output.tokens):])
        self._keep_within_budget()

    def propose(self, ctx: StepContext) -> Tree:
        t0 = time.perf_counter()
        tokens = ctx.tokens
        if ctx.max_drafts < 1 and self.choosers is None:  # a plain step: the tries catch up on
            self.timing["calls"] += 1                      # the next drafting step
            return Tree.from_chain(tokens[-1], [])
        budget = self.decoding_length
        if self.choosers is not None:
            chooser = self.choosers.use(ctx.sampling)
            for outcome in self._guesses.settle(tokens):
                chooser.record_ranks(*outcome)
            budget = chooser.choose(cached=len(tokens)) if ctx.max_drafts >= 1 else 0
            if budget == 0:
                self._plain_steps += 1
                if self._plain_steps % PEEK_EVERY:  # the tries catch up on the next peek
                    self._tokens = tokens            # (or at the end of the request)
                    self.timing["calls"] += 1
                    return Tree.from_chain(tokens[-1], [])
        self._catch_up(tokens)
        t1 = time.perf_counter()
        # while plain decoding is chosen (by the chooser, or the engine's back-off), a retrieval
        # of PEEK nodes still teaches the budgets drafting grows back through, for a fraction of
        # a full one's cost
        asked = self.decoding_length if budget > 0 else min(PEEK, self.decoding_length)
        depth = min(self.branch_length, ctx.max_drafts) if budget else self.branch_length
        mode = self.mode if ctx.trees else "single"  # a chain-only target: the best branch
        found = retrieve([self.request_trie, self.output_trie], tokens[-self.match_length:],
                         asked, depth, self.match_length, mode)
        if self.choosers is not None and len(found) > 1:
            self._guesses.add(len(tokens), (found, asked))
        keep = 1 + min(budget, ctx.max_drafts, len(found) - 1)
        tree = Tree(tokens=found.tokens[:keep], parents=found.parents[:keep])

        t2 = time.perf_counter()
        self.timing["calls"] += 1
        self.timing["insert_s"] += t1 - t0
        self.timing["retrieve_s"] += t2 - t1
        return tree

    def _outcome(self, guess: tuple[Retrieval, int], tokens: list[int], start: int):
        """(retrieval nodes the text walked through, nodes retrieved, nodes asked for), once the
        walk is over."""
        found, asked = guess
        continuation = tokens[start:start + self.branch_length]
        ranks, ran_out = found.matched_ranks(continuation)
        if ran_out and len(continuation) < self.branch_length:
            return None
        return ranks, len(found) - 1, asked

    def end(self) -> None:
        if self._tokens is not None:  # the answer's last tokens, and any left by plain steps
            self._catch_up(self._tokens)
        self.output_trie.decay(self.decay_factor)
        if self.save_path:
            self.output_trie.save(self.save_path)
