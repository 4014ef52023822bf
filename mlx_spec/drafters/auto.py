"""`auto`: the fastest method this target has, chosen while generating.

Candidates are the drafting methods available for the loaded target: `pld` and `lookahead` always,
`redrafter` where a trained head fits it, `draft` where a draft model does. Each step one candidate
proposes, and auto times the step from one observe() to the next (the candidate's drafting, the
target's verify, the engine's accept; not the time the consumer holds a yielded step:
StepContext.clock). Per candidate it keeps a Rate, decayed sums of tokens emitted and seconds spent.

The choice, in stages (_next):
- The leader proposes until another candidate's rate is ahead by SWITCH_MARGIN, or by both rates'
  measured noise where that is larger (_hold): rates are windowed means of bursty steps, and
  moving to the highest of several noisy rates chases bursts that are over when the window shows
  them.
- Model drafters (`redrafter`, `draft`) are judged by trials: each waits its own number of steps
  between trials, FIRST_GAP after a trial it won, doubled by each one it clearly lost; its old
  steps fade with the steps it sat out (the text has moved on); a trial that ends ahead goes on
  until it takes the lead or falls back; one measured over too few steps to judge that may still
  beat the leader (may_beat: within the standard error of the rates' difference) is tried again
  at once. Over the long run (LongRate) a model drafter clearly slower than another neither takes
  its lead nor shortens its wait for a lucky window: at T > 0 one step emits 1 to 10 tokens by
  chance, and windows of ~14 steps rank two drafters wrongly far more often than 50 steps do. A
  due trial waits while the drafter's long run cannot beat the leader's rate (_worth_a_trial).
- Text-only candidates (`Drafter.drafts_from_text`: `pld`, `lookahead`) need no trials: on steps
  they do not propose they are asked, in the shadow, for the tree they would have sent, and once
  the text has gone past it that tree is scored as the target would have (the draft tokens the
  text followed, plus one: at T > 0 any method's tokens are the target's samples, so the score is
  a fair draw). Its time is the target's modelled verify time for that many tokens
  (mlx_spec/cost.py), scaled by how the real steps compare with the model on this machine now,
  plus the candidate's own answer time. Such a challenger takes the lead only where its shadow
  steps beat the real steps taken at the same places (Pairing; a tree the text is still
  following counts what it matched so far: _pairing), not a rate from other text, by the same
  margin as any switch (by SWITCH_MARGIN alone where the model drafter leading sits at plain
  decoding: its steps are mostly plain, and the challenger drafts only where its chooser
  expects a gain); so a model drafter leads first where there is one (at a cold start and at
  each new request), until a text-only candidate is paired ahead. Paired on its drafts over
  PAIRED steps; where its long run is below a busy model drafter leader's, on its asks that
  found no draft too, counted as the plain steps they would have been, over SETTLED steps
  (_judged_pairing). A text-only leader that finds no draft at a step hands that step to the
  best model drafter (_fall_back): it leads where it drafts. The other way round, a model
  drafter leading with its chooser at plain decoding (Rate.idle) hands each step it sends
  nothing to the best text-only candidate where that has a draft (_fall_forward). The asks run
  while the target verifies the step's tree (while_verifying): on a GPU the host is idle until
  the step's sync.
- Plain decoding is not a candidate: the engine's BackOff turns drafting off where even the best
  candidate loses (where the loser is a model drafter whose chooser sits at plain decoding, a
  text-only candidate takes its lead instead: switch_instead).

What auto measured is kept per loaded model and sampling regime (SamplingParams.regime), so
the next request starts from it, and saved at each request's end in the cache folder
(Shared.auto_folder) for the next process: a one-shot `mlxspec generate` would otherwise spend its
first steps trialling every model drafter. A text-only candidate is paired afresh on each request's
text (how it compares with the real steps depends on that text's repeats); trials keep their wait
across requests.

Exactness is the candidates' own: every step is one method's step, verified and accepted by the
same exact rules; only which method proposes depends on timing (so, as with the back-off, a seed
does not reproduce auto's sampled text). For the same reason the candidates keep the draft sizes
they learn while sampling across requests (Drafter.keep_learning, as they do alone with the
back-off on): inside auto a candidate's trials of two or three steps per request would otherwise
always draft at its prior's size.

The measurements behind each rule and constant are in the README ("Why `auto`'s rules are as
they are"), and `python -m mlx_spec.bench.replay` replays its choice on a bench's recorded steps.
"""
from __future__ import annotations

import json
import math
import os
import re
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

from ..accept import Acceptance
from ..cost import machine_file
from ..errors import MlxSpecError
from ..loading import resolve, weights_fingerprint
from ..sampling import is_whole
from ..target import has_hidden_states
from ..tree import Tree
from . import create, register
from .base import Drafter, StepContext, check_draft_size
from .draft_length import Guesses, Open
from .shared import shared, target_cost

CANDIDATES = ("pld", "lookahead", "redrafter", "draft")  # by default, those that can run
NAMEABLE = CANDIDATES + ("adaedl",)                      # what `methods=` may name
PAUSED_ROOM = 64  # drafts a shadow may ask for on a plain step (each candidate caps its own)


