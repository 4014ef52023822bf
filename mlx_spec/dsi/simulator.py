"""Expected time per token of non-SI, SI and DSI from measured latencies and acceptance rates.

Inputs (any time unit, as long as it is the same for all): the target's forward latency T (one
verification, optionally growing by `target_per_token` per verified token), the drafter's latency c
per drafted token, the acceptance rate a (each draft accepted independently with probability a, as
in the speculative decoding literature), the block k (drafts per job: the paper's lookahead) and
the number of target workers.

Three views:
- closed forms for non-SI (T per token) and SI (k drafts, then one verification that yields the
  accepted drafts plus one target token: E[tokens] = (1 - a^(k+1)) / (1 - a));
- the DSI paper's offline cost model (arXiv 2405.14105, as in its published simulation code),
  computed as an exact expectation instead of by sampling: between two rejections the drafter never
  waits, so only the verification that finds the rejection adds to the drafting time, and a run is
  never slower than non-SI would be for the same tokens. It assumes enough target servers,
  ceil(T / (k c)) of them (the paper's single node: 7);
- an event simulation of this project's own scheduler: the real Orchestrator runs against a virtual
  clock, a drafter that is right with probability a, and N workers with latency T. It counts what
  the implementation does (limited workers, restarts, the eager first job) and is what `mlxspec
  dsi-sim` compares with measured runs.
"""
from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass
from typing import Optional

from ..drafters.base import Drafter
from ..sampling import SamplingParams
from ..tree import Tree
from .drafting import InlineDrafting, draft_once
from .orchestrator import Orchestrator, Result


@dataclass
class Setting:
    target: float                 # T: one target forward (verification of one token)
    drafter: float                # c: one drafted token
    acceptance: float             # a
    block: int = 5                # k: drafts per job (the paper's lookahead)
    workers: int = 7              # target workers (the paper's single node: 8 GPUs, 1 drafter)
    target_per_token: float = 0.0  # extra target time per verified token beyond the first
    overhead: float = 0.0         # per job: messages, scheduling

    def verify_time(self, n_tokens: int) -> float:
        return self.target + self.target_per_token * max(0, n_tokens - 1)


def accepted_distribution(a: float, k: int) -> list[float]:
    """P(j drafts accepted), j = 0..k: a^j (1 - a) before the first rejection, a^k for all k."""
    return [a ** j * (1 - a) for j in range(k)] + [a ** k]


def expected_tokens_per_iteration(a: float, k: int) -> float:
    return sum(p * (j + 1) for j, p in enumerate(accepted_distribution(a, k)))


def nonsi_time_per_token(s: Setting) -> float:
    return s.verify_time(1)


def si_time_per_token(s: Setting) -> float:
    cost = s.block * s.drafter + s.verify_time(s.block + 1) + s.overhead
    return cost / expected_tokens_per_iteration(s.acceptance, s.block)


def paper_dsi_time_per_token(s: Setting, tail: float = 1e-12) -> float:
    """The paper's model as a renewal process. A run of drafting ends at the first rejected
    draft: m blocks fully accepted (probability a^k each) then a block with j < k accepted. The run
    yields m k + j + 1 tokens; the drafter spent (m + 1) k c and only the last verification, T, is
    not hidden behind drafting; and never more than non-SI would take for those tokens:
    cost = min((m + 1) k c + T, (m k + j + 1) T). Time per token = E[cost] / E[tokens]."""
    k, c, t, a = s.block, s.drafter, s.verify_time(s.block + 1), s.acceptance
    full = a ** k
    if full >= 1.0:
        return c  # every draft accepted: the drafter's pace
    cost = tokens = 0.0
    m, p_run = 0, 1.0 - full  # P(m full blocks, then a failing one)
    while p_run > tail or m == 0:
        for j in range(k):
            p = p_run * a ** j * (1 - a) / (1.0 - full)
            n = m * k + j + 1
            cost += p * min((m + 1) * k * c + t, n * t)
            tokens += p * n
        m += 1
        p_run *= full
    return cost / tokens


def required_workers(s: Setting) -> int:
    """Target servers the paper's model needs so that no verification waits."""
    return math.ceil(s.verify_time(s.block + 1) / (s.block * s.drafter)) if s.drafter else 10 ** 9


# -- event simulation of this project's scheduler --------------------------------------------------
VOCAB = 1 << 20


def _oracle(context: list[int]) -> int:
    """The simulated target's next token: any deterministic function of the context will do."""
    return (context[-1] * 1_000_003 + len(context) * 7_919) % VOCAB


class _Clock:
    now = 0.0


class _SimDrafter(Drafter):
    """Right (equal to the simulated target's token) with probability a, independently."""

    def __init__(self, s: Setting, rng: random.Random):
        self.s, self.rng = s, rng

    def propose(self, ctx):
        tokens = list(ctx.tokens)
        for _ in range(ctx.max_drafts):
            token = _oracle(tokens)
            if self.rng.random() >= self.s.acceptance:
                token = (token + 1) % VOCAB
            tokens.append(token)
        return Tree.from_chain(ctx.tokens[-1], tokens[len(ctx.tokens):])


