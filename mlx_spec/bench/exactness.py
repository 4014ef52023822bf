"""`mlxspec exactness`: is a method's sampled output exactly the target's, over the full vocabulary?

One speculative step, many times, from one fixed context: each trial lets the method's real drafter
propose a tree with a fresh random key (ReDrafter's head on the target's real hidden state, the
draft model's real sampler) and runs the real acceptance (mlx_spec.accept) on it with that trial's
seed. The tokens the step emits are then compared with the target's exact conditional
distributions, computed independently: mlx-lm's own forward of context + prefix (its own cache, as mlx_lm.generate
runs it), softmax(logits / temperature) in float64, every vocabulary entry.

- position 1: the step's first token, against p(. | context), over all trials;
- position j > 1: among trials whose step accepted drafts x_1..x_{j-1}, the j-th token against
  p(. | context, x_1..x_{j-1}), one group per prefix seen often enough. A step emits position j
  only when it accepted j - 1 drafts, and conditional on that the j-th token must still follow the
  target exactly (its drafts and random numbers are drawn after the earlier ones).

Rows of the target are exact only where the acceptance walk reads them (the root, then each
accepted node above the deepest tested position): the walk is replayed with each newly needed row
filled in, which repeats every earlier decision (same random numbers, same rows) and changes only
what came after the placeholder. A forward per distinct walked prefix, not per trial.

Statistics, per position: the smallest two-sided binomial tail of a token's count over every token
a group expects >= MIN_EXPECTED times and the pooled rest of the vocabulary (Bonferroni over all of
them), and a chi-square over the same cells; the position's p-value is the smaller, doubled, and
a method's is the smallest position's times the positions tested (exact when > ALPHA).
`resolution` is the shift of probability on the largest group's most likely token that this many
trials catch with 95% power through all those factors: the default number of trials makes it
`--shift` (1 point) at position 1. `plant` moves that much mass from the most likely first token to
the second on purpose, to show the test catches it.
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Callable, Optional

import mlx.core as mx
import numpy as np
from mlx_lm.models.cache import make_prompt_cache, trim_prompt_cache
from scipy.stats import binom, chi2, norm

from ..accept import Acceptance, accept
from ..drafters.base import StepContext
from ..errors import MlxSpecError
from ..sampling import SamplingParams
from ..tree import Tree

ALPHA = 1e-3        # false alarms per verdict
POWER_Z = norm.ppf(0.95)
MIN_EXPECTED = 10   # cells expected fewer times than this are pooled
MIN_GROUP = 200     # a prefix needs this many trials to be tested at the next position


@dataclass
class PositionTest:
    """One position's verdict: groups (prefixes) tested, samples in them, the statistics."""
    position: int
    groups: int
    samples: int
    cells: int
    max_z: float
    chi_square: float
    dof: int
    p_tail: float      # the smallest binomial tail, times the cells tested (Bonferroni)
    p_chi_square: float
    p_value: float     # 2 x the smaller of the two
    resolution: float  # shift on the most likely token caught with 95% power at ALPHA

    def as_dict(self) -> dict:
        return {k: (float(f"{v:.4g}") if isinstance(v, float) else v)
                for k, v in self.__dict__.items()}


@dataclass
class Report:
    method: str
    temperature: float
    trials: int
    positions: list[PositionTest]
    drafted_per_step: float
    accepted_per_step: float
    rows_computed: int
    planted: float = 0.0
    first_token: dict = field(default_factory=dict)  # the most likely first tokens: exact vs seen

    @property
    def p_value(self) -> float:
        tested = [t.p_value for t in self.positions if t.samples]
        return min(1.0, len(tested) * min(tested)) if tested else 1.0

    @property
    def exact(self) -> bool:
        return self.p_value > ALPHA

    def as_dict(self) -> dict:
        return {"method": self.method, "temperature": self.temperature, "trials": self.trials,
                "planted_shift": self.planted, "p_value": self.p_value, "exact": self.exact,
                "drafted_per_step": round(self.drafted_per_step, 3),
                "accepted_per_step": round(self.accepted_per_step, 3),
                "rows_computed": self.rows_computed, "first_token": self.first_token,
                "positions": [t.as_dict() for t in self.positions]}


