"""The text-only methods (`pld`, `lookahead`) replayed on `ar`'s own texts and priced by the cost
model: their speed per prompt category without the noise of timing.

At a given seed these methods write exactly `ar`'s text (their drafts are walked along the target's
own per-position draws: accept.py), so once that text is known, every step of theirs is fixed: the
tree the drafter proposes, the tokens it emits, what it verifies. Only the seconds are noise. So
each prompt is decoded once with `ar` (end-of-sequence ignored, as `mlxspec bench --ignore-eos`,
so every text is as long), and then the method's own drafter runs along the text with the engine's
BackOff, one for all the prompts as a decoder keeps: each tree is walked along the text
(accept.accept_by_walking) and the step costs the cost model's price of its verify
(mlx_spec/cost.py; when sampling, the rows the step turned into distributions: a chain's all with
MLX's ops, only those its walk visits where they are read on the host, as for a branching tree),
as the bench prices a step to tell the machine's stalls. The speedup is tokens per priced second
over `ar`'s, one one-token verify per token. Priced so, a replay is
the same on every run; the drafter's own time is measured beside it (`drafting_s`), not priced,
since a wall-clock time in the back-off's judgements would make its choices differ from run to run.

What it is for: at T > 0 a bench's per-category figures move by a few percent from run to run
(the machine's noise: the control band; for sampled methods, their different texts), more than a
change to how pld or lookahead size their drafts; here every variant runs on the same texts at the
same prices. What it leaves out: the drafters' time (0.1-1% of a step for these two on this
project's CPU), the engine's own work per step, and how far the machine is today
from when the cost model was measured (the bench's anchored prediction says that).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

from .. import drafters, methods
from ..accept import accept_by_walking
from ..cost import CostModel
from ..drafters.base import StepContext
from ..drafters.shared import Shared, shared
from ..engine import BackOff, Limits
from ..errors import MlxSpecError
from ..sampling import SamplingParams
from ..target import Target


@dataclass
class Text:
    """`ar`'s output for one prompt (token ids)."""
    prompt_id: str
    category: str
    prompt: list[int]
    output: list[int]


@dataclass
class Replayed:
    """One method's steps along one Text."""
    text: Text
    target_calls: int
    drafted_tokens: int
    priced_s: float      # the verifies' prices (cost model)
    drafting_s: float    # the drafter's own time, measured (not in priced_s)

    @property
    def tokens(self) -> int:
        return len(self.text.output)


def ar_texts(model, prompts: list[dict], encode: Callable[[str], list[int]], temperature: float,
             max_tokens: int, seed: int) -> list[Text]:
    """`ar`'s text for each prompt ({"id", "category", "prompt"}), encoded by `encode`, decoded
    at `seed` past any end-of-sequence token to max_tokens."""
    decoder = methods.make_decoder(model, "ar")
    sampling = SamplingParams(temperature=temperature)
    texts = []
    for prompt in prompts:
        tokens = encode(prompt["prompt"])
        limits = Limits(max_tokens=max_tokens, context_length=model.context_length)
        output = [t for step in decoder.generate(list(tokens), limits, sampling, seed)
                  for t in step.token_ids]
        texts.append(Text(prompt["id"], prompt["category"], tokens, output))
    return texts


def check_method(name: str, **options) -> None:
    """Refuse a method whose drafts do not depend on the text alone (it writes another text than
    `ar` when sampling, and its drafts cannot be known from the text), and options its drafter
    does not take (`kv_bits`: nothing runs the target here)."""
    if name in methods.DECODERS or not getattr(drafters.factory(name), "drafts_from_text", False):
        raise MlxSpecError(f"{name} cannot be replayed on ar's text: only methods whose drafts "
                           "depend on the text alone (pld, lookahead) write ar's very text")
    drafters.check_options(name, drafters.factory(name), None, **options)