class _SimDrafting(InlineDrafting):
    """The drafter's result arrives c per token later on the virtual clock."""

    def __init__(self, drafter: Drafter, pool: "_SimPool"):
        super().__init__(drafter, pool.post)
        self.pool = pool

    def start(self, version, ctx, restart=None) -> None:
        event = draft_once(self.drafter, ctx, version, restart)
        self.pool.schedule(self.pool.clock.now + self.pool.s.drafter * ctx.max_drafts, event)


class _SimPool:
    def __init__(self, s: Setting, clock: _Clock):
        self.s, self.clock = s, clock
        self.worker_ids = list(range(1, s.workers + 1))
        self.pending: list = []  # heap of (finish time, sequence, Result)
        self.sequence = 0

    def submit(self, worker, job, sampling) -> None:
        seq = job.context + job.chain[:1]
        tokens, accepted = None, len(job.chain) - 1
        for i, draft in enumerate(job.chain[1:]):
            want = _oracle(seq)
            if draft != want:
                tokens, accepted = job.chain[1:i + 1] + [want], i
                break
            seq.append(draft)
        if tokens is None:
            tokens = job.chain[1:] + [_oracle(seq)]
        finish = self.clock.now + self.s.verify_time(len(job.chain)) + self.s.overhead
        self.schedule(finish, Result(worker, job.id, tokens, accepted))

    def schedule(self, at: float, event) -> None:
        self.sequence += 1
        heapq.heappush(self.pending, (at, self.sequence, event))

    def post(self, event) -> None:
        self.schedule(self.clock.now, event)

    def wait(self, timeout: Optional[float]):
        if not self.pending:
            return None
        finish = self.pending[0][0]
        if finish > self.clock.now:
            if timeout == 0:
                return None
            self.clock.now = finish  # blocking: time passes until the next reply
        return heapq.heappop(self.pending)[2]

    def abandon(self, worker) -> None:
        pass


def simulate_dsi_time_per_token(s: Setting, tokens: int = 3000, seed: int = 0) -> float:
    pool = _SimPool(s, _Clock())
    drafter = _SimDrafter(s, random.Random(seed))
    orchestrator = Orchestrator(pool, drafter, block=s.block, job_timeout=math.inf,
                                drafting=_SimDrafting(drafter, pool), clock=lambda: pool.clock.now)
    generated = 0
    for commit in orchestrator.generate([1, 2, 3], tokens, SamplingParams(), seed=seed):
        generated += len(commit.tokens)
    return pool.clock.now / generated


@dataclass
class Prediction:
    nonsi: float
    si: float
    dsi: float          # this project's scheduler, event-simulated
    dsi_paper: float    # the paper's offline model (enough workers assumed)

    @property
    def dsi_over_si(self) -> float:
        return self.si / self.dsi

    @property
    def dsi_over_best(self) -> float:
        return min(self.si, self.nonsi) / self.dsi


def predict(s: Setting, tokens: int = 3000, seed: int = 0) -> Prediction:
    return Prediction(nonsi_time_per_token(s), si_time_per_token(s),
                      simulate_dsi_time_per_token(s, tokens, seed), paper_dsi_time_per_token(s))


def best_block(s: Setting, candidates=range(1, 11), paper_model: bool = False) -> tuple[int, float]:
    """The block with the lowest DSI time per token (and that time)."""
    def cost(k):
        trial = Setting(**{**s.__dict__, "block": k})
        return paper_dsi_time_per_token(trial) if paper_model else simulate_dsi_time_per_token(trial, 1500)
    return min(((k, cost(k)) for k in candidates), key=lambda kc: kc[1])


def paper_heatmap_max_speedup(ndim: int = 10, workers: int = 7) -> tuple[float, float]:
    """The paper's Figure 2 grid (c, a in 0..1, clamped to [0.01, 0.99]; block 1..10 with
    enough servers, i.e. ceil(1 / (k c)) <= workers): for each cell every algorithm takes its best
    block. Returns (max DSI speedup over SI, max DSI speedup over min(SI, non-SI))."""
    grid = [i / ndim for i in range(ndim + 1)]
    best_si = best_base = 0.0
    for c in (max(0.01, v) for v in grid):
        for a in (min(0.99, max(0.01, v)) for v in grid):
            settings = [Setting(1.0, c, a, k, workers) for k in range(1, ndim + 1)]
            valid = [s for s in settings if required_workers(s) <= workers]
            if not valid:
                continue
            si = min(si_time_per_token(s) for s in valid)
            dsi = min(paper_dsi_time_per_token(s) for s in valid)
            best_si = max(best_si, si / dsi)
            best_base = max(best_base, min(si, 1.0) / dsi)
    return best_si, best_base
