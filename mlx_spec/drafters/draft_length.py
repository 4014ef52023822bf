"""How much to draft: the draft size with the most expected tokens per unit of step cost, one
chooser for every drafter that sizes its drafts (pld, lookahead, redrafter).

A size s is how much of the drafter's guess a call sends: for a chain drafter its first s tokens
(depth s; beams send s levels of every beam), for a ranked tree (lookahead's retrievals, best node
first) its first s nodes. For every candidate size the chooser keeps running averages of the
tokens a call of that size would have produced (the bonus token included) and of the draft nodes
it would have verified, learned from every guess whose outcome is known, sent or not (a guess
longer than the size let through still says what the deeper sizes would have done). A size costs,
in units of a one-token target call,

    verify(nodes(s)) + draft_cost * s

where verify(n) is the cost of a target call verifying n drafts: measured on this machine for the
loaded target (mlx_spec/cost.py; a sampling regime's chooser reads the sampled verifies' times,
the greedy one the greedy ones), or the line 1 + [n > 0] (verify_overhead + verify_cost n) when a
caller sets those constants or there is no model to measure. Falling acceptance (sampling at a high
temperature, text the drafter does not know) shrinks drafts, down to plain decoding (size 0) where
that is allowed; rising acceptance grows them again: a size deeper than a guess that matched to its
end is unknown, and moves towards that outcome extended optimistically (PRIOR per further level,
or a sampling drafter's measured acceptance where it starts from that, raised as its first level
holds: DraftChooser._deeper_level), and after plain steps every size drifts slowly back to its
prior, so drafting is probed again after a bad stretch. pld's sampling choosers, which learn
from every guess, sent or not, also draft only as far as their estimates held where they would
have drafted before (DraftChooser.trust). The drift is optimism, not evidence: a
probe's outcome is learned from where the size stood before it drifted (`learned`), so a failed
probe puts it back where the misses had left it, and the next probe is again a whole drift away
(~15 plain steps for a draft model on SmolLM2).
Learned from the drifted value, a miss moved it only a step below the threshold the drift had just
reached, and the draft model probed one step in four for whole answers it never matched (~5%
slower than plain decoding). Where a chooser learns only from what it sent (a drafter with a model
of its own: `probe_backoff`), each probe that wins nothing halves the drift's speed, down to an
eighth, and a probe that wins a token restores it: on text the drafter does not know, probes fall
from one per whole drift to one per several, while a drafter that starts to match again is back at
the usual pace after one success. Such a probe drafts at most PROBE_DEPTH tokens (SmolLM2's draft
model at T = 1.0 probed with 4, a 5-token verify plus 4 drafts for ~1 token, 34 times in 16
requests); one that matches to its end lets the next step go deeper.
"""
from __future__ import annotations

import copy
import functools
import json
import math
from pathlib import Path
from typing import Callable, Optional

from .shared import Learned, shared, target_cost

# (drafts verified (root excluded), tokens cached or None) -> cost in one-token steps
VerifyCost = Callable[[float, Optional[float]], float]
CACHED_STEP = 64  # a measured price is tabled once per this many cached tokens (_tabled)


def linear_verify_cost(verify_cost: float, verify_overhead: float) -> VerifyCost:
    """A fixed step up for any draft at all (one-row matmuls are matrix-vector products, cheaper
    per row), then a cost per draft (whatever the cached length)."""
    return lambda nodes, cached=None: 1.0 + (verify_overhead + verify_cost * nodes
                                             if nodes else 0.0)


def verify_cost_for(model, verify_cost: Optional[float], verify_overhead: Optional[float],
                    default: tuple[float, float], tree: bool = False,
                    sampled: bool = False) -> VerifyCost:
    """Constants a caller set win; otherwise the loaded target's measured cost model (of
    branching trees where the drafter sends them; of sampling steps for a sampling regime's
    chooser: CostModel.relative); `default` (per draft, overhead) only where there is no model
    to measure."""
    if verify_cost is None and verify_overhead is None and model is not None:
        return _tabled(target_cost(model), tree, sampled)
    per_draft = default[0] if verify_cost is None else verify_cost
    overhead = default[1] if verify_overhead is None else verify_overhead
    if not (0 <= per_draft < math.inf and 0 <= overhead < math.inf):  # (NaN fails too)
        raise ValueError("verify costs must be finite numbers >= 0")
    return linear_verify_cost(per_draft, overhead)