def replay(model, texts: list[Text], method: str, temperature: float, cost: CostModel,
           backoff: bool = True, **options) -> list[Replayed]:
    """`method` (with `options`) along each of `texts` in turn, as one decoder would run those
    requests (one drafter, one BackOff), with drafter state of its own (bench.own_state: the
    choosers and lookahead's trie of past answers start empty)."""
    check_method(method, **options)
    trees = Target(model.model).supports_trees  # (lookahead sends chains where it cannot)
    saved = shared(model)
    model.extras = Shared(cost=cost, auto_folder=None)
    try:
        drafter = drafters.create(method, model, **options)
        judge = BackOff(cost.relative) if backoff else None
        sampling = SamplingParams(temperature=temperature)
        return [_along(drafter, text, sampling, cost, judge, trees) for text in texts]
    finally:
        model.extras = saved


def _along(drafter, text: Text, sampling: SamplingParams, cost: CostModel,
           backoff: Optional[BackOff], trees: bool) -> Replayed:
    """The engine's steps (engine.Decoder._loop) with the text in place of the target. Not
    called: Drafter.prepare and while_verifying, and observe gets no target output; pld and
    lookahead do nothing there (check_method admits only drafters whose drafts follow the text
    alone: those two today)."""
    tokens, output = list(text.prompt), text.output
    done = calls = drafted = 0  # done: tokens of the output emitted so far
    priced = drafting_s = 0.0
    drafter.begin(list(tokens))
    if backoff is not None:
        backoff.new_request()
    try:
        while done < len(output):
            drafting = backoff is None or backoff.allows_drafts(drafter)
            room = len(output) - done
            ctx = StepContext(tokens=tokens, max_drafts=room - 1 if drafting else 0,
                              sampling=sampling, trees=trees)
            t0 = time.perf_counter()
            tree = drafter.propose(ctx)
            own_s = time.perf_counter() - t0
            acceptance = accept_by_walking(tree, lambda node: output[done + tree.depths[node]])
            cached = len(tokens) - 1  # (before the step's tokens join)
            verify_s = cost.verify_seconds(len(tree), not tree.is_chain, not sampling.greedy,
                                           visited=len(acceptance.tokens), cached=cached)
            tokens.extend(acceptance.tokens)
            done += len(acceptance.tokens)
            drafter.observe(ctx, tree, acceptance, None)
            calls, drafted = calls + 1, drafted + len(tree) - 1
            priced, drafting_s = priced + verify_s, drafting_s + own_s
            if backoff is not None and (not drafting or drafter.steady()):
                backoff.record(len(tree) - 1, len(acceptance.tokens), verify_s, 0.0, verify_s,
                               not tree.is_chain, drafter.switch_instead, cached)
    finally:
        drafter.end()
    return Replayed(text, calls, drafted, priced, drafting_s)


def speedup(replayed: list[Replayed], cost: CostModel, sampled: bool) -> float:
    """Tokens per priced second over `ar`'s (a one-token verify per token, each priced at its
    cached length as the method's verifies are)."""
    plain = sum(cost.verify_seconds(1, False, sampled, cached=len(r.text.prompt) + i - 1)
                for r in replayed for i in range(r.tokens))
    return plain / sum(r.priced_s for r in replayed) if replayed else 0.0


def summary(replayed: list[Replayed], cost: CostModel, sampled: bool) -> dict:
    """Overall and per category: speedup, target calls, drafted tokens, tokens per call."""
    def of(rs: list[Replayed]) -> dict:
        calls = sum(r.target_calls for r in rs)
        return {"speedup": speedup(rs, cost, sampled), "target_calls": calls,
                "tokens": sum(r.tokens for r in rs),
                "drafted_tokens": sum(r.drafted_tokens for r in rs),
                "tokens_per_call": sum(r.tokens for r in rs) / max(calls, 1),
                "drafting_s": sum(r.drafting_s for r in rs)}
    categories: dict[str, list[Replayed]] = {}
    for r in replayed:
        categories.setdefault(r.text.category, []).append(r)
    return {**of(replayed), "by_category": {c: of(rs) for c, rs in categories.items()}}
