"""`draft`: classic speculative decoding with a second, smaller mlx-lm model as the drafter.

The drafter proposes a chain of k tokens one forward at a time; the target verifies the chain in one
pass. Greedy drafts are the drafter's argmax. Sampled drafts are drawn from the drafter's processed
distribution q (same temperature / top-k / top-p / min-p as the target) and the chain carries q, so
acceptance is exact rejection sampling (accept with min(1, p/q)): the accepted rate is
sum(min(p, q)), above mlx-lm's match rule (sum(p * q)), and the output is distributed as the target.

How many tokens a round drafts (up to num_draft_tokens, down to none: a plain step) is chosen by the
one draft-length chooser (draft_length.py) from the acceptance it has seen and the cost of a round:
the target's measured verify cost and the drafter's own time per drafted token, measured as it
drafts (on SmolLM2-135M a 15M drafter's draft is ~0.14 of a target step, so four drafts at 30%
agreement cost more than they win, one still wins). Greedy output does not depend on the drafts, so
the greedy chooser carries what it learned to the next request; when sampling, the drafts shape
the output drawn from a seed, so that chooser starts over with each request where a seed can
reproduce the text (backoff=False, outside `auto`: draft_length.ModelChoosers).

A draft model's folder may carry a drafting vocabulary (draft_vocab.py): it then drafts only those
tokens, projecting its last hidden state onto their columns of its vocabulary projection (the
shipped SmolLM2 draft: 8,192 of 49,152 tokens; `draft_vocab=false` drafts from all of them). Used
only where that product reproduces the drafter's own logits (checked once at load).

The drafter keeps its own cache (a kv.TokenCache: any layer kind the target supports). After each
verification it is rewound to the prefix the target accepted, and the next round feeds only the
tokens it has not seen (the bonus token, plus the last draft when the whole chain was accepted).

Drafting waits for the host once per round: each drafted token feeds the next forward while staying
on the MLX graph (mx.async_eval pipelines the forwards), and the one- and two-token forwards run
compiled (compiled_step.py). Sampled drafts where MLX computes on the CPU are the exception: each is
drawn on the host (sampling.HostRows), where MLX's exp over the vocabulary cost more than the
wait. A stopping rule (see `adaedl`) needs one sync per token; its statistic is evaluated together
with the token (judging it one forward later, so that the host never waits, cost more:
docs/tuning.md).
"""
from __future__ import annotations

import math

import statistics
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Optional

import mlx.core as mx
import numpy as np
from mlx_lm.models.cache import make_prompt_cache

from .. import loading
from ..errors import MlxSpecError
from ..kv import PREFILL_CHUNK, TokenCache, common_prefix
from ..sampling import HostRows, SamplingParams, log_probs, rows_on_host
from .stopping import StopRule
from ..tree import Tree
from . import draft_vocab, register
from .base import Drafter, StepContext, check_draft_size
from .compiled_step import DraftForward, supports_compiled_step
from .model_parts import decoder_stack, projection_layer
from .draft_length import (PRIOR, DraftChooser, ModelChoosers, shipped_acceptance,
                           verify_cost_for)
from .shared import shared, target_cost


@dataclass
class DraftModel:
    module: object
    tokenizer: object
    path: str
    width: int         # the drafter's logits width
    target_width: int  # the target's logits width: drafts are distributions over these ids
    compiled_step: bool = False  # whether its one-token forward runs compiled (compiled_step.py)
    vocab_ids: Optional[mx.array] = None  # its drafting vocabulary [K], ids below both widths
    vocab_columns: Optional[mx.array] = None  # [D, K]: those ids' columns of its projection


def _logits_width(module) -> int:
    cache = make_prompt_cache(module)
    return int(module(mx.array([[0]]), cache=cache).shape[-1])


def _id_to_token(tokenizer) -> dict[int, str]:
    return {int(i): t for t, i in tokenizer.get_vocab().items()}