def _tabled(measured, tree: bool, sampled: bool) -> VerifyCost:
    """measured.relative(1 + nodes, cached=...) read from a table of its values at whole node
    counts (the model's sizes are whole numbers, so interpolating between them is exact): a
    chooser weighs every size at every step, and np.interp per size had cost lookahead's 33
    budgets ~0.2 ms a step, 2% of the embedded target's. One table per CACHED_STEP cached
    tokens, priced at the middle of its span (SmolLM2's 32-token verify moves ~5% per 64 cached
    tokens, smaller ones less: cost.py), made when first asked for; cached=None: as measured."""
    tables: dict = {}

    def table(cached: Optional[float]) -> tuple[list, Optional[float]]:
        span = None if cached is None or not measured.per_cached else int(cached) // CACHED_STEP
        if span not in tables:
            at = None if span is None else (span + 0.5) * CACHED_STEP
            tables[span] = ([measured.relative(1 + k, tree, sampled, at)
                             for k in range(int(measured.sizes[-1]))], at)
        return tables[span]

    def verify(nodes: float, cached: Optional[float] = None) -> float:
        prices, at = table(cached)
        whole = int(nodes)
        if whole + 1 >= len(prices) or nodes < 0:
            return measured.relative(1 + nodes, tree, sampled, at)
        low = prices[whole]
        return low + (nodes - whole) * (prices[whole + 1] - low) if nodes > whole else low
    return verify


PRIOR = 0.8  # assumed acceptance of one more chain level before anything is known about it
DRIFT = 0.1  # how fast (relative to `rate`) sizes return to their prior while nothing is drafted
PRIOR_WEIGHT = 1  # outcomes the prior is worth when a chooser starts afresh (DraftChooser._learn)
SLOWEST_DRIFT = 1 / 8  # the drift's speed after consecutive failed probes (probe_backoff)
PROBE_DEPTH = 2  # the deepest probe after plain steps (probe_backoff); a full match goes deeper
TRUST_DECAY = 0.9  # per scored forecast: about the last 10 decide a calibrated chooser's trust
TRUST_PRIOR = 1.0  # draft tokens of a forecast held exactly, always counted (trust): a few
# forecasts of a fraction of a token each do not drive the trust to 0


def chain_prior(size: int, level: float = PRIOR) -> float:
    """Tokens per call of a chain of `size` drafts, each level accepted with `level`."""
    return 1.0 + sum(level ** d for d in range(1, size + 1))


def shipped_acceptance(folder) -> Optional[float]:
    """The lowest first-draft acceptance under sampling that a shipped drafter's training.json
    measured on held-out text (`heldout.first_draft_accepted_...`: one number, or one per
    temperature), or None where it records none."""
    try:
        heldout = json.loads((Path(folder) / "training.json").read_text()).get("heldout") or {}
    except (OSError, ValueError, AttributeError):
        return None
    found = []
    for key, value in heldout.items():
        if key.startswith("first_draft_accepted"):
            found += list(value.values()) if isinstance(value, dict) else [value]
    rates = [float(v) for v in found if isinstance(v, (int, float)) and 0 < v < 1]
    return min(rates) if rates else None


def tree_prior(size: int) -> float:
    """Tokens per call of a ranked tree of `size` nodes: a few, growing slowly with its size."""
    return 1.0 + 0.5 * math.log2(1 + size)