@dataclass
class Rate:
    """Decayed sums of one candidate's own steps (the latest weighs most)."""
    tokens: float = 0.0
    seconds: float = 0.0
    weight: float = 0.0     # decayed count of the steps in the sums
    squares: tuple = (0.0, 0.0, 0.0)  # decayed sums of tokens², tokens x seconds, seconds²
    steps: int = 0          # own steps ever measured
    last_step: int = -1     # auto's step counter when it last proposed
    wait: int = 24          # trialled candidates: auto steps from its last step to its next
    # trial (Auto.FIRST_GAP at first; doubled by each lost trial, up to Auto.MAX_GAP)
    sent: float = 0.0       # decayed count of the steps that sent a draft (see idle)

    DECAY = 0.93            # per own step: about the last 14 steps decide
    FADE = 0.25             # per auto step it sat out: its evidence fades (see fade)
    PRIOR = 4.0             # pseudo-steps of one token each, at the candidate's own step time
    SETTLED = 12            # own steps after which the prior has faded out (see per_second)
    SPIKE = 3.0             # a step counts at most this many of the rate's mean step seconds
    KNOWN = SETTLED         # the most steps its error counts (see error)
    IDLE = 0.25             # idle: a smaller fraction of its recent steps sent a draft

    def add(self, tokens: float, seconds: float, sent: bool = True) -> None:
        """One step more. Its seconds count at most SPIKE times the mean step so far: a few steps
        in a hundred take 5-10x the median whichever method runs (the machine's stalls, not the
        method's), and one of them in a window of ~14 would decide the lead; a method's own slow
        steps stay within 2x its median."""
        if self.weight > 0:
            seconds = min(seconds, self.SPIKE * self.seconds / self.weight)
        self.tokens = self.DECAY * self.tokens + tokens
        self.seconds = self.DECAY * self.seconds + seconds
        self.weight = self.DECAY * self.weight + 1
        self.sent = self.DECAY * self.sent + sent
        products = (tokens * tokens, tokens * seconds, seconds * seconds)
        self.squares = tuple(self.DECAY * old + new for old, new in zip(self.squares, products))
        self.steps += 1

    def fade(self, now: int) -> None:
        """Discount evidence by its age before a trial adds to it: steps measured on another part
        of the text (or another request) say less about this one, so a candidate that led a while
        ago is judged mostly by its trial, not kept out by a rate from a harder passage."""
        if self.last_step >= 0 and now > self.last_step + 1:
            self.discount(self.DECAY ** (self.FADE * (now - self.last_step - 1)))

    def discount(self, factor: float) -> None:
        """Every measured step counts `factor` as much (the rate itself is unchanged)."""
        self.tokens, self.seconds, self.weight = (factor * self.tokens, factor * self.seconds,
                                                  factor * self.weight)
        self.sent *= factor
        self.squares = tuple(factor * value for value in self.squares)

    @property
    def per_second(self) -> float:
        """Tokens per second, shrunk toward one token per step (what plain decoding would give
        at this step time) while the candidate has few steps: a few lucky steps of a trial must
        not displace a candidate measured over many. The shrinking fades out over SETTLED steps:
        kept for good, it would favour a cheap candidate of few tokens per step over an
        expensive one of many for ever."""
        if self.seconds <= 0:
            return 0.0
        prior = self.PRIOR * max(0.0, 1.0 - self.steps / self.SETTLED)
        step_s = self.seconds / self.weight
        return (self.tokens + prior) / (self.seconds + prior * step_s)

    @property
    def idle(self) -> bool:
        """Whether the candidate's chooser sits at plain decoding: of its recent steps (at least
        PRIOR of them), fewer than the fraction IDLE sent a draft. Its steps are then plain steps
        and, for a model drafter, a probe now and then that pays a draft and a wider verify
        blind."""
        return self.weight >= self.PRIOR and self.sent < self.IDLE * self.weight

    @property
    def raw(self) -> float:
        """Tokens per second as measured, without the prior."""
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def spread(self) -> float:
        """How far one step's tokens stray from what the rate predicts for its seconds, relative
        to a step's mean tokens (the ratio estimator's sqrt(E[(t - raw x s)^2]) / E[t]), shrunk
        toward 1 by one pseudo-step: two equal steps say little about the spread. Margins scale
        with it: a fixed spread of 1 (twice what model drafters' steps show) kept a clearly
        slower candidate within its margin for a dozen trial steps of every fresh start."""
        if self.weight <= 0 or self.tokens <= 0:
            return 1.0
        tt, ts, ss = self.squares
        raw = self.raw
        relative = max(0.0, tt - 2 * raw * ts + raw * raw * ss) * self.weight / self.tokens ** 2
        return ((self.weight * relative + 1.0) / (self.weight + 1.0)) ** 0.5

    def to_dict(self, unit: float) -> dict:
        """Its sums with seconds in units of `unit` (the target's modelled one-token step), for
        another process to read (Rates.save)."""
        tt, ts, ss = self.squares
        return {"tokens": self.tokens, "seconds": self.seconds / unit, "weight": self.weight,
                "squares": [tt, ts / unit, ss / unit ** 2], "steps": self.steps, "wait": self.wait,
                "sent": self.sent}

    @classmethod
    def from_dict(cls, data: dict, unit: float) -> "Rate":
        tt, ts, ss = (float(v) for v in data["squares"])
        return cls(tokens=float(data["tokens"]), seconds=float(data["seconds"]) * unit,
                   weight=float(data["weight"]), squares=(tt, ts * unit, ss * unit ** 2),
                   steps=int(data["steps"]), wait=int(data["wait"]),
                   sent=float(data.get("sent", data["weight"])))  # (older files: not idle)

    def error(self, recent: bool = False) -> float:
        """The rate's relative standard error: the steps' spread over the steps ever measured
        (not the faded weight: fading says old steps describe other text, not that the spread
        of a step's tokens is unknown; margins that wide sent a slow candidate back to trial
        after trial), at most KNOWN of them (a window's SETTLED: text moves on, no rate is
        known better; a LongRate's more).
        `recent`: over the decayed weight instead, how well the rate is known on the text now
        (what a switch of leader rests on: see Auto._hold)."""
        count = self.weight if recent else self.steps
        return self.spread() / max(1.0, min(count, self.KNOWN)) ** 0.5


class LongRate(Rate):
    """A candidate's steps over the long run: about its last 50, whatever the text, never faded.
    Model drafters keep their order over texts far more than their windowed rates show, while
    ~14-step windows of steps that emit 1 to 10 tokens put a clearly slower one within noise of
    the faster, or ahead, in many of its trials (Auto._clearly_slower, _worth_a_trial and
    _steadiest read a model drafter's). (Longer memories replay the recorded benches alike but
    follow a real change of order more slowly.) A text-only candidate's says whether it compares
    with a model drafter on average, or only on the bursts of a predictable passage
    (Auto._outrun): its scored shadow steps, its asks that found no draft (as the plain steps
    they would have been), its own steps, and as a leader the steps where it found no draft
    (Auto._fall_back). Its bursts weigh a little more than the rest: while its window passes
    the best it is asked every step, elsewhere every SHADOW_EVERY-th."""
    DECAY = 0.98
    KNOWN = 48


def may_beat(rate: Rate, other: Rate) -> bool:
    """Whether `rate` may still turn out faster than `other`: its raw tokens per second, raised
    by one standard error of the difference (both rates' errors: judged against the other's
    rate as if it were exact, two unlucky steps of a short recheck trial bench the faster)."""
    if rate.seconds <= 0:
        return True
    return rate.raw * (1.0 + math.hypot(rate.error(), other.error())) > other.raw


@dataclass
class Pairing:
    """A text-only candidate's shadow steps beside the real steps taken at the same places, each
    a Rate, so that `ratio` compares the two on the same text. Judged apart, a candidate's rate
    is highest right after a burst (a repeated phrase drafted whole), which is when it would take
    the lead and then run slower than the leader it displaced."""
    shadow: Rate = field(default_factory=Rate)
    real: Rate = field(default_factory=Rate)

    def add(self, tokens: int, seconds: float, real_tokens: float, real_seconds: float) -> None:
        self.shadow.add(tokens, seconds)
        self.real.add(real_tokens, real_seconds)

    @property
    def steps(self) -> int:
        return self.shadow.steps

    @property
    def ratio(self) -> float:
        """The shadow's tokens per second over the real steps' on the same places."""
        return self.shadow.raw / self.real.raw if self.real.raw > 0 else 0.0


@dataclass
class Calibration:
    """Real steps against the cost model: decayed sums of their seconds (less auto's own work)
    and of the cost model's verify seconds for their trees. Shadow steps are modelled seconds
    times this ratio (engine overhead, today's machine speed, what a candidate's own steps cost
    beyond the verify)."""
    measured: float = 0.0
    modelled: float = 0.0
    steps: int = 0

    TRUSTED = 3  # real steps of a candidate before its own ratio replaces the common one

    def add(self, seconds: float, modelled: float) -> None:
        self.measured = Rate.DECAY * self.measured + seconds
        self.modelled = Rate.DECAY * self.modelled + modelled
        self.steps += 1

    @property
    def scale(self) -> float:
        return self.measured / self.modelled if self.modelled > 0 else 1.0