class ExactRows:
    """The target's next-token logits after context + prefix, by mlx-lm's own forward with its
    own cache (as mlx_lm.generate runs it; no tree, no shim), memoized per prefix and shared by
    every method and temperature tested on the context."""

    def __init__(self, model, context: list[int]):
        self.model, self.context = model, list(context)
        self.cache = make_prompt_cache(model)
        model(mx.array([self.context[:-1]]), cache=self.cache)
        mx.eval([c.state for c in self.cache])
        self.logits: dict[tuple, mx.array] = {}

    def row(self, prefix: tuple) -> mx.array:
        """Logits [V] (float32) of the token after context + prefix."""
        if prefix not in self.logits:
            fed = [self.context[-1], *prefix]
            out = self.model(mx.array([fed]), cache=self.cache)[0, -1].astype(mx.float32)
            mx.eval(out)
            if trim_prompt_cache(self.cache, len(fed)) != len(fed):  # later rows would be wrong
                raise MlxSpecError("this model's cache cannot be rewound (recurrent layers or a "
                                   "full sliding window): its exact rows cannot be computed here")
            self.logits[prefix] = out
        return self.logits[prefix]

    def probs(self, prefix: tuple, temperature: float) -> np.ndarray:
        """softmax(logits / temperature) in float64: the target's exact sampling distribution."""
        z = np.array(self.row(prefix), dtype=np.float64) / temperature
        z = np.exp(z - z.max())
        return z / z.sum()


def _z_needed(tests: int, positions: int) -> float:
    """How far out a cell's count must land to fail the verdict, plus the margin for 95% power:
    its two-sided tail is multiplied by the tests of its position (Bonferroni), by 2 (the smaller
    of two statistics) and by the positions tested."""
    return norm.isf(ALPHA / (4 * max(tests, 1) * positions)) + POWER_Z


def trials_for(p_max: float, shift: float, tests: int, positions: int = 2) -> int:
    """Trials that catch `shift` on a token of probability p_max with 95% power at ALPHA."""
    return int(math.ceil((_z_needed(tests, positions) / shift) ** 2 * p_max * (1 - p_max)))


def sample_steps(decoder, rows: ExactRows, sampling: SamplingParams, trials: int,
                 depth: int = 2, max_drafts: int = 16, plant: float = 0.0,
                 progress: Optional[Callable[[int], None]] = None) -> tuple[list[tuple], dict]:
    """Run `trials` first steps of `decoder`'s drafter + acceptance after rows.context; returns
    each step's emitted tokens (the first `depth`) and drafting counts."""
    context = rows.context
    if len(context) < 2:
        raise MlxSpecError("the exactness context needs at least two tokens")
    if sampling.greedy:
        raise MlxSpecError("exactness is tested when sampling: give a temperature > 0")
    target, drafter = decoder.target, decoder.drafter
    previous, before = step_before(target, context)
    planted = _Planted(rows.probs((), sampling.temperature), plant) if plant else None
    emitted, drafted, accepted = [], 0, 0
    try:
        for seed in range(trials):
            tree, acceptance = one_step(drafter, rows, sampling, seed, depth, max_drafts,
                                        target.supports_trees, previous, before)
            tokens = tuple(acceptance.tokens[:depth])
            if planted is not None:
                tokens = planted(tokens, seed)
            emitted.append(tokens)
            drafted += len(tree) - 1
            accepted += acceptance.accepted_drafts
            if progress is not None:
                progress(seed + 1)
    finally:
        drafter.end()  # once: lookahead's end() decays its whole shared trie
    return emitted, {"drafted": drafted, "accepted": accepted}


def step_before(target, context: list[int]):
    """(acceptance, verify output) of the step before the trials: the target verified
    context[-2] and emitted context[-1], the root; a head drafts from that step's hidden state."""
    target.sync(context[:-2])
    before = target.verify(Tree.from_chain(context[-2], []))
    mx.eval(before.logits, *([] if before.hidden is None else [before.hidden]))
    return Acceptance(path=[0], tokens=[context[-1]]), before