class DraftChooser:
    """Chooses the size of the next draft among `sizes` (0 = plain decoding; see the module
    docstring). Chain drafters make one with `for_depths`, ranked trees with `for_budgets`."""

    def __init__(self, sizes, verify: VerifyCost, draft_cost: float = 0.0, rate: float = 0.15,
                 prior: Callable[[int], float] = chain_prior, min_size: int = 0,
                 probe_backoff: bool = False, start: Optional[Callable[[int], float]] = None,
                 extend_level: float = PRIOR, calibrated: bool = False):
        self.sizes = sorted(set(sizes))
        if not self.sizes or self.sizes[0] < 0 or min_size > self.sizes[-1]:
            raise ValueError("need sizes >= 0 and min_size <= the largest size")
        if calibrated and (min_size > 0 or self.sizes[0] != 0):
            raise ValueError("a calibrated chooser needs plain decoding (size 0) allowed")
        self.max_size, self.min_size = self.sizes[-1], min_size
        self.verify, self.draft_cost, self.rate, self.prior = verify, draft_cost, rate, prior
        # `start`: the estimates of a reset chooser, where they differ from the prior that the
        # drift returns to (a drafter's measured acceptance: ModelChoosers)
        self.probe_backoff, self.start = probe_backoff, start or prior
        self.extend_level = extend_level  # a fully matched chain's unknown deeper levels (record)
        self.calibrated = calibrated  # drafts only where its estimates, as far as its forecasts
        # held, beat the cost (trust)
        self.cached: Optional[int] = None  # tokens cached at the last choose() (a verify's price
        # grows with it: cost.py), None before any
        self.reset()

    @classmethod
    def for_depths(cls, max_length: int, min_length: int = 0, verify_cost: float = 0.07,
                   verify_overhead: float = 0.15, draft_cost: float = 0.0, rate: float = 0.15,
                   verify: Optional[VerifyCost] = None, probe_backoff: bool = False,
                   start_level: float = PRIOR, calibrated: bool = False) -> "DraftChooser":
        """Every depth 0..max_length of a chain (or of beams). A reset chooser assumes each level
        accepted with `start_level`, and so, at least, do the unknown levels below a chain that
        matched to its end (_deeper_level); the drift after plain steps returns towards PRIOR,
        so a chooser that starts at plain decoding still probes. `probe_backoff` only for a
        chooser that learns from the drafts it sent alone (module docstring); `calibrated` only
        for one that learns from every guess, sent or not (trust), whose guesses are whole (the
        forecasts are scored on its chain outcomes)."""
        if not 0 <= min_length <= max_length:
            raise ValueError("need 0 <= min_length <= max_length")
        return cls(range(max_length + 1), verify or linear_verify_cost(verify_cost, verify_overhead),
                   draft_cost, rate, chain_prior, min_length, probe_backoff,
                   functools.partial(chain_prior, level=start_level), start_level, calibrated)

    @classmethod
    def for_budgets(cls, max_budget: int, verify_cost: float = 0.06, verify_overhead: float = 0.0,
                    rate: float = 0.2, verify: Optional[VerifyCost] = None) -> "DraftChooser":
        """Every node budget of a ranked tree, 0 to max_budget: a verify's time is not smooth in
        its size (cost.py: on this CPU 15 drafts and the root cost what 7 do, 11 cost 1.45x), so
        a grid of a few budgets would miss the cheap ones."""
        return cls(range(max_budget + 1),
                   verify or linear_verify_cost(verify_cost, verify_overhead), 0.0, rate, tree_prior)

    def twin(self) -> "DraftChooser":
        """A chooser that knows what this one knows now, but for its trust (its forecasts are
        of other guesses), and learns apart from it (its settings and pricing shared; its draft
        cost copied)."""
        twin = copy.copy(self)
        twin.tokens, twin.learned = dict(self.tokens), dict(self.learned)
        twin.nodes = dict(self.nodes)
        twin.forecasts = [0.0, 0.0]  # its forecasts are of other guesses (trust)
        return twin

    def reset(self) -> None:
        self.tokens = {s: self.start(s) for s in self.sizes}  # what choose() reads (drifted)
        self.learned = dict(self.tokens)  # the same before the drift since their last outcome
        self.nodes = {s: float(s) for s in self.sizes}
        self.outcomes = 0  # learned since the reset (see _learn)
        self.drift_speed = 1.0  # SLOWEST_DRIFT..1: lowered by failed probes (probe_backoff)
        self.plain_steps = 0  # recorded in a row with nothing drafted
        self.forecasts = [0.0, 0.0]  # decayed draft tokens forecast and held (_score_forecast)

    def expected_tokens(self, size: int) -> float:
        """Tokens per call of `size`: its estimate, its draft tokens scaled by `trust`."""
        return 1.0 + self.trust * (self.tokens[size] - 1.0)

    def _best(self, allowed: list[int]) -> int:
        """The size of `allowed` with the most estimated tokens per unit of cost (the smaller of
        equals), by the estimates alone."""
        return max(allowed, key=lambda s: (self.tokens[s] / self.cost(s), -s))

    @property
    def trust(self) -> float:
        """How far a calibrated chooser's estimates held where they would draft: the draft tokens
        their best size then held over those it forecast (decayed over about the last 10
        forecasts, TRUST_DECAY; TRUST_PRIOR of an exact one always counts), at most 1; 1 for
        one not calibrated. The estimates are running means of bursty outcomes, and the best
        size's is read where it is high: at T = 1.0 one lucky guess of pld's (7 of 8 drafts)
        lifted its depth 8 to 2.1 tokens per call, and the five drafts that followed all
        missed. Measured over SmolLM2's chat2 requests, the draft tokens forecast there held
        0.14 of their forecast (pld, T = 1.0), 0.76 greedy, and 0.91-1.00 for pld's guesses
        inside a copied span (its twin: RegimeChoosers.of). The trust decides whether to draft,
        not how much (choose). Only pld's sampling choosers are calibrated: at T > 0 a guess
        that held is a lucky draw, where a greedy one that held repeats (with its greedy choosers
        calibrated too, auto ran long SmolLM2 requests at 0.91-0.95 of pld, 0.955-0.974
        before); lookahead's forecasts held 0.32 at T = 1.0, but it kept >= 0.98x in every
        chat2 category there uncalibrated (README, session 47)."""
        if not self.calibrated:
            return 1.0
        forecast, held = self.forecasts
        return min(1.0, (held + TRUST_PRIOR) / (forecast + TRUST_PRIOR))

    def cost(self, size: int) -> float:
        """A call of `size` in one-token steps, at the cached length of the last choose()."""
        return self.verify(self.nodes[size], self.cached) + self.draft_cost * size if size else 1.0

    def expected_gain(self) -> float:
        """Expected tokens per unit of cost of the best size, plain decoding being 1 (of a
        calibrated chooser, the size its estimates choose, its tokens as far as they are
        trusted)."""
        if not self.calibrated:
            return max(self.tokens[s] / self.cost(s) for s in self.sizes)
        best = self._best(self.sizes)
        return max(1.0, self.expected_tokens(best) / self.cost(best)) if best else 1.0

    def choose(self, limit: int | None = None, cached: Optional[int] = None) -> int:
        """The best size not above `limit` (nor below min_size, unless the limit is), priced
        with `cached` tokens in the target's cache (kept for expected_gain; None: the last
        one's); for a calibrated chooser, 0 where that size's tokens, as far as they are trusted,
        do not beat its cost (a smaller size is not tried instead: the estimates that chose the
        size are the ones not trusted)."""
        if cached is not None:
            self.cached = cached
        top = self.max_size if limit is None else max(min(limit, self.max_size), 0)
        allowed = [s for s in self.sizes if min(self.min_size, top) <= s <= top] or [self.sizes[0]]
        best = self._best(allowed)
        if best and self.calibrated and self.expected_tokens(best) <= self.cost(best):
            return 0  # as far as its estimates are trusted, drafting would not gain (trust)
        if self.probe_backoff and self.plain_steps and best > PROBE_DEPTH:
            # a probe after plain steps drafts little: the drift, not evidence, made it look good
            shallow = [s for s in allowed if 0 < s <= PROBE_DEPTH]
            best = self._best(shallow) if shallow else best
        return best

    def _score_forecast(self, held: Callable[[int], Optional[int]]) -> None:
        """Score the size the estimates alone would choose now (untrusted, no limit, at the last
        cached length) against an outcome about to be learned: `held(size)` is the draft tokens
        a call of that size would have had accepted, None where the outcome does not say
        (trust). Untrusted, so that a trust that fell goes on being measured where it no longer
        lets drafts through, and rises again where the forecasts start to hold."""
        if not self.calibrated:
            return
        size = self._best(self.sizes)  # (a calibrated chooser has no min_size)
        accepted = held(size) if size else None
        if accepted is None:
            return
        self.forecasts = [TRUST_DECAY * self.forecasts[0] + self.tokens[size] - 1.0,
                          TRUST_DECAY * self.forecasts[1] + accepted]

    def record(self, accepted: int, offered: int, nodes: int | None = None,
               whole: bool = False) -> None:
        """A chain (or beams) `offered` levels deep had its first `accepted` levels accepted;
        `nodes` is its size without the root when it was wider than a chain. `whole`: the guess
        was all the drafter had (pld's lookup), so a larger size would have sent the same guess.
        offered=0 (a step that drafted nothing) teaches nothing but lets every size drift back
        towards its prior."""
        if offered == 0:
            self.plain_steps += 1
            for s in self.sizes:
                self.tokens[s] += (self.rate * DRIFT * self.drift_speed
                                   * (self.prior(s) - self.tokens[s]))
            return
        self._score_forecast(lambda s: min(accepted, s)
                             if s <= offered or accepted < offered or whole else None)
        if self.probe_backoff and self.plain_steps:  # a probe: drafted after plain steps
            self.drift_speed = 1.0 if accepted else max(self.drift_speed / 2, SLOWEST_DRIFT)
        self.plain_steps = 0
        width = nodes / offered if nodes else 1.0
        level = self._deeper_level()
        for s in self.sizes:
            sent = min(s, offered) if whole else s
            if s <= offered or accepted < offered or whole:
                tokens = 1.0 + min(accepted, s)  # what a call of this size would have produced
            else:  # matched to its end: deeper levels unknown (_deeper_level)
                tokens = 1.0 + accepted + sum(level ** d for d in range(1, s - offered + 1))
            self._learn(s, tokens, width * sent)
        self.outcomes += 1

    def _deeper_level(self) -> float:
        """The acceptance assumed of each unknown level below a chain that matched to its end:
        `extend_level` (PRIOR; a sampling drafter's measured acceptance where it starts from
        that), or as much as the first level has held since, up to PRIOR. At PRIOR alone, one
        accepted 1-token draft at T = 0.7 made SmolLM2's draft model send 3 the next step (1.28
        tokens for a 1.8x step, acceptance ~0.3 a level); at the start level alone, a drafter
        whose first drafts all held would climb only as their acceptance neared 1."""
        first = self.learned.get(1)
        held = first - 1.0 if first is not None else 0.0
        return max(self.extend_level, min(held, PRIOR))

    def record_ranks(self, matched_ranks: list[int], retrieved: int,
                     asked: Optional[int] = None) -> None:
        """The text walked through the nodes `matched_ranks` (1-based, best first) of a ranked tree
        of `retrieved` nodes: a budget s would have sent its first s nodes. `asked`: the tree was
        cut at that many nodes, so it says nothing about larger budgets (they are left as they
        are)."""
        ranks, below = sorted(matched_ranks), 0  # `below`: the ranks <= s (sizes ascend)
        for s in self.sizes:
            if asked is not None and s > asked:
                break
            while below < len(ranks) and ranks[below] <= s:
                below += 1
            self._learn(s, 1.0 + below, float(min(s, retrieved)))
        self.outcomes += 1

    def _learn(self, size: int, tokens: float, nodes: float) -> None:
        """Move towards an outcome: at `rate` once settled, but the first outcomes after a reset
        weigh as in a mean with the prior counted PRIOR_WEIGHT times, so that a chooser that
        starts afresh with each request (sampled drafts without the back-off, for a seed's sake;
        or a drafter's first request) leaves an optimistic
        prior after ~5 misses rather than ~10 at `rate` alone: steps that each cost a
        four-token verify and four drafts for about one token. From the value before any drift
        (module text)."""
        rate = max(self.rate, 1.0 / (self.outcomes + 1 + PRIOR_WEIGHT))
        learned = self.learned[size] + rate * (tokens - self.learned[size])  # drift dropped
        self.tokens[size] = self.learned[size] = learned
        self.nodes[size] += rate * (nodes - self.nodes[size])


