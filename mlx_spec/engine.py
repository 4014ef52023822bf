"""The decoding loop shared by every method:

    propose (drafter) -> verify (target, one forward) -> accept -> commit KV -> observe
        -> prepare the next drafts (drafter) -> stream

A Decoder is one conversation: it keeps the target's KV cache between requests and reuses the
longest cached prefix of the next prompt, so a chat turn only prefills what is new. Its BackOff
turns drafting off where the method measured slower than plain decoding, and probes again.
"""
from __future__ import annotations

import time
from dataclasses import astuple, dataclass, field
from typing import Callable, Iterator, Optional, Sequence

import mlx.core as mx

from .accept import accept
from .drafters import Drafter, StepContext
from .errors import MlxSpecError
from .sampling import SamplingParams
from .stats import GenerationStats
from .target import Target


@dataclass
class Step:
    token_ids: list[int]            # new tokens this step (EOS excluded)
    finish_reason: Optional[str]    # None, "stop" (EOS), "length" or "context"
    stats: GenerationStats


@dataclass
class Limits:
    max_tokens: int
    context_length: Optional[int] = None
    eos_token_ids: frozenset = field(default_factory=frozenset)


def check_request(prompt_tokens: Sequence[int], limits: Limits) -> None:
    if not prompt_tokens:
        raise MlxSpecError("the prompt is empty")
    if limits.max_tokens < 1:
        raise MlxSpecError(f"max_tokens must be >= 1, got {limits.max_tokens}")
    if limits.context_length and len(prompt_tokens) >= limits.context_length:
        raise MlxSpecError(f"the prompt has {len(prompt_tokens)} tokens; the model's context "
                           f"is {limits.context_length}")


@dataclass
class _Window:
    """Sums over drafting steps (BackOff's current window, or its decayed past)."""
    steps: float = 0
    tokens: int = 0          # emitted
    seconds: float = 0.0     # wall time of the steps
    overhead_s: float = 0.0  # outside drafting and verification
    verify_s: float = 0.0
    cost: float = 0.0        # the cost model's verify cost, in one-token steps
    drafts: int = 0          # draft tokens verified
    sent: int = 0            # steps that sent drafts

    def plus(self, other: "_Window", weight: float) -> "_Window":
        return _Window(*(a + weight * b for a, b in zip(astuple(self), astuple(other))))