def check_vocabularies(target_tokenizer, draft_tokenizer, target_width: int, draft_width: int,
                       draft_path: str = "the draft model") -> None:
    """The pair must agree on every token id both know (one vocabulary may extend the other).
    Drafter ids beyond the target's logits width are never proposed (their logits are dropped),
    and ids beyond the drafter's width get probability 0: either way drafts stay exact, so the
    widths are not checked against the vocabularies (a tokenizer may list more ids than a
    model's logits have)."""
    target_ids, draft_ids = _id_to_token(target_tokenizer), _id_to_token(draft_tokenizer)
    common = sorted(set(target_ids) & set(draft_ids))
    differing = [i for i in common if target_ids[i] != draft_ids[i]]
    if differing or not common:
        example = (f" (id {differing[0]} is {target_ids[differing[0]]!r} for the target and "
                   f"{draft_ids[differing[0]]!r} for the drafter)") if differing else ""
        raise MlxSpecError(f"{draft_path} does not share the target's vocabulary: {len(differing)} of "
                           f"{len(common)} common token ids differ{example}; use a drafter from the "
                           "same model family")


def vocabulary_columns(module, ids: np.ndarray) -> Optional[mx.array]:
    """[D, K] in the drafter's dtype: the columns of `module`'s vocabulary projection for `ids`,
    so that its logits of those ids are hidden @ columns; None where its logits are not that
    product (scaled or soft-capped logits, a biased or unknown projection), checked on a few
    positions against its own forward: such a drafter drafts from its whole vocabulary."""
    try:
        projection = projection_layer(module)
        if "bias" in projection:
            return None
        rows = mx.array(ids)
        weight = projection.weight[rows]
        if "scales" in projection:  # a quantized projection: those rows dequantized
            biases = projection.get("biases")
            weight = mx.dequantize(weight, projection.scales[rows],
                                   None if biases is None else biases[rows],
                                   projection.group_size, projection.bits,
                                   getattr(projection, "mode", "affine"))
        columns = mx.contiguous(weight.T)
        probe = mx.array([[(5 * i + 1) % int(ids.max() + 1) for i in range(6)]])
        expected = module(probe)[0][:, rows].astype(mx.float32)
        got = (decoder_stack(module)(probe)[0] @ columns).astype(mx.float32)
    except (AttributeError, KeyError, TypeError, ValueError, MlxSpecError):
        return None  # an architecture laid out otherwise
    # the two products round differently in 16-bit weights: a few of that dtype's units
    tolerance = {mx.float16: 4e-3, mx.bfloat16: 3e-2}.get(columns.dtype, 1e-3)
    scale = mx.abs(expected).max() + 1e-6
    if (mx.abs(got - expected).max() / scale).item() > tolerance:
        return None
    mx.eval(columns)
    return columns


DRAFT_ROLE = "draft-model"  # shipped draft models are found by the target they were made for


def load_draft_model(model: loading.SpecModel, path: Optional[str] = None) -> DraftModel:
    """Load (once per target, shared by its decoders) and check the drafter for `model`."""
    if path is None:
        shipped = loading.shipped_companion(model.config, DRAFT_ROLE)
        if shipped is None:
            raise MlxSpecError("no shipped draft model fits this target; pass draft_model=PATH "
                               "(a smaller model of the same family, or one distilled with "
                               "`mlxspec train --teacher`)")
        path = str(shipped)
    where = loading.resolve(path)
    loaded = shared(model).draft_models
    if where not in loaded:
        module, tokenizer, _, where = loading.load_mlx_lm(where)
        TokenCache.for_model(module)  # a layer kind no cache class serves: refused here, clearly
        target_width, draft_width = _logits_width(model.model), _logits_width(module)
        check_vocabularies(model.tokenizer, tokenizer, target_width, draft_width, where)
        ids, _ = draft_vocab.read(where, draft_width)
        ids = None if ids is None else ids[ids < target_width]  # the rest are never proposed
        columns = None if ids is None or not ids.size else vocabulary_columns(module, ids)
        loaded[where] = DraftModel(module, tokenizer, where, draft_width, target_width,
                                   supports_compiled_step(module, min(draft_width, target_width)),
                                   None if columns is None else mx.array(ids), columns)
    return loaded[where]


class DraftTime:
    """The drafter's cost per drafted token in one-token target steps: the median over the last
    rounds of its measured seconds per draft over the target's measured one-token step at the
    cached length of the round to price (only rounds that fed at most a few new tokens: a
    prompt's prefill is not drafting). `fixed` (a caller's constant), or DEFAULT where there is
    no measured target (`step_s` None; else step_s(cached) -> seconds), wins."""

    DEFAULT, ROUNDS, FRESH = 0.1, 16, 3

    def __init__(self, step_s: Optional[Callable[[Optional[int]], float]],
                 fixed: Optional[float] = None):
        self.step_s, self.fixed = step_s, fixed
        self._per_draft_s: deque = deque(maxlen=self.ROUNDS)

    def record(self, seconds: float, drafts: int, fed: int) -> None:
        if drafts and fed <= self.FRESH:
            self._per_draft_s.append(seconds / drafts)

    def relative(self, cached: Optional[int] = None) -> float:
        if self.fixed is not None:
            return self.fixed
        if not self._per_draft_s or self.step_s is None:
            return self.DEFAULT
        return statistics.median(self._per_draft_s) / self.step_s(cached)


