"""Method `mlx-lm`: mlx-lm's own speculative decoding (speculative_generate_step)
on the same target and drafter, for comparison with `draft` and `adaedl`.

mlx-lm accepts a draft token only when it equals the target's own sample (exact, acceptance
sum(p * q)); at temperature 0 that is the same greedy chain as ours. Both prompt caches are filled
before the clock starts, as our engine's prefill is outside its decode time, and generation stops at
EOS like ours, so tokens/s compare like for like.
"""
from __future__ import annotations

import time
from typing import Iterator, Optional

import mlx.core as mx
from mlx_lm.generate import speculative_generate_step
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.sample_utils import make_sampler

from ...drafters.base import check_draft_size
from ...drafters.draft_model import load_draft_model
from ...engine import Limits, Step, check_request
from ...errors import MlxSpecError
from ...kv import PREFILL_CHUNK
from ...loading import SpecModel
from ...sampling import SamplingParams
from ...stats import GenerationStats


def _prefill(module, cache, tokens: list[int], step: int = PREFILL_CHUNK) -> None:
    for start in range(0, len(tokens), step):
        module(mx.array(tokens[start:start + step])[None], cache=cache)
        mx.eval([c.state for c in cache])


def _refusals_as_errors(steps):
    """mlx-lm refuses caches it cannot trim (hybrid models) with a ValueError on the first step."""
    try:
        yield from steps
    except ValueError as exc:
        raise MlxSpecError(f"mlx-lm's speculative decoding refuses this model: {exc}") from None


class MlxLmDecoder:
    """Method `mlx-lm`: a decoder (mlx_spec.methods' protocol) around speculative_generate_step.
    Each request gets fresh caches; a Step is yielded per verification pass, whose tokens are the
    accepted drafts and the target's own token; the consumer's time between steps is not counted."""
    method = "mlx-lm"
    target = None

    def __init__(self, model: SpecModel, draft_model: Optional[str] = None,
                 num_draft_tokens: int = 3, kv_bits: Optional[int] = None):
        check_draft_size("num_draft_tokens", num_draft_tokens, error=MlxSpecError)
        if kv_bits:
            raise MlxSpecError("the mlx-lm baseline runs with mlx-lm's own (unquantized) caches")
        self.model = model
        self.draft = load_draft_model(model, draft_model)
        self.num_draft_tokens = num_draft_tokens

    def reset(self) -> None:
        """Every request starts from fresh caches."""

    def reusable(self, prompt_tokens) -> int:
        return 0

    def generate(self, prompt_tokens: list[int], limits: Limits, sampling: SamplingParams,
                 seed: Optional[int] = None) -> Iterator[Step]:
        check_request(prompt_tokens, limits)
        stats = GenerationStats(method=self.method, prompt_tokens=len(prompt_tokens))
        if seed is not None:
            mx.random.seed(seed)
        max_tokens = limits.max_tokens
        if limits.context_length:
            max_tokens = min(max_tokens, limits.context_length - len(prompt_tokens))
        k = self.num_draft_tokens
        target_cache = make_prompt_cache(self.model.model)
        draft_cache = make_prompt_cache(self.draft.module)
        t0 = time.perf_counter()
        _prefill(self.model.model, target_cache, prompt_tokens[:-1])
        _prefill(self.draft.module, draft_cache, prompt_tokens[:-1])
        stats.prefill_s = time.perf_counter() - t0

        steps = speculative_generate_step(
            mx.array(prompt_tokens[-1:]), self.model.model, self.draft.module,
            num_draft_tokens=k, max_tokens=max_tokens,
            sampler=make_sampler(sampling.temperature, top_p=sampling.top_p,
                                 min_p=sampling.min_p, top_k=sampling.top_k),
            prompt_cache=target_cache + draft_cache)
        eos = self.model.eos_token_ids
        in_call: list[int] = []  # tokens of the current verification pass so far
        yielded = 0
        t0 = time.perf_counter()
        for token, _, from_draft in _refusals_as_errors(steps):
            token = int(token)
            if not in_call:  # a new pass: mlx-lm drafts at most what max_tokens leaves
                stats.drafted_tokens += min(k, max_tokens - yielded)
            yielded += 1
            finish = "stop" if token in eos else None
            if finish is None:
                in_call.append(token)
                stats.accepted_drafts += from_draft
                if from_draft and yielded < max_tokens:
                    continue  # the target's own token closes a verification pass
            if finish is None and yielded >= max_tokens:
                finish = "length" if max_tokens == limits.max_tokens else "context"
            stats.accepted_per_call.append(len(in_call) + (finish == "stop"))
            stats.target_calls = len(stats.accepted_per_call)
            stats.generated_tokens += len(in_call)
            stats.verify_s += time.perf_counter() - t0  # mlx-lm does not split draft and verify
            step, in_call = Step(in_call, finish, stats), []
            yield step
            if finish is not None:
                return
            t0 = time.perf_counter()


def make_decoder(model: SpecModel, kv_bits: Optional[int] = None, **options) -> MlxLmDecoder:
    return MlxLmDecoder(model, kv_bits=kv_bits, **options)