class Open:
    """What an outcome function returns for a guess the text has not yet left: `so_far`, how it
    stands now (None: nothing worth reporting), which Guesses.settle collects in `so_far`."""
    __slots__ = ("so_far",)

    def __init__(self, so_far=None):
        self.so_far = so_far


class Guesses:
    """A drafter's guesses, each kept from the step it was made until the text has gone far
    enough past it to say how it would have fared; the choosers learn from those outcomes, sent
    or not (a longer guess than the chooser let through still teaches about its deeper levels).
    outcome(guess, tokens, start) gives the outcome, or None (or an Open) while later tokens could
    change it."""

    def __init__(self, outcome: Callable):
        self.outcome = outcome
        self.open: list[tuple[int, object, bool]] = []  # (start, guess, following then)
        self.so_far: list = []  # the last settle's Open.so_far of the guesses it left open

    def add(self, start: int, guess, following: bool = False) -> None:
        """`guess` was made when the text was tokens[:start]; `following`: the text was then
        following an earlier guess (kept with it: settle_each)."""
        self.open.append((start, guess, following))

    @property
    def still_open(self) -> bool:
        """Whether a guess made at an earlier step is open after the last settle: the text has
        matched every token of it since it was made (at least one, a step emitting one)."""
        return bool(self.open)

    def clear(self) -> None:
        self.open, self.so_far = [], []

    def settle(self, tokens: list[int]) -> list:
        """The outcomes that `tokens` decides, oldest first; the rest stay open (and where their
        outcome function says how they stand so far, that is in `so_far`: one walk of each guess
        a step, not one to settle it and another to see how far the text went into it)."""
        return [result for result, _ in self.settle_each(tokens)]

    def settle_each(self, tokens: list[int]) -> list:
        """settle's outcomes, each with whether the text was following an earlier guess when its
        guess was made."""
        known, still_open, so_far = [], [], []
        for start, guess, following in self.open:
            result = self.outcome(guess, tokens, start)
            if result is None or isinstance(result, Open):
                still_open.append((start, guess, following))
                if result is not None and result.so_far is not None:
                    so_far.append(result.so_far)
            else:
                known.append((result, following))
        self.open, self.so_far = still_open, so_far
        return known