@dataclass
class Rates:
    """What auto knows of its candidates on one loaded model and sampling regime."""
    by_name: dict = field(default_factory=dict)   # candidate -> Rate
    step: int = 0                                  # steps proposed by any candidate
    real: Calibration = field(default_factory=Calibration)   # every real step
    own: dict = field(default_factory=dict)        # text-only candidate -> its real steps
    paired: dict = field(default_factory=dict)     # text-only candidate -> its Pairing
    paired_all: dict = field(default_factory=dict)  # the same counting its asks that found no
    # draft too, each as the plain step it would have taken (Auto._judged_pairing)
    leader: Optional[str] = None                   # the candidate proposing outside trials
    long: dict = field(default_factory=dict)       # model drafter -> its LongRate
    text_long: dict = field(default_factory=dict)  # text-only candidate -> its LongRate

    def save(self, file: Path, unit: float, about: Optional[dict] = None) -> None:
        """Write the candidates' rates and the leader (not the calibrations or pairings: a few
        steps of a new process remeasure those), and `about` (whose they are: `mlxspec doctor`
        reads it). Seconds go in units of `unit`, so a process whose cost model was measured
        again reads the same tokens per step. A cache that cannot be written only costs the
        next process its first trials."""
        data = {"leader": self.leader, "about": about or {},
                "rates": {name: rate.to_dict(unit) for name, rate in self.by_name.items()},
                "long": {name: rate.to_dict(unit) for name, rate in self.long.items()},
                "text_long": {name: rate.to_dict(unit) for name, rate in self.text_long.items()}}
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            tmp = file.with_suffix(f".{os.getpid()}-{threading.get_ident()}.tmp")  # (a server's
            # decoders may end requests on several threads, other processes at the same time)
            tmp.write_text(json.dumps(data))
            tmp.replace(file)
        except OSError:
            pass

    @classmethod
    def read(cls, file: Path, unit: float) -> tuple["Rates", dict]:
        """(the Rates saved in `file`, its `about`); (nothing known, {}) where it cannot be read.
        Its steps are as old as the last request's are at a new one (Auto.NEW_TEXT discounts
        both); its step counter starts again, so no candidate is due a trial at once."""
        try:
            data = json.loads(file.read_text())
            by_name = {name: Rate.from_dict(rate, unit) for name, rate in data["rates"].items()}
            long, text_long = ({name: LongRate.from_dict(rate, unit)
                                for name, rate in (data.get(key) or {}).items()}
                               for key in ("long", "text_long"))
            leader = data["leader"] if data["leader"] in by_name else None
            about = dict(data.get("about") or {})
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return cls(), {}
        return cls(by_name=by_name, leader=leader, long=long, text_long=text_long), about

    @classmethod
    def load(cls, file: Path, unit: float, names) -> "Rates":
        """What an earlier process saved for these candidates (`names`), else nothing known."""
        saved, _ = cls.read(file, unit)
        by_name = {name: rate for name, rate in saved.by_name.items() if name in names}
        long, text_long = ({name: rate for name, rate in kept.items() if name in names}
                           for kept in (saved.long, saved.text_long))
        return cls(by_name=by_name, leader=saved.leader if saved.leader in by_name else None,
                   long=long, text_long=text_long)

    def pair(self, name: str, tokens: float, seconds: float, real_tokens: float,
             real_seconds: float, drafted: bool = True) -> None:
        """One step of text-only `name` beside the real step at the same place: a draft it
        would send (or sent) goes to both pairings; an ask that found no draft (`drafted`
        False), as the plain step it would have been, to paired_all alone."""
        for pairings in (self.paired, self.paired_all) if drafted else (self.paired_all,):
            pairings.setdefault(name, Pairing()).add(tokens, seconds, real_tokens, real_seconds)

    def unpair(self, name: str) -> None:
        """Drop text-only `name`'s pairings (both: they are of the same asks)."""
        self.paired.pop(name, None)
        self.paired_all.pop(name, None)

    def scale(self, name: str) -> float:
        """How a shadow step of `name` scales: by its own real steps once there are a few (a
        wide tree with its drafter's updates costs more than a chain's ratio predicts), else by
        every real step's."""
        own = self.own.get(name)
        return own.scale if own is not None and own.steps >= own.TRUSTED else self.real.scale


