"""How deep to draft: the length with the most expected tokens per unit of step cost.

Acceptance is learned per depth as a hazard: h_d = P(draft token d is accepted | tokens 1..d-1
were), a running average over the outcomes seen (an outcome "first m of n drafted tokens accepted"
says yes for depths 1..m and no for depth m+1, nothing beyond). A draft of length L then yields
1 + sum_{d<=L} h_1 h_2 ... h_d tokens per target call on average (the bonus token included), and
costs, in units of a one-token target call,

    verify(nodes(L)) + draft_cost * L

where nodes(L) is the tree's size per depth times L (a beam tree is wider than a chain) and
verify(n) the cost of a target call verifying n drafts: measured on this machine for the loaded
target (mlx_spec/cost.py), or the line 1 + [n > 0] (verify_overhead + verify_cost n) when a caller
sets those constants or there is no model to measure. Falling
acceptance (sampling at a high temperature, text the drafter does not know) shortens drafts, down to
plain decoding where that is allowed; rising acceptance lengthens them again. Depths never drafted
drift slowly back to an optimistic prior, so a longer draft is tried again after a bad stretch.

"""
from __future__ import annotations

from typing import Callable, Optional

from .shared import shared, target_cost

VerifyCost = Callable[[float], float]  # drafts verified (root excluded) -> cost in one-token steps


def linear_verify_cost(verify_cost: float, verify_overhead: float) -> VerifyCost:
    """A fixed step up for any draft at all (one-row matmuls are matrix-vector products, cheaper
    per row), then a cost per draft."""
    return lambda nodes: 1.0 + (verify_overhead + verify_cost * nodes if nodes else 0.0)


def verify_cost_for(model, verify_cost: Optional[float], verify_overhead: Optional[float],
                    default: tuple[float, float]) -> VerifyCost:
    """Constants a caller set win; otherwise the loaded target's measured cost model; `default`
    (per draft, overhead) only where there is no model to measure."""
    if verify_cost is None and verify_overhead is None and model is not None:
        measured = target_cost(model)
        return lambda nodes: measured.relative(1 + nodes)  # relative(1) is 1: no drafts
    per_draft = default[0] if verify_cost is None else verify_cost
    overhead = default[1] if verify_overhead is None else verify_overhead
    if min(per_draft, overhead) < 0:
        raise ValueError("verify costs must be >= 0")
    return linear_verify_cost(per_draft, overhead)

PRIOR = 0.8  # assumed acceptance of a depth before anything is known about it
DRIFT = 0.1  # how fast (relative to `rate`) unobserved depths return to the prior


class DraftLengthChooser:
    def __init__(self, max_length: int, min_length: int = 0, verify_cost: float = 0.07,
                 verify_overhead: float = 0.15, draft_cost: float = 0.0, rate: float = 0.15,
                 verify: Optional[VerifyCost] = None):
        if not 0 <= min_length <= max_length:
            raise ValueError("need 0 <= min_length <= max_length")
        self.max_length, self.min_length = max_length, min_length
        self.verify = verify or linear_verify_cost(verify_cost, verify_overhead)
        self.draft_cost = draft_cost
        self.rate = rate
        self.reset()

    def reset(self) -> None:
        self.hazard = [PRIOR] * (self.max_length + 1)  # index d = depth d (index 0 unused)
        self.nodes_per_depth = 1.0

    def expected_tokens(self, length: int) -> float:
        total, survive = 1.0, 1.0
        for d in range(1, length + 1):
            survive *= self.hazard[d]
            total += survive
        return total

    def cost(self, length: int) -> float:
        if length == 0:
            return 1.0
        return self.verify(self.nodes_per_depth * length) + self.draft_cost * length

    def choose(self, limit: int | None = None) -> int:
        top = self.max_length if limit is None else max(min(limit, self.max_length), 0)
        low = min(self.min_length, top)
        return max(range(low, top + 1), key=lambda n: (self.expected_tokens(n) / self.cost(n), -n))

    def record(self, accepted: int, offered: int, nodes: int | None = None) -> None:
        """A draft `offered` tokens deep (per branch) had its first `accepted` tokens accepted;
        `nodes` is its tree size without the root, when it was a tree. offered=0 (a step that
        drafted nothing) teaches nothing, but lets every depth drift back towards the prior."""
        offered = min(offered, self.max_length)
        seen = min(accepted + 1, offered)
        for d in range(1, self.max_length + 1):
            if d <= seen:
                self.hazard[d] += self.rate * ((1.0 if d <= accepted else 0.0) - self.hazard[d])
            else:
                self.hazard[d] += self.rate * DRIFT * (PRIOR - self.hazard[d])
        if nodes and offered:
            self.nodes_per_depth += self.rate * (nodes / offered - self.nodes_per_depth)


class Guesses:
    """A drafter's guesses, each kept from the step it was made until the text has gone far
    enough past it to say how it would have fared; the choosers learn from those outcomes, sent
    or not (a longer guess than the chooser let through still teaches about its deeper levels).
    outcome(guess, tokens, start) gives the outcome, or None while later tokens could change it."""

    def __init__(self, outcome: Callable):
        self.outcome = outcome
        self.open: list[tuple[int, object]] = []

    def add(self, start: int, guess) -> None:
        """`guess` was made when the text was tokens[:start]."""
        self.open.append((start, guess))

    def clear(self) -> None:
        self.open = []

    def settle(self, tokens: list[int]) -> list:
        """The outcomes that `tokens` decides, oldest first; the rest stay open."""
        known, still_open = [], []
        for start, guess in self.open:
            result = self.outcome(guess, tokens, start)
            if result is None:
                still_open.append((start, guess))
            else:
                known.append(result)
        self.open = still_open
        return known


def shared_chooser(model, key: tuple, make):
    """One chooser per loaded model and drafter settings (drafters/shared.py), so what it learned
    carries over to the next request and decoder; a fresh one where there is no model. Only for
    drafters whose drafts never change the output (pld, lookahead: the target's draws depend on
    the seed and position alone), since a carried-over state changes what is drafted."""
    if model is None:
        return make()
    choosers = shared(model).draft_lengths
    if key not in choosers:
        choosers[key] = make()
    return choosers[key]
