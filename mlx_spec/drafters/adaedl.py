"""`adaedl`: the draft-model drafter with early draft stopping (AdaEDL, arXiv:2410.18351).

Before drafting token i (i >= 2: every round drafts at least one token) the drafter looks at its own
distribution for that token and stops when the rule says the token is unlikely to be accepted:

- stop_rule="adaedl" (default): stop when 1 - sqrt(gamma * H) < lambda, H its entropy in nats;
  lambda adapts after every round towards a running acceptance rate of alpha (see stopping.py).
- stop_rule="max-confidence": stop when its top probability < confidence_threshold.
- stop_rule="static": never stop early (the same as method `draft`).

num_draft_tokens is the longest chain a round may draft; the draft-length chooser that sizes
`draft` (draft_length.py) caps each round below it (adaptive=True), down to plain decoding where
drafting does not pay, and the rule stops within that cap. Without the chooser (adaptive=False,
the paper's method) every round drafts at least one token, and only the engine's back-off could
stop drafting, a window of 8 rounds at a time: on SmolLM2 at T = 0.7, where the draft model agrees
with the target on ~22% of tokens, that left `adaedl` at 0.86-0.96x of plain decoding per
category. gamma, beta1, beta2 and epsilon are the paper's; the starting lambda (`lam` greedy,
`sampling_lam` when sampling) and alpha 0.5 (the paper's 0.9 suits pairs that agree more often
than a small drafter does) are ours: docs/tuning.md says how they were chosen and why entropy
predicts acceptance poorly with the embedded pair.
confidence_threshold (max-confidence rule) 0.1 suits small drafters with broad distributions.

The adaptive state (lambda and the running acceptance rate) is shared per loaded model (shared.py),
per drafter, settings and sampling regime, so it keeps learning across the requests of one loaded
model: always when greedy (its drafts never change the output), and when sampling wherever the draft
sizes carry over too (Drafter.keep_learning: with the engine's back-off, inside `auto`); with
backoff=False a sampled rule starts afresh with each request, so that a seed gives one text.
Greedy decoding and each sampling setting keep their own state: the rule reads the sharpened greedy
entropy in the first case and the processed sampling distribution's in the others, on scales too
different for one lambda to serve both.
"""
from __future__ import annotations

from typing import Optional

from ..sampling import SamplingParams
from .stopping import StopRule, make_rule
from . import CliFlag, register
from .draft_model import DraftModelDrafter
from .shared import Learned, shared


@register("adaedl", flags=[CliFlag("--stop-rule", "stop_rule", str,
                                          "adaedl: adaedl, max-confidence or static.")])
class AdaEDLDrafter(DraftModelDrafter):
    def __init__(self, model, draft_model: Optional[str] = None, num_draft_tokens: int = 8,
                 stop_rule: str = "adaedl", lam: float = 0.3, gamma: float = 0.2,
                 beta1: float = 0.5, beta2: float = 0.9, epsilon: float = 0.01, alpha: float = 0.5,
                 confidence_threshold: float = 0.1, greedy_entropy_temperature: float = 0.5,
                 sampling_lam: float = 0.0, draft_vocab: bool = True, adaptive: bool = True):
        super().__init__(model, draft_model=draft_model, num_draft_tokens=num_draft_tokens,
                         adaptive=adaptive, draft_vocab=draft_vocab)
        # everything that shapes a rule but its starting lambda, which depends on the regime
        self._rule_settings = dict(name=stop_rule, gamma=gamma, beta1=beta1, beta2=beta2,
                                   epsilon=epsilon, alpha=alpha,
                                   confidence_threshold=confidence_threshold,
                                   greedy_entropy_temperature=greedy_entropy_temperature)
        self._starting_lam = {True: lam, False: sampling_lam}  # keyed by sampling.greedy
        self.rules = Learned(shared(model).stop_rules)  # kept as the draft sizes are
        self.stop_rule = self.rule_for(SamplingParams())

    def keep_learning(self) -> None:
        super().keep_learning()
        self.rules.carried = True

    def begin(self, prompt_tokens: list[int]) -> None:
        super().begin(prompt_tokens)
        self.rules.begin()

    def rule_for(self, sampling: SamplingParams) -> StopRule:
        lam = self._starting_lam[sampling.greedy]
        key = ("stop-rule", self.draft.path, self.num_draft_tokens,
               tuple(sorted(self._rule_settings.items())), sampling.regime, lam)
        self.stop_rule = self.rules.get(key, lambda: make_rule(lam=lam, **self._rule_settings),
                                        shapes_text=not sampling.greedy)
        return self.stop_rule  # what observe() updates after this round