class Auto(Drafter):
    """Proposes with the candidate of best measured tokens per second (module text)."""

    SHADOW_EVERY = 4  # see _shadow_steps
    SWITCH_MARGIN, RECHECK, PAIRED = 0.1, 6, 4  # see _hold and _next
    NEW_TEXT = 0.5  # what the last requests' steps count for at a new request (the last
    # answer's leader must not hold the lead on a text that suits another candidate)
    TRIAL, KNOWN_TRIAL, FIRST_GAP, MAX_GAP = 3, 2, Rate.wait, 384  # KNOWN_TRIAL: for a candidate
    # with 6 or more measured steps (its rate's prior and history absorb a short trial's luck)
    SETTLED = Rate.SETTLED  # own steps measured before a candidate is trusted: until then, one
    # that may still beat the best (may_beat) is tried again at once (a few unlucky opening
    # steps must not bench the best candidate), and a text-only one is asked every step

    def __init__(self, candidates: dict, rates_for=None, cost=None, keep=None, overlap=True):
        """rates_for(regime) -> the Rates to start a request from; keep(regime, rates) at each
        request's end (the factory saves them for the next process); cost: the target's
        CostModel, without which every candidate is judged by trials."""
        if not candidates:
            raise MlxSpecError("auto: no candidate method")
        self.candidates: dict[str, Drafter] = dict(candidates)
        for drafter in self.candidates.values():  # a few trial steps per request would never
            drafter.keep_learning()                # size a sampled draft (Drafter.keep_learning)
        self._rates_for = rates_for or (lambda regime: Rates())
        self._keep = keep or (lambda regime, rates: None)
        self._regime = ""
        self.cost = cost
        self.overlap = overlap
        self.shadowed = [n for n, d in self.candidates.items()
                         if cost is not None and d.drafts_from_text]
        self.trialled = [n for n in self.candidates if n not in self.shadowed]  # judged by trials
        self._shadows = {n: Guesses(_shadow_outcome) for n in self.shadowed}
        self._besides_s = 0.0  # this step's work besides the verify: prepare, propose, the shadow
        # asks (made while the verify ran too: where they did not overlap it, on a CPU whose cores
        # the forward holds, they lengthened the wait)
        self._asked: list[list] = []  # this step's shadow entries, waiting for its real outcome
        self._missed: dict[str, list] = {}  # text-only candidate -> its asks that found no draft
        # since its last _shadow_steps, as (seconds, the real step)
        self._following: dict[str, list] = {}  # text-only candidate -> its open shadow trees the
        # text follows, as (tokens matched so far + 1, seconds, the real step): see _pairing
        self.rates: Optional[Rates] = None       # this request's regime (set at its first step)
        self.current: str = next(iter(self.candidates))  # the leader, or a trial's candidate
        self.proposer: str = self.current  # who proposed the step in flight (_fall_back)
        self._outcome: Optional[tuple] = None  # the last step's (ctx, acceptance, out)
        self._handed: dict[str, Rate] = {}  # model drafter -> this request's steps handed to
        # it by a text-only leader (_fall_back; its last_step: auto's step of the last one)
        self.steps_by_method: dict[str, int] = {}  # this request's proposing steps per candidate
        self._trial: Optional[tuple[str, int]] = None   # (candidate, steps left)
        self._trial_steps = 0  # the running (or last) trial's steps, extensions included
        self._drafted = False  # the step in flight is its candidate's own (not a plain step)
        self._in_trial = False  # the step in flight is part of a trial
        self._answered: dict = {}  # text-only candidate -> (its tree, answer seconds): asked
        # for real this step (_fall_forward), not asked again in the shadow
        self._last_observe: Optional[float] = None

    @property
    def needs_hidden_states(self) -> bool:
        return any(d.needs_hidden_states for d in self.candidates.values())

    @property
    def learns_while_paused(self) -> bool:
        """With a candidate that does (pld, lookahead): the text-only candidates are asked in
        the shadow on the back-off's plain steps too, which teaches their choosers and auto's
        rates, so a pause ends where one of them would win (a pause doubled on its own would
        keep auto plain through an answer that quotes its request)."""
        return any(d.learns_while_paused for d in self.candidates.values())

    def expected_gain(self) -> Optional[float]:
        gains = [g for d in self.candidates.values() if d.learns_while_paused
                 for g in [d.expected_gain()] if g is not None]
        return max(gains) if gains else None

    # -- one request ------------------------------------------------------------------------------
    def begin(self, prompt_tokens: list[int]) -> None:
        for drafter in self.candidates.values():
            drafter.begin(prompt_tokens)
        self.rates, self._trial, self._last_observe, self._outcome = None, None, None, None
        self._handed = {}
        self.steps_by_method = {}
        for ledger in self._shadows.values():
            ledger.clear()
        self._following, self._missed = {}, {}

    def propose(self, ctx: StepContext):
        if self.rates is None:
            self._regime = ctx.sampling.regime
            self.rates = self._rates_for(self._regime)
            for rate in self.rates.by_name.values():  # the last request's text is not this one's
                rate.discount(self.NEW_TEXT)
            self._forget_text()
            if not self.shadowed:  # a new prompt may suit another candidate (pld on a text to
                # transform): a trial comes within 2 x FIRST_GAP steps however long the last
                # requests made the wait (shadow steps see that at once)
                for rate in self.rates.by_name.values():
                    rate.wait = min(rate.wait, 2 * self.FIRST_GAP)
            self.current = self._next()
        # a plain step (the back-off, the last token) drafts nothing: no candidate's own step
        self._drafted = ctx.max_drafts >= 1
        self._in_trial = self._trial is not None
        t0 = time.perf_counter()
        self.proposer = self.current
        self._answered = {}
        tree = self.candidates[self.current].propose(ctx)
        if len(tree) == 1 and self._drafted:
            tree = (self._fall_back(ctx, tree) if self.current in self.shadowed
                    else self._fall_forward(ctx, tree))
        if not self.overlap:
            self._shadows_of_step(ctx)
        self._besides_s += time.perf_counter() - t0
        return tree

    def while_verifying(self, ctx: StepContext) -> None:
        t0 = time.perf_counter()
        self.candidates[self.proposer].while_verifying(ctx)  # the tree in flight is its
        if self.overlap:
            self._shadows_of_step(ctx)
        self._besides_s += time.perf_counter() - t0

    def _shadows_of_step(self, ctx: StepContext) -> None:
        if self._drafted:
            self._shadow_steps(ctx)
        elif self.learns_while_paused:  # the back-off's plain step allows no drafts: the shadow
            # asks for what each candidate would send if it did
            self._shadow_steps(replace(ctx, max_drafts=PAUSED_ROOM))

    def _forget_text(self) -> None:
        """A new request: how a text-only candidate compares with the real steps depends on this
        text's repeats, so its pairings start again, and a text-only leader hands the lead to the
        best model drafter (where there is one) until its shadow steps beside the real ones
        show it ahead on this text (_hold): the last answer's repeats say nothing of this one.
        Also where no model drafter beats plain decoding on average: one may on this text (a
        head that wins on code and not on prose). The best over the long run (_steadiest): the
        windows of model drafters that sat out while a text-only one led are rates of older
        text."""
        for name in self.shadowed:
            self.rates.unpair(name)
        if self.rates.leader in self.shadowed and self.trialled:
            self.rates.leader = self._steadiest(self.trialled)

    def _rate(self, name: str) -> Rate:
        """`name`'s rate, or nothing measured."""
        return self.rates.by_name.get(name, Rate())

    def _shadow_steps(self, ctx: StepContext) -> None:
        """Ask every text-only candidate that is not proposing for the tree it would send (one
        measured over SETTLED steps that trails the best only every SHADOW_EVERY steps, once
        paired on PAIRED steps or while the leader outruns it (_outrun): an answer costs a few
        percent of a step (on a CPU, where the forward holds the cores, it lengthens the verify:
        `lookahead`'s 0.42 ms on 33 ms embedded steps), and a sample of the steps rates it as
        well, only over a longer window; a window that rises past the best's is asked every step
        again); score the trees the text has decided since, and the asks that found no draft as
        the plain steps they would have been (its long run, Rates.paired_all)."""
        leader = self._rate(self._best()).per_second
        for name in self.shadowed:
            ledger = self._shadows[name]
            rate = self.rates.by_name.setdefault(name, Rate())
            long = self.rates.text_long.setdefault(name, LongRate())
            for matched, seconds, real in ledger.settle(ctx.tokens):
                rate.add(1 + matched, seconds)
                long.add(1 + matched, seconds)
                if real:  # the real step taken where this tree was asked for
                    self.rates.pair(name, 1 + matched, seconds, *real)
            for seconds, real in self._missed.pop(name, ()):  # asks that found no draft
                long.add(1, seconds)
                if real:
                    self.rates.pair(name, 1, seconds, *real, drafted=False)
            self._following[name] = ledger.so_far
            if name == self.current:
                continue
            if name in self._answered:  # asked for real this step (_fall_forward): where it found
                tree, answer_s = self._answered[name]  # no draft, booked as a shadow ask's miss
                if len(tree) == 1:  # (here, after the misses of earlier steps were settled)
                    self._book_ask(name, tree, len(ctx.tokens), answer_s)
                continue
            paired = self.rates.paired.get(name)
            if (rate.steps >= self.SETTLED and rate.per_second < leader
                    and (self._outrun(name, self.rates.leader)
                         or (paired is not None and paired.steps >= self.PAIRED))
                    and self.rates.step % self.SHADOW_EVERY):
                continue
            t0 = time.perf_counter()
            tree = self.candidates[name].propose(ctx)
            self._book_ask(name, tree, len(ctx.tokens), time.perf_counter() - t0)

    def _book_ask(self, name: str, tree: Tree, cached: int, answer_s: float) -> None:
        """Text-only `name`'s answer to this step's ask, not proposed: a tree to score once the
        text has gone past it, or, where it found no draft, the plain step it would have taken
        (one token, scored at the next step); each paired with this step's real outcome."""
        real = []  # filled by observe() with this step's real tokens and seconds
        seconds = self._shadow_seconds(name, tree, cached) + answer_s
        if len(tree) > 1:
            self._shadows[name].add(cached, (_branches(tree), seconds, real))
        else:
            self._missed.setdefault(name, []).append((seconds, real))
        self._asked.append(real)

    def observe(self, ctx, tree, acceptance, out) -> None:
        now = ctx.clock()  # the decoder's own time: not what its consumer did between steps
        since, self._last_observe = self._last_observe, now
        besides, self._besides_s = self._besides_s, 0.0
        name = self.proposer  # who proposed this step's tree
        self._outcome = None  # (prepare sets this step's where the next step may draft)
        self.candidates[name].observe(ctx, tree, acceptance, out)
        asked, self._asked = self._asked, []  # paired below with a drafting step's outcome only
        if not self._drafted:
            return
        self.steps_by_method[name] = self.steps_by_method.get(name, 0) + 1
        forward = name != self.current and name in self.shadowed  # (_fall_forward): its own
        # step, the idle leader's plain step it would have been told as such (below)
        if forward:
            self.candidates[self.current].observe(ctx, Tree.from_chain(tree.tokens[0], []),
                                                  Acceptance([0], acceptance.tokens), out)
        handed = name != self.current and not forward  # a step a text-only leader handed on
        # (_fall_back): the lead's step, booked to the leader (its window is then what its lead
        # gives, against a model drafter's own steps in trials) and not to the model drafter,
        # whose handed steps are the text the leader could not draft, harder than its average
        rate = self.rates.by_name.setdefault(self.current if handed else name, Rate())
        rate.last_step = self.rates.step
        if forward:  # the leader's turn too (its wait for a recheck, its fading)
            self.rates.by_name.setdefault(self.current, Rate()).last_step = self.rates.step
        self.rates.step += 1
        if since is None:  # the first step of a request has no start mark: not timed, and
            # not one of a trial's steps either (the cold start's first trial would have one
            # timed step less than the next, and the prior shrink its rate more)
            if self._in_trial:
                self._trial = (name, self._trial[1] + 1)
        else:
            modelled = (self.cost.step_seconds(len(tree), not tree.is_chain, len(ctx.tokens))
                        if self.cost is not None else None)
            model = not self.candidates[name].drafts_from_text
            # a model drafter's step counts the tokens its tree emits on average over the
            # acceptance's draws (Acceptance.expected_tokens: the same mean, about half the
            # variance at T > 0, so trials and leads rank two drafters on half the steps); a
            # text-only candidate's, those it emitted (its rate's shadow steps are counted so,
            # and its trees of up to 32 nodes would read as many rows of the vocabulary)
            tokens = acceptance.expected_tokens() if model else len(acceptance.tokens)
            step = (tokens, self._capped(now - since, besides, modelled))
            rate.add(*step, sent=len(tree) > 1)
            if handed:
                handed_rate = self._handed.setdefault(name, Rate())
                handed_rate.add(*step)
                handed_rate.last_step = self.rates.step
            else:
                (self.rates.long if model else self.rates.text_long).setdefault(
                    name, LongRate()).add(*step)
            if not self._in_trial:  # paired with the leader's steps (a trial's say nothing of it)
                for real in asked:
                    real.extend(step)
            if forward:  # its draft beside the plain step the idle leader would have taken,
                # as its shadow steps are paired (it is not asked in the shadow on such a step)
                self.rates.pair(name, *step, 1.0, self._plain_seconds(len(ctx.tokens)))
            if modelled is not None:
                timed = (step[1] - besides, modelled)
                self.rates.real.add(*timed)
                if name in self.shadowed:
                    self.rates.own.setdefault(name, Calibration()).add(*timed)
        self.current = self._next()

    def _capped(self, seconds: float, besides: float, modelled: Optional[float]) -> float:
        """A step's seconds, at most its drafting and shadow asks (`besides`) plus Rate.SPIKE
        times the verify the cost model predicts for its tree (scaled as the real steps run, once
        there are a few): a stall of the machine's counts as a slow step, no more, also among a
        candidate's first steps, which Rate.add has no mean of its own to cap by (one there
        would make the candidate look clearly slower over the long run for some fifty steps)."""
        if modelled is None:
            return seconds
        real = self.rates.real
        scale = max(1.0, real.scale) if real.steps >= real.TRUSTED else 1.0
        return min(seconds, besides + Rate.SPIKE * scale * modelled)

    def prepare(self, ctx, acceptance, out) -> None:
        t0 = time.perf_counter()
        self.candidates[self.current].prepare(ctx, acceptance, out)
        self._outcome = (ctx, acceptance, out)  # (for a fallback's prepare: _fall_back)
        self._besides_s += time.perf_counter() - t0  # part of the next step (observe to observe)

    def _fall_back(self, ctx: StepContext, empty: Tree) -> Tree:
        """The step's tree where the leader, a text-only candidate, found no draft (`empty`):
        the best model drafter's over the long run (_steadiest), prepared now from the last
        step's outputs; it proposes this step (self.proposer), the text-only candidate keeps
        the lead, and the step is booked to the lead (observe). Alone, a text-only leader steps
        one token at a time wherever the text stops repeating, until the lead passes back:
        greedy on the embedded target `lookahead` led on a predictable opening and then emitted
        5, 6, 1, 1, 1, 1 tokens a step where `redrafter` emits ~5 (a bench trace, session 42).
        With the fallback a text-only leader is what its pairing of drafts (Rates.paired)
        judged it: its drafts where it finds one, the model drafter's steps elsewhere.

        Only to a model drafter that beats plain decoding by SWITCH_MARGIN: judged by the steps
        handed to it on this request once there are Rate.PRIOR of them and the last is at most
        FIRST_GAP steps old (they are the text the leader could not draft, harder than the model
        drafter's average; a gate closed so is tried again after FIRST_GAP steps), else by its
        long run once SETTLED steps long, else by its window. Not one about as fast as plain
        decoding: on SmolLM2 greedy (`redrafter` 0.99x alone) its steps in `pld`'s lead were
        losses the back-off judged, and it paused `auto` on 359 of 962 steps where it had paused
        137 of 905 before (1.053x against 1.069x); gated by the long run alone, `draft` took 285
        handed steps and the back-off paused 258 of 974 (58 of 960 without the fallback)."""
        if self.current not in self.shadowed or not self.trialled or self._outcome is None:
            return empty
        model = self._steadiest(self.trialled)
        handed, long = self._handed.get(model), self.rates.long.get(model)
        recent = handed is not None and self.rates.step - handed.last_step < self.FIRST_GAP
        rate = (handed.raw if recent and handed.steps >= Rate.PRIOR
                else long.raw if long is not None and long.steps >= self.SETTLED
                else self._rate(model).per_second)
        if rate * self._plain_seconds(len(ctx.tokens)) <= 1.0 + self.SWITCH_MARGIN:
            return empty
        drafter = self.candidates[model]
        drafter.prepare(*self._outcome)
        tree = drafter.propose(ctx)
        if len(tree) == 1:
            return empty
        self.proposer = model
        # the leader's miss, for its own long run: the plain step it would have taken (_outrun)
        self._missed.setdefault(self.current, []).append(
            (self._shadow_seconds(self.current, empty, len(ctx.tokens)), []))
        return tree

    def _fall_forward(self, ctx: StepContext, empty: Tree) -> Tree:
        """The step's tree where the leader, a model drafter whose chooser sits at plain
        decoding (Rate.idle), sent nothing (`empty`): the best text-only candidate's, where it
        has a draft (its own chooser sends one only where it expects a gain); it proposes the
        step (self.proposer) as its own step, and the leader keeps the lead. Alone, an idle
        leader steps one token at a time until a text-only candidate is paired ahead of it on
        PAIRED of its hits: on long SmolLM2 requests (1,068-1,392 tokens, greedy) an idle
        `redrafter` led 7-50 plain steps of each answer, which `pld` alone decodes at 1.3-1.7x
        of plain decoding. The leader's own probes still propose, so a model drafter that wakes
        on a text that suits it is seen as before. Not in a trial: it measures its candidate.
        The candidate's answer is this step's ask of it (not asked again in the shadow: one
        that found no draft is booked as a shadow ask's miss there); a draft it sends is paired
        with the plain step it replaced (observe), so it may take the lead as a shadow candidate
        would. The ask runs before the verify is dispatched (a few percent of a step for
        `lookahead` on a CPU), on the leader's empty steps only."""
        if self._in_trial or not self.shadowed or not self._rate(self.current).idle:
            return empty
        name = self._fastest(self.shadowed)
        t0 = time.perf_counter()
        tree = self.candidates[name].propose(ctx)
        self._answered[name] = (tree, time.perf_counter() - t0)
        if len(tree) == 1:
            return empty
        self.proposer = name
        return tree

    def _plain_seconds(self, cached: int) -> float:
        """A plain step with `cached` tokens cached: the modelled one-token step, scaled as the
        real steps run."""
        return self.rates.real.scale * self.cost.step_seconds(1, cached=cached)

    def _shadow_seconds(self, name: str, tree: Tree, cached: int) -> float:
        """What a step of text-only `name`'s `tree` would take with `cached` tokens cached: the
        target's modelled verify, scaled as the real steps run (Rates.scale), besides its own
        answer time."""
        return self.rates.scale(name) * self.cost.step_seconds(len(tree), not tree.is_chain,
                                                               cached)

    def proposers(self) -> dict[str, int]:
        return dict(self.steps_by_method)

    def switch_instead(self, plain_s: float, clear: float) -> bool:
        """The back-off judged the last steps a loss: where another candidate's measured rate
        beats plain decoding by more than `clear`, it leads from the next step on instead of a
        pause (a pause would hold plain decoding where a model drafter wins by far). The leader
        that lost keeps its rate and wins the lead back only as any challenger does. No other
        candidate that clearly wins: the pause.

        Only a text-only leader's loss is taken so: it says the text stopped repeating, which
        the model drafters do not need. A model drafter's lost window at T > 0 is mostly the
        luck of its sampled steps, and handing its lead on would hand it to a slower one.
        Unless it is idle (Rate.idle): its chooser sits at plain decoding and the loss is a
        probe's, or the drafts of a text-only candidate it handed its empty steps to
        (_fall_forward), which then leads and is judged as a text-only leader from there. The
        best text-only candidate not expected to lose to plain decoding leads then: it decodes
        about as plainly as a pause would, with the same shadow asks, and drafts where its
        look-ups expect a gain; a pause would also hold back a text that starts to repeat
        (SmolLM2 at T = 1.0: an extraction answer `lookahead` decoded at 1.26x stayed paused
        after the idle `redrafter`'s first probe). Only at a loss: handing an idle leader's lead
        to a text-only candidate paired ahead of its plain steps by any amount (over SETTLED
        paired steps) cost SmolLM2 greedy coding 1.16x against 1.28x (a model drafter at 0 wakes
        on a text that suits it, but in trials at 0 it sends nothing to show it); without a loss
        the lead passes only as _hold hands it on, by SWITCH_MARGIN against an idle leader's
        plain steps."""
        if self.rates is None:
            return False
        losing = self.rates.leader or self.current
        if self.candidates[losing].drafts_from_text:
            others = [n for n, r in self.rates.by_name.items() if n != losing and r.steps]
            if not others:
                return False
            name = self._fastest(others)
            models = [n for n in others if n not in self.shadowed]
            if name in models:  # (their windows may be older text: _forget_text)
                name = self._steadiest(models)
            if self._rate(name).per_second * plain_s <= 1.0 + clear:
                return False
        elif self._rate(losing).idle:
            known = [n for n in self.shadowed if self._rate(n).steps]
            if not known:
                return False
            name = self._fastest(known)
            if self._rate(name).per_second * plain_s < 1.0:
                return False
        else:
            return False
        self.rates.leader = name
        if self._trial is None:  # a trial that has begun runs its course first
            self.current = name
        return True

    def steady(self) -> bool:
        return not self._in_trial

    def end(self) -> None:
        for drafter in self.candidates.values():
            drafter.end()
        if self.rates is not None:
            self._keep(self._regime, self.rates)

    # -- the choice -------------------------------------------------------------------------------
    def _next(self) -> str:
        """The candidate of the next step: a running trial, an untried candidate, one whose wait
        since its last step is over, else the best rate."""
        rates = self.rates
        if self._trial is not None:
            name, left = self._trial
            if left > 0:
                self._trial = (name, left - 1)
                return name
            self._trial = None
            best = self._best()
            # a trial that won puts the candidate's next one FIRST_GAP away (and goes on while
            # it is ahead but not yet by a switch's margin: _extend_trial); a lost one doubles
            # the wait where the loss is clear (a margin above its rate stays below the best, or
            # it is clearly slower over the long run: _clearly_slower), and keeps it where the
            # loss is within the noise (halved there, a steadily slower candidate that looks
            # within noise after half its trials would be tried every 24-48 steps for good)
            rate, leader = self._rate(name), self._rate(best)
            if best == name:
                rate.wait = self.FIRST_GAP
                if self._trial_steps < self.SETTLED and self._hold(best) != name:
                    return self._extend_trial(name)
            elif not may_beat(rate, leader) or self._clearly_slower(name, best):
                rate.wait = min(2 * max(rate.wait, self.FIRST_GAP), self.MAX_GAP)
            else:
                rate.wait = max(rate.wait, self.FIRST_GAP)
        untried = [n for n in self.trialled if self._rate(n).steps < 2]
        if untried:
            return self._start_trial(untried[0])
        best = self._best()
        others = [n for n in self.trialled if n != best]
        # against the leader as measured: its prior pulls a leader of few steps toward one token
        # a step, and a slower candidate would be tried again and again in the first steps
        leader = self._rate(best)
        doubtful = [n for n in others if rates.by_name[n].steps < self.SETTLED
                    and may_beat(rates.by_name[n], leader)]
        if doubtful:
            return self._start_trial(min(doubtful, key=lambda n: rates.by_name[n].last_step))
        due = [n for n in others if rates.step - rates.by_name[n].last_step > rates.by_name[n].wait
               and self._worth_a_trial(n, leader)]
        if due:
            return self._start_trial(min(due, key=lambda n: rates.by_name[n].last_step))
        held = self._hold(best)
        if rates.leader in rates.by_name and held != rates.leader:
            # a leader that just lost the lead was good a moment ago, and the new one may have
            # led on a burst: the old one is tried again within RECHECK steps
            rates.by_name[rates.leader].wait = self.RECHECK
            rates.unpair(rates.leader)  # (a text-only one's pairing predates its lead)
        rates.leader = held
        return held

    def _worth_a_trial(self, name: str, leader: Rate) -> bool:
        """Whether model drafter `name`, due a trial, may still beat the leader's rate on the text
        now: not where its long-run rate (LongRate, once SETTLED steps long) cannot, within the
        noise of both (may_beat). Such a trial waits, its wait unchanged (it lost nothing), until
        the leader's rate comes within reach: while `pld` copies a passage at several tokens a
        step, a model drafter's trial steps emit one or two each. (Judged on fewer steps, the
        faster drafter's unlucky opening would keep it from the trials that correct it.)"""
        long = self.rates.long.get(name)
        return long is None or long.steps < self.SETTLED or may_beat(long, leader)

    def _start_trial(self, name: str) -> str:
        rate = self.rates.by_name.setdefault(name, Rate())
        rate.fade(self.rates.step)
        self._trial_steps = 0
        return self._extend_trial(name, self.KNOWN_TRIAL if rate.steps >= 6 else self.TRIAL)

    def _extend_trial(self, name: str, steps: int = KNOWN_TRIAL) -> str:
        """`name` proposes the next `steps` steps as a trial. A trial that ends ahead of the
        leader's rate, though not by the margin a switch needs (_hold), goes on, up to SETTLED
        steps: at T > 0 a 2-step trial every 24 steps or more cannot prove a candidate faster
        (its steps emit 1 to 10 tokens), and a leader picked on the first steps' luck can lead
        whole answers."""
        self._trial = (name, steps - 1)
        self._trial_steps += steps
        return name

    def _hold(self, best: str) -> str:
        """The leader stays unless `best` beats it by SWITCH_MARGIN or more: rates are windowed
        means of bursty steps (lookahead emits 10 tokens on a repeated phrase, then 1 for a
        while), and always moving to the highest of several noisy rates chases bursts that are
        over by the time the window shows them. A text-only
        challenger is judged against the real steps taken where it was asked (Pairing): the
        same text. Every margin is at least both rates' noise on the text now (_margin), except
        for a text-only challenger against a model drafter that sits at plain decoding
        (Rate.idle) where the real steps beside the challenger's emitted about a token each
        (_plain): those have no burst to wait out, and the challenger's own chooser drafts only
        where it expects a gain, so SWITCH_MARGIN is enough."""
        leader = self.rates.leader
        if leader is None or leader not in self.candidates:
            # a cold start: a text-only candidate's rate is modelled and not yet paired with real
            # steps on this text, so the best model drafter leads until the pairing shows the
            # text-only one ahead (as at a new request: _forget_text)
            return (self._fastest(self.trialled) if best in self.shadowed and self.trialled
                    else best)
        # a text-only candidate ahead of a model drafter's real steps on this text takes the
        # lead, whatever its rate from earlier text. (Not of a text-only leader's: two text-only
        # candidates of one token a step, each modelled a little faster than the other's real
        # steps, would hand the lead to and fro while a model drafter waits.)
        paired = {n: p for n in self.shadowed for p in [self._judged_pairing(n, leader)]
                  if p is not None}  # (built once)
        idle = leader not in self.shadowed and self._rate(leader).idle
        ahead = {n: p.ratio for n, p in paired.items()
                 if p.ratio > 1.0 + (self.SWITCH_MARGIN if idle and _plain(p.real)
                                     else _margin(p.shadow, p.real))}
        ahead.pop(leader, None)
        if ahead and leader not in self.shadowed:
            return max(ahead, key=ahead.get)
        if leader == best:
            return best
        if best in paired:
            return best if best in ahead else leader
        if best in self.shadowed:
            return leader  # (not yet paired on enough steps of this request's text)
        # else by rates, by more than both rates' noise (at T > 0 a window of a few 1- and
        # 2-token steps is luck), each rate's noise on the text now (its decayed weight): a
        # challenger's trial of 2 steps beside faded old ones is known from about those 2
        if self._clearly_slower(leader, best):
            return best
        held, challenger = self._rate(leader), self._rate(best)
        margin = _margin(challenger, held)
        return best if challenger.per_second > held.per_second * (1.0 + margin) else leader

    def _judged_pairing(self, name: str, leader: Optional[str]) -> Optional[Pairing]:
        """The pairing text-only `name` is judged by against `leader` (None while it has too few
        steps to be judged). Where the leader outruns it (_outrun), the one counting its asks
        that found no draft as the plain steps they would have been (Rates.paired_all), over
        SETTLED steps; else the one of its drafts alone (Rates.paired), over PAIRED steps.

        Hits alone are optimistic: where the text-only candidate finds nothing it would step one
        token at a time while the leader drafts on. Beside a strong model drafter that is what
        decides: greedy on the embedded target `pld`, paired 1.32x ahead of `redrafter` over 13
        steps of its hits (of a story's first 24 steps), took the lead and emitted 2, 1, 1, 1,
        1, 1 tokens a step (a bench trace, session 42). Counted alone, the misses cost where a
        text-only candidate wins on average (SmolLM2, where `redrafter` gains little: 1.205x
        against 1.233x greedy, README "Why auto's rules"): there the leader does not outrun it,
        and its hits decide as before. Four paired steps at T > 0 are as bursty as the leader's
        steps beside them: on the embedded target at T = 0.7, `lookahead` (about half
        `redrafter`'s rate over the long run) took its lead on four steps at 1.53x of an unlucky
        opening (1, 1, 3, 1, 1 tokens), and on six steps at 2.9x in a predictable stretch where
        `redrafter` emitted 8, 7 and 8 tokens a step too; a lead so taken ran at half the speed
        (1 to 2 tokens a step) until a trial won it back. Beside an idle leader's plain steps
        (Rate.idle: its long run may be older text) four of its hits are enough. (Not the
        pairing's own shadow rate: over four steps it carries their luck and a wide error, and
        would let the cases above through.)"""
        outrun = self._outrun(name, leader)
        pairing = self._pairing(name, self.rates.paired_all if outrun else self.rates.paired)
        needed = self.SETTLED if outrun else self.PAIRED
        return pairing if pairing is not None and pairing.steps >= needed else None

    def _outrun(self, name: str, leader: Optional[str]) -> bool:
        """Whether `leader`, a busy model drafter, runs ahead of text-only `name` over the long
        run: `name`'s long run (LongRate of its scored shadow steps, its asks that found no draft
        and its own steps; its windowed rate while that is shorter than SETTLED steps) is below
        the leader's. Its windowed rate
        is not the test once the long run is known: a burst of predictable text lifts it past the
        leader's long run for a few steps, which is when a pairing of four steps shows it ahead.
        Behind at all, not by the noise (may_beat): greedy on the embedded target `lookahead`
        runs at ~0.9x of `redrafter` over the long run, within the noise, and led 29 steps of a
        story on four paired steps where alone it took 39 calls to `redrafter`'s 29."""
        long = self.rates.long.get(leader)
        if long is None or long.steps < self.SETTLED or self._rate(leader).idle:
            return False
        own = self.rates.text_long.get(name)
        challenger = own if own is not None and own.steps >= self.SETTLED else self._rate(name)
        return challenger.raw < long.raw

    def _pairing(self, name: str, pairings: Optional[dict] = None) -> Optional[Pairing]:
        """Text-only `name`'s Pairing on this text (of `pairings`, default Rates.paired),
        counting too its shadow trees that the text is still following, each at what it has
        matched so far plus one (a lower bound of its score), beside its real step. A tree is
        scored once the text leaves it: while the leader emits a token a step, a followed tree
        of 5 drafts is scored 5 steps after it was asked, and a miss the step after, so the
        scored trees alone undercount the candidate wherever it would win, most at the start of
        a short answer that copies its request (README, "Why `auto`'s rules are as they are").
        With them, the trees counted are all those asked up to the last step."""
        pairings = self.rates.paired if pairings is None else pairings
        paired, following = pairings.get(name), self._following.get(name)
        if not following:
            return paired
        both = (Pairing(replace(paired.shadow), replace(paired.real)) if paired is not None
                else Pairing())
        for tokens, seconds, real in following:
            both.add(tokens, seconds, *real)
        return both

    def _best(self) -> str:
        return self._fastest(list(self.candidates))

    def _fastest(self, names: list[str]) -> str:
        """The best rate among `names`, leaving out a model drafter clearly slower over the long
        run than another of them (_clearly_slower): not only when it challenges a model drafter's
        lead; a text-only leader hands the lead on too (at a new request, to the back-off, to a
        window ahead of it), and on the windows alone it would go to the luckier window."""
        models = [n for n in names if n in self.rates.long]  # (the others have no long run)
        slower = [n for n in models if any(self._clearly_slower(n, m) for m in models)]
        kept = [n for n in names if n not in slower]
        return max(kept or names, key=lambda n: self._rate(n).per_second)

    def _steadiest(self, models: list[str]) -> str:
        """The model drafter of best long-run rate (LongRate), where each has one; else by
        windows (_fastest)."""
        long = self.rates.long
        if all(n in long for n in models):
            return max(models, key=lambda n: long[n].raw)
        return self._fastest(models)

    def _clearly_slower(self, name: str, than: str) -> bool:
        """Whether model drafter `name` is clearly slower than model drafter `than` over the long
        run (their LongRates: `name` cannot beat `than` within the noise of both): then a window
        in which `name` looks as fast or faster is the luck of its steps, not a change of text,
        and it neither leads nor shortens its wait for trials."""
        long = self.rates.long
        if name not in long or than not in long or name == than:
            return False
        return not may_beat(long[name], long[than])


