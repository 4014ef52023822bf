"""Per-generation statistics: what each target call bought and where the time went."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class GenerationStats:
    method: str = ""
    prompt_tokens: int = 0
    generated_tokens: int = 0
    target_calls: int = 0          # verification forwards (the prompt prefill is not counted)
    drafted_tokens: int = 0        # candidate tokens sent to the target
    accepted_drafts: int = 0       # candidate tokens the target accepted
    replayed_tokens: int = 0       # accepted tokens fed again after recurrent state was rolled
                                   # back (hybrid / SSM models; extra rows of the next verify)
    plain_calls: int = 0           # calls the back-off (engine.BackOff) ran without drafts
    prefill_s: float = 0.0
    draft_s: float = 0.0           # drafter prepare + propose
    verify_s: float = 0.0          # target forward + acceptance decision (they share one sync)
    other_s: float = 0.0           # cache commit, drafter update, detokenizing, streaming
    accepted_per_call: list[int] = field(default_factory=list)  # tokens emitted by each call
    verified_per_call: list = field(default_factory=list)  # (nodes, branching tree?) per call
    proposers: dict = field(default_factory=dict)  # auto: drafting steps per candidate method

    @property
    def decode_s(self) -> float:
        return self.draft_s + self.verify_s + self.other_s

    @property
    def mean_accepted(self) -> float:
        """Mean tokens produced per target call (1.0 for autoregressive decoding)."""
        return sum(self.accepted_per_call) / max(1, self.target_calls)

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.decode_s if self.decode_s > 0 else 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_drafts / self.drafted_tokens if self.drafted_tokens else 0.0

    def to_dict(self) -> dict:
        return {
            "method": self.method, "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens, "target_calls": self.target_calls,
            "mean_accepted": round(self.mean_accepted, 4),
            "tokens_per_s": round(self.tokens_per_s, 3),
            "drafted_tokens": self.drafted_tokens, "accepted_drafts": self.accepted_drafts,
            "acceptance_rate": round(self.acceptance_rate, 4),
            "replayed_tokens": self.replayed_tokens, "plain_calls": self.plain_calls,
            "time_s": {"prefill": round(self.prefill_s, 5), "draft": round(self.draft_s, 5),
                       "verify": round(self.verify_s, 5), "other": round(self.other_s, 5)},
            "accepted_per_call": list(self.accepted_per_call),
        }
