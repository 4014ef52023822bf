"""`adaedl`: the draft-model drafter with early draft stopping (AdaEDL, arXiv:2410.18351).

Before drafting token i (i >= 2: every round drafts at least one token) the drafter looks at its own
distribution for that token and stops when the rule says the token is unlikely to be accepted:

- stop_rule="adaedl" (default): stop when 1 - sqrt(gamma * H) < lambda, H its entropy in nats;
  lambda adapts after every round towards a running acceptance rate of alpha (see stopping.py).
- stop_rule="max-confidence": stop when its top probability < confidence_threshold.
- stop_rule="static": never stop early (the same as method `draft`).

num_draft_tokens is the longest chain a round may draft. The paper leaves the initial lambda open
(it sweeps it); 0.1 and confidence_threshold 0.1 suit small drafters with broad distributions such
as the embedded ~1M-parameter one (calibrated on prompts the benchmark does not use: below a top
probability of 0.1 its greedy agreement with the target falls from ~0.5 to ~0.24). The adaptive state (lambda and the running
acceptance rate) lives in model.extras, per drafter and settings, so it keeps learning across the
requests of one loaded model instead of starting over with every prompt.
"""
from __future__ import annotations

from typing import Optional

from ..stopping import make_rule
from . import register
from .draft_model import DraftModelDrafter


@register("adaedl")
class AdaEDLDrafter(DraftModelDrafter):
    def __init__(self, model, draft_model: Optional[str] = None, num_draft_tokens: int = 8,
                 stop_rule: str = "adaedl", lam: float = 0.1, gamma: float = 0.2,
                 beta1: float = 0.5, beta2: float = 0.9, epsilon: float = 0.01, alpha: float = 0.9,
                 confidence_threshold: float = 0.1, greedy_entropy_temperature: float = 0.5):
        super().__init__(model, draft_model=draft_model, num_draft_tokens=num_draft_tokens)
        settings = dict(lam=lam, gamma=gamma, beta1=beta1, beta2=beta2, epsilon=epsilon,
                        alpha=alpha, confidence_threshold=confidence_threshold,
                        greedy_entropy_temperature=greedy_entropy_temperature)
        key = ("stop-rule", self.draft.path, stop_rule, num_draft_tokens, tuple(sorted(settings.items())))
        if key not in model.extras:
            model.extras[key] = make_rule(stop_rule, **settings)
        self.stop_rule = model.extras[key]