def _margin(challenger: Rate, leader: Rate) -> float:
    """How far `challenger`'s rate must beat `leader`'s to take the lead: SWITCH_MARGIN, or both
    rates' noise on the text now (Rate.error, recent) where that is larger. For a text-only
    challenger too (its shadow steps against the real ones beside them): a few paired steps of a
    bursty candidate beside a leader whose steps emit 1 to 10 tokens by chance put it well
    ahead now and then, and it took the lead to run slower than the leader it displaced."""
    return max(Auto.SWITCH_MARGIN, math.hypot(challenger.error(recent=True),
                                              leader.error(recent=True)))


def _plain(real: Rate) -> bool:
    """Whether the real steps of a Pairing emitted about a token each (a mean of at most
    1 + SWITCH_MARGIN): plain steps, or drafts that were not accepted (a model drafter's steps
    count their expected tokens, so a draft with little chance counts a little above 1). A
    pairing outlives a change of leader between model drafters, and an idle leader's rate lags a
    chooser that wakes."""
    return real.tokens <= (1.0 + Auto.SWITCH_MARGIN) * real.weight


def _branches(tree: Tree) -> list[dict[int, int]]:
    """Per node of `tree`, its children by token: a shadow tree is walked along the text once
    per step until it is scored, so its children are found once, when it is asked for."""
    kids: list[dict[int, int]] = [{} for _ in tree.tokens]
    for node in range(1, len(tree.tokens)):
        kids[tree.parents[node]].setdefault(tree.tokens[node], node)
    return kids