class BackOff:
    """Never slower than plain decoding: every WINDOW drafting steps, their tokens per second are
    compared with plain decoding's (one token per step of `plain_s`: measured on plain steps, or
    before any, estimated from this window's own verify time through the cost model's shape,
    cost(1 token) / cost(1 + drafts), plus its per-step overhead; only ratios are read from the
    cost model, so a model measured on a busier or quieter day still judges right). Where
    drafting lost by more than MARGIN, the next `hold` steps draft nothing (doubling after each
    lost probe, up to MAX_HOLD; back to FIRST_HOLD after a win); where the estimate alone cannot
    tell (gain within CLEAR of 1), PROBE plain steps are measured. A window is judged together
    with the earlier ones of its request, each halving in weight (PAST): at a high temperature a
    speculative step emits 1 to 3 tokens by chance, and one unlucky window of a method that wins
    by 5% must not pause it. A window is judged once SENT of its steps sent drafts (until then
    it grows, up to LONGEST steps): steps where the drafter's chooser sent nothing are plain
    ones, and one missed draft among them says little; `auto` on long SmolLM2 requests paused 16
    steps on a window of seven such steps of an idle `redrafter` and `pld`'s first, missed,
    8-token draft, where `pld` went on to emit 8, 2, 1, 6, 8 tokens a step. A step without
    drafts is the target's own step, so the output is unchanged."""

    WINDOW, PROBE, FIRST_HOLD, MAX_HOLD, SENT = 8, 4, 16, 512, 4
    LONGEST = 4 * WINDOW  # a window of fewer than SENT drafting steps is judged at this length
    MARGIN, CLEAR, PAST = 0.02, 0.10, 0.5

    def __init__(self, relative_cost: Optional[Callable[..., float]] = None):
        self.relative = relative_cost  # (tokens verified, as a tree, cached=tokens cached) ->
        # cost in one-token steps (CostModel.relative)
        self.plain_s: Optional[float] = None   # measured seconds per plain step (running mean)
        self.hold = self.FIRST_HOLD
        self.plain_left = 0                    # plain steps still to run
        self._resumable = False                # the pause is for a loss (resume_if may end it)
        self._pause_gain: Optional[float] = None  # the drafter's expected gain as it began
        self._window = _Window()               # the drafting steps since the last judgement
        self._past = _Window()                 # the earlier windows, decayed by PAST per window

    @property
    def drafting(self) -> bool:
        return self.plain_left == 0

    def new_request(self) -> None:
        """A new prompt may suit the method better: what was learned (the plain step time, how
        long the pauses have grown) is kept, but drafting is probed within PROBE steps and judged
        on this prompt's steps alone (judged with the last prompts' losing windows, auto's first 8
        steps on a text pld decodes 2x faster were paused for the whole answer)."""
        self.plain_left = min(self.plain_left, self.PROBE)
        self._pause_gain = None  # resume_if's reference is taken on this prompt's text
        self._window, self._past = _Window(), _Window()

    def allows_drafts(self, drafter: Drafter) -> bool:
        """Whether the next step may draft; a paused drafter that learns while paused is first
        asked whether it now expects to win (resume_if; asked only while paused: a chooser's
        gain weighs every size)."""
        if self.plain_left and drafter.learns_while_paused:
            self.resume_if(drafter.expected_gain())
        return self.drafting

    def resume_if(self, gain: Optional[float]) -> None:
        """End a pause early where the drafter's own evidence, gathered on the pause's plain
        steps, expects drafting to win by more than CLEAR (Drafter.expected_gain): pld and
        lookahead go on looking up while paused. Without it a pause doubled by the losing opening
        of a SmolLM2 rewriting answer kept lookahead plain while the answer quoted its request,
        which pld drafted at 1.7x; pauses that simply stayed short instead cost 2-4% at T = 1.0
        (TinyStories), where drafting rarely wins. Only a pause for a loss ends so (not the
        plain steps measured before judging), and only on a gain above the one expected when it
        began."""
        if not (self.plain_left and self._resumable) or gain is None:
            return
        if self._pause_gain is None:  # what the drafter expected when the pause began: the
            self._pause_gain = gain   # back-off overruled it, so only a rise says the text changed
        elif gain > max(1.0, self._pause_gain) * (1.0 + self.CLEAR):
            self.plain_left = 0

    def record(self, drafted: int, tokens: int, seconds: float, overhead_s: float,
               verify_s: float = 0.0, tree: bool = False,
               switch: Optional[Callable[[float, float], bool]] = None,
               cached: Optional[int] = None) -> None:
        """One step: `drafted` candidate tokens (a branching tree of them if `tree`), `tokens`
        emitted, its wall time, the part of it outside drafting and verification, its
        verification time, and the tokens cached before it (its price grows with them). `switch`
        (Drafter.switch_instead) is asked before a pause for a loss: where it switches, the
        judged windows were another way of drafting's, and are dropped instead."""
        if not drafted and self.plain_left:
            self.plain_s = seconds if self.plain_s is None else 0.7 * self.plain_s + 0.3 * seconds
            self.plain_left -= 1
            return
        # a step where the drafter was asked and drafted nothing (its chooser said depth 0) is
        # judged like any drafting step: its retrieval or head work still costs time
        w = self._window
        w.steps += 1
        w.drafts += drafted
        w.sent += drafted > 0
        w.tokens += tokens
        w.seconds += seconds
        w.overhead_s += overhead_s
        w.verify_s += verify_s
        w.cost += self.relative(1 + drafted, tree, cached=cached) if self.relative else 0.0
        if w.steps < self.WINDOW or (0 < w.sent < self.SENT and w.steps < self.LONGEST):
            return
        self._window = _Window()
        if not w.drafts:  # the drafter's own chooser is at plain decoding already: a gain
            return        # here is noise, and a pause on it would hold back the drafts that
            # chooser turns to once its look-ups expect a gain (pld learns from guesses it looks
            # up but does not send), so a noisy window could keep it plain for whole answers
        w = self._past = w.plus(self._past, self.PAST)
        plain = self.plain_s
        if plain is None and self.relative is not None and w.verify_s > 0:
            plain = w.verify_s / w.cost + w.overhead_s / w.steps
        gain = None if plain is None else w.tokens * plain / w.seconds
        if gain is None or (self.plain_s is None and abs(gain - 1.0) < self.CLEAR):
            self.plain_left = self.PROBE  # measure plain steps before judging
            self._resumable = False
        elif gain < 1.0 - self.MARGIN:
            if switch is not None and switch(plain, self.CLEAR):
                self._past = _Window()
                return
            self.plain_left = self.hold
            self.hold = min(2 * self.hold, self.MAX_HOLD)
            self._resumable, self._pause_gain = True, None
        else:
            self.hold = self.FIRST_HOLD