@register("draft")
class DraftModelDrafter(Drafter):
    def __init__(self, model, draft_model: Optional[str] = None, num_draft_tokens: int = 4,
                 adaptive: bool = True, verify_cost: Optional[float] = None,
                 verify_overhead: Optional[float] = None, draft_cost: Optional[float] = None,
                 draft_vocab: bool = True):
        check_draft_size("num_draft_tokens", num_draft_tokens)
        if draft_cost is not None and not 0 <= draft_cost < math.inf:  # (NaN fails too)
            raise ValueError("draft_cost must be a finite number >= 0")
        self.num_draft_tokens = num_draft_tokens
        self.draft = load_draft_model(model, draft_model)
        # draft_vocab=False drafts from the whole vocabulary where the drafter has a drafting one
        self.vocab = self.draft.vocab_ids if draft_vocab else None
        self.forward = DraftForward(self.draft.module, self.draft.compiled_step,
                                    self.draft.vocab_columns if draft_vocab else None)
        self.stop_rule = StopRule()         # static: the chooser sizes the rounds
        self._max_drafts = 0                # k of the round being verified, for the stop rule
        self.choosers: Optional[ModelChoosers] = None  # None: num_draft_tokens every round
        if adaptive:
            measured = verify_cost is None and verify_overhead is None and model is not None
            cost = target_cost(model) if measured else None
            self.time = DraftTime(None if cost is None else
                                  (lambda cached: cost.step_seconds(1, cached=cached)), draft_cost)

            verify = {sampled: verify_cost_for(model, verify_cost, verify_overhead,
                                               default=(0.07, 0.2), sampled=sampled)
                      for sampled in (False, True)}  # priced once: a request's chooser reads it

            def make(start_level=PRIOR, sampled=False):
                return DraftChooser.for_depths(num_draft_tokens, 0, verify=verify[sampled],
                                               probe_backoff=True, start_level=start_level)

            # keyed by class too: adaedl's rounds, cut by its stop rule, teach another chooser
            settings = (type(self).__name__, self.draft.path, num_draft_tokens, verify_cost,
                        verify_overhead, draft_vocab)
            self.choosers = ModelChoosers(model, settings, make,
                                          shipped_acceptance(self.draft.path))

    # -- drafter cache -----------------------------------------------------------------------------
    @property
    def cached_tokens(self) -> list[int]:
        return self.forward.kv.tokens

    def _trim_to(self, tokens: list[int]) -> None:
        """Drop cached tokens that are not a prefix of `tokens` (rejected drafts, a new prompt)."""
        self.forward.kv.rewind(common_prefix(self.forward.kv.tokens, tokens))

    def _forward(self, tokens, narrow: bool = False) -> mx.array:
        """Feed tokens (list or lazy [n] array) after the cache; logits of the last one,
        [target_width], or with a drafting vocabulary and `narrow`, [K] over self.vocab."""
        logits = self.forward(tokens)
        width, target_width = self.draft.width, self.draft.target_width
        if self.vocab is not None:
            return logits if narrow else draft_vocab.widen(logits, self.vocab, target_width)
        if width > target_width:
            logits = logits[:target_width]
        elif width < target_width:  # ids the drafter lacks get probability 0
            logits = mx.concatenate([logits, mx.full((target_width - width,), -mx.inf, logits.dtype)])
        return logits

    def _feed_unseen(self, tokens: list[int], narrow: bool = False) -> mx.array:
        """Bring the cache to tokens[:-1] + root and return the logits after the root."""
        self._trim_to(tokens[:-1])  # the root is always fed, so there are logits to draft from
        start = len(self.cached_tokens)
        while len(tokens) - start > PREFILL_CHUNK:  # long new prompts: chunked like mlx-lm
            self._forward(tokens[start:start + PREFILL_CHUNK], narrow=True)
            mx.eval([c.state for c in self.forward.cache])
            start += PREFILL_CHUNK
        return self._forward(tokens[start:], narrow)

    # -- drafting ----------------------------------------------------------------------------------
    def rule_for(self, sampling: SamplingParams) -> StopRule:
        """The stop rule of this round (static here; adaedl keeps one per sampling regime)."""
        return self.stop_rule

    def keep_learning(self) -> None:
        if self.choosers is not None:
            self.choosers.keep_learning()

    def begin(self, prompt_tokens: list[int]) -> None:
        if self.choosers is not None:  # a fresh sampling chooser, unless carried (ModelChoosers)
            self.choosers.begin()

    def _chooser(self, ctx: StepContext) -> Optional[DraftChooser]:
        if self.choosers is None:
            return None
        chooser = self.choosers.get(ctx.sampling)
        chooser.draft_cost = self.time.relative(len(ctx.tokens))
        return chooser

    def propose(self, ctx: StepContext) -> Tree:
        chooser = self._chooser(ctx)
        k = min(self.num_draft_tokens, ctx.max_drafts,
                chooser.choose(cached=len(ctx.tokens)) if chooser is not None
                else self.num_draft_tokens)
        self._max_drafts = k
        if k <= 0:
            return Tree.from_chain(ctx.tokens[-1], [])
        started = time.perf_counter()
        fed = len(ctx.tokens) - common_prefix(self.cached_tokens, ctx.tokens)
        sampling: SamplingParams = ctx.sampling
        # greedy drafts from a drafting vocabulary: the argmax over its K logits, mapped to ids
        # (no widening to the whole vocabulary; ids are sorted, so ties break as there)
        narrow = sampling.greedy and self.vocab is not None
        logits = self._feed_unseen(ctx.tokens, narrow)
        keys = mx.random.split(ctx.key, k) if not sampling.greedy else [None] * k
        rule = self.rule_for(sampling)
        # where MLX computes on the CPU, a sampled draft is drawn on the host (HostRows: MLX's
        # exp there cost ~4 passes over the vocabulary per draft); the next forward waits for it
        on_host = not sampling.greedy and rows_on_host()
        uniforms = np.asarray(mx.stack([mx.random.uniform(key=key) for key in keys])) \
            if on_host else None
        drafted, probs = [], []
        for i in range(k):
            if i > 0:  # the previous draft is fed while still lazy (drawn by MLX's ops): no
                logits = self._forward(drafted[-1], narrow)  # host round trip
            logprobs = (log_probs(logits[None], sampling)[0]
                        if not sampling.greedy and (not on_host or rule.checks) else None)
            if sampling.greedy:
                token = mx.argmax(logits, keepdims=True)
                if narrow:
                    token = self.vocab[token]
            elif on_host:
                rows = HostRows(logits[None], sampling)
                token = mx.array([rows.draw(0, float(uniforms[i]))], dtype=mx.uint32)
            else:
                token = mx.random.categorical(logprobs, key=keys[i])[None]
            if rule.checks and i > 0:  # at least one draft per round
                statistic = rule.statistic(rule.greedy_log_probs(logits) if sampling.greedy
                                           else logprobs)
                mx.eval(token, statistic)
                if rule.should_stop(statistic.item()):
                    break
            else:
                mx.async_eval(token)
            drafted.append(token)
            if on_host:
                probs.append(rows.probs(0).astype(np.float32))
            elif not sampling.greedy:
                probs.append(mx.exp(logprobs))
        chain = mx.concatenate(drafted).tolist()
        if self.choosers is not None:
            self.time.record(time.perf_counter() - started, len(chain), fed)
        # every draft but the k-th was fed back (a rule stops only after feeding the last it kept)
        self.forward.kv.name_tokens(chain[:min(len(chain), k - 1)])
        draft_probs = None
        if on_host:  # row 0 (the root) is unused by acceptance
            draft_probs = mx.array(np.stack([np.zeros_like(probs[0]), *probs]))
        elif not sampling.greedy:
            draft_probs = mx.stack([mx.zeros_like(probs[0]), *probs])
        return Tree.from_chain(ctx.tokens[-1], chain, draft_probs=draft_probs)

    def observe(self, ctx, tree, acceptance, out) -> None:
        self._trim_to(ctx.tokens)
        self.stop_rule.observe(acceptance.accepted_drafts, len(tree) - 1, self._max_drafts)
        chooser = self._chooser(ctx)
        if chooser is not None and ctx.max_drafts > 0:  # a plain round (offered 0) lets the
            # depths drift back towards their prior, so drafting is probed again
            chooser.record(acceptance.accepted_drafts, len(tree) - 1)