def _shadow_outcome(guess: tuple[list, float, list], tokens: list[int], start: int):
    """(draft tokens of the tree the text followed, the step's seconds, the real step's [tokens,
    seconds] or [] where it was not timed) once the text has left the tree. While it has not, an
    Open of (draft tokens matched so far + 1, the seconds, the real step) where the text has gone
    into the tree and there is a real step to pair it with (not one asked in a trial, on a plain
    or untimed step): Auto._pairing counts those (Auto._following). The tree (its _branches) was
    made when the text was tokens[:start]."""
    kids, seconds, real = guess
    matched, node = _shadow_walk(kids, tokens, start)
    if node is None or not kids[node]:
        return matched, seconds, real
    return Open((1 + matched, seconds, real) if matched and real else None)


def _shadow_walk(kids: list[dict[int, int]], tokens: list[int], start: int):
    """(draft tokens of the tree that tokens[start:] follow, the node they reach, or None where
    the text has left the tree)."""
    node, matched = 0, 0
    for token in tokens[start:]:
        node = kids[node].get(token)
        if node is None:
            return matched, None
        matched += 1
    return matched, node


def candidates_for(model, methods: Optional[str] = None, **options) -> dict:
    """The candidate drafters of `methods` (separated by commas or, inside a bench method spec
    such as `auto[methods=redrafter+pld]`, by plus signs; default: every one in CANDIDATES
    that this target can run). A method named explicitly that cannot run is an error; a default
    one that cannot (no head, no draft model, no hidden states) is left out."""
    names = _named(methods)
    for name in names:
        if name not in NAMEABLE:
            raise MlxSpecError(f"auto: {name!r} cannot be a candidate; choose from "
                               f"{', '.join(NAMEABLE)}")
    found = {}
    for name in names:
        try:
            drafter = create(name, model, **options.get(name, {}))
        except MlxSpecError as exc:
            if methods is not None:
                raise _candidate_error(name, exc, MlxSpecError) from None
            continue
        if drafter.needs_hidden_states and not has_hidden_states(model.model):
            if methods is not None:
                raise MlxSpecError(f"auto: {name!r} needs the target's hidden states")
            continue
        found[name] = drafter
    return found


