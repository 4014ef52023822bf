"""Measure the simulator's inputs on real models: the target's latency (from `ar`), the drafter's
latency per token and the acceptance rate (from single-process speculative decoding, SI)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..api import generate
from ..loading import SpecModel
from .simulator import Setting


@dataclass
class Measured:
    setting: Setting
    ar_tokens_per_s: float
    si_tokens_per_s: float


def acceptance_rate(accepted_per_call: list[int], block: int) -> float:
    """Per-draft acceptance a, as the simulator means it: each call examines its drafts in order
    until the first rejection, so a = accepted / (accepted + rejections)."""
    accepted = sum(n - 1 for n in accepted_per_call)
    rejections = sum(1 for n in accepted_per_call if n - 1 < block)
    return accepted / max(1, accepted + rejections)


def measure(model: SpecModel, prompt, max_tokens: int = 128, block: int = 4,
            drafter: str = "draft", draft_model: Optional[str] = None, workers: int = 2) -> Measured:
    options = {"num_draft_tokens": block}
    if draft_model is not None:
        options["draft_model"] = draft_model
    for method, kwargs in (("ar", {}), (drafter, options)):  # warm-up: first calls set things up
        generate(model, prompt, method=method, max_tokens=8, **kwargs)
    ar = generate(model, prompt, method="ar", max_tokens=max_tokens).stats
    si = generate(model, prompt, method=drafter, max_tokens=max_tokens, **options).stats
    target = ar.verify_s / max(1, ar.target_calls)
    verify_chain = si.verify_s / max(1, si.target_calls)
    # a verification of k + 1 tokens costs more than one token's forward on a CPU
    per_token = max(0.0, (verify_chain - target) / block)
    calls = si.accepted_per_call[:-1] or si.accepted_per_call  # the last call may stop early
    setting = Setting(target=target, drafter=si.draft_s / max(1, si.drafted_tokens),
                      acceptance=acceptance_rate(calls, block), block=block,
                      workers=workers, target_per_token=per_token)
    return Measured(setting, ar.tokens_per_s, si.tokens_per_s)


@dataclass
class MeasuredDsi:
    tokens_per_s: float
    reply_s: float        # mean job round trip as the orchestrator saw it (compute + messages)
    lossless: bool        # equal to `ar` token for token


def measure_dsi(model: SpecModel, prompt, max_tokens: int = 128, block: int = 4,
                drafter: str = "draft", draft_model: Optional[str] = None,
                workers: int = 2) -> MeasuredDsi:
    from ..api import make_decoder

    reference = generate(model, prompt, method="ar", max_tokens=max_tokens).token_ids
    options = {"draft_model": draft_model} if draft_model is not None else {}
    decoder = make_decoder(model, "dsi", workers=workers, block=block, drafter=drafter,
                           **options)
    generate(model, prompt, method="dsi", max_tokens=8, decoder=decoder)  # warm-up
    result = generate(model, prompt, method="dsi", max_tokens=max_tokens, decoder=decoder)
    counters = decoder.orchestrator.counters
    return MeasuredDsi(result.stats.tokens_per_s, counters.reply_s / max(1, counters.replies),
                       result.token_ids == reference)