def one_step(drafter, rows: ExactRows, sampling: SamplingParams, seed: int, depth: int,
             max_drafts: int, trees: bool, previous: Acceptance, before,
             exact_everywhere: bool = False) -> tuple[Tree, Acceptance]:
    """Trial `seed`: a fresh request's first step on rows.context. exact_everywhere gives every
    node its real row (the slow way the replay must agree with)."""
    draft_key, accept_key = mx.random.split(mx.random.key(seed), 2)
    ctx = StepContext(tokens=list(rows.context), max_drafts=max_drafts, sampling=sampling,
                      key=draft_key, trees=trees)
    drafter.begin(ctx.tokens)  # each trial is the first step of a request of its own
    drafter.prepare(ctx, previous, before)
    tree = drafter.propose(ctx)
    drafter.while_verifying(ctx)
    root_position = len(rows.context) - 1
    if exact_everywhere:
        logits = mx.stack([rows.row(path) for path in _paths(tree)])
        return tree, accept(tree, logits, sampling, accept_key, seed=seed,
                            root_position=root_position)
    return tree, _walk_with_exact_rows(tree, rows, sampling, accept_key, seed, root_position,
                                       depth)


def _walk_with_exact_rows(tree: Tree, rows: ExactRows, sampling, key, seed, root_position,
                          depth: int) -> Acceptance:
    """accept() with the target's exact rows on every walked node above `depth` (others get the
    root's row: what they hold only decides tokens past the tested positions)."""
    paths = _paths(tree)
    known = {0}
    while True:
        logits = mx.stack([rows.row(paths[n]) if n in known else rows.row(())
                           for n in range(len(tree))])
        acceptance = accept(tree, logits, sampling, key, seed=seed, root_position=root_position)
        missing = [n for n in acceptance.path if n not in known and tree.depths[n] < depth]
        if not missing:
            return acceptance
        known.add(missing[0])  # earlier decisions repeat; the walk may then go elsewhere


def _paths(tree: Tree) -> list[tuple]:
    paths = [()]
    for node in range(1, len(tree)):
        paths.append(paths[tree.parents[node]] + (tree.tokens[node],))
    return paths


class _Planted:
    """A deliberately biased sampler: moves `shift` of probability from the most likely first
    token to the second (the emitted first token is swapped with probability shift / p_top)."""

    def __init__(self, probs: np.ndarray, shift: float):
        order = np.argsort(-probs)
        self.top, self.second = int(order[0]), int(order[1])
        if shift > probs[self.top]:
            raise MlxSpecError(f"cannot plant a shift of {shift}: the top token has p = "
                               f"{probs[self.top]:.4f}")
        self.swap = shift / probs[self.top]

    def __call__(self, tokens: tuple, seed: int) -> tuple:
        if tokens[0] == self.top and np.random.default_rng([seed, 77]).random() < self.swap:
            return (self.second,)  # the rest was drawn after the original token: dropped
        return tokens


def position_tests(emitted: list[tuple], rows: ExactRows, temperature: float,
                   depth: int) -> list[PositionTest]:
    """One test per position 1..depth: position j's tokens grouped by the j - 1 tokens before
    them (groups of at least MIN_GROUP trials past position 1)."""
    tests = []
    for position in range(1, depth + 1):
        groups = defaultdict(Counter)
        for tokens in emitted:
            if len(tokens) >= position:
                groups[tokens[:position - 1]][tokens[position - 1]] += 1
        tested = {prefix: counts for prefix, counts in groups.items()
                  if sum(counts.values()) >= (1 if position == 1 else MIN_GROUP)}
        tests.append(_test(position, {p: (c, rows.probs(p, temperature))
                                      for p, c in tested.items()}, depth))
    return tests


def _tail(observed, n: int, p):
    """The smaller one-sided binomial tail of each count (doubled later: two-sided)."""
    return np.minimum(binom.sf(observed - 1, n, p), binom.cdf(observed, n, p))