def _candidate_error(name: str, exc: MlxSpecError, cls=None) -> MlxSpecError:
    """`exc` as the error of candidate `name` (its class, or `cls`): one wording wherever a
    candidate cannot run."""
    return (cls or type(exc))(f"auto: candidate {name!r}: {exc}")


def _named(methods: Optional[str]) -> tuple:
    """The candidate names `methods` gives (candidates_for), CANDIDATES where it is None."""
    return CANDIDATES if methods is None else tuple(
        n.strip() for n in re.split(r"[,+]", methods) if n.strip())


@register("auto")
def auto(model, methods: Optional[str] = None, draft_model: Optional[str] = None,
         num_draft_tokens: Optional[int] = None, overlap: bool = True):
    """`methods`: the candidates (separated by commas or plus signs), default every available
    one; `draft_model` / `num_draft_tokens` go to the draft-model candidates (`draft`,
    `adaedl`: a draft_model where `methods` names neither is refused); `overlap=False`
    asks the text-only candidates before the verify is dispatched instead of while it runs
    (Drafter.while_verifying), for measuring what the overlap gives."""
    if num_draft_tokens is not None:  # checked here: the draft candidates may not run at all
        if not is_whole(num_draft_tokens):
            raise ValueError(f"num_draft_tokens must be a whole number, got {num_draft_tokens!r}")
        check_draft_size("num_draft_tokens", num_draft_tokens)
        num_draft_tokens = int(num_draft_tokens)  # (numpy's: it names the saved rates' file)
    draft_options = {k: v for k, v in (("draft_model", draft_model),
                                       ("num_draft_tokens", num_draft_tokens)) if v is not None}
    if draft_model is not None:
        takers = [n for n in ("draft", "adaedl") if n in _named(methods)]  # (they draft with it)
        if not takers:  # (dropped without a word, it would look used)
            raise MlxSpecError(f"auto: draft_model given, but methods={methods!r} names no "
                               "candidate that drafts with it (draft, adaedl)")
        try:  # a folder that is not there: refused before the candidates measure the target
            resolve(draft_model)  # (~10 s on a fresh cache folder)
        except MlxSpecError as exc:  # (named as candidates_for names a candidate's error)
            raise _candidate_error(takers[0], exc) from None
    found = candidates_for(model, methods, draft=draft_options, adaedl=draft_options)
    if draft_model is not None and methods is None and "draft" not in found:
        try:  # a draft model named that cannot run: its error
            create("draft", model, **draft_options)
        except MlxSpecError as exc:
            raise _candidate_error("draft", exc) from None
    state, cost = shared(model), target_cost(model)
    memory, folder, key = state.auto_rates, state.auto_folder, tuple(found)
    unit, files = cost.step_seconds(1), {}

    def file(regime: str) -> tuple[Path, dict]:  # (fingerprints the weights: once per regime)
        if regime not in files:
            weights = weights_fingerprint(model.path)
            files[regime] = (machine_file(model, folder, list(key), draft_options, regime,
                                          weights=weights),
                             {"weights": weights, "regime": regime,
                              "candidates": list(key), "options": draft_options})
        return files[regime]

    def rates_for(regime: str) -> Rates:
        if (key, regime) not in memory:  # this process's first request: the last process's
            memory[(key, regime)] = Rates.load(file(regime)[0], unit, key) if folder else Rates()
        return memory[(key, regime)]

    def keep(regime: str, rates: Rates) -> None:
        if folder:
            path, about = file(regime)
            rates.save(path, unit, about)

    return Auto(found, rates_for, cost, keep, overlap)