def chooser_store(model) -> dict:
    """Where choosers that outlive a request are kept: beside the loaded model (Shared), so every
    decoder of that model shares them; without a model, a new dict (the drafter's own)."""
    return shared(model).draft_lengths if model is not None else {}


def regime_key(settings: tuple, sampling) -> tuple:
    """The key of the chooser for drafts made under `sampling` (a SamplingParams): a draft's
    acceptance depends on the sampling regime (SmolLM2's `pld`: 1.15x greedy, ~1.0x at T = 1.0),
    so what greedy requests taught must not size sampled drafts, nor one temperature or filter
    another's (SamplingParams.regime)."""
    return settings if sampling.greedy else settings + ("sampling", sampling.regime)


class RegimeChoosers:
    """The choosers of a drafter whose drafts never change the output (pld, lookahead): one per
    loaded model, settings and sampling regime (regime_key), each carrying what it learned to the
    next request of its regime (shared.Learned), and for pld its twin for guesses made inside a
    copied span (`of`). `current` is the chooser of the last step (greedy before any step): what
    expected_gain reads before a request's first step (the engine's BackOff.resume_if, at most
    the first PROBE steps of a request) is the last request's, and inside a copied span the
    twin's, so a pause of the back-off ends where a copy starts. `make(sampled=...)` builds a
    chooser, pricing sampling steps where `sampled` (verify_cost_for)."""

    def __init__(self, model, settings: tuple, make: Callable[..., DraftChooser]):
        self.settings, self.make = settings, make
        self.learned = Learned(chooser_store(model))
        self.current = self.learned.get(settings, make)

    def of(self, sampling, following: bool = False) -> DraftChooser:
        """The chooser of `sampling`'s regime; `following`: its twin for the steps where the text
        follows an earlier guess (one still open, Guesses.still_open, or one it matched to its end:
        PromptLookup.propose), made on first use as a copy of what the regime's chooser knows then
        (its trust aside: DraftChooser.twin). pld keeps the two apart: its guesses come true in runs
        (a span the answer copies, followed for several steps), so a guess made inside a run holds
        far more often than one made outside. Sized by one chooser, the misses between runs kept the
        drafts of a run short, and a run's outcomes, settled only once the text had left it, left
        the chooser drafting on the misses after it (SmolLM2, the chat2 prompts, greedy: 1.068x ->
        1.115x in one bench, 1.038x -> 1.070x replayed on `ar`'s texts; README, session 44)."""
        key = regime_key(self.settings, sampling)
        chooser = self.learned.get(key, functools.partial(self.make, sampled=not sampling.greedy))
        if following:
            chooser = self.learned.get(key + ("following",), chooser.twin)
        return chooser

    def use(self, sampling, following: bool = False) -> DraftChooser:
        """The chooser for this step's drafts (`of`), kept as `current`."""
        self.current = self.of(sampling, following)
        return self.current