class Decoder:
    def __init__(self, target: Target, drafter: Drafter, method: str = "",
                 backoff: Optional[BackOff] = None):
        self.target = target
        self.drafter = drafter
        self.method = method
        self.backoff = backoff  # None: always draft (what the drafter asks for)
        # The next step's drafting and verification start before a step's tokens are yielded, so
        # that they run while the consumer streams (_loop). False starts them when the consumer
        # asks for the next step instead: nothing of this decoder is then in flight while the
        # consumer holds a step (the bench's step interleaving on the CPU, where mx.async_eval
        # returns at once and one method's forward would run inside another's timed step).
        self.dispatch_ahead = True
        self._consumer_s = 0.0  # time consumers held yielded steps, ever (see _clock)
        if drafter.needs_hidden_states and not target.has_hidden_states:
            raise MlxSpecError(f"method {method!r} needs the target's hidden states, and this "
                               "architecture's final norm could not be found")

    def reset(self) -> None:
        self.target.reset()

    def _clock(self) -> float:
        """This decoder's own time (StepContext.clock): wall time less the time consumers held
        its yielded steps, so that a step timed across a yield (auto's, from one observe() to the
        next) is the decoder's work alone, whatever runs between its steps."""
        return time.perf_counter() - self._consumer_s

    def reusable(self, prompt_tokens: Sequence[int]) -> int:
        """Prompt tokens the target's cache already holds (the last one is always fed)."""
        return self.target.kv.reusable(prompt_tokens[:-1])

    @property
    def cached_tokens(self) -> list[int]:
        """The tokens in the target's cache (kept by the cache itself, kv.TokenCache)."""
        return self.target.tokens

    def generate(self, prompt_tokens: list[int], limits: Limits, sampling: SamplingParams,
                 seed: Optional[int] = None) -> Iterator[Step]:
        check_request(prompt_tokens, limits)
        stats = GenerationStats(method=self.method, prompt_tokens=len(prompt_tokens))
        seed = seed if seed is not None else time.time_ns() % (1 << 31)
        key = None if sampling.greedy else mx.random.key(seed)

        t0 = time.perf_counter()
        self.target.sync(prompt_tokens[:-1])  # the last prompt token is the first root
        tokens = list(prompt_tokens)
        self.drafter.begin(tokens)  # indexing the prompt (pld) is prefill work too
        stats.prefill_s = time.perf_counter() - t0
        if self.backoff is not None:
            self.backoff.new_request()
        try:
            yield from self._loop(tokens, limits, sampling, stats, key, seed)
        finally:
            self.drafter.end()

    def _room(self, tokens: list[int], generated: int, limits: Limits) -> int:
        room = limits.max_tokens - generated
        if limits.context_length:
            room = min(room, limits.context_length - len(tokens))
        return room

    def _dispatch(self, tokens: list[int], room: int, sampling: SamplingParams, key) -> _InFlight:
        """Propose the next tree, start verifying it asynchronously, and give the drafter the
        wait (Drafter.while_verifying)."""
        t0 = time.perf_counter()
        drafting = self.backoff is None or self.backoff.allows_drafts(self.drafter)
        ctx = StepContext(tokens=tokens, max_drafts=room - 1 if drafting else 0, sampling=sampling,
                          key=key, trees=self.target.supports_trees, clock=self._clock)
        tree = self.drafter.propose(ctx)
        t1 = time.perf_counter()
        out = self.target.verify(tree)
        mx.async_eval(out.logits)
        self.drafter.while_verifying(ctx)
        return _InFlight(ctx, tree, out, draft_s=t1 - t0, started=t1, backed_off=not drafting)

    def _next_flight(self, ctx, acceptance, out, tokens, generated, limits, sampling,
                     draft_key) -> _InFlight:
        """Prepare (the drafter's early start) and dispatch the step after `ctx`'s."""
        prepare_s = 0.0
        if self.backoff is None or self.backoff.drafting:
            t_prepare = time.perf_counter()
            self.drafter.prepare(ctx, acceptance, out)
            prepare_s = time.perf_counter() - t_prepare
        flight = self._dispatch(tokens, self._room(tokens, generated, limits), sampling, draft_key)
        flight.draft_s += prepare_s  # the next step's drafting began in prepare
        return flight

    def _loop(self, tokens, limits, sampling, stats, key, seed) -> Iterator[Step]:
        """Step n+1's verification is dispatched before step n's tokens are yielded, so whatever
        the consumer does with them (detokenize, print, update a UI) overlaps the forward pass
        (unless dispatch_ahead is off: then when the consumer asks for step n+1)."""
        generated = 0
        replayed_before = self.target.replayed
        key, draft_key = _split(key, 2)
        flight = self._dispatch(tokens, self._room(tokens, generated, limits), sampling, draft_key)
        try:
            while flight is not None:
                key, accept_key, draft_key = _split(key, 3)
                tree, out, ctx = flight.tree, flight.out, flight.ctx
                root_position = len(ctx.tokens) - 1
                acceptance = accept(tree, out.logits, sampling, accept_key, seed,
                                    root_position)  # the step's one host sync
                t_synced = time.perf_counter()
                verify_s = t_synced - flight.started - flight.consumer_s

                self.target.commit(acceptance.path, len(tree))
                room = self._room(tokens, generated, limits)
                new, finish = acceptance.tokens[:room], None
                for i, token in enumerate(new):
                    if token in limits.eos_token_ids:
                        new, finish = new[:i], "stop"
                        break
                tokens.extend(new)
                generated += len(new)
                if finish is None and generated >= limits.max_tokens:
                    finish = "length"
                if finish is None and self._room(tokens, generated, limits) <= 0:
                    finish = "context"
                self.drafter.observe(ctx, tree, acceptance, out)

                stats.target_calls += 1
                stats.drafted_tokens += len(tree) - 1
                stats.accepted_drafts += acceptance.accepted_drafts
                stats.replayed_tokens = self.target.replayed - replayed_before
                stats.accepted_per_call.append(len(acceptance.tokens))
                branching = not tree.is_chain
                stats.verified_per_call.append((len(tree), branching))
                stats.generated_tokens = generated
                stats.draft_s += flight.draft_s
                stats.verify_s += verify_s
                other_s = time.perf_counter() - t_synced
                stats.other_s += other_s
                stats.plain_calls += flight.backed_off
                stats.proposers = self.drafter.proposers()
                if self.backoff is not None and (flight.backed_off or self.drafter.steady()):
                    self.backoff.record(len(tree) - 1, len(acceptance.tokens),
                                        flight.draft_s + verify_s + other_s, other_s, verify_s,
                                        branching, self.drafter.switch_instead, root_position)
                flight = None
                following = (ctx, acceptance, out, tokens, generated, limits, sampling, draft_key)
                if finish is None and self.dispatch_ahead:  # the next tree before yielding
                    flight = self._next_flight(*following)
                paused = time.perf_counter()
                yield Step(new, finish, stats)
                held = time.perf_counter() - paused
                self._consumer_s += held
                if flight is not None:
                    flight.consumer_s = held
                elif finish is None:
                    flight = self._next_flight(*following)
        finally:
            if flight is not None:  # the consumer stopped early: drop the tree still in flight
                self.target.trim(len(flight.tree))


def _split(key, n: int) -> list:
    """Fresh random keys for sampling; greedy decoding draws nothing and carries no key chain
    (an unused lazy split per step would only grow an unevaluated graph)."""
    return [None] * n if key is None else list(mx.random.split(key, n))


@dataclass
class _InFlight:
    ctx: StepContext
    tree: object
    out: object
    draft_s: float
    started: float
    backed_off: bool = False  # drafting was off for this step (BackOff)
    consumer_s: float = 0.0