def _test(position: int, groups: dict, positions: int = 1) -> PositionTest:
    """groups: prefix -> (counts of the next token, exact distribution). Tokens a group expects
    >= MIN_EXPECTED times are cells of their own; the rest of the vocabulary is one pooled cell,
    in the chi-square when it too expects that many, else tested by its exact tail alone (a cell
    expecting 0.02 would put ~50 into the chi-square for one stray count)."""
    zs, tails, stat, dof, samples, largest = [], [], 0.0, 0, 0, (0, 0.0)
    for counts, probs in groups.values():
        n = sum(counts.values())
        samples += n
        observed = np.zeros(len(probs))
        for token, c in counts.items():
            observed[token] = c
        expected = n * probs
        if observed[probs == 0].any():  # a token the target never samples: not exact at all
            tails.append(0.0)
        big = expected >= MIN_EXPECTED
        zs.extend((observed[big] - expected[big]) / np.sqrt(expected[big] * (1 - probs[big])))
        # exact binomial tails: at ~10 expected, a normal tail 5 sigma out is 30x too thin
        tails.extend(_tail(observed[big], n, probs[big]))
        cells_obs, cells_exp = observed[big], expected[big]
        rest_obs, rest_exp = observed[~big].sum(), expected[~big].sum()
        if rest_exp >= MIN_EXPECTED:
            cells_obs, cells_exp = np.append(cells_obs, rest_obs), np.append(cells_exp, rest_exp)
        elif rest_exp > 0:
            tails.append(float(_tail(rest_obs, n, rest_exp / n)))
        stat += float(((cells_obs - cells_exp) ** 2 / cells_exp).sum())
        dof += len(cells_obs) - 1
        if n > largest[0]:
            largest = (n, float(probs.max()))
    if not samples:
        return PositionTest(position, 0, 0, 0, 0.0, 0.0, 0, 1.0, 1.0, 1.0, 0.0)
    max_z = float(np.max(np.abs(zs))) if zs else 0.0
    p_z = min(1.0, len(tails) * 2 * float(np.min(tails))) if tails else 1.0
    p_chi = float(chi2.sf(stat, dof)) if dof > 0 else 1.0
    n, p_max = largest  # the resolution of the largest group
    resolution = _z_needed(len(tails), positions) * math.sqrt(p_max * (1 - p_max) / n)
    return PositionTest(position, len(groups), samples, len(zs), max_z, stat, dof, p_z, p_chi,
                        min(1.0, 2 * min(p_z, p_chi)), resolution)


def check(decoder, rows: ExactRows, temperature: float, trials: int, depth: int = 2,
          plant: float = 0.0, progress=None) -> Report:
    """The whole test for one decoder at one temperature on rows.context."""
    sampling = SamplingParams(temperature=temperature)
    emitted, counts = sample_steps(decoder, rows, sampling, trials, depth, plant=plant,
                                   progress=progress)
    probs = rows.probs((), temperature)
    seen = Counter(tokens[0] for tokens in emitted)
    first = {int(t): {"exact": round(float(probs[t]), 5), "seen": round(seen[int(t)] / trials, 5)}
             for t in np.argsort(-probs)[:3]}
    return Report(method=decoder.method, temperature=temperature, trials=trials,
                  positions=position_tests(emitted, rows, temperature, depth),
                  drafted_per_step=counts["drafted"] / trials,
                  accepted_per_step=counts["accepted"] / trials,
                  rows_computed=len(rows.logits), planted=plant, first_token=first)


DEFAULT_CONTEXT = ("Lily liked to play with her red ball in the park. Every day, Lily liked to play "
                   "with her red ball in the park. One day, Lily liked to play with her")
# repeats itself, so pld and lookahead draft from it too


def default_trials(probs: np.ndarray, shift: float, positions: int = 2) -> int:
    """Trials at which position 1's test catches `shift` on its most likely token (95% power)."""
    trials = trials_for(float(probs.max()), shift, 1, positions)
    for _ in range(3):  # the Bonferroni factor grows with the cells that many trials fill
        cells = int((probs * trials >= MIN_EXPECTED).sum()) + 1  # + the pooled rest
        trials = trials_for(float(probs.max()), shift, cells, positions)
    return trials


def run(spec_model, make_decoder: Callable, methods: list[str], temperatures: list[float],
        context: list[int], shift: float = 0.01, trials: Optional[int] = None, depth: int = 2,
        plant: float = 0.0, progress: Optional[Callable] = None) -> list[Report]:
    """check() for every (method, temperature); `make_decoder(name)` builds a method's decoder.
    Trials default to what catches `shift` at position 1 for that temperature."""
    if depth < 1:
        raise MlxSpecError(f"depth must be >= 1, got {depth}")
    reports, rows = [], ExactRows(spec_model.model, context)
    for temperature in temperatures:
        n = trials or default_trials(rows.probs((), temperature), shift, depth)
        for name in methods:
            decoder = make_decoder(name)
            if not hasattr(decoder, "drafter"):
                raise MlxSpecError(f"method {name!r} is not a drafter in the engine's loop; its "
                                   "steps cannot be run one at a time here")
            reports.append(check(decoder, rows, temperature, n, depth, plant,
                                 progress=None if progress is None else
                                 lambda done, name=name, t=temperature: progress(name, t, done, n)))
    return reports
