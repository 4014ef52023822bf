"""When to stop drafting: training-free rules that look at the drafter's distribution for the next
token before that token is drafted.

- static: never stop early; draft exactly k tokens.
- adaedl (Agrawal, Jeon, Lee: "AdaEDL: Early Draft Stopping for Speculative Decoding of Large
  Language Models via an Entropy-based Lower Bound on Token Acceptance Probability", NeurIPS 2024
  ENLSP workshop, arXiv:2410.18351): 1 - sqrt(gamma * H), H the entropy in nats of the drafter's
  distribution, approximates a lower bound on the probability that the next draft token is
  accepted. Drafting stops when it falls below lambda, and lambda adapts after every round so the
  running acceptance rate approaches a target alpha.
- max-confidence: stop when the drafter's top probability falls below a fixed threshold, the other
  training-free rule the paper compares with.

A rule's `statistic` is an MLX scalar computed next to the drafted token, so the drafter evaluates
both in one host sync; `should_stop` then decides on the Python float.

Which distribution the statistic reads: when sampling, the drafter's processed distribution (the
one drafts are drawn from, as in the paper). When greedy, drafts are argmaxes and a temperature-1
softmax of a small drafter is nearly flat (the default draft model's entropy is above 3 nats at
most positions, matched or not), so AdaEDL reads the drafter's distribution sharpened to
`greedy_entropy_temperature` (0.5): measured offline on held-out story openings, its entropy
separates matching positions from the rest (match rate 0.99 below 0.5 nats, 0.32 at 2-3 nats),
where the temperature-1 entropy did not.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import mlx.core as mx

STOP_RULES = ("static", "adaedl", "max-confidence")


def entropy(logprobs: mx.array) -> mx.array:
    """Entropy in nats of each row of log-probabilities; filtered tokens (-inf) contribute 0."""
    p = mx.exp(logprobs)
    return -mx.sum(mx.where(p > 0, p * logprobs, 0.0), axis=-1)


def acceptance_lower_bound(entropy_nats: float, gamma: float) -> float:
    """AdaEDL's approximate lower bound on the next draft token's acceptance probability."""
    return 1.0 - math.sqrt(gamma * max(entropy_nats, 0.0))


@dataclass
class AdaEDLThreshold:
    """lambda and the running acceptance rate, updated once per drafting round.

    The update is the paper's Algorithm 1 (arXiv:2410.18351, section 3.1; defaults gamma 0.2,
    beta1 0.5, beta2 0.9, epsilon 0.01, alpha 0.9), as transcribed identically by two independent
    public re-implementations we checked it against (the PDF itself was not reachable from here):

        AR      <- beta1 * AR + (1 - beta1) * n_accepted / n_drafted
        lambda' =  lambda + epsilon   if AR < alpha        (accepting too little: stop sooner)
                   lambda - epsilon   elif n_accepted != L  (room to draft longer)
                   lambda             otherwise             (all L accepted: already at the cap)
        lambda  <- beta2 * lambda + (1 - beta2) * lambda'

    The paper leaves the initial lambda open (it sweeps it); AR starts at alpha. Our one addition:
    lambda is clamped to [-1, 1], so a long run of one kind cannot wind it up beyond recovery. The
    bound is negative for entropies above 1 / gamma (5 nats), common for small drafters when
    sampling, and never below 1 - sqrt(0.2 * ln 256000) = -0.58 for vocabularies up to 256k: a
    lambda below 0 is how the rule learns to keep drafting through such positions.
    """
    lam: float = 0.5
    gamma: float = 0.2
    beta1: float = 0.5
    beta2: float = 0.9
    epsilon: float = 0.01
    alpha: float = 0.9
    acceptance: Optional[float] = None  # the running rate AR; None = not started (alpha)

    def __post_init__(self):
        for name in ("beta1", "beta2", "alpha"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.gamma <= 0 or self.epsilon < 0:
            raise ValueError("gamma must be > 0 and epsilon >= 0")
        if self.acceptance is None:
            self.acceptance = self.alpha

    def should_stop(self, entropy_nats: float) -> bool:
        return acceptance_lower_bound(entropy_nats, self.gamma) < self.lam

    def update(self, accepted: int, drafted: int, max_drafts: int) -> None:
        if drafted > 0:
            self.acceptance = self.beta1 * self.acceptance + (1 - self.beta1) * accepted / drafted
        if self.acceptance < self.alpha:
            proposed = self.lam + self.epsilon
        elif accepted != max_drafts:
            proposed = self.lam - self.epsilon
        else:
            proposed = self.lam
        self.lam = min(1.0, max(-1.0, self.beta2 * self.lam + (1 - self.beta2) * proposed))


class StopRule:
    """static: never stops early and needs no per-token sync."""
    name = "static"
    checks = False  # whether the drafter must compute `statistic` and sync on each token

    def greedy_log_probs(self, logits: mx.array) -> mx.array:
        """The distribution `statistic` reads when decoding greedily."""
        return logits - mx.logsumexp(logits, axis=-1, keepdims=True)

    def statistic(self, logprobs: mx.array) -> Optional[mx.array]:
        return None

    def should_stop(self, value: float) -> bool:
        return False

    def observe(self, accepted: int, drafted: int, max_drafts: int) -> None:
        pass


class AdaEDLRule(StopRule):
    name = "adaedl"
    checks = True

    def __init__(self, threshold: AdaEDLThreshold, greedy_entropy_temperature: float = 0.5):
        if greedy_entropy_temperature <= 0:
            raise ValueError("greedy_entropy_temperature must be > 0")
        self.threshold = threshold
        self.greedy_entropy_temperature = greedy_entropy_temperature

    def greedy_log_probs(self, logits: mx.array) -> mx.array:
        return super().greedy_log_probs(logits / self.greedy_entropy_temperature)

    def statistic(self, logprobs: mx.array) -> mx.array:
        return entropy(logprobs)

    def should_stop(self, value: float) -> bool:
        return self.threshold.should_stop(value)

    def observe(self, accepted: int, drafted: int, max_drafts: int) -> None:
        self.threshold.update(accepted, drafted, max_drafts)


class MaxConfidenceRule(StopRule):
    name = "max-confidence"
    checks = True

    def __init__(self, threshold: float):
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"confidence_threshold must be in [0, 1], got {threshold}")
        self.threshold = threshold

    def statistic(self, logprobs: mx.array) -> mx.array:
        return mx.exp(mx.max(logprobs, axis=-1))

    def should_stop(self, value: float) -> bool:
        return value < self.threshold


def make_rule(name: str, lam: float = 0.5, gamma: float = 0.2, beta1: float = 0.5,
              beta2: float = 0.9, epsilon: float = 0.01, alpha: float = 0.9,
              confidence_threshold: float = 0.5, greedy_entropy_temperature: float = 0.5) -> StopRule:
    if name == "static":
        return StopRule()
    if name == "adaedl":
        return AdaEDLRule(AdaEDLThreshold(lam=lam, gamma=gamma, beta1=beta1, beta2=beta2,
                                          epsilon=epsilon, alpha=alpha), greedy_entropy_temperature)
    if name == "max-confidence":
        return MaxConfidenceRule(confidence_threshold)
    raise ValueError(f"unknown stop_rule {name!r}; choose one of {', '.join(STOP_RULES)}")