def describe_remembered(model) -> str:
    """What `auto` saved for this target in the cache folder, per sampling regime: each
    candidate's tokens per second in units of the modelled one-token step (so about its speedup
    over plain decoding, engine overhead aside), the leader first, `-` for one not measured yet.
    For `mlxspec doctor`: only the records `auto` reads on this machine now (a file written under
    another mlx, device, BLAS or cache format (cost.VERSION), or before records named their
    candidates, is left out); where a regime has records of several candidate sets or draft
    options (`generate --opt methods=pld`, `--draft-model`), each names them, the latest first."""
    folder = shared(model).auto_folder
    weights = weights_fingerprint(model.path)
    found = []
    for file in sorted(Path(folder).glob("*.json")) if folder and Path(folder).is_dir() else []:
        saved, about = Rates.read(file, 1.0)
        try:
            regime, candidates, options = (str(about["regime"]), list(about["candidates"]),
                                           dict(about["options"]))
            current = (about["weights"] == weights and file.name == machine_file(
                model, folder, candidates, options, regime, weights=weights).name)
            written = file.stat().st_mtime
            setting = "+".join(map(str, candidates)) + "".join(f", {k}={v}"
                                                                for k, v in options.items())
        except (KeyError, TypeError, ValueError, OSError):
            continue
        if current:
            rates, leader = saved.by_name, saved.leader
            order = sorted(rates, key=lambda n: (n != leader, -rates[n].raw))
            told = ", ".join(f"{n} " + (f"{rates[n].raw:.2f}x" if rates[n].seconds > 0 else "-")
                             + (" (leads)" if n == leader else "") for n in order)
            found.append((regime != "greedy", regime, -written, setting, told))
    if not found:
        return "nothing yet (saved at the end of each request)"
    found.sort()
    shared_regime = {regime for _, regime, *_ in found
                     if sum(other == regime for _, other, *_ in found) > 1}
    return "; ".join(regime + (f" [{setting}]" if regime in shared_regime else "")
                     + f": {told}" for _, regime, _, setting, told in found)
