"""Method `mlx-lm` in the benchmark: mlx-lm's own speculative decoding (speculative_generate_step)
on the same target and drafter, for comparison with `draft` and `adaedl`.

mlx-lm accepts a draft token only when it equals the target's own sample (exact, acceptance
sum(p * q)); at temperature 0 that is the same greedy chain as ours. Both prompt caches are filled
before the clock starts, as our engine's prefill is outside its decode time, and generation stops at
EOS like ours, so tokens/s compare like for like.
"""
from __future__ import annotations

import time
from typing import Optional, Sequence, Union

import mlx.core as mx
from mlx_lm.generate import speculative_generate_step
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.sample_utils import make_sampler

from ..api import encode_prompt
from ..drafters.draft_model import load_draft_model
from ..errors import MlxSpecError
from ..kv import PREFILL_CHUNK
from ..loading import SpecModel
from ..stats import GenerationStats


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


def run(model: SpecModel, prompt: Union[str, Sequence[int]], max_tokens: int = 128,
        temperature: float = 0.0, seed: Optional[int] = None, draft_model: Optional[str] = None,
        num_draft_tokens: int = 3, raw: bool = False) -> tuple[list[int], GenerationStats]:
    """Generate with mlx_lm's speculative_generate_step; returns (token ids, stats) where
    stats.target_calls counts verification passes and decode time excludes the prompt prefill."""
    if num_draft_tokens < 1 or max_tokens < 1:
        raise MlxSpecError("num_draft_tokens and max_tokens must be >= 1")
    draft = load_draft_model(model, draft_model)
    prompt_tokens = encode_prompt(model, prompt, raw)
    stats = GenerationStats(method="mlx-lm", prompt_tokens=len(prompt_tokens))
    if seed is not None:
        mx.random.seed(seed)

    target_cache, draft_cache = make_prompt_cache(model.model), make_prompt_cache(draft.module)
    t0 = time.perf_counter()
    _prefill(model.model, target_cache, prompt_tokens[:-1])
    _prefill(draft.module, draft_cache, prompt_tokens[:-1])
    stats.prefill_s = time.perf_counter() - t0

    steps = speculative_generate_step(
        mx.array(prompt_tokens[-1:]), model.model, draft.module, num_draft_tokens=num_draft_tokens,
        max_tokens=max_tokens, sampler=make_sampler(temperature),
        prompt_cache=target_cache + draft_cache)
    eos = model.eos_token_ids
    ids: list[int] = []
    in_call = 0  # tokens emitted by the current verification pass so far
    yielded = 0
    t0 = time.perf_counter()
    for token, _, from_draft in _refusals_as_errors(steps):
        token = int(token)
        if in_call == 0:  # a new pass: mlx-lm drafts at most what max_tokens leaves
            stats.drafted_tokens += min(num_draft_tokens, max_tokens - yielded)
        in_call += 1
        yielded += 1
        if token in eos:
            stats.accepted_per_call.append(in_call)
            in_call = 0
            break
        ids.append(token)
        stats.accepted_drafts += from_draft
        if not from_draft:  # the target's own token closes a verification pass
            stats.accepted_per_call.append(in_call)
            in_call = 0
    if in_call:  # max_tokens reached inside an accepted run of drafts
        stats.accepted_per_call.append(in_call)
    stats.verify_s = time.perf_counter() - t0  # mlx-lm does not split draft and verify time
    stats.target_calls = len(stats.accepted_per_call)
    stats.generated_tokens = len(ids)
    return ids, stats