class SizedByRegime:
    """What a drafter sized by RegimeChoosers (pld, lookahead) tells the engine and auto; its
    `choosers` is None where its size is fixed (adaptive=False). Its guesses go on while the
    engine's back-off pauses drafting, and their outcomes teach its chooser."""
    choosers: Optional[RegimeChoosers] = None

    @property
    def chooser(self) -> Optional[DraftChooser]:
        """The chooser of the sampling regime of the last step (None: a fixed size)."""
        return self.choosers.current if self.choosers is not None else None

    @property
    def learns_while_paused(self) -> bool:
        return self.chooser is not None

    def expected_gain(self) -> Optional[float]:
        return self.chooser.expected_gain() if self.chooser is not None else None


class ModelChoosers:
    """The draft-size choosers of a drafter that drafts from a model of its own (redrafter's head,
    a draft model), one per settings and sampling regime (regime_key), kept by shared.Learned:
    greedy drafts never change the output, so the greedy chooser carries what it learned to the
    next request; sampled drafts shape which text a seed gives, so their chooser starts afresh
    with each request unless carried (keep_learning). Carried, as inside auto and wherever the
    engine's back-off is on: auto lends a candidate a few trial steps per request, too few for a
    chooser starting from its prior to learn (measured on SmolLM2 at T = 1.0: redrafter's trials
    verified 7 nodes, 83-88 ms against a 55 ms plain step, for 1.1 tokens), and alone, each
    request's opening steps drafted at the start level until their misses had taught a fresh
    chooser what the last request had.

    A sampling chooser starts from `sampled_start`, the drafter's own measured acceptance per
    level (shipped_acceptance) where known, instead of PRIOR: starting afresh each request from
    0.8, SmolLM2's head opened each request with 9-token chains that failed (at T = 0.7: 54
    chains of 9-10 tokens in 16 requests, 1.07 tokens per call), until its misses had taught it.
    `make(start_level=..., sampled=...)` builds a chooser, pricing sampling steps where
    `sampled` (verify_cost_for)."""

    def __init__(self, model, settings: tuple, make: Callable[..., DraftChooser],
                 sampled_start: Optional[float] = None):
        self.settings, self.make = settings, make
        self.make_sampled = (functools.partial(make, start_level=sampled_start, sampled=True)
                             if sampled_start is not None else
                             functools.partial(make, sampled=True))
        self.learned = Learned(chooser_store(model))
        self.greedy = self.learned.get(settings, make)
        self._paced: set = set()  # ids of the choosers whose pace this request has reset

    def keep_learning(self) -> None:
        """Carry the sampling choosers across requests (Drafter.keep_learning)."""
        self.learned.carried = True

    def begin(self) -> None:
        """A new request: the sampling chooser starts over unless it is carried, and a carried
        one probes at the usual pace again (a new prompt may suit the drafter better: slowed by
        the last answers' failed probes, the greedy head missed a coding request it had won
        1.08x on, SmolLM2)."""
        self.learned.begin()
        self._paced = set()

    def get(self, sampling) -> DraftChooser:
        """The chooser for drafts made under `sampling` (a SamplingParams)."""
        chooser = self.learned.get(regime_key(self.settings, sampling),
                                   self.make if sampling.greedy else self.make_sampled,
                                   shapes_text=not sampling.greedy)
        if id(chooser) not in self._paced:  # its first use in this request
            chooser.drift_speed = 1.0
            self._paced.add(id(chooser))
        return chooser
